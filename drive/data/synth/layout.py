"""Road layouts of the synthetic world: lane graph, walkways, crossings, ground raster, scenery.

Four kinds: a multi-lane straight road, a curve, a 4-way intersection and a T-junction. Right-hand
traffic. The drivable area is rasterised at 0.1 m/px in global coordinates with the devkit
``MapMask`` pixel convention (col = x / res, row = H - y / res).
"""
from __future__ import annotations

from dataclasses import dataclass, field

import cv2
import numpy as np
from shapely.geometry import LineString

from .paths import Path, bezier, resample
from .render import CROSSWALK, GRASS, LANE_WHITE, LANE_YELLOW, ROAD, SHOULDER, SIDEWALK, GroundMap

LAYOUTS = ("intersection", "straight", "t_junction", "curve")
LANE_W = 3.5
SHOULDER_W = 2.5
SIDEWALK_W = 4.0
RES = 0.1
STOP_BACK = 3.5  # stop line this far before the end of an incoming lane (crosswalk lies beyond)


@dataclass
class Lane:
    id: int
    path: Path
    kind: str  # 'road' | 'in' | 'out' | 'connector'
    road: int  # index of the road (arm) it belongs to; -1 for connectors
    index: int  # 0 = next to the centre line
    left: int | None = None  # same-direction neighbour ids
    right: int | None = None
    successors: list[int] = field(default_factory=list)
    turn: str = "straight"


@dataclass
class Road:
    """One carriageway (a whole road, or a junction arm pointing away from the junction)."""

    centre: Path
    n_lanes: int  # per direction
    is_arm: bool

    @property
    def half_width(self) -> float:
        return self.n_lanes * LANE_W


@dataclass
class Scenery:
    category: str
    center: np.ndarray
    yaw: float
    size_lwh: np.ndarray
    color: np.ndarray
    variant: int


@dataclass
class Layout:
    kind: str
    roads: list[Road]
    lanes: list[Lane]
    sidewalks: list[Path]  # pedestrian walking lines (one per road side)
    crossings: list[Path]  # crosswalks (from one sidewalk line to the other)
    parking: list[Path]  # shoulder centre lines where vehicles may park
    ground: GroundMap
    junction_center: np.ndarray | None
    junction_radius: float
    conflicts: dict[int, set[int]]  # connector id -> conflicting connector ids
    scenery: list[Scenery]
    extent: float  # map side in metres

    def entry_lanes(self) -> list[Lane]:
        return [ln for ln in self.lanes if ln.kind in ("road", "in")]

    @property
    def drivable(self) -> np.ndarray:
        g = self.ground.classes
        return (g == ROAD) | (g == SHOULDER) | (g == LANE_WHITE) | (g == LANE_YELLOW) | (g == CROSSWALK)


def _road_lanes(road: Road, road_id: int, lanes: list[Lane], arm: bool) -> None:
    """Lanes of one road: 'out'/'road' lanes drive along the centre line on its right, 'in' lanes against it."""
    fwd, bwd = [], []
    for i in range(road.n_lanes):
        fwd.append(Lane(len(lanes), road.centre.offset(-(i + 0.5) * LANE_W), "out" if arm else "road", road_id, i))
        lanes.append(fwd[-1])
    for i in range(road.n_lanes):
        path = road.centre.offset((i + 0.5) * LANE_W).reversed()
        bwd.append(Lane(len(lanes), path, "in" if arm else "road", road_id, i))
        lanes.append(bwd[-1])
    for group in (fwd, bwd):
        for i, ln in enumerate(group):
            ln.left = group[i - 1].id if i > 0 else None
            ln.right = group[i + 1].id if i + 1 < len(group) else None


def _turn(h_in: float, h_out: float) -> str:
    d = (h_out - h_in + np.pi) % (2 * np.pi) - np.pi
    return "straight" if abs(d) < np.radians(35) else ("left" if d > 0 else "right")


def _connectors(layout_lanes: list[Lane], roads: list[Road]) -> dict[int, set[int]]:
    ins = [ln for ln in layout_lanes if ln.kind == "in"]
    outs = [ln for ln in layout_lanes if ln.kind == "out"]
    conns = []
    for a in ins:
        n = roads[a.road].n_lanes
        p0, h0 = a.path.pose(a.path.length)
        for b in outs:
            if b.road == a.road:
                continue
            p1, h1 = b.path.pose(0.0)
            turn = _turn(float(h0), float(h1))
            ok = (turn == "straight" and a.index == b.index) or (
                turn == "left" and a.index == 0 and b.index == 0) or (
                turn == "right" and a.index == n - 1 and b.index == n - 1)
            if not ok:
                continue
            t0 = np.array([np.cos(h0), np.sin(h0)])
            t1 = np.array([np.cos(h1), np.sin(h1)])
            c = Lane(len(layout_lanes), Path(resample(bezier(p0, t0, p1, t1), 0.5)), "connector", -1, a.index,
                     successors=[b.id], turn=turn)
            layout_lanes.append(c)
            a.successors.append(c.id)
            conns.append(c)
    conflicts: dict[int, set[int]] = {c.id: set() for c in conns}
    geoms = {c.id: LineString(c.path.points) for c in conns}
    for i, c in enumerate(conns):
        for d in conns[i + 1:]:
            same_start = c.path.points[0].tolist() == d.path.points[0].tolist()
            if same_start:
                continue
            if geoms[c.id].distance(geoms[d.id]) < 2.5:
                conflicts[c.id].add(d.id)
                conflicts[d.id].add(c.id)
    return conflicts


def _to_px(xy: np.ndarray, H: int) -> np.ndarray:
    xy = np.asarray(xy)
    return np.stack([xy[:, 0] / RES, H - xy[:, 1] / RES], 1).round().astype(np.int32)


def _fill(img: np.ndarray, geom, value: int) -> None:
    polys = [geom] if geom.geom_type == "Polygon" else list(geom.geoms)
    for p in polys:
        cv2.fillPoly(img, [_to_px(np.asarray(p.exterior.coords), img.shape[0])], int(value))


def _line(img: np.ndarray, path: Path, value: int, width_m: float = 0.15, dash=None) -> None:
    th = max(1, int(round(width_m / RES)))
    if dash is None:
        cv2.polylines(img, [_to_px(path.points, img.shape[0])], False, int(value), th)
        return
    on, off = dash
    s = 0.0
    while s < path.length:
        seg = path.sub(s, min(s + on, path.length))
        cv2.polylines(img, [_to_px(seg.points, img.shape[0])], False, int(value), th)
        s += on + off


def _paint(layout_roads, lanes, crossings, jc, jr, extent) -> np.ndarray:
    H = int(round(extent / RES))
    img = np.full((H, H), GRASS, np.uint8)
    def buf(road, w):
        return LineString(road.centre.points).buffer(w, cap_style=2, join_style=2)
    for layer, width in ((SIDEWALK, lambda r: r.half_width + SHOULDER_W + SIDEWALK_W),
                         (SHOULDER, lambda r: r.half_width + SHOULDER_W), (ROAD, lambda r: r.half_width)):
        for road in layout_roads:
            _fill(img, buf(road, width(road)), layer)
        if jc is not None:
            r = jr + (width(layout_roads[0]) - layout_roads[0].half_width)
            sq = np.array([[-1, -1], [1, -1], [1, 1], [-1, 1]]) * r + jc
            cv2.fillPoly(img, [_to_px(sq, H)], int(layer if layer != SIDEWALK else SIDEWALK))
    for ln in lanes:
        if ln.kind == "connector":
            _fill(img, LineString(ln.path.points).buffer(LANE_W / 2 + 0.3), ROAD)
    for road in layout_roads:
        c = road.centre
        _line(img, c.offset(0.15), LANE_YELLOW)
        _line(img, c.offset(-0.15), LANE_YELLOW)
        for side in (-1, 1):
            _line(img, c.offset(side * road.half_width), LANE_WHITE)
            for i in range(1, road.n_lanes):
                _line(img, c.offset(side * i * LANE_W), LANE_WHITE, dash=(3.0, 6.0))
    for ln in lanes:  # stop lines
        if ln.kind == "in":
            p, h = ln.path.pose(ln.path.length - STOP_BACK)
            nrm = np.array([-np.sin(h), np.cos(h)])
            ends = np.stack([p - nrm * LANE_W / 2, p + nrm * LANE_W / 2])
            cv2.polylines(img, [_to_px(ends, H)], False, LANE_WHITE, 4)
    for cw in crossings:  # zebra stripes: bars parallel to traffic, across the crossing line
        h = float(cw.heading(cw.length / 2))
        along = np.array([np.cos(h), np.sin(h)])
        nrm = np.array([-along[1], along[0]])
        for s in np.arange(1.0, cw.length - 1.0, 1.0):
            p = cw.xy(s)
            quad = np.stack([p - along * 0.25 - nrm * 1.5, p + along * 0.25 - nrm * 1.5,
                             p + along * 0.25 + nrm * 1.5, p - along * 0.25 + nrm * 1.5])
            inside = img[_to_px(p[None], H)[0, 1], _to_px(p[None], H)[0, 0]]
            if inside in (ROAD, LANE_WHITE, LANE_YELLOW, SHOULDER, CROSSWALK):
                cv2.fillPoly(img, [_to_px(quad, H)], int(CROSSWALK))
    return img


def _scenery(rng, roads, ground: np.ndarray, extent: float) -> list[Scenery]:
    items: list[Scenery] = []
    H = ground.shape[0]
    free = ground == GRASS

    def is_free(center, yaw, l, w, margin=1.0):
        c, s = np.cos(yaw), np.sin(yaw)
        pts = []
        for a in np.linspace(-0.5, 0.5, 5):
            for b in np.linspace(-0.5, 0.5, 5):
                pts.append(center + np.array([c, s]) * a * (l + margin) + np.array([-s, c]) * b * (w + margin))
        px = _to_px(np.array(pts), H)
        if (px < 0).any() or (px >= H).any():
            return False
        return bool(free[px[:, 1], px[:, 0]].all())

    for road in roads:
        edge = road.half_width + SHOULDER_W + SIDEWALK_W
        for side in (-1, 1):
            s = float(rng.uniform(0, 10))
            while s < road.centre.length:
                L = float(rng.uniform(10, 30))
                D = float(rng.uniform(8, 18))
                Hh = float(rng.uniform(5, 22))
                setback = float(rng.uniform(1.5, 6))
                p, h = road.centre.pose(s + L / 2, side * (edge + setback + D / 2))
                if is_free(p, float(h), L, D):
                    col = rng.uniform(0.35, 0.8) * np.array([1.0, rng.uniform(0.85, 1.0), rng.uniform(0.7, 1.0)])
                    items.append(Scenery("scenery.building", np.array([p[0], p[1], Hh / 2]), float(h),
                                         np.array([L, D, Hh]), col, int(rng.integers(1 << 16))))
                s += L + float(rng.uniform(3, 15))
            for s in np.arange(float(rng.uniform(0, 12)), road.centre.length, float(rng.uniform(18, 30))):
                p, h = road.centre.pose(s, side * (edge - 0.6))
                if is_free(p, float(h), 0.3, 0.3, margin=0.0) or ground[_to_px(p[None], H)[0, 1], _to_px(p[None], H)[0, 0]] == SIDEWALK:
                    if rng.random() < 0.55:
                        size = np.array([3.5, 3.5, float(rng.uniform(5, 9))])
                        col = np.array([0.2, rng.uniform(0.35, 0.55), 0.15])
                        items.append(Scenery("scenery.tree", np.array([p[0], p[1], size[2] / 2]), float(h), size, col,
                                             int(rng.integers(1 << 16))))
                    else:
                        size = np.array([0.25, 0.25, 7.0])
                        items.append(Scenery("scenery.pole", np.array([p[0], p[1], 3.5]), float(h), size,
                                             np.array([0.45, 0.45, 0.47]), 0))
    return items


def build_layout(kind: str, rng: np.random.Generator, extent: float = 600.0) -> Layout:
    """Draw one road layout of the given kind, centred in a square map of side ``extent`` metres."""
    if kind not in LAYOUTS:
        raise ValueError(f"unknown layout {kind!r}; expected one of {LAYOUTS}")
    c = np.array([extent / 2, extent / 2])
    base = float(rng.uniform(0, 2 * np.pi))
    n = int(rng.choice([2, 2, 3])) if kind in ("straight", "curve") else 2
    roads: list[Road] = []
    jc, jr = None, 0.0
    half = extent / 2 - 20
    if kind == "straight":
        u = np.array([np.cos(base), np.sin(base)])
        roads.append(Road(Path(resample(np.stack([c - u * half, c + u * half]))), n, False))
    elif kind == "curve":
        R = float(rng.uniform(70, 140))
        sweep = float(rng.uniform(np.radians(70), np.radians(130))) * rng.choice([-1, 1])
        straight = 60.0
        th = np.linspace(0, sweep, 120)
        arc = np.stack([R * np.sin(np.abs(th)), np.sign(sweep) * R * (1 - np.cos(th))], 1)
        pre = np.stack([np.linspace(-straight, 0, 20), np.zeros(20)], 1)
        end, he = arc[-1], sweep
        post = end + np.linspace(0, straight, 20)[:, None] * np.array([np.cos(he), np.sin(he)])
        pts = np.concatenate([pre, arc[1:], post[1:]])
        pts -= pts.mean(0)
        rot = np.array([[np.cos(base), -np.sin(base)], [np.sin(base), np.cos(base)]])
        roads.append(Road(Path(resample(pts @ rot.T + c)), n, False))
    else:
        angles = [0, np.pi / 2, np.pi, 3 * np.pi / 2] if kind == "intersection" else [0, np.pi / 2, np.pi]
        jr = n * LANE_W + SHOULDER_W + 2.0
        jc = c
        for a in angles:
            u = np.array([np.cos(base + a), np.sin(base + a)])
            roads.append(Road(Path(resample(np.stack([c + u * jr, c + u * half]))), n, True))
    lanes: list[Lane] = []
    for i, road in enumerate(roads):
        _road_lanes(road, i, lanes, road.is_arm)
    conflicts = _connectors(lanes, roads) if jc is not None else {}
    sidewalks, parking, crossings = [], [], []
    for road in roads:
        for side in (-1, 1):
            sidewalks.append(road.centre.offset(side * (road.half_width + SHOULDER_W + SIDEWALK_W / 2)))
            parking.append(road.centre.offset(side * (road.half_width + SHOULDER_W / 2)))
        span = road.half_width + SHOULDER_W + SIDEWALK_W / 2
        if road.is_arm:
            stations = [1.5]
        else:
            stations = [float(rng.uniform(0.3, 0.7)) * road.centre.length]
        for st in stations:
            p, h = road.centre.pose(st)
            nrm = np.array([-np.sin(h), np.cos(h)])
            crossings.append(Path(resample(np.stack([p[0] - nrm * span, p[0] + nrm * span]) if p.ndim == 2
                                           else np.stack([p - nrm * span, p + nrm * span]))))
    ground = _paint(roads, lanes, crossings, jc, jr, extent)
    scenery = _scenery(rng, roads, ground, extent)
    return Layout(kind, roads, lanes, sidewalks, crossings, parking, GroundMap(ground, RES), jc, jr, conflicts,
                  scenery, extent)
