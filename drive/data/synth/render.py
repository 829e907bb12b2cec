"""Camera renderer of the synthetic world: ground map + sky + box-fitted meshes -> image, depth and id buffer.

Geometry is exact for a pinhole camera: every face is a planar convex polygon, clipped against the near
plane ``z = NEAR`` in the camera frame before projection, filled with OpenCV (vertices rounded to the
pixel grid, edges inclusive) and z-tested per pixel with the exact inverse depth of its plane
(``1/z`` is affine in pixel coordinates). Ground pixels are ray / ``z = 0`` intersections looked up in
the rasterised map. Shading is flat Lambert per face plus sky gradient, haze, sun shadows, vignetting
and sensor noise. Pixel ``(row i, col j)`` has its centre at ``(u, v) = (j, i)`` (OpenCV convention).
"""
from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass

import cv2
import numpy as np

from drive.data.synth.meshes import PLAIN, STRIPES, WINDOWS, object_mesh

GRASS, ROAD, SIDEWALK, LANE_WHITE, LANE_YELLOW, CROSSWALK, SHOULDER = range(7)  # ground classes
DRIVABLE_CLASSES = (ROAD, LANE_WHITE, LANE_YELLOW, CROSSWALK, SHOULDER)

NEAR = 0.1  # near plane (m, camera z)
FAR = 300.0  # objects whose bounding sphere starts beyond this are not drawn
GROUND_RANGE = 200.0  # ground hits farther than this (m, along the ray) are drawn as haze, depth inf
FOG_DISTANCE = 400.0  # e-folding distance of the haze towards the horizon colour
LOD_PIXELS = 5.0  # objects whose bounding sphere is smaller than this radius (px) drop detail faces
_SHIFT = 8  # fixed-point bits of polygon vertices handed to OpenCV
_GUARD = 2e4  # projected polygons reaching beyond this many pixels are clipped in 2D first
_TEX_BITS = 12  # log2 texels per ground class in the texture table (small enough to stay in cache)
_TEX = 1 << _TEX_BITS

_GROUND_RGB = np.array([
    (0.25, 0.37, 0.15),  # GRASS
    (0.31, 0.31, 0.32),  # ROAD
    (0.60, 0.59, 0.56),  # SIDEWALK
    (0.82, 0.82, 0.80),  # LANE_WHITE
    (0.80, 0.63, 0.14),  # LANE_YELLOW
    (0.85, 0.85, 0.83),  # CROSSWALK
    (0.37, 0.36, 0.34),  # SHOULDER
], np.float32)
_GROUND_GRAIN = np.array([0.16, 0.06, 0.05, 0.05, 0.05, 0.05, 0.07], np.float32)
_STRIPE_RED = np.array([0.78, 0.08, 0.07], np.float32)


@dataclass
class GroundMap:
    classes: np.ndarray  # (H, W) uint8 ground class per pixel, nuScenes MapMask pixel convention:
    # global (x, y) metres -> col = x / resolution, row = H - y / resolution (round)
    resolution: float = 0.1


@dataclass
class Lighting:
    sun_dir: np.ndarray  # (3,) unit vector pointing TO the sun, global frame (z up)
    ambient: float  # 0..1
    sun_strength: float  # 0..1
    sky_top: tuple  # RGB 0..1
    sky_horizon: tuple  # RGB 0..1
    exposure: float  # multiplies final colour (dusk < 1)
    noise_sigma: float  # sensor noise std in 0..255 units
    tint: tuple  # RGB multiplier (white balance)


@dataclass
class RenderObject:
    category: str  # nuScenes category name or 'scenery.building' / 'scenery.tree' / 'scenery.pole'
    center: np.ndarray  # (3,) global box centre (ground is z = 0, so center z = h/2 for grounded objects)
    yaw: float  # heading around +z (box length axis), radians
    size_lwh: np.ndarray  # (3,) length (along heading), width, height in metres
    color: np.ndarray  # (3,) body colour RGB 0..1
    object_id: int  # >= 0, unique within a frame; written into the id buffer
    variant: int = 0  # style seed for silhouette/detail variation
    with_rider: bool = False  # bicycles / motorcycles
    phase: float = 0.0  # walking gait phase in radians (pedestrians, riders)


@dataclass
class RenderResult:
    image: np.ndarray  # (H, W, 3) uint8 RGB
    depth: np.ndarray  # (H, W) float32 metres along camera z (inf for sky)
    object_id: np.ndarray  # (H, W) int32, -1 where no object
    visible_pixels: dict  # object_id -> number of pixels where that object is the nearest surface
    covered_pixels: dict  # object_id -> number of in-image pixels its faces cover, ignoring other objects


def _lru(cache: OrderedDict, key, make, size: int):
    if key in cache:
        cache.move_to_end(key)
        return cache[key]
    value = cache[key] = make()
    if len(cache) > size:
        cache.popitem(last=False)
    return value


_RAYS: OrderedDict = OrderedDict()
_BACKGROUNDS: OrderedDict = OrderedDict()
_NOISE: OrderedDict = OrderedDict()
_MAPS: list = []  # [(classes array, padded copy)]: one-entry cache of the padded map


@dataclass
class _Rays:
    """Per-pixel camera rays K^-1 (u, v, 1) of one intrinsic / image size."""
    x: np.ndarray  # (H, W) float32
    y: np.ndarray  # (H, W) float32
    norm: np.ndarray  # (H, W) float32 length of (x, y, 1)
    us: np.ndarray  # (W,) float32 pixel column coordinates
    vs: np.ndarray  # (H,) float32
    K_inv: np.ndarray  # (3, 3)
    planes: np.ndarray  # (4, 3) inward normals of the frustum side planes (through the camera centre)


def _rays(K: np.ndarray, width: int, height: int) -> _Rays:
    def make():
        K_inv = np.linalg.inv(K)
        us, vs = np.arange(width, dtype=np.float64), np.arange(height, dtype=np.float64)
        uu, vv = np.meshgrid(us, vs)
        x = K_inv[0, 0] * uu + K_inv[0, 1] * vv + K_inv[0, 2]
        y = K_inv[1, 1] * vv + K_inv[1, 2]
        corners = np.array([[-0.5, -0.5, 1], [width - 0.5, -0.5, 1], [width - 0.5, height - 0.5, 1], [-0.5, height - 0.5, 1]])
        c = corners @ K_inv.T
        planes = np.cross(c, np.roll(c, -1, axis=0))
        planes *= np.sign(planes[:, 2:3] + 1e-12) * np.sign(planes @ c.mean(0))[:, None] / np.linalg.norm(planes, axis=1, keepdims=True)
        return _Rays(x.astype(np.float32), y.astype(np.float32), np.sqrt(x * x + y * y + 1).astype(np.float32),
                     us.astype(np.float32), vs.astype(np.float32), K_inv, planes)
    return _lru(_RAYS, (K.tobytes(), width, height), make, 8)


def _ground_texture() -> np.ndarray:
    """(7 * _TEX, 3) float32 colour per (class, texel): base colour with grain, worn paint, grass tufts."""
    rng = np.random.default_rng(12345)
    noise = rng.standard_normal((len(_GROUND_RGB), _TEX)).astype(np.float32)
    noise = 0.7 * noise + 0.3 * np.roll(noise, 1, axis=1)
    table = _GROUND_RGB[:, None, :] * (1 + _GROUND_GRAIN[:, None, None] * noise[..., None])
    table[GRASS] *= 1 + 0.08 * rng.standard_normal((_TEX, 3)).astype(np.float32)
    for paint in (LANE_WHITE, LANE_YELLOW, CROSSWALK):  # worn paint shows asphalt through
        worn = rng.random(_TEX) < 0.08
        table[paint, worn] = 0.5 * table[paint, worn] + 0.5 * table[ROAD, worn]
    return np.clip(table, 0, 1).reshape(-1, 3)


_TEXTURE = _ground_texture()


def _padded_map(classes: np.ndarray) -> np.ndarray:
    """The class map with a one-pixel GRASS border, so clipped out-of-map lookups read GRASS."""
    if _MAPS and _MAPS[0][0] is classes:
        return _MAPS[0][1]
    padded = np.full((classes.shape[0] + 2, classes.shape[1] + 2), GRASS, np.uint8)
    padded[1:-1, 1:-1] = classes
    _MAPS[:] = [(classes, padded)]
    return padded


@dataclass
class _Background:
    """Everything about sky and ground that depends only on K, image size, camera tilt, height and lighting."""
    color: np.ndarray  # (H, W, 3) float32 sky / haze colour (ground pixels are overwritten per frame)
    invz: np.ndarray  # (H, W) float32 inverse camera-z depth of the ground, 0 for sky
    rows: slice  # rows that contain ground
    lx: np.ndarray  # (Hs, W) float32 ground hit minus camera position, in the camera-yaw frame
    ly: np.ndarray
    light: np.ndarray  # (Hs, W, 3) float32 ground light times (1 - haze), 0 where the pixel is sky
    haze: np.ndarray  # (Hs, W, 3) float32 haze colour contribution (the sky colour where the pixel is sky)
    gain: np.ndarray  # (H, W, 3) float32 255 * exposure * tint * vignetting


def _background(rays: _Rays, rays_key: tuple, tilt: np.ndarray, height_m: float, lighting: Lighting) -> _Background:
    """``tilt`` is the camera rotation with its yaw removed: global_R_cam = rot_z(yaw) @ tilt."""
    H, W = rays.x.shape
    horizon, top = np.asarray(lighting.sky_horizon, np.float32), np.asarray(lighting.sky_top, np.float32)
    sun_z = float(lighting.sun_dir[2])
    key = (rays_key, np.round(tilt, 9).tobytes(), round(height_m, 6), tuple(horizon), tuple(top),
           round(lighting.ambient, 6), round(lighting.sun_strength, 6), round(sun_z, 6), lighting.exposure,
           tuple(lighting.tint))

    def make():
        dx = tilt[0, 0] * rays.x + tilt[0, 1] * rays.y + tilt[0, 2]
        dy = tilt[1, 0] * rays.x + tilt[1, 1] * rays.y + tilt[1, 2]
        dz = tilt[2, 0] * rays.x + tilt[2, 1] * rays.y + tilt[2, 2]
        elev = dz / rays.norm
        sky = np.clip(elev / 0.45, 0, 1)[..., None] ** 0.6
        color = (horizon + (top - horizon) * sky).astype(np.float32)
        with np.errstate(divide="ignore", invalid="ignore"):
            t = np.where(dz < -1e-9, -height_m / dz, np.inf)
        ground = (t * rays.norm <= GROUND_RANGE) & (height_m > 0)
        hit_rows = np.flatnonzero(ground.any(1))
        rows = slice(hit_rows[0], hit_rows[-1] + 1) if len(hit_rows) else slice(0, 0)
        g, ts = ground[rows], np.where(ground, t, 0.0)[rows]
        invz = np.where(ground, 1.0 / np.where(ground, t, 1.0), 0.0).astype(np.float32)
        fog = np.exp(-ts * rays.norm[rows] / FOG_DISTANCE)[..., None]
        light = np.where(g[..., None], fog * (lighting.ambient + lighting.sun_strength * max(0.0, sun_z)), 0.0)
        light = np.repeat(light, 3, axis=2)  # 3 channels: numpy broadcasting over a trailing 3 is slow
        haze = np.where(g[..., None], (1 - fog) * horizon, color[rows])  # non-ground pixels keep their sky
        vignette = (1.0 / rays.norm)[..., None] ** 0.8
        gain = (255.0 * lighting.exposure * vignette * np.asarray(lighting.tint)).astype(np.float32)
        return _Background(color, invz, rows, (dx[rows] * ts).astype(np.float32), (dy[rows] * ts).astype(np.float32),
                           light.astype(np.float32), haze.astype(np.float32), gain)
    return _lru(_BACKGROUNDS, key, make, 8)


def _noise_tile(width: int, height: int) -> np.ndarray:
    make = lambda: np.random.default_rng(7).standard_normal((height + 64, width + 64, 3)).astype(np.float32)
    return _lru(_NOISE, (width, height), make, 2)


def _clip(poly: np.ndarray, dist: np.ndarray) -> np.ndarray:
    """Sutherland-Hodgman: the part of a convex polygon (n, d) where ``dist >= 0``."""
    out = []
    n = len(poly)
    for i in range(n):
        j = (i + 1) % n
        if dist[i] >= 0:
            out.append(poly[i])
        if (dist[i] >= 0) != (dist[j] >= 0):
            out.append(poly[i] + (poly[j] - poly[i]) * (dist[i] / (dist[i] - dist[j])))
    return np.array(out).reshape(-1, poly.shape[1])


def _project_clipped(poly_cam: np.ndarray, K: np.ndarray, width: int, height: int) -> np.ndarray:
    """Near-plane clip in 3D, project, then clip to a guard band in 2D. Returns (n, 2) pixels, n may be 0."""
    poly = _clip(poly_cam, poly_cam[:, 2] - NEAR)
    if len(poly) < 3:
        return np.zeros((0, 2))
    p = poly @ K.T
    uv = p[:, :2] / p[:, 2:3]
    for axis, lo, hi in ((0, -_GUARD, width + _GUARD), (1, -_GUARD, height + _GUARD)):
        for dist in (lambda q: q[:, axis] - lo, lambda q: hi - q[:, axis]):
            if len(uv) >= 3:
                uv = _clip(uv, dist(uv))
    return uv if len(uv) >= 3 else np.zeros((0, 2))


def _rot_z(yaw: float) -> np.ndarray:
    c, s = np.cos(yaw), np.sin(yaw)
    return np.array([[c, -s, 0.0], [s, c, 0.0], [0.0, 0.0, 1.0]])


def _put_rows(dst: np.ndarray, rows: np.ndarray, values: np.ndarray) -> None:
    """``dst[rows] = values`` for a C-contiguous (N, 3) float32 array (much faster than fancy setitem)."""
    void = np.dtype((np.void, 12))
    dst.view(void).ravel().put(rows, np.ascontiguousarray(values, np.float32).view(void).ravel())


@dataclass
class _Faces:
    """Front faces of all drawable objects, grouped object by object."""
    pts: list  # per face (n, 2) int32 fixed-point pixel polygon relative to its object's bbox origin
    bbox: np.ndarray  # (F, 4) int x0, y0, x1, y1 (inclusive, inside the image, 1 px margin)
    obj_bbox: np.ndarray  # (G, 4) union of the face boxes of each object group
    starts: np.ndarray  # (G + 1,) face index where each object group starts
    coef: np.ndarray  # (F, 3) inverse depth = a u + b v + c
    iz_range: np.ndarray  # (F, 2) min / max inverse depth of the face
    obj: np.ndarray  # (F,) index into the object list
    rgb: np.ndarray  # (F, 3) float32 lit colour
    light: np.ndarray  # (F,) float32 light factor
    pattern: np.ndarray  # (F,) int8
    pattern_M: np.ndarray  # (F, 3, 3) homography image pixel (u, v, 1) -> facade coordinates (s, z, 1) in metres


def _collect_faces(objects, global_T_cam, cam_T_global, K, rays, width, height, lighting) -> _Faces | None:
    R_cg, t_cg = cam_T_global[:3, :3], cam_T_global[:3, 3]
    centers = np.array([o.center for o in objects], float).reshape(-1, 3)
    radii = 0.5 * np.linalg.norm(np.array([o.size_lwh for o in objects], float).reshape(-1, 3), axis=1)
    cc = centers @ R_cg.T + t_cg
    keep = (cc[:, 2] + radii > NEAR) & (cc[:, 2] - radii < FAR) & np.all(cc @ rays.planes.T > -radii[:, None], axis=1)
    sun = np.asarray(lighting.sun_dir, float)
    sun_w = lighting.sun_strength * np.clip(sun[2] * 5, 0, 1)
    parts = []
    for i in np.flatnonzero(keep):
        o = objects[i]
        mesh = object_mesh(o.category, o.size_lwh, o.color, o.variant, o.with_rider, o.phase)
        polys, normals, colors, pattern = mesh.polys, mesh.normals, mesh.colors, mesh.pattern
        if cc[i, 2] > radii[i] and K[0, 0] * radii[i] / cc[i, 2] < LOD_PIXELS:
            coarse = ~mesh.detail
            polys, normals, colors, pattern = polys[coarse], normals[coarse], colors[coarse], pattern[coarse]
        R_go = _rot_z(o.yaw)
        R_co = R_cg @ R_go
        center = np.asarray(o.center, float)
        poly_cam = polys @ R_co.T + (R_cg @ center + t_cg)
        n_cam = normals @ R_co.T
        front = (np.einsum("fk,fk->f", n_cam, poly_cam[:, 0]) < -1e-9) & (poly_cam[..., 2].max(1) > NEAR)
        if not front.any():
            continue
        n_glob = normals[front] @ R_go.T
        light = lighting.ambient * (0.8 + 0.2 * n_glob[:, 2]) + sun_w * np.clip(n_glob @ sun, 0, None)
        anchor = polys[front][:, 0] @ R_go.T + center
        parts.append((poly_cam[front], n_cam[front], colors[front] * light[:, None], light, pattern[front], n_glob,
                      anchor, np.full(front.sum(), i)))
    if not parts:
        return None
    polys, n_cam, rgb, light, pattern, n_glob, anchor, obj = (np.concatenate(p) for p in zip(*parts))
    z = polys[..., 2]
    zmin, zmax = z.min(1), z.max(1)
    coef = (n_cam @ rays.K_inv) / np.einsum("fk,fk->f", n_cam, polys[:, 0])[:, None]
    iz_range = np.stack([1.0 / zmax, 1.0 / np.maximum(zmin, NEAR)], 1)
    p = polys @ K.T
    with np.errstate(divide="ignore", invalid="ignore"):
        uv = p[..., :2] / p[..., 2:3]
        slow = (zmin < -1e9) | ~np.all(np.abs(uv) < _GUARD, axis=(1, 2))
        lo, hi = uv.min(1), uv.max(1)
    clipped = {}
    for f in np.flatnonzero(slow):
        clipped[f] = q = _project_clipped(polys[f], K, width, height)
        lo[f], hi[f] = (q.min(0), q.max(0)) if len(q) else ((1e9, 1e9), (-1e9, -1e9))
    bbox = np.concatenate([np.floor(lo) - 1, np.ceil(hi) + 1], 1)
    bbox = np.clip(bbox, 0, [width - 1, height - 1, width - 1, height - 1]).astype(np.int64)
    ok = (lo[:, 0] <= width) & (lo[:, 1] <= height) & (hi[:, 0] >= -1) & (hi[:, 1] >= -1)
    idx = np.flatnonzero(ok)
    if not len(idx):
        return None
    obj, bbox = obj[idx], bbox[idx]
    starts = np.flatnonzero(np.concatenate([[True], obj[1:] != obj[:-1]]))
    obj_bbox = np.concatenate([np.minimum.reduceat(bbox[:, :2], starts), np.maximum.reduceat(bbox[:, 2:], starts)], 1)
    origin = np.repeat(obj_bbox[:, :2], np.diff(np.append(starts, len(idx))), axis=0).astype(float)
    scale = float(1 << _SHIFT)
    with np.errstate(invalid="ignore"):
        pts_all = np.rint((np.where(slow[idx, None, None], 0.0, uv[idx]) - origin[:, None]) * scale).astype(np.int32)
    pts = list(pts_all)
    for k, f in enumerate(idx):
        if slow[f]:
            pts[k] = np.rint((clipped[f] - origin[k]) * scale).astype(np.int32)
    # facade coordinates of pattern faces: s along the face (horizontal), z height; both are ratios of affine
    # functions of the pixel with the face's inverse depth as common denominator, i.e. a homography
    tangent = np.stack([-n_glob[idx, 1], n_glob[idx, 0], np.zeros(len(idx))], 1)
    tangent /= np.maximum(np.linalg.norm(tangent, axis=1, keepdims=True), 1e-9)
    o, R = global_T_cam[:3, 3], global_T_cam[:3, :3]
    s0 = np.einsum("fk,fk->f", o - anchor[idx], tangent)
    c = coef[idx]
    pattern_M = np.stack([s0[:, None] * c + (tangent @ R) @ rays.K_inv, o[2] * c + R[2] @ rays.K_inv, c], 1)
    return _Faces(pts, bbox, obj_bbox, np.append(starts, len(idx)), c.astype(np.float32),
                  iz_range[idx].astype(np.float32), obj, rgb[idx].astype(np.float32), light[idx].astype(np.float32),
                  pattern[idx], pattern_M)


def _rasterise(faces: _Faces, rays: _Rays, invz: np.ndarray, face_buf: np.ndarray) -> dict:
    """Z-buffered fill of every face; returns object index -> covered pixel count."""
    covered = {}
    bbox, coef, iz_range = faces.bbox.tolist(), faces.coef.tolist(), faces.iz_range.tolist()
    us, vs = rays.us, rays.vs
    for g, (ox0, oy0, ox1, oy1) in enumerate(faces.obj_bbox.tolist()):
        cover = np.zeros((oy1 - oy0 + 1, ox1 - ox0 + 1), np.uint16)
        for k, f in enumerate(range(faces.starts[g], faces.starts[g + 1]), start=1):
            x0, y0, x1, y1 = bbox[f]
            cv2.fillConvexPoly(cover, faces.pts[f], k, cv2.LINE_8, _SHIFT)
            mask = cover[y0 - oy0:y1 - oy0 + 1, x0 - ox0:x1 - ox0 + 1] == k
            a, b, c = coef[f]
            iz = (b * vs[y0:y1 + 1] + c)[:, None] + a * us[x0:x1 + 1]
            np.maximum(iz, iz_range[f][0], out=iz)  # pixels on the inclusive rim must not extrapolate the plane
            np.minimum(iz, iz_range[f][1], out=iz)
            zb = invz[y0:y1 + 1, x0:x1 + 1]
            win = iz > zb
            win &= mask
            np.copyto(zb, iz, where=win)
            np.copyto(face_buf[y0:y1 + 1, x0:x1 + 1], f, where=win)
        covered[int(faces.obj[faces.starts[g]])] = int(np.count_nonzero(cover))
    return covered


def _facade_tiles() -> dict:
    """Periodic pattern tiles (value 0 = plain face, k > 0 = pattern colour k) and their texel size (m)."""
    s, z = np.meshgrid(np.arange(140) * 0.1 + 0.05, np.arange(132) * 0.1 + 0.05)  # 4 x 4 windows of 3.5 x 3.3 m
    window = (np.mod(s, 3.5) > 0.7) & (np.mod(s, 3.5) < 2.8) & (np.mod(z, 3.3) > 1.0) & (np.mod(z, 3.3) < 2.6)
    glint = (np.floor(s / 3.5) * 5 + np.floor(z / 3.3) * 3).astype(int) % 4 + 1
    i, j = np.meshgrid(np.arange(10), np.arange(10))
    stripes = ((i + j) % 10 < 5).astype(np.uint8)  # 0.5 m diagonal period at 5 cm texels
    return {WINDOWS: ((window * glint).astype(np.uint8), 0.1), STRIPES: (stripes, 0.05)}


_TILES = _facade_tiles()
_GLASS = np.array([0.10, 0.13, 0.17], np.float32)


def _pattern_colours(faces: _Faces, cidx: np.ndarray, face_buf: np.ndarray) -> np.ndarray:
    """Redirect pixels of patterned faces (building windows, barrier stripes) to extra colour rows appended after
    the face colours in ``cidx``; returns the colour table (F + 4P + 1, 3), last row for 'no object'."""
    F = len(faces.obj)
    pat = np.flatnonzero(faces.pattern != PLAIN)
    extra = np.zeros((4 * len(pat), 3), np.float32)
    for p, f in enumerate(pat.tolist()):
        kind = int(faces.pattern[f])
        tile, texel = _TILES[kind]
        if kind == WINDOWS:
            extra[4 * p:4 * p + 4] = _GLASS * (1.0 + np.array([0.2, 0.7, 1.2, 2.0], np.float32))[:, None] * faces.light[f]
        else:
            extra[4 * p:4 * p + 4] = _STRIPE_RED * faces.light[f]
        x0, y0, x1, y1 = faces.bbox[f].tolist()
        M = np.diag([1.0 / texel, 1.0 / texel, 1.0]) @ faces.pattern_M[f] @ np.array([[1, 0, x0], [0, 1, y0], [0, 0, 1.0]])
        level = cv2.warpPerspective(tile, M, (x1 - x0 + 1, y1 - y0 + 1), flags=cv2.INTER_NEAREST | cv2.WARP_INVERSE_MAP,
                                    borderMode=cv2.BORDER_WRAP)
        sel = face_buf[y0:y1 + 1, x0:x1 + 1] == f
        sel &= level > 0
        np.copyto(cidx[y0:y1 + 1, x0:x1 + 1], level.astype(np.int32) + (F + 4 * p - 1), where=sel)
    return np.concatenate([faces.rgb, extra, np.zeros((1, 3), np.float32)])


def _shadow_factor(objects, cam_T_global, K, rays, lighting, rows: slice) -> np.ndarray | None:
    """(Hs, W) float32 light factor of the ground rows: sun shadows (each box's hull projected along the sun onto
    z = 0) and contact shadows under vehicles. None when nothing is shadowed."""
    sun = np.asarray(lighting.sun_dir, float)
    if sun[2] <= 0.05 or not objects:
        return None
    W = len(rays.us)
    R_cg, t_cg = cam_T_global[:3, :3], cam_T_global[:3, 3]
    lwh = np.array([o.size_lwh for o in objects], float)
    centers = np.array([o.center for o in objects], float)
    yaw = np.array([o.yaw for o in objects], float)
    c, s = np.cos(yaw)[:, None], np.sin(yaw)[:, None]
    lx = np.array([1, 1, -1, -1]) * lwh[:, :1] / 2
    ly = np.array([1, -1, -1, 1]) * lwh[:, 1:2] / 2
    foot = np.stack([centers[:, :1] + c * lx - s * ly, centers[:, 1:2] + s * lx + c * ly], 2)  # (N, 4, 2)
    step = sun[:2] / max(sun[2], 0.25)
    pts = np.concatenate([foot, foot - (centers[:, 2] + lwh[:, 2] / 2)[:, None, None] * step], 1)
    mid = pts.mean(1)
    radius = np.linalg.norm(pts - mid[:, None], axis=2).max(1)
    cc = np.concatenate([mid, np.zeros((len(mid), 1))], 1) @ R_cg.T + t_cg
    keep = (cc[:, 2] + radius > NEAR) & (cc[:, 2] - radius < GROUND_RANGE) & np.all(cc @ rays.planes.T > -radius[:, None], 1)
    if not keep.any():
        return None
    polys, values = [], []
    for i in np.flatnonzero(keep):
        hull = cv2.convexHull(pts[i].astype(np.float32))[:, 0]
        polys.append(np.concatenate([hull, np.repeat(hull[-1:], 8 - len(hull), 0)]))
        values.append(1)
        if objects[i].category.startswith("vehicle"):
            polys.append(foot[i])
            values.append(2)
    polys = [np.pad(p, ((0, 8 - len(p)), (0, 0)), mode="edge") for p in polys]
    ground = np.concatenate([np.array(polys, float), np.zeros((len(polys), 8, 1))], 2) @ R_cg.T + t_cg  # (P, 8, 3)
    p = ground @ K.T
    with np.errstate(divide="ignore", invalid="ignore"):
        uv = p[..., :2] / p[..., 2:3]
    fast = (ground[..., 2].min(1) >= NEAR) & np.all(np.abs(uv) < _GUARD, axis=(1, 2))
    scale = float(1 << _SHIFT)
    mask = np.zeros((rows.stop - rows.start, W), np.uint8)
    offset = np.array([0.0, rows.start])
    for k, value in enumerate(values):
        q = uv[k] if fast[k] else _project_clipped(ground[k], K, W, len(rays.vs))
        if len(q):
            cv2.fillConvexPoly(mask, np.rint((q - offset) * scale).astype(np.int32), value, cv2.LINE_8, _SHIFT)
    shade = lighting.ambient / max(lighting.ambient + lighting.sun_strength * sun[2], 1e-6)
    return np.array([1.0, shade, 0.6 * shade], np.float32).take(mask)


def render_camera(ground: GroundMap, objects: list[RenderObject], K: np.ndarray, global_T_cam: np.ndarray,
                  width: int, height: int, lighting: Lighting, rng: np.random.Generator) -> RenderResult:
    """Render one pinhole camera image of the world with its depth map and object-id buffer."""
    K = np.asarray(K, float)
    global_T_cam = np.asarray(global_T_cam, float)
    cam_T_global = np.linalg.inv(global_T_cam)
    rays = _rays(K, width, height)
    R = global_T_cam[:3, :3]
    yaw = float(np.arctan2(R[1, 2], R[0, 2])) if np.hypot(R[0, 2], R[1, 2]) > 1e-6 else 0.0
    tilt = _rot_z(-yaw) @ R
    bg = _background(rays, (K.tobytes(), width, height), tilt, float(global_T_cam[2, 3]), lighting)
    color, invz = bg.color.copy(), bg.invz.copy()

    if bg.rows.stop > bg.rows.start:  # ground: rigid 2D move of the cached hit offsets, then map lookup
        classes = _padded_map(np.asarray(ground.classes))
        Hp, Wp = classes.shape
        inv_res = 1.0 / ground.resolution
        c, s = np.cos(yaw), np.sin(yaw)
        ox, oy = global_T_cam[0, 3], global_T_cam[1, 3]
        col = (c * inv_res) * bg.lx
        col -= (s * inv_res) * bg.ly
        col += ox * inv_res + 1.5  # + 0.5 to round, + 1 for the border
        row = (-s * inv_res) * bg.lx
        row -= (c * inv_res) * bg.ly
        row += (Hp - 2) - oy * inv_res + 1.5
        np.clip(col, 0, Wp - 1, out=col)
        np.clip(row, 0, Hp - 1, out=row)
        idx = row.astype(np.int32)
        idx *= Wp
        idx += col.astype(np.int32)
        key = np.left_shift(classes.ravel().take(idx), _TEX_BITS, dtype=np.int32)
        idx &= _TEX - 1
        key |= idx
        rgb = _TEXTURE.take(key, axis=0)
        rgb *= bg.light
        shadow = _shadow_factor(objects, cam_T_global, K, rays, lighting, bg.rows)
        if shadow is not None:
            rgb *= cv2.merge([shadow, shadow, shadow])
        rgb += bg.haze
        color[bg.rows] = rgb

    # objects are z-tested among themselves only: anything above z = 0 is in front of the ground along its ray
    face_buf = np.full((height, width), -1, np.int32)
    faces = _collect_faces(objects, global_T_cam, cam_T_global, K, rays, width, height, lighting) if objects else None
    covered_idx = {}
    if faces is not None:
        obj_invz = np.zeros_like(invz)
        covered_idx = _rasterise(faces, rays, obj_invz, face_buf)
        np.copyto(invz, obj_invz, where=face_buf >= 0)
    with np.errstate(divide="ignore"):
        depth = np.float32(1.0) / invz
    visible_idx = {}
    if faces is None:
        object_id = face_buf
    else:
        ids = np.array([o.object_id for o in objects], np.int32)
        object_id = np.append(ids.take(faces.obj), np.int32(-1)).take(face_buf)
        per_face = np.bincount(face_buf.ravel() + 1, minlength=len(faces.obj) + 1)[1:]
        per_obj = np.add.reduceat(per_face, faces.starts[:-1])
        visible_idx = {int(faces.obj[f]): int(n) for f, n in zip(faces.starts[:-1], per_obj)}
        cidx = face_buf.copy()
        table = _pattern_colours(faces, cidx, face_buf)
        rgb = table.take(cidx, axis=0)
        fog = np.exp(depth * rays.norm * np.float32(-1.0 / FOG_DISTANCE))  # haze: mix towards the horizon colour
        horizon = tuple(float(x) for x in lighting.sky_horizon) + (0.0,)
        cv2.subtract(rgb, horizon, dst=rgb)
        cv2.multiply(rgb, cv2.merge([fog, fog, fog]), dst=rgb)
        cv2.add(rgb, horizon, dst=rgb)
        cv2.copyTo(rgb, (face_buf >= 0).view(np.uint8), color)

    color *= bg.gain  # exposure, white balance, vignetting
    if lighting.noise_sigma > 0:
        tile = _noise_tile(width, height)
        oy, ox = rng.integers(0, 64, size=2)
        color += tile[oy:oy + height, ox:ox + width] * np.float32(lighting.noise_sigma)
    np.clip(color, 0, 255, out=color)
    image = color.astype(np.uint8)

    visible = {o.object_id: visible_idx.get(i, 0) for i, o in enumerate(objects)}
    covered = {o.object_id: covered_idx.get(i, 0) for i, o in enumerate(objects)}
    return RenderResult(image, depth, object_id, visible, covered)
