"""Camera renderer of the synthetic world: ground map + sky + box-fitted meshes -> image, depth and id buffer.

Objects are box-fitted meshes (``meshes``) drawn by ``raster`` with exact pinhole geometry: near-plane
clipping and a per-pixel z-buffer with each face's exact inverse depth. Ground pixels are ray / ``z = 0``
intersections looked up in the nuScenes-convention class map. Shading: flat Lambert per face, sky
gradient, haze towards the horizon colour, sun and contact shadows on the ground, vignetting, exposure,
white balance and Gaussian sensor noise. Everything that depends only on the intrinsics, image size,
camera tilt / height and lighting (rays, sky, ground-hit offsets) is cached, so a camera rigidly moving
on the ground plane costs one 2D rigid transform of the cached hits per frame.
"""
from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass

import cv2
import numpy as np

from drive.data.synth.raster import (
    GUARD, NEAR, SHIFT, CameraRays, camera_rays, collect_faces, lru, pattern_colours, project_clipped, rasterise, rot_z,
)

GRASS, ROAD, SIDEWALK, LANE_WHITE, LANE_YELLOW, CROSSWALK, SHOULDER = range(7)  # ground classes
DRIVABLE_CLASSES = (ROAD, LANE_WHITE, LANE_YELLOW, CROSSWALK, SHOULDER)

GROUND_RANGE = 200.0  # ground hits farther than this (m, along the ray) are drawn as haze, depth inf
FOG_DISTANCE = 400.0  # e-folding distance of the haze towards the horizon colour
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


_BACKGROUNDS: OrderedDict = OrderedDict()
_NOISE: OrderedDict = OrderedDict()
_GAINS: OrderedDict = OrderedDict()
_MAPS: list = []  # [(classes array, padded copy)]: one-entry cache of the padded map


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


def _background(rays: CameraRays, rays_key: tuple, tilt: np.ndarray, height_m: float,
                lighting: Lighting) -> _Background:
    """``tilt`` is the camera rotation with its yaw removed: global_R_cam = rot_z(yaw) @ tilt."""
    H, W = rays.x.shape
    horizon, top = np.asarray(lighting.sky_horizon, np.float32), np.asarray(lighting.sky_top, np.float32)
    sun_z = float(lighting.sun_dir[2])
    key = (rays_key, (np.round(tilt, 9) + 0.0).tobytes(), round(height_m, 6), tuple(horizon), tuple(top),
           round(lighting.ambient, 6), round(lighting.sun_strength, 6), round(sun_z, 6))

    def make():  # float32 and OpenCV per-channel ops throughout: a miss costs a few ms, not tens
        T = tilt.astype(np.float32)
        dz = T[2, 0] * rays.x + T[2, 1] * rays.y + T[2, 2]
        w = dz / rays.norm
        w *= np.float32(1 / 0.45)
        np.clip(w, 0, 1, out=w)
        np.sqrt(w, out=w)
        color = cv2.add(cv2.multiply(cv2.merge([w, w, w]), tuple(map(float, top - horizon)) + (0.0,)),
                        tuple(map(float, horizon)) + (0.0,))
        invz = np.zeros((H, W), np.float32)
        ground = (dz * np.float32(GROUND_RANGE) + np.float32(height_m) * rays.norm <= 0) & (height_m > 0)
        hit_rows = np.flatnonzero(ground.any(1))
        if not len(hit_rows):
            empty = np.zeros((0, W), np.float32)
            return _Background(color, invz, slice(0, 0), empty, empty, empty, empty)
        rows = slice(hit_rows[0], hit_rows[-1] + 1)
        g = ground[rows]
        iz = np.where(g, dz[rows] * np.float32(-1.0 / height_m), np.float32(1e-30))
        invz[rows] = np.where(g, iz, np.float32(0))
        t = np.where(g, np.float32(1) / iz, np.float32(0))
        fog = np.exp(t * rays.norm[rows] * np.float32(-1.0 / FOG_DISTANCE))
        light = fog * np.float32(lighting.ambient + lighting.sun_strength * max(0.0, sun_z)) * g
        haze = cv2.multiply(cv2.merge([1 - fog] * 3), tuple(map(float, horizon)) + (0.0,))
        cv2.copyTo(color[rows], (~g).view(np.uint8), haze)  # non-ground pixels of these rows keep their sky
        x, y = rays.x[rows], rays.y[rows]
        lx = (T[0, 0] * x + T[0, 1] * y + T[0, 2]) * t
        ly = (T[1, 0] * x + T[1, 1] * y + T[1, 2]) * t
        return _Background(color, invz, rows, lx, ly, cv2.merge([light] * 3), haze)
    return lru(_BACKGROUNDS, key, make, 8)  # six cameras of one rig, plus slack


def _gain(rays: CameraRays, rays_key: tuple, lighting: Lighting) -> np.ndarray:
    """(H, W, 3) float32 255 * exposure * tint * vignetting."""
    def make():
        vignette = (1.0 / rays.norm) ** 0.8
        scale = 255.0 * lighting.exposure * np.asarray(lighting.tint, float)
        return cv2.multiply(cv2.merge([vignette] * 3), tuple(scale) + (0.0,))
    return lru(_GAINS, (rays_key, float(lighting.exposure), tuple(map(float, lighting.tint))), make, 8)


def _noise_tile(width: int, height: int) -> np.ndarray:
    make = lambda: np.random.default_rng(7).standard_normal((height + 64, width + 64, 3)).astype(np.float32)
    return lru(_NOISE, (width, height), make, 2)


def _put_rows(dst: np.ndarray, rows: np.ndarray, values: np.ndarray) -> None:
    """``dst[rows] = values`` for a C-contiguous (N, 3) float32 array (much faster than fancy setitem)."""
    void = np.dtype((np.void, 12))
    dst.view(void).ravel().put(rows, np.ascontiguousarray(values, np.float32).view(void).ravel())


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
    keep = (cc[:, 2] + radius > NEAR) & (cc[:, 2] - radius < GROUND_RANGE)
    keep &= np.all(cc @ rays.planes.T > -radius[:, None], 1)
    if not keep.any():
        return None
    polys, values = [], []
    for i in np.flatnonzero(keep):
        polys.append(cv2.convexHull(pts[i].astype(np.float32))[:, 0])
        values.append(1)
        if objects[i].category.startswith("vehicle"):
            polys.append(foot[i])
            values.append(2)
    polys = [np.pad(p, ((0, 8 - len(p)), (0, 0)), mode="edge") for p in polys]  # repeat the last vertex
    ground = np.concatenate([np.array(polys, float), np.zeros((len(polys), 8, 1))], 2) @ R_cg.T + t_cg  # (P, 8, 3)
    p = ground @ K.T
    with np.errstate(divide="ignore", invalid="ignore"):
        uv = p[..., :2] / p[..., 2:3]
    fast = (ground[..., 2].min(1) >= NEAR) & np.all(np.abs(uv) < GUARD, axis=(1, 2))
    scale = float(1 << SHIFT)
    mask = np.zeros((rows.stop - rows.start, W), np.uint8)
    offset = np.array([0.0, rows.start])
    for k, value in enumerate(values):
        q = uv[k] if fast[k] else project_clipped(ground[k], K, W, len(rays.vs))
        if len(q):
            cv2.fillConvexPoly(mask, np.rint((q - offset) * scale).astype(np.int32), value, cv2.LINE_8, SHIFT)
    shade = lighting.ambient / max(lighting.ambient + lighting.sun_strength * sun[2], 1e-6)
    return np.array([1.0, shade, 0.6 * shade], np.float32).take(mask)


def render_camera(ground: GroundMap, objects: list[RenderObject], K: np.ndarray, global_T_cam: np.ndarray,
                  width: int, height: int, lighting: Lighting, rng: np.random.Generator) -> RenderResult:
    """Render one pinhole camera image of the world with its depth map and object-id buffer."""
    K = np.asarray(K, float)
    global_T_cam = np.asarray(global_T_cam, float)
    cam_T_global = np.linalg.inv(global_T_cam)
    rays = camera_rays(K, width, height)
    R = global_T_cam[:3, :3]
    yaw = float(np.arctan2(R[1, 2], R[0, 2])) if np.hypot(R[0, 2], R[1, 2]) > 1e-6 else 0.0
    tilt = rot_z(-yaw) @ R
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
        ci, ri = col.astype(np.int32), row.astype(np.int32)  # truncation = rounding where it matters (>= 0)
        texel = ri * 1031  # texture anchored to the world, also outside the map
        texel += ci
        texel &= _TEX - 1
        np.clip(ci, 0, Wp - 1, out=ci)
        np.clip(ri, 0, Hp - 1, out=ri)
        ri *= Wp
        ri += ci
        key = np.left_shift(classes.ravel().take(ri), _TEX_BITS, dtype=np.int32)
        key |= texel
        rgb = _TEXTURE.take(key, axis=0)
        rgb *= bg.light
        shadow = _shadow_factor(objects, cam_T_global, K, rays, lighting, bg.rows)
        if shadow is not None:
            rgb *= cv2.merge([shadow, shadow, shadow])
        rgb += bg.haze
        color[bg.rows] = rgb

    # objects are z-tested among themselves only: anything above z = 0 is in front of the ground along its ray
    face_buf = np.full((height, width), -1, np.int32)
    faces = collect_faces(objects, global_T_cam, cam_T_global, K, rays, width, height, lighting) if objects else None
    covered_idx = {}
    if faces is not None:
        obj_invz = np.zeros_like(invz)
        covered_idx = rasterise(faces, rays, obj_invz, face_buf)
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
        table = pattern_colours(faces, cidx, face_buf)
        rgb = table.take(cidx, axis=0)
        fog = np.exp(depth * rays.norm * np.float32(-1.0 / FOG_DISTANCE))  # haze: mix towards the horizon colour
        horizon = tuple(float(x) for x in lighting.sky_horizon) + (0.0,)
        cv2.subtract(rgb, horizon, dst=rgb)
        cv2.multiply(rgb, cv2.merge([fog, fog, fog]), dst=rgb)
        cv2.add(rgb, horizon, dst=rgb)
        cv2.copyTo(rgb, (face_buf >= 0).view(np.uint8), color)

    color *= _gain(rays, (K.tobytes(), width, height), lighting)  # exposure, white balance, vignetting
    if lighting.noise_sigma > 0:
        tile = _noise_tile(width, height)
        oy, ox = rng.integers(0, 64, size=2)
        color += tile[oy:oy + height, ox:ox + width] * np.float32(lighting.noise_sigma)
    np.clip(color, 0, 255, out=color)
    image = color.astype(np.uint8)

    visible = {o.object_id: visible_idx.get(i, 0) for i, o in enumerate(objects)}
    covered = {o.object_id: covered_idx.get(i, 0) for i, o in enumerate(objects)}
    return RenderResult(image, depth, object_id, visible, covered)
