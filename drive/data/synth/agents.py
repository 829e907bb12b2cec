"""Agents of the synthetic world and the rules they move by.

Vehicles (the ego included) follow lane routes with the Intelligent Driver Model, slow for curves,
yield at junctions through a conflict-aware reservation, change lanes to pass slow or stopped
obstacles and sometimes cut in. Pedestrians walk sidewalks and cross (at crosswalks or anywhere),
waiting for a gap unless careless. Trailers are towed behind trucks; parked cars, cones and
barriers stand still.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from .layout import LANE_W, STOP_BACK, Layout
from .paths import Path

EGO_LWH = np.array([4.084, 1.85, 1.56])  # Renault Zoe, the nuScenes car
EGO_CENTER_OFFSET = 1.4  # box centre ahead of the rear axle (the ego_pose origin)
IDM_A, IDM_B, IDM_S0, IDM_T = 1.6, 2.2, 2.0, 1.2
A_LAT_MAX = 2.2  # comfortable lateral acceleration in curves


@dataclass
class Route:
    path: Path
    lanes: list[tuple[int, float, float]]  # (lane id, s start, s end) along path
    connector: tuple[int, float, float] | None  # (connector id, s start, s end)

    def lane_at(self, s: float) -> int:
        for lid, a, b in self.lanes:
            if a - 1e-6 <= s <= b + 1e-6:
                return lid
        return self.lanes[-1][0]


@dataclass
class Agent:
    id: int
    category: str
    lwh: np.ndarray
    color: np.ndarray
    mode: str  # 'drive' | 'walk' | 'static' | 'tow'
    variant: int = 0
    route: Route | None = None
    s: float = 0.0
    v: float = 0.0
    d: float = 0.0
    d_target: float = 0.0
    d_rate: float = 0.0
    v0: float = 10.0
    parked: bool = False
    ridden: bool = False
    stalled: bool = False
    is_ego: bool = False
    center_offset: float = 0.0
    reserved: bool = False
    brake: tuple[float, float] | None = None  # (t start, t end) of a hard-brake event
    cut_in_on: int | None = None  # agent id to cut in front of
    lc_cooldown: float = 0.0
    cross: tuple[float, float] | None = None  # walk: crossing section [s0, s1] on the path
    careful_ttc: float = 4.0
    parent: int | None = None
    tow_gap: float = 0.0
    static_xy: np.ndarray | None = None
    static_yaw: float = 0.0
    active: bool = True
    phase: float = 0.0
    leader_kind: str = ""  # what the agent is reacting to ('', 'vehicle', 'pedestrian', 'static', 'junction')
    leader_gap: float = np.inf
    extra: dict = field(default_factory=dict)


def route_from(layout: Layout, lane_id: int, rng: np.random.Generator, turn: str | None = None,
               s_from: float = 0.0) -> Route:
    """A route starting on ``lane_id``: the lane, then (at a junction) a connector and the exit lane."""
    lane = layout.lanes[lane_id]
    if not lane.successors:
        return Route(lane.path, [(lane.id, 0.0, lane.path.length)], None)
    options = [layout.lanes[c] for c in lane.successors]
    pick = [c for c in options if c.turn == turn] if turn else []
    conn = pick[0] if pick else options[int(rng.integers(len(options)))]
    out = layout.lanes[conn.successors[0]]
    path = Path.concat([lane.path, conn.path, out.path])
    a = lane.path.length
    b = a + conn.path.length
    return Route(path, [(lane.id, 0.0, a), (conn.id, a, b), (out.id, b, path.length)], (conn.id, a, b))


def curvature_speed(path: Path, s: float, horizon: float, v0: float) -> float:
    """Largest speed that keeps lateral acceleration comfortable over the next ``horizon`` metres."""
    ss = np.linspace(s, min(s + horizon, path.length), 12)
    if len(ss) < 3 or ss[-1] - ss[0] < 1.0:
        return v0
    h = path.heading(ss)
    k = np.abs(np.diff(h) / np.maximum(np.diff(ss), 1e-3)).max()
    return float(min(v0, np.sqrt(A_LAT_MAX / max(k, 1e-4))))


def idm(v: float, v0: float, gap: float, v_lead: float) -> float:
    free = 1.0 - (v / max(v0, 0.1)) ** 4
    if not np.isfinite(gap):
        return IDM_A * free
    s_star = IDM_S0 + max(0.0, v * IDM_T + v * (v - v_lead) / (2 * np.sqrt(IDM_A * IDM_B)))
    return IDM_A * (free - (s_star / max(gap, 0.1)) ** 2)
