"""The traffic simulation: steps every agent at 10 Hz and records keyframes at 2 Hz."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .agents import (EGO_CENTER_OFFSET, EGO_LWH, Agent, curvature_speed, idm, route_from)
from .catalog import attribute_for
from .layout import LANE_W, STOP_BACK, Layout

DT = 0.1
KEYFRAME_EVERY = 5  # 2 Hz


@dataclass
class Snapshot:
    """One keyframe: every active agent's box and the ego pose (global frame)."""

    t: float
    ego_xy: np.ndarray
    ego_yaw: float
    ego_speed: float
    ids: np.ndarray  # (N,)
    boxes: np.ndarray  # (N, 7) x y z l w h yaw
    speeds: np.ndarray  # (N,)
    categories: list[str]
    attributes: list[str | None]
    colors: np.ndarray  # (N, 3)
    variants: np.ndarray
    riders: np.ndarray  # (N,) bool
    phases: np.ndarray
    situation: str
    leader_kind: str
    leader_gap: float


class Simulation:
    def __init__(self, layout: Layout, rng: np.random.Generator):
        self.layout = layout
        self.rng = rng
        self.agents: list[Agent] = []
        self.t = 0.0
        self.inflow_rate = 0.05  # vehicles per second per entry lane
        self.spawn_region: tuple[np.ndarray, float] | None = None  # (centre, radius) where agents may appear
        self._requests: dict[int, tuple[float, int]] = {}  # agent id -> (time it asked, connector) at a junction

    # ------------------------------------------------------------------ bookkeeping
    def add(self, agent: Agent) -> Agent:
        agent.id = len(self.agents)
        self.agents.append(agent)
        return agent

    @property
    def ego(self) -> Agent:
        return next(a for a in self.agents if a.is_ego)

    def pose(self, a: Agent) -> tuple[np.ndarray, float]:
        """Box centre (x, y) and yaw of an agent."""
        if a.mode == "static":
            return a.static_xy, a.static_yaw
        if a.mode == "tow":
            p = self.agents[a.parent]
            s = max(p.s - a.tow_gap, 0.0)
            xy, h = p.route.path.pose(s, p.d)
            return xy, float(h)
        xy, h = a.route.path.pose(a.s, a.d)
        yaw = float(h) + (np.arctan2(a.d_rate, max(a.v, 1.0)) if a.mode == "drive" else 0.0)
        if a.mode == "walk" and a.v < 0.05:
            yaw = float(h)
        if a.center_offset:
            xy = xy + a.center_offset * np.array([np.cos(yaw), np.sin(yaw)])
        return xy, yaw

    def velocity(self, a: Agent) -> np.ndarray:
        if a.mode == "static":
            return np.zeros(2)
        v = self.agents[a.parent].v if a.mode == "tow" else a.v
        _, yaw = self.pose(a)
        return v * np.array([np.cos(yaw), np.sin(yaw)])

    def _state(self):
        act = [a for a in self.agents if a.active]
        poses = [self.pose(a) for a in act]
        P = np.array([p[0] for p in poses]).reshape(-1, 2)
        speed = np.array([self.agents[a.parent].v if a.mode == "tow" else (0.0 if a.mode == "static" else a.v)
                          for a in act])
        yaw = np.array([p[1] for p in poses])
        V = speed[:, None] * np.stack([np.cos(yaw), np.sin(yaw)], 1) if len(act) else np.zeros((0, 2))
        self._arr = {
            "ids": np.array([a.id for a in act]),
            "parent": np.array([-1 if a.parent is None else a.parent for a in act]),
            "width": np.array([a.lwh[1] for a in act]),
            "extent": np.array([max(a.lwh[0], a.lwh[1]) / 2 for a in act]),
            "walk": np.array([a.mode == "walk" for a in act]),
            "soft": np.array([a.mode == "walk" or a.category == "vehicle.bicycle" for a in act]),
            "kind": np.array([("pedestrian" if a.mode == "walk" else "static" if (a.mode == "static" or a.stalled
                              or a.parked) else "vehicle") for a in act]),
        }
        self._busy = {a.route.connector[0] for a in act if a.mode == "drive" and a.reserved
                      and a.route.connector is not None}
        return act, P, V

    # ------------------------------------------------------------------ perception of the road ahead
    def _leader(self, a: Agent, act, P, V, route=None, d=None):
        """Nearest obstacle in the agent's corridor along its route: (gap, speed along path, kind)."""
        route = route or a.route
        d = a.d if d is None else d
        arr = self._arr
        me_xy = route.path.xy(a.s)
        front = a.s + a.center_offset + a.lwh[0] / 2
        sel = np.flatnonzero((np.abs(P - me_xy).max(1) < 75) & (arr["ids"] != a.id) & (arr["parent"] != a.id)
                             & (arr["ids"] != (a.parent if a.parent is not None else -2)))
        if len(sel):  # coarse prefilter: near the path ahead at all?
            coarse = route.path.xy(np.arange(a.s - 5.0, a.s + 80.0, 4.0))
            dmin = np.min(np.linalg.norm(P[sel, None] - coarse[None], axis=-1), axis=1)
            sel = sel[dmin < 8.0]
        if len(sel) == 0:
            return (np.inf, 0.0, "")
        pts = np.concatenate([P[sel], P[sel] + V[sel] * 1.5 * arr["walk"][sel, None]])
        s_o, d_o = route.path.project(pts, a.s - 10.0, a.s + 80.0)
        n = len(sel)
        half = a.lwh[1] / 2 + arr["width"][sel] / 2 + np.where(arr["soft"][sel], 0.9, 0.35)
        half = np.concatenate([half, half])
        gap = s_o - np.concatenate([arr["extent"][sel]] * 2) - front
        ok = (np.abs(d_o - d) <= half) & (s_o > a.s - 5.0) & (s_o < route.path.length - 0.5) & (gap > -a.lwh[0])
        ok &= s_o > 0.5
        if not ok.any():
            return (np.inf, 0.0, "")
        gap = np.where(ok, gap, np.inf)
        k = int(gap.argmin())
        i = sel[k % n]
        h = route.path.heading(s_o[k])
        vl = max(0.0, float(V[i] @ np.array([np.cos(h), np.sin(h)])))
        return (max(float(gap[k]), 0.05), vl, str(arr["kind"][i]))

    def _junction(self, a: Agent, act, leader_gap: float = np.inf):
        """Virtual stop line while the agent's junction connector conflicts with a reserved one."""
        c = a.route.connector
        if c is None:
            return np.inf
        cid, c0, c1 = c
        front = a.s + a.center_offset + a.lwh[0] / 2
        if a.reserved:
            if a.s - a.lwh[0] / 2 > c0 + 0.65 * (c1 - c0):  # past the conflict area
                a.reserved = False
                a.route = type(a.route)(a.route.path, a.route.lanes, None)
            return np.inf
        stop = c0 - STOP_BACK - front
        if stop < -2.0:  # already past the line (spawned inside): just go
            a.reserved = True
            return np.inf
        # Only the first vehicle in line may reserve: a reservation held from behind a queue deadlocks.
        # The priority road goes first; within a priority level, first come first served.
        if stop < max(25.0, a.v**2 / 3.0 + 8.0) and leader_gap > stop:
            t_req = self._requests.setdefault(a.id, (self.t, cid))[0]
            conflicts = self.layout.conflicts.get(cid, set())
            major = self._major(cid)
            earlier = any(c in conflicts and self.agents[i].active and not self.agents[i].reserved
                          and ((self._major(c) and not major) or (self._major(c) == major and t < t_req))
                          for i, (t, c) in self._requests.items() if i != a.id)
            if not (self._busy & conflicts) and not earlier:  # followers on the same connector are fine
                a.reserved = True
                self._busy.add(cid)
                self._requests.pop(a.id, None)
                return np.inf
        return max(stop, 0.05)

    def _major(self, connector_id: int) -> bool:
        """Arms 0 and 2 form the priority road; the others yield to it."""
        src = next(ln for ln in self.layout.lanes if connector_id in ln.successors)
        return src.road in (0, 2)

    def _lane_free(self, route, s, d, a: Agent, act, P) -> bool:
        back, ahead = 6.0 + 1.2 * a.v, 8.0 + 1.0 * a.v
        arr = self._arr
        sel = np.flatnonzero((np.abs(P - route.path.xy(s)).max(1) < 40) & (arr["ids"] != a.id) & (arr["parent"] != a.id))
        if len(sel) == 0:
            return True
        s_o, d_o = route.path.project(P[sel], s - back - 5, s + ahead + 5)
        return not np.any((np.abs(d_o - d) < LANE_W / 2 + 0.5) & (s_o > s - back) & (s_o < s + ahead))

    def _change_lane(self, a: Agent, target_lane: int, act, P, force=False) -> bool:
        lane = self.layout.lanes[target_lane]
        my_xy, _ = self.pose(a)
        rear_axle = my_xy - a.center_offset * np.array([np.cos(self.pose(a)[1]), np.sin(self.pose(a)[1])])
        turn = None
        if a.route.connector is not None:
            turn = self.layout.lanes[a.route.connector[0]].turn
        new = route_from(self.layout, target_lane, self.rng, turn)
        if turn and new.connector is not None and self.layout.lanes[new.connector[0]].turn != turn and not force:
            return False  # that lane cannot make the turn this route needs
        s_new, d_new = new.path.project(rear_axle[None])
        if s_new[0] > lane.path.length - 30:  # too close to the junction
            return False
        if not force and not self._lane_free(new, float(s_new[0]), 0.0, a, act, P):
            return False
        a.route, a.s, a.d = new, float(s_new[0]), float(d_new[0])
        self._requests.pop(a.id, None)
        a.d_target = a.extra.get("lane_offset", 0.0)
        a.reserved = False
        a.lc_cooldown = 6.0
        return True

    # ------------------------------------------------------------------ stepping
    def step(self) -> None:
        act, P, V = self._state()
        decisions = []
        for a in act:
            if a.mode == "drive":
                decisions.append((a, self._drive(a, act, P, V)))
            elif a.mode == "walk":
                decisions.append((a, self._walk(a, act, P, V)))
        for a, acc in decisions:
            if a.mode == "drive":
                a.v = max(0.0, a.v + acc * DT)
                a.s += a.v * DT
                a.d_rate = float(np.clip((a.d_target - a.d) / 1.3, -1.1, 1.1))
                a.d += a.d_rate * DT
                a.lc_cooldown = max(0.0, a.lc_cooldown - DT)
            else:
                a.v = acc
                a.s += a.v * DT
                a.phase += a.v * DT * 3.2
            if a.s >= a.route.path.length - 0.5 and not a.is_ego:
                a.active = False
                for o in self.agents:
                    if o.parent == a.id:
                        o.active = False
        self._inflow(act, P)
        self.t += DT

    def _drive(self, a: Agent, act, P, V) -> float:
        if a.stalled:
            a.v = 0.0
            return 0.0
        gap, vl, kind = self._leader(a, act, P, V)
        stop = self._junction(a, act, gap)
        if stop < gap:
            gap, vl, kind = stop, 0.0, "junction"
        a.leader_kind, a.leader_gap = kind, gap
        v0 = curvature_speed(a.route.path, a.s, a.v * 3.0 + 12.0, a.v0)
        acc = idm(a.v, v0, gap, vl)
        if a.brake and a.brake[0] <= self.t < a.brake[1]:
            acc = min(acc, -4.0)
        lane = a.route.lane_at(a.s)
        on_lane = self.layout.lanes[lane].kind != "connector"
        if on_lane and a.lc_cooldown <= 0.0 and abs(a.d - a.d_target) < 0.3:
            ln = self.layout.lanes[lane]
            if a.cut_in_on is not None:
                self._try_cut_in(a, act, P)
            elif kind in ("static", "vehicle") and gap < 35 and vl < 0.6 * a.v0:
                for side in (ln.left, ln.right):
                    if side is not None and self._change_lane(a, side, act, P):
                        break
        return float(np.clip(acc, -9.0, IDM_A_MAX))

    def _try_cut_in(self, a: Agent, act, P) -> None:
        target = self.agents[a.cut_in_on]
        if not target.active:
            a.cut_in_on = None
            return
        t_xy, _ = self.pose(target)
        s_me, _ = target.route.path.project(self.pose(a)[0][None])
        s_t, _ = target.route.path.project(t_xy[None])
        ahead = float(s_me[0] - s_t[0]) - (a.lwh[0] + target.lwh[0]) / 2
        if 4.0 < ahead < 14.0:
            lane_t = target.route.lane_at(target.s)
            if self.layout.lanes[lane_t].kind != "connector":
                if self._change_lane(a, lane_t, act, P, force=True):
                    a.extra["did_cut_in"] = True
                    a.cut_in_on = None

    def _walk(self, a: Agent, act, P, V) -> float:
        if a.cross is not None and a.cross[0] - 1.0 < a.s < a.cross[0]:
            xy, _ = self.pose(a)
            for o, p, v in zip(act, P, V):
                if o.mode not in ("drive", "tow") or np.linalg.norm(v) < 0.5:
                    continue
                to = xy - p
                dist = np.linalg.norm(to)
                sp = np.linalg.norm(v)
                if dist < sp * a.careful_ttc + 6.0 and to @ v > 0.6 * dist * sp:
                    return 0.0
        if a.s >= a.route.path.length - 0.5:
            return 0.0
        xy, yaw = self.pose(a)
        rel = P - xy
        lon = rel @ np.array([np.cos(yaw), np.sin(yaw)])
        lat = rel @ np.array([-np.sin(yaw), np.cos(yaw)])
        ahead = (lon > 0.05) & (lon < 1.2) & (np.abs(lat) < 0.7) & (self._arr["ids"] != a.id)
        return 0.0 if ahead.any() else a.v0  # someone right in front: wait

    def _inflow(self, act, P) -> None:
        from .scenario import spawn_vehicle  # local: scenario builds on this module

        for lane in self.layout.entry_lanes():
            if self.rng.random() > self.inflow_rate * DT:
                continue
            if len(P) and np.any(np.linalg.norm(P - lane.path.xy(0.0), axis=1) < 30.0):
                continue
            if self.spawn_region is not None and np.linalg.norm(lane.path.xy(0.0) - self.spawn_region[0]) > self.spawn_region[1]:
                continue
            spawn_vehicle(self, lane.id, 0.0)

    # ------------------------------------------------------------------ recording
    def snapshot(self) -> Snapshot:
        ego = self.ego
        act = [a for a in self.agents if a.active and not a.is_ego]
        boxes, speeds, cats, attrs, cols, var, rid, ph = [], [], [], [], [], [], [], []
        for a in act:
            xy, yaw = self.pose(a)
            boxes.append([xy[0], xy[1], a.lwh[2] / 2, a.lwh[0], a.lwh[1], a.lwh[2], yaw])
            sp = float(np.linalg.norm(self.velocity(a)))
            speeds.append(sp)
            cats.append(a.category)
            attrs.append(attribute_for(a.category, sp, a.parked, a.ridden))
            cols.append(a.color)
            var.append(a.variant)
            rid.append(a.ridden)
            ph.append(a.phase)
        rear = ego.route.path.pose(ego.s, ego.d)
        _, eyaw = self.pose(ego)
        return Snapshot(self.t, np.asarray(rear[0]), eyaw, ego.v, np.array([a.id for a in act], int),
                        np.array(boxes).reshape(-1, 7), np.array(speeds), cats, attrs,
                        np.array(cols).reshape(-1, 3), np.array(var, int), np.array(rid, bool), np.array(ph),
                        self._situation(ego), ego.leader_kind, float(ego.leader_gap))

    def _situation(self, ego: Agent) -> str:
        lane = self.layout.lanes[ego.route.lane_at(ego.s)]
        if lane.kind == "connector" and lane.turn != "straight":
            return "turning"
        if ego.leader_kind == "pedestrian" and ego.leader_gap < 25:
            return "stopping_for_pedestrian"
        if ego.v < 0.5 and ego.leader_kind in ("junction", "static", "vehicle"):
            return "stopped"
        if ego.leader_kind in ("vehicle", "static") and ego.leader_gap < 30:
            return "following"
        if abs(ego.d - ego.d_target) > 0.5:
            return "lane_change"
        return "cruising"


IDM_A_MAX = 2.0
