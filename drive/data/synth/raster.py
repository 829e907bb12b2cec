"""Polygon rasteriser of the camera renderer: near-plane clipping, projection and a z-buffer per face.

Every face is a planar convex polygon (see ``meshes``). Faces crossing the near plane ``z = NEAR`` of the
camera are clipped in 3D (Sutherland-Hodgman) before projection, so nothing beside or behind the camera
smears across the image. Each face is filled with OpenCV (vertices rounded to the pixel grid, edges
inclusive) and z-tested with the exact inverse depth of its plane, which is affine in pixel coordinates.
Pixel ``(row i, col j)`` has its centre at ``(u, v) = (j, i)`` (OpenCV convention).
"""
from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass

import cv2
import numpy as np

from drive.data.synth.meshes import FAR_ONLY, NEAR_ONLY, PLAIN, STRIPES, WINDOWS, object_mesh

NEAR = 0.1  # near plane (m, camera z)
FAR = 300.0  # objects whose bounding sphere starts beyond this are not drawn
LOD_PIXELS = 10.0  # objects whose bounding sphere radius is below this (px) are drawn with far-away proxies
SHIFT = 8  # fixed-point bits of polygon vertices handed to OpenCV
GUARD = 2e4  # projected polygons reaching beyond this many pixels are clipped in 2D first
_STRIPE_RED = np.array([0.78, 0.08, 0.07], np.float32)
_GLASS = np.array([0.10, 0.13, 0.17], np.float32)


def lru(cache: OrderedDict, key, make, size: int):
    """Tiny LRU memo: ``cache[key]``, computing it with ``make()`` on a miss."""
    if key in cache:
        cache.move_to_end(key)
        return cache[key]
    value = cache[key] = make()
    if len(cache) > size:
        cache.popitem(last=False)
    return value


_RAYS: OrderedDict = OrderedDict()


@dataclass
class CameraRays:
    """Per-pixel camera rays K^-1 (u, v, 1) of one intrinsic / image size."""
    x: np.ndarray  # (H, W) float32
    y: np.ndarray  # (H, W) float32
    norm: np.ndarray  # (H, W) float32 length of (x, y, 1)
    us: np.ndarray  # (W,) float32 pixel column coordinates
    vs: np.ndarray  # (H,) float32
    K_inv: np.ndarray  # (3, 3)
    planes: np.ndarray  # (4, 3) inward normals of the frustum side planes (through the camera centre)


def camera_rays(K: np.ndarray, width: int, height: int) -> CameraRays:
    """Rays of the pixel centres (cached per intrinsics and image size)."""
    def make():
        K_inv = np.linalg.inv(K)
        us, vs = np.arange(width, dtype=np.float64), np.arange(height, dtype=np.float64)
        uu, vv = np.meshgrid(us, vs)
        x = K_inv[0, 0] * uu + K_inv[0, 1] * vv + K_inv[0, 2]
        y = K_inv[1, 1] * vv + K_inv[1, 2]
        w, h = width - 0.5, height - 0.5
        c = np.array([[-0.5, -0.5, 1], [w, -0.5, 1], [w, h, 1], [-0.5, h, 1]]) @ K_inv.T  # image corner rays
        planes = np.cross(c, np.roll(c, -1, axis=0))
        planes *= np.sign(planes @ c.mean(0))[:, None] / np.linalg.norm(planes, axis=1, keepdims=True)
        return CameraRays(x.astype(np.float32), y.astype(np.float32), np.sqrt(x * x + y * y + 1).astype(np.float32),
                          us.astype(np.float32), vs.astype(np.float32), K_inv, planes)
    return lru(_RAYS, (K.tobytes(), width, height), make, 8)


def clip_polygon(poly: np.ndarray, dist: np.ndarray) -> np.ndarray:
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


def project_clipped(poly_cam: np.ndarray, K: np.ndarray, width: int, height: int) -> np.ndarray:
    """Near-plane clip in 3D, project, then clip to a guard band in 2D. Returns (n, 2) pixels, n may be 0."""
    poly = clip_polygon(poly_cam, poly_cam[:, 2] - NEAR)
    if len(poly) < 3:
        return np.zeros((0, 2))
    p = poly @ K.T
    uv = p[:, :2] / p[:, 2:3]
    for axis, lo, hi in ((0, -GUARD, width + GUARD), (1, -GUARD, height + GUARD)):
        for dist in (lambda q: q[:, axis] - lo, lambda q: hi - q[:, axis]):
            if len(uv) >= 3:
                uv = clip_polygon(uv, dist(uv))
    return uv if len(uv) >= 3 else np.zeros((0, 2))


def rot_z(yaw: float) -> np.ndarray:
    c, s = np.cos(yaw), np.sin(yaw)
    return np.array([[c, -s, 0.0], [s, c, 0.0], [0.0, 0.0, 1.0]])


@dataclass
class Faces:
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


def collect_faces(objects, global_T_cam, cam_T_global, K, rays, width, height, lighting) -> Faces | None:
    """Cull objects by bounding sphere against the frustum, transform their meshes, drop back faces, light the
    rest (Lambert), clip / project them and prepare everything the per-face loop of ``rasterise`` needs."""
    R_cg, t_cg = cam_T_global[:3, :3], cam_T_global[:3, 3]
    centers = np.array([o.center for o in objects], float).reshape(-1, 3)
    radii = 0.5 * np.linalg.norm(np.array([o.size_lwh for o in objects], float).reshape(-1, 3), axis=1)
    cc = centers @ R_cg.T + t_cg
    keep = (cc[:, 2] + radii > NEAR) & (cc[:, 2] - radii < FAR) & np.all(cc @ rays.planes.T > -radii[:, None], axis=1)
    vis = np.flatnonzero(keep)
    if not len(vis):
        return None
    meshes = [object_mesh(objects[i].category, objects[i].size_lwh, objects[i].color, objects[i].variant,
                          objects[i].with_rider, objects[i].phase) for i in vis]
    counts = np.array([len(m.polys) for m in meshes])
    local = np.repeat(np.arange(len(vis)), counts)  # face -> index into vis
    polys = np.concatenate([m.polys for m in meshes])
    normals = np.concatenate([m.normals for m in meshes])
    detail = np.concatenate([m.detail for m in meshes])
    small = (cc[vis, 2] > radii[vis]) & (K[0, 0] * radii[vis] < LOD_PIXELS * cc[vis, 2])
    use = np.flatnonzero(np.where(small[local], detail != NEAR_ONLY, detail != FAR_ONLY))
    local, polys, normals = local[use], polys[use], normals[use]
    yaw = np.array([objects[i].yaw for i in vis], float)
    c, s = np.cos(yaw)[local], np.sin(yaw)[local]
    center = centers[vis][local]
    # object frame -> global (rotation about z, then the box centre) -> camera
    glob = np.stack([c[:, None] * polys[..., 0] - s[:, None] * polys[..., 1],
                     s[:, None] * polys[..., 0] + c[:, None] * polys[..., 1], polys[..., 2]], -1) + center[:, None]
    n_glob = np.stack([c * normals[:, 0] - s * normals[:, 1], s * normals[:, 0] + c * normals[:, 1], normals[:, 2]], 1)
    poly_cam = glob @ R_cg.T + t_cg
    n_cam = n_glob @ R_cg.T
    front = np.flatnonzero((np.einsum("fk,fk->f", n_cam, poly_cam[:, 0]) < -1e-9) & (poly_cam[..., 2].max(1) > NEAR))
    if not len(front):
        return None
    use, local, polys, n_cam, n_glob = use[front], local[front], poly_cam[front], n_cam[front], n_glob[front]
    anchor = glob[front, 0]
    colors = np.concatenate([m.colors for m in meshes])[use]
    pattern = np.concatenate([m.pattern for m in meshes])[use]
    obj = vis[local]
    sun = np.asarray(lighting.sun_dir, float)
    sun_w = lighting.sun_strength * np.clip(sun[2] * 5, 0, 1)  # the sun fades out as it sets
    light = lighting.ambient * (0.8 + 0.2 * n_glob[:, 2]) + sun_w * np.maximum(n_glob @ sun, 0)
    rgb = colors * light[:, None]
    z = polys[..., 2]
    zmin, zmax = z.min(1), z.max(1)
    coef = (n_cam @ rays.K_inv) / np.einsum("fk,fk->f", n_cam, polys[:, 0])[:, None]
    iz_range = np.stack([1.0 / zmax, 1.0 / np.maximum(zmin, NEAR)], 1)
    p = polys @ K.T
    with np.errstate(divide="ignore", invalid="ignore"):
        uv = p[..., :2] / p[..., 2:3]
        slow = (zmin < NEAR) | ~np.all(np.abs(uv) < GUARD, axis=(1, 2))
        lo, hi = uv.min(1), uv.max(1)
    clipped = {}
    for f in np.flatnonzero(slow):
        clipped[f] = q = project_clipped(polys[f], K, width, height)
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
    scale = float(1 << SHIFT)
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
    plane = coef[idx]
    pattern_M = np.stack([s0[:, None] * plane + (tangent @ R) @ rays.K_inv, o[2] * plane + R[2] @ rays.K_inv, plane], 1)
    return Faces(pts, bbox, obj_bbox, np.append(starts, len(idx)), plane.astype(np.float32),
                 iz_range[idx].astype(np.float32), obj, rgb[idx].astype(np.float32), light[idx].astype(np.float32),
                 pattern[idx], pattern_M)


def rasterise(faces: Faces, rays: CameraRays, invz: np.ndarray, face_buf: np.ndarray) -> dict:
    """Z-buffered fill of every face; returns object index -> covered pixel count."""
    covered = {}
    bbox, coef, iz_range = faces.bbox.tolist(), faces.coef.tolist(), faces.iz_range.tolist()
    us, vs = rays.us, rays.vs
    for g, (ox0, oy0, ox1, oy1) in enumerate(faces.obj_bbox.tolist()):
        cover = np.zeros((oy1 - oy0 + 1, ox1 - ox0 + 1), np.uint16)
        for k, f in enumerate(range(faces.starts[g], faces.starts[g + 1]), start=1):
            x0, y0, x1, y1 = bbox[f]
            cv2.fillConvexPoly(cover, faces.pts[f], k, cv2.LINE_8, SHIFT)
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


def pattern_colours(faces: Faces, cidx: np.ndarray, face_buf: np.ndarray) -> np.ndarray:
    """Redirect pixels of patterned faces (building windows, barrier stripes) to extra colour rows appended after
    the face colours in ``cidx``; returns the colour table (F + 4P + 1, 3), last row for 'no object'."""
    F = len(faces.obj)
    pat = np.flatnonzero(faces.pattern != PLAIN)
    extra = np.zeros((4 * len(pat), 3), np.float32)
    for p, f in enumerate(pat.tolist()):
        kind = int(faces.pattern[f])
        tile, texel = _TILES[kind]
        if kind == WINDOWS:
            glint = 1.0 + np.array([0.2, 0.7, 1.2, 2.0], np.float32)[:, None]  # sky reflections differ per window
            extra[4 * p:4 * p + 4] = _GLASS * glint * faces.light[f]
        else:
            extra[4 * p:4 * p + 4] = _STRIPE_RED * faces.light[f]
        x0, y0, x1, y1 = faces.bbox[f].tolist()
        shift = np.array([[1, 0, x0], [0, 1, y0], [0, 0, 1.0]])  # bbox-local pixel -> image pixel
        M = np.diag([1.0 / texel, 1.0 / texel, 1.0]) @ faces.pattern_M[f] @ shift
        level = cv2.warpPerspective(tile, M, (x1 - x0 + 1, y1 - y0 + 1), flags=cv2.INTER_NEAREST | cv2.WARP_INVERSE_MAP,
                                    borderMode=cv2.BORDER_WRAP)
        sel = face_buf[y0:y1 + 1, x0:x1 + 1] == f
        sel &= level > 0
        np.copyto(cidx[y0:y1 + 1, x0:x1 + 1], level.astype(np.int32) + (F + 4 * p - 1), where=sel)
    return np.concatenate([faces.rgb, extra, np.zeros((1, 3), np.float32)])
