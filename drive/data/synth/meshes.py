"""Class-typical low-poly meshes for the synthetic camera renderer, built inside an annotation box.

Every mesh lives in the object frame of its box (x along the length / heading, y left, z up, origin at
the box centre) and stays inside ``[-l/2, l/2] x [-w/2, w/2] x [-h/2, h/2]``: the box is the ground
truth, the mesh only gives it a recognisable silhouette. Meshes are unions of closed convex solids
(lofts between two parallel convex rings), so back faces can be culled and every face is a planar
convex polygon of at most ``MAX_VERTS`` vertices.
"""
from __future__ import annotations

import zlib
from dataclasses import dataclass
from functools import lru_cache

import numpy as np

MAX_VERTS = 8
PLAIN, WINDOWS, STRIPES = 0, 1, 2  # per-face surface patterns, evaluated per pixel by the renderer
ALWAYS, NEAR_ONLY, FAR_ONLY = 0, 1, 2  # level of detail of a face: detail parts vs. cheap far-away proxies

GLASS = (0.10, 0.12, 0.15)
TYRE = (0.05, 0.05, 0.05)
CHROME = (0.35, 0.35, 0.37)
HEADLIGHT = (0.95, 0.93, 0.85)
TAILLIGHT = (0.75, 0.05, 0.04)
SKIN = ((0.87, 0.69, 0.56), (0.62, 0.45, 0.33), (0.40, 0.27, 0.19), (0.93, 0.78, 0.67))
TROUSERS = ((0.12, 0.13, 0.20), (0.20, 0.20, 0.20), (0.35, 0.30, 0.22), (0.08, 0.08, 0.08))


@dataclass(frozen=True)
class Mesh:
    polys: np.ndarray  # (F, MAX_VERTS, 3) face polygons in the object frame, padded by repeating the last vertex
    normals: np.ndarray  # (F, 3) outward unit normals
    colors: np.ndarray  # (F, 3) RGB 0..1 (unlit)
    pattern: np.ndarray  # (F,) int8: PLAIN, WINDOWS or STRIPES
    detail: np.ndarray  # (F,) int8 ALWAYS / NEAR_ONLY / FAR_ONLY (drawn when the object is only a few pixels big)
    overflow: float  # how far (m) the builder poked out of the box before clipping (0 when the design fits)


def _pad(faces: np.ndarray) -> np.ndarray:
    """(F, n, 3) -> (F, MAX_VERTS, 3) by repeating the last vertex (a convex polygon stays the same)."""
    return np.concatenate([faces, np.repeat(faces[:, -1:], MAX_VERTS - faces.shape[1], axis=1)], 1)


class _Builder:
    def __init__(self, rng: np.random.Generator):
        self.rng = rng
        self.polys: list[np.ndarray] = []  # (F_k, MAX_VERTS, 3) per solid / decal
        self.centres: list[np.ndarray] = []  # (F_k, 3): a point inside the solid, to orient normals outwards
        self.colors: list[np.ndarray] = []
        self.pattern: list[np.ndarray] = []
        self.detail: list[np.ndarray] = []

    def _add(self, polys, centre, colors, pattern, detail):
        self.polys.append(polys)
        self.centres.append(np.broadcast_to(centre, (len(polys), 3)))
        self.colors.append(colors)
        self.pattern.append(pattern)
        self.detail.append(np.full(len(polys), detail, np.int8))

    def solid(self, ring0, ring1, side, cap0=None, cap1=None, pattern=PLAIN, detail=ALWAYS, jitter=0.04):
        """Closed convex loft between two parallel rings of corresponding vertices (n, 3). ``side`` is one colour
        or one per side face (side k joins ring vertices k and k + 1)."""
        ring0, ring1 = np.asarray(ring0, float), np.asarray(ring1, float)
        n = len(ring0)
        nxt = np.roll(np.arange(n), -1)
        sides = _pad(np.stack([ring0, ring0[nxt], ring1[nxt], ring1], 1))
        caps = np.stack([ring0, ring1]) if n == MAX_VERTS else _pad(np.stack([ring0, ring1]))
        side = np.broadcast_to(np.asarray(side, float), (n, 3))
        colors = np.concatenate([[side[0] if cap0 is None else cap0], [side[0] if cap1 is None else cap1], side])
        colors = np.clip(colors * (1.0 + jitter * self.rng.standard_normal(n + 2))[:, None], 0, 1)
        pat = np.full(n + 2, pattern, np.int8)
        pat[:2] = PLAIN
        self._add(np.concatenate([caps, sides]), (ring0.mean(0) + ring1.mean(0)) / 2, colors, pat, detail)

    def decal(self, poly, color, outward, detail=NEAR_ONLY):
        """A single one-sided face (e.g. a lamp) lying just outside a solid; ``outward`` is its normal."""
        poly = np.asarray(poly, float)[None]
        self._add(_pad(poly), poly[0].mean(0) - np.asarray(outward, float), np.array([color], float),
                  np.array([PLAIN], np.int8), detail)

    def box(self, lo, hi, side, top=None, bottom=None, pattern=PLAIN, detail=ALWAYS, jitter=0.04):
        """Axis-aligned box; ``side`` is one colour or [right(-y), front(+x), left(+y), rear(-x)]."""
        (x0, y0, z0), (x1, y1, z1) = lo, hi
        ring0 = np.array([[x0, y0, z0], [x1, y0, z0], [x1, y1, z0], [x0, y1, z0]], float)
        ring1 = ring0.copy()
        ring1[:, 2] = z1
        self.solid(ring0, ring1, side, bottom, top, pattern, detail, jitter)

    def taper(self, z0, z1, bottom_rect, top_rect, side, top=None, detail=ALWAYS):
        """Frustum between two axis-aligned rectangles (x0, x1, y0, y1) at heights z0 and z1."""
        def ring(r, z):
            return [[r[0], r[2], z], [r[1], r[2], z], [r[1], r[3], z], [r[0], r[3], z]]
        self.solid(ring(bottom_rect, z0), ring(top_rect, z1), side, None, top, detail=detail)

    def column(self, cx, cy, z0, z1, r0, r1, side, top=None, n=8, detail=ALWAYS, jitter=0.04):
        """Octagonal (n-gonal) frustum around a vertical axis; radii may be (rx, ry) pairs."""
        a = np.arange(n) * 2 * np.pi / n + np.pi / n
        r0, r1 = np.broadcast_to(r0, 2), np.broadcast_to(r1, 2)
        ring0 = np.stack([cx + r0[0] * np.cos(a), cy + r0[1] * np.sin(a), np.full(n, z0)], 1)
        ring1 = np.stack([cx + r1[0] * np.cos(a), cy + r1[1] * np.sin(a), np.full(n, z1)], 1)
        self.solid(ring0, ring1, side, None, top, detail=detail, jitter=jitter)

    def wheel(self, cx, cz, r, y0, y1, color=TYRE, detail=NEAR_ONLY):
        """Octagonal disc with its axle along y."""
        a = np.arange(8) * np.pi / 4 + np.pi / 8
        x, z = cx + r * np.cos(a), cz + r * np.sin(a)
        self.solid(np.stack([x, np.full(8, y0), z], 1), np.stack([x, np.full(8, y1), z], 1), color, detail=detail,
                   jitter=0.1)

    def beam(self, p0, p1, thick, color, detail=ALWAYS):
        """Square-section bar from p0 to p1 (thickness ``thick``); its corners stay within thick/2 of the segment."""
        p0, p1 = np.asarray(p0, float), np.asarray(p1, float)
        u = (p1 - p0) / max(np.linalg.norm(p1 - p0), 1e-9)
        v = np.cross(u, [0.0, 0.0, 1.0]) if abs(u[2]) < 0.9 else np.cross(u, [1.0, 0.0, 0.0])
        v /= np.linalg.norm(v)
        w = np.cross(u, v)
        offs = np.array([[-1, -1], [1, -1], [1, 1], [-1, 1]]) * thick / 2
        ring = offs[:, :1] * v + offs[:, 1:] * w
        self.solid(p0 + ring, p1 + ring, color, detail=detail)

    def build(self, half: np.ndarray) -> Mesh:
        polys = np.concatenate(self.polys)
        overflow = float(np.max(np.abs(polys) - half, initial=0.0))
        polys = np.clip(polys, -half, half)  # safety net; the builders below are designed to fit
        normals = np.cross(polys, np.roll(polys, -1, axis=1)).sum(1)  # Newell's method
        normals /= np.maximum(np.linalg.norm(normals, axis=1, keepdims=True), 1e-12)
        outward = np.einsum("fk,fk->f", normals, polys.mean(1) - np.concatenate(self.centres))
        normals[outward < 0] *= -1
        return Mesh(polys, normals, np.concatenate(self.colors), np.concatenate(self.pattern),
                    np.concatenate(self.detail), overflow)


def _scaled(color, k):
    return tuple(np.clip(np.asarray(color) * k, 0, 1))


def _lights(b: _Builder, l, w, z0, z1, x=None):
    """Head and tail lamps as decals on planes x = +-x (just outside a body ending at +-(x - 0.01))."""
    x = l / 2 - 0.02 if x is None else x
    for y in (-1, 1):
        y0, y1 = y * (w / 2 - 0.12), y * (w / 2 - 0.32)
        for s, color in ((1, HEADLIGHT), (-1, TAILLIGHT)):
            b.decal([[s * x, y0, z0], [s * x, y1, z0], [s * x, y1, z1], [s * x, y0, z1]], color, (s, 0, 0))


def _wheels(b: _Builder, xs, r, w, h, width=0.22):
    for x in xs:
        for y in (-1, 1):
            b.wheel(x, -h / 2 + r, r, y * w / 2, y * (w / 2 - width))


def _car(b, l, w, h, c, v):
    style = v % 3  # sedan, hatchback, SUV / van
    r = min(0.36, 0.21 * h, 0.16 * l)
    z0, zb = -h / 2 + 0.45 * r, -h / 2 + (0.56 if style < 2 else 0.52) * h
    _wheels(b, [l / 2 - 1.45 * r - 0.1 * l * (style == 2), -l / 2 + 1.55 * r], r, w, h, min(0.22, 0.12 * w))
    b.box((-l / 2 + 0.03, -w / 2 + 0.04, z0), (l / 2 - 0.03, w / 2 - 0.04, zb), c)
    _lights(b, l, w, zb - 0.15, zb - 0.05)
    a, e = [(0.24, 0.18), (0.30, 0.03), (0.22, 0.03)][style]  # cabin front / rear offsets (fractions of l)
    t = [0.28, 0.20, 0.06][style]  # taper of the windscreen
    x0, x1 = -l / 2 + e * l, l / 2 - a * l
    y = w / 2 - 0.1
    top = (x0 + 0.5 * t * (x1 - x0) * (style == 0), x1 - t * (x1 - x0), -y + 0.08, y - 0.08)
    zr = h / 2 - 0.07 * h
    glass = _scaled(GLASS, 1.4)
    b.taper(zb, zr, (x0, x1, -y, y), top, [glass, glass, glass, glass], top=c)
    b.taper(zr, h / 2, top, (top[0] + 0.03, top[1] - 0.03, top[2] + 0.02, top[3] - 0.02), c)


def _truck(b, l, w, h, c, v):
    r = min(0.5, 0.17 * h)
    cab = min(2.3, 0.3 * l)
    _wheels(b, [l / 2 - cab / 2, -l / 2 + 3.4 * r, -l / 2 + 1.15 * r], r, w, h, 0.3)
    zc = -h / 2 + 0.75 * r
    b.box((l / 2 - cab, -w / 2 + 0.05, zc), (l / 2 - 0.01, w / 2 - 0.05, -h / 2 + 0.55 * h), c)
    zt = -h / 2 + (0.82 if v % 2 else 0.72) * h
    b.taper(-h / 2 + 0.55 * h, zt, (l / 2 - cab, l / 2 - 0.02, -w / 2 + 0.08, w / 2 - 0.08),
            (l / 2 - cab, l / 2 - 0.2, -w / 2 + 0.12, w / 2 - 0.12), GLASS, top=c)
    _lights(b, l, w, zc + 0.1, zc + 0.25, x=l / 2)
    b.box((-l / 2 + 0.1, -w / 2 + 0.4, -h / 2 + 0.6 * r), (l / 2 - cab, w / 2 - 0.4, -h / 2 + 1.8 * r), TYRE,
          detail=NEAR_ONLY)  # chassis
    cargo = [(0.85, 0.85, 0.83), (0.55, 0.57, 0.60), c, (0.70, 0.18, 0.12)][v % 4]
    b.box((-l / 2 + 0.01, -w / 2, -h / 2 + 1.8 * r), (l / 2 - cab - 0.15, w / 2, h / 2), cargo, top=_scaled(cargo, 0.9))


def _bus(b, l, w, h, c, v, bendy=False):
    r = min(0.5, 0.15 * h)
    roof = (0.88, 0.88, 0.86)
    e = l / 2 - 0.01
    segments = [(-e, -l / 2 + 0.45 * l), (-l / 2 + 0.51 * l, e)] if bendy else [(-e, e)]
    for x0, x1 in segments:
        b.box((x0, -w / 2, -h / 2 + 0.6 * r), (x1, w / 2, -h / 2 + 0.52 * h), c)
        b.box((x0 + 0.04, -w / 2 + 0.04, -h / 2 + 0.52 * h), (x1 - 0.04, w / 2 - 0.04, -h / 2 + 0.86 * h), GLASS)
        b.box((x0, -w / 2, -h / 2 + 0.86 * h), (x1, w / 2, h / 2), c, top=roof)
        _wheels(b, [x1 - 2.5 * r, x0 + 2.8 * r], r, w, h, 0.3)
    if bendy:
        b.box((-l / 2 + 0.45 * l, -w / 2 + 0.15, -h / 2 + 0.6 * r), (-l / 2 + 0.51 * l, w / 2 - 0.15, h / 2 - 0.1),
              (0.12, 0.12, 0.12))
    _lights(b, l, w, -h / 2 + 0.2 * h, -h / 2 + 0.28 * h, x=l / 2)


def _trailer(b, l, w, h, c, v):
    r = min(0.5, 0.13 * h)
    _wheels(b, [-l / 2 + 3.6 * r, -l / 2 + 1.3 * r], r, w, h, 0.3)
    base = -h / 2 + max(2.1 * r, 0.25 * h)
    b.box((-l / 2, -w / 2 + 0.3, -h / 2 + 1.5 * r), (l / 2 - 0.3, w / 2 - 0.3, base), TYRE, detail=NEAR_ONLY)
    b.box((-l / 2, -w / 2, base), (l / 2 - 0.6, w / 2, h / 2), c, top=_scaled(c, 0.9))
    b.beam((l / 2 - 0.6, 0, base + 0.1), (l / 2 - 0.05, 0, base + 0.1), 0.1, CHROME, detail=NEAR_ONLY)
    for y in (-1, 1):
        yl = y * (w / 2 - 0.5)  # landing gear
        b.box((0.3 * l - 0.05, yl - 0.05, -h / 2), (0.3 * l + 0.05, yl + 0.05, base), CHROME, detail=NEAR_ONLY)


def _construction(b, l, w, h, c, v):
    yellow = c if v % 2 else (0.92, 0.68, 0.08)
    r = min(0.55, 0.16 * h)
    ztop = -h / 2 + 2 * r
    for y in (-1, 1):  # tracks
        b.box((-l / 2 + 0.1, y * w / 2 - (y > 0) * 0.5, -h / 2), (l / 2 - 0.9, y * w / 2 + (y < 0) * 0.5, ztop), TYRE)
    zb = -h / 2 + 0.45 * h
    b.box((-l / 2, -w / 2 + 0.1, ztop), (l / 2 - 1.2, w / 2 - 0.1, zb), yellow)
    b.box((-l / 2 + 0.1 * l, -w / 2 + 0.2, zb), (-l / 2 + 0.1 * l + 1.6, 0.25 * w, -h / 2 + 0.85 * h),
          [yellow, GLASS, GLASS, yellow], top=yellow)
    t = min(0.35, 0.1 * w)
    knee = (l / 2 - 0.25 * l, 0.25 * w, h / 2 - t / 2)
    b.beam((-l / 2 + 0.1 * l + 1.7, 0.25 * w, zb + t / 2), knee, t, yellow)
    b.beam(knee, (l / 2 - t / 2 - 0.1, 0.25 * w, -h / 2 + 0.35 * h), t, yellow)
    b.box((l / 2 - 0.6, 0.25 * w - 0.45, -h / 2), (l / 2, 0.25 * w + 0.45, -h / 2 + 0.35 * h), CHROME)


def _person(b, x, y, z0, z1, w_max, l_max, c, v, phase, kind="adult", seated=False):
    """Person standing on z0 whose head reaches z1, centred at (x, y), within a w_max x l_max footprint."""
    h = z1 - z0
    skin, legs = SKIN[v % 4], TROUSERS[(v // 4) % 4]
    shirt, helmet = c, None
    if kind == "construction_worker":
        shirt, helmet = ((1.0, 0.45, 0.05) if v % 2 else (0.85, 0.95, 0.1)), (0.95, 0.85, 0.1)
    elif kind == "police_officer":
        shirt, legs, helmet = (0.08, 0.12, 0.30), (0.06, 0.08, 0.18), (0.05, 0.05, 0.08)
    tw, td = min(0.4, 0.6 * w_max), min(0.24, 0.42 * l_max)
    lt = min(0.15, tw / 2 - 0.01)
    hip, sho = z0 + 0.47 * h, z0 + 0.82 * h
    if seated:  # rider: thighs forward, shins down
        b.box((x - td / 2, y - tw / 2, hip - 0.02), (x + td / 2 + 0.2 * h, y + tw / 2, hip + 0.08), legs)
    else:
        leg = hip - z0
        amp = min(0.45, np.arcsin(np.clip((l_max / 2 - lt) / leg, 0, 1)))
        for side, sgn in ((-1, 1), (1, -1)):
            a = sgn * amp * np.sin(phase)
            foot = np.array([x + leg * np.sin(a), y + side * tw / 4, hip - leg * np.cos(a) + lt / 2 * abs(np.sin(a))])
            b.beam((x, y + side * tw / 4, hip), foot, lt, legs, detail=NEAR_ONLY)
        b.box((x - lt / 2, y - tw / 2 + 0.02, z0), (x + lt / 2, y + tw / 2 - 0.02, hip), legs, detail=FAR_ONLY)
    b.box((x - td / 2, y - tw / 2, hip), (x + td / 2, y + tw / 2, sho), shirt)
    at = min(0.09, (w_max - tw) / 2 - 0.005)
    if at > 0.02:
        arm = 0.33 * h
        for side in (-1, 1):
            a = side * min(0.35, np.arcsin(np.clip((l_max / 2 - at) / arm, 0, 1))) * np.sin(phase) * (not seated)
            ya = y + side * (tw / 2 + at / 2)
            tilt = 0.9 if seated else 0.0
            b.beam((x, ya, sho - at / 2), (x + arm * np.sin(a + tilt), ya, sho - at / 2 - arm * np.cos(a + tilt)), at,
                   shirt, detail=NEAR_ONLY)
    hr = min(0.07 * h, 0.5 * (z1 - sho) - 0.01, tw / 2, td / 2 + 0.02)
    neck = sho + 0.3 * (z1 - sho)
    b.column(x, y, sho, neck, (0.5 * hr, 0.45 * hr), (0.9 * hr, 0.8 * hr), skin, detail=NEAR_ONLY)
    b.column(x, y, neck, z1, (0.9 * hr, 0.8 * hr), (0.75 * hr, 0.65 * hr), skin, top=helmet or (0.15, 0.1, 0.06))


def _pedestrian(b, l, w, h, c, v, phase, kind):
    _person(b, 0.0, 0.0, -h / 2, h / 2, w, l, c, v, phase, kind)


def _cycle(b, l, w, h, c, v, phase, rider, motor):
    r = min((0.34 if motor else 0.33) * 1.0, 0.28 * l, 0.45 * h)
    t = min(0.14 if motor else 0.05, w / 2)
    for x in (l / 2 - r, -l / 2 + r):
        b.wheel(x, -h / 2 + r, r, -t / 2, t / 2)
    axle = -h / 2 + r
    seat = (-0.15 * l, 0.0, min(axle + 1.55 * r, h / 2 - 0.05))
    bar = (l / 2 - r - 0.08, 0.0, min(axle + 1.8 * r, h / 2 - 0.05))
    ft = min(0.05, w / 4)
    if motor:
        b.box((-0.25 * l, -t, axle - 0.2 * r), (0.2 * l, t, axle + 0.8 * r), (0.15, 0.15, 0.16))
        b.box((0.0, -t, axle + 0.8 * r), (0.22 * l, t, axle + 1.3 * r), c)
        b.box((-0.35 * l, -t, axle + 0.8 * r), (0.0, t, seat[2]), (0.05, 0.05, 0.05), detail=NEAR_ONLY)
        b.box((bar[0] - 0.1, -t, axle + 0.8 * r), (bar[0] + 0.05, t, bar[2] - 0.05), c)
        b.box((bar[0] - 0.06, -w / 2 + 0.03, bar[2] - 0.05), (bar[0], w / 2 - 0.03, bar[2]), CHROME, detail=NEAR_ONLY)
    else:
        crank = (0.0, 0.0, axle)
        b.beam((-l / 2 + r, 0, axle), crank, ft, c)
        b.beam(crank, (seat[0], 0, seat[2] - 0.05), ft, c)
        b.beam(crank, (bar[0] - 0.05, 0, bar[2] - 0.1), ft, c)
        b.beam((seat[0], 0, seat[2] - 0.1), (bar[0] - 0.05, 0, bar[2] - 0.1), ft, c)
        b.beam((bar[0] - 0.05, 0, bar[2] - 0.1), (l / 2 - r, 0, axle), ft, c, detail=NEAR_ONLY)
        b.box((bar[0] - 0.04, -min(0.3, w / 2 - 0.01), bar[2] - 0.04), (bar[0], min(0.3, w / 2 - 0.01), bar[2]),
              CHROME, detail=NEAR_ONLY)
    if rider:
        z1 = h / 2
        hip = seat[2]
        if z1 - hip > 0.3:
            stand = (z1 - hip) / 0.53 * 0.47  # legs hang below the seat, so the person's feet are at hip - stand
            _person(b, seat[0], 0.0, hip - stand, z1, w, min(l, 0.6), c if motor else _scaled(c, 0.8),
                    v, phase, seated=True)
            for side in (-1, 1):
                y = side * min(0.1, w / 2 - 0.04)
                b.beam((seat[0] + 0.1, y, hip), (seat[0] + 0.25, y, max(axle, -h / 2 + 0.06)), 0.1,
                       TROUSERS[(v // 4) % 4], detail=NEAR_ONLY)


def _cone(b, l, w, h, c, v):
    orange, white = (1.0, 0.35, 0.05), (0.95, 0.95, 0.95)
    b.box((-l / 2, -w / 2, -h / 2), (l / 2, w / 2, -h / 2 + 0.05 * h), _scaled(orange, 0.7))
    r0 = np.array([0.42 * l, 0.42 * w])
    z = -h / 2 + 0.05 * h + np.array([0.0, 0.45, 0.7, 1.0]) * 0.95 * h
    radius = [r0 * (1 - 0.8 * k) for k in (0.0, 0.45, 0.7, 1.0)]
    for i, color in enumerate((orange, white, orange)):
        b.column(0, 0, z[i], z[i + 1], radius[i], radius[i + 1], color, detail=NEAR_ONLY)
    b.column(0, 0, z[0], z[3], radius[0], radius[3], orange, n=4, detail=FAR_ONLY)


def _barrier(b, l, w, h, c, v):
    along_y = w > l
    L, T = (w, l) if along_y else (l, w)
    def box(x0, y0, z0, x1, y1, z1, color, **kw):
        if along_y:
            b.box((y0, x0, z0), (y1, x1, z1), color, **kw)
        else:
            b.box((x0, y0, z0), (x1, y1, z1), color, **kw)
    for s in (-1, 1):
        box(s * L / 2 - (s > 0) * 0.12, -T / 2, -h / 2, s * L / 2 + (s < 0) * 0.12, T / 2, -h / 2 + 0.08, TYRE)
        box(s * (L / 2 - 0.1) - 0.04, -0.04, -h / 2, s * (L / 2 - 0.1) + 0.04, 0.04, h / 2, (0.9, 0.9, 0.9))
    box(-L / 2, -min(0.05, T / 2), -h / 2 + 0.45 * h, L / 2, min(0.05, T / 2), h / 2 - 0.05 * h, (0.95, 0.95, 0.95),
        pattern=STRIPES)


def _building(b, l, w, h, c, v):
    roof = _scaled(c, 0.7)
    b.box((-l / 2, -w / 2, -h / 2), (l / 2, w / 2, h / 2), c, top=roof, pattern=WINDOWS, jitter=0.06)


def _tree(b, l, w, h, c, v):
    bark = (0.30, 0.22, 0.14)
    t = min(0.35, 0.12 * min(l, w))
    b.box((-t / 2, -t / 2, -h / 2), (t / 2, t / 2, -h / 2 + 0.5 * h), bark)
    palette = ((0.16, 0.38, 0.12), (0.22, 0.42, 0.15), (0.12, 0.30, 0.10), (0.30, 0.40, 0.14))
    leaf = c if c[1] > max(c[0], c[2]) else palette[v % 4]
    rx, ry = l / 2, w / 2
    zs = -h / 2 + np.array([0.3, 0.62, 1.0]) * h
    b.column(0, 0, zs[0], zs[1], (0.45 * rx, 0.45 * ry), (rx, ry), leaf, jitter=0.12)
    b.column(0, 0, zs[1], zs[2], (rx, ry), (0.25 * rx, 0.25 * ry), _scaled(leaf, 1.1), jitter=0.12)


def _pole(b, l, w, h, c, v):
    grey = ((0.45, 0.45, 0.47), (0.30, 0.31, 0.33), (0.55, 0.55, 0.52), (0.15, 0.22, 0.17))[v % 4]
    t = min(l, w, 0.25)
    b.box((-t / 2, -t / 2, -h / 2), (t / 2, t / 2, h / 2 - 0.1), grey)
    b.box((-l / 2, -w / 2, h / 2 - 0.1), (l / 2, w / 2, h / 2), _scaled(grey, 0.8))


@lru_cache(maxsize=4096)
def _cached_mesh(category: str, lwh: tuple, color: tuple, variant: int, with_rider: bool, phase_q: int) -> Mesh:
    l, w, h = lwh
    c = color
    phase = phase_q * 2 * np.pi / 24
    b = _Builder(np.random.default_rng(zlib.crc32(category.encode()) * 131 + variant))
    kind = category.split(".")[-1]
    if category == "vehicle.car":
        _car(b, l, w, h, c, variant)
    elif category == "vehicle.truck":
        _truck(b, l, w, h, c, variant)
    elif category.startswith("vehicle.bus"):
        _bus(b, l, w, h, c, variant, bendy=kind == "bendy")
    elif category == "vehicle.trailer":
        _trailer(b, l, w, h, c, variant)
    elif category == "vehicle.construction":
        _construction(b, l, w, h, c, variant)
    elif category in ("vehicle.motorcycle", "vehicle.bicycle"):
        _cycle(b, l, w, h, c, variant, phase, with_rider, motor=kind == "motorcycle")
    elif category.startswith("human.pedestrian"):
        _pedestrian(b, l, w, h, c, variant, phase, kind)
    elif category == "movable_object.trafficcone":
        _cone(b, l, w, h, c, variant)
    elif category == "movable_object.barrier":
        _barrier(b, l, w, h, c, variant)
    elif category == "scenery.building":
        _building(b, l, w, h, c, variant)
    elif category == "scenery.tree":
        _tree(b, l, w, h, c, variant)
    elif category == "scenery.pole":
        _pole(b, l, w, h, c, variant)
    else:  # anything else: its box
        b.box((-l / 2, -w / 2, -h / 2), (l / 2, w / 2, h / 2), c)
    return b.build(np.array([l, w, h]) / 2)


def object_mesh(category: str, size_lwh, color, variant: int = 0, with_rider: bool = False, phase: float = 0.0) -> Mesh:
    """The mesh of one object in its box frame (cached; sizes are rounded to the millimetre)."""
    lwh = tuple(round(float(s), 3) for s in size_lwh)
    rgb = tuple(round(float(x), 3) for x in color)
    phase_q = int(round(phase / (2 * np.pi) * 24)) % 24
    return _cached_mesh(category, lwh, rgb, int(variant), bool(with_rider), phase_q)
