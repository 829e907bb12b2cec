"""Populating a scene: the ego's route and the events that make planning need perception.

Knobs (``WorldKnobs``) set traffic density, lead-vehicle braking, stopped vehicles in the ego lane,
cut-ins, pedestrians crossing in front of the ego, construction zones, parked cars, cyclists and
dusk lighting. The defaults are chosen so that ego status alone cannot predict the ego's future.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .agents import EGO_CENTER_OFFSET, EGO_LWH, Agent, Route, route_from
from .catalog import sample_colour, sample_size
from .layout import LANE_W, SHOULDER_W, Layout
from .paths import Path, resample
from .sim import Simulation

WARMUP_S = 4.0


@dataclass
class WorldKnobs:
    vehicle_gap: float = 50.0  # mean spacing (m) of through traffic per lane
    inflow_rate: float = 0.015  # new vehicles per second per entry lane
    lead_prob: float = 0.55  # a lead vehicle ahead of the ego
    lead_brake_prob: float = 0.5  # ... which brakes hard once
    stopped_in_lane_prob: float = 0.35  # a broken-down vehicle in the ego's lane ahead
    cut_in_prob: float = 0.35
    crossing_prob: float = 0.6  # pedestrians crossing in front of the ego, timed to meet it
    jaywalk_frac: float = 0.5  # of those, careless ones crossing mid-block
    construction_prob: float = 0.6
    parked_per_100m: float = 3.0
    peds_per_100m: float = 3.0
    cyclist_prob: float = 0.6
    rare_boost: float = 1.0  # scales buses, trucks/trailers, motorcycles, construction
    dusk_prob: float = 0.12


def _agent(category: str, rng, mode: str, **kw) -> Agent:
    return Agent(-1, category, sample_size(category, rng), sample_colour(category, rng), mode,
                 variant=int(rng.integers(1 << 16)), **kw)


def spawn_vehicle(sim: Simulation, lane_id: int, s: float, category: str | None = None, v0: float | None = None,
                  turn: str | None = None, route: Route | None = None) -> Agent:
    rng, boost = sim.rng, getattr(sim, "rare_boost", 1.0)
    if category is None:
        p = np.array([0.72, 0.07 * boost, 0.035 * boost, 0.015 * boost, 0.05 * boost, 0.015 * boost])
        category = ["vehicle.car", "vehicle.truck", "vehicle.bus.rigid", "vehicle.bus.bendy",
                    "vehicle.motorcycle", "vehicle.construction"][int(rng.choice(6, p=p / p.sum()))]
    route = route or route_from(sim.layout, lane_id, rng, turn)
    a = _agent(category, rng, "drive", route=route, s=s, ridden=category == "vehicle.motorcycle")
    a.v0 = v0 if v0 is not None else float(rng.uniform(8.0, 13.5) * (0.8 if "bus" in category else 1.0))
    a.v = a.v0 * 0.8
    sim.add(a)
    if category == "vehicle.truck" and rng.random() < 0.5:
        t = _agent("vehicle.trailer", rng, "tow", parent=a.id)
        t.tow_gap = a.lwh[0] / 2 + t.lwh[0] / 2 + 0.8
        sim.add(t)
    return a


def _free_on(sim: Simulation, path: Path, s: float, clearance: float) -> bool:
    xy = path.xy(s)
    for a in sim.agents:
        if a.active and np.linalg.norm(sim.pose(a)[0] - xy) < clearance:
            return False
    return True


def _place_ego(sim: Simulation, rng, layout: Layout) -> Agent:
    junction = layout.junction_center is not None
    if junction:
        turn = str(rng.choice(["left", "right", "straight"], p=[0.4, 0.35, 0.25]))
        cands = [ln for ln in layout.lanes if ln.kind == "in" and any(
            layout.lanes[c].turn == turn for c in ln.successors)]
        lane = cands[int(rng.integers(len(cands)))]
        v0 = float(rng.uniform(8.5, 12.5))
        s0 = max(5.0, lane.path.length - v0 * (WARMUP_S + rng.uniform(3.0, 9.0)))
    else:
        turn = None
        cands = [ln for ln in layout.lanes if ln.kind == "road"]
        lane = cands[int(rng.integers(len(cands)))]
        v0 = float(rng.uniform(8.5, 13.0))
        s0 = float(rng.uniform(15.0, 40.0))
    route = route_from(layout, lane.id, rng, turn)
    ego = Agent(-1, "vehicle.car", EGO_LWH.copy(), np.array([0.9, 0.9, 0.9]), "drive", route=route, s=s0,
                v0=v0, is_ego=True, center_offset=EGO_CENTER_OFFSET)
    ego.v = v0 * float(rng.uniform(0.6, 1.0))
    return sim.add(ego)


def _traffic(sim: Simulation, rng, knobs: WorldKnobs, ego: Agent) -> None:
    layout = sim.layout
    ego_lane = ego.route.lanes[0][0]
    for lane in layout.lanes:
        if lane.kind == "connector":
            continue
        gap = knobs.vehicle_gap * (2.0 if lane.kind == "in" and lane.id != ego_lane else 1.0)
        s = float(rng.exponential(gap)) + 5.0
        while s < lane.path.length - 15.0:
            if lane.id == ego_lane and ego.s - 15.0 < s < ego.s + 45.0:
                s += 20.0
                continue
            if lane.kind == "out":
                route = Route(lane.path, [(lane.id, 0.0, lane.path.length)], None)
                spawn_vehicle(sim, lane.id, s, route=route)
            else:
                spawn_vehicle(sim, lane.id, s)
            s += float(rng.exponential(gap)) + 12.0


def _ego_events(sim: Simulation, rng, knobs: WorldKnobs, ego: Agent, events: list[str]) -> None:
    layout = sim.layout
    lane0 = layout.lanes[ego.route.lanes[0][0]]
    if rng.random() < knobs.lead_prob:
        lead = spawn_vehicle(sim, lane0.id, ego.s + float(rng.uniform(18, 35)), category="vehicle.car",
                             v0=ego.v0 * float(rng.uniform(0.75, 1.0)), route=ego.route)
        lead.v = ego.v
        if rng.random() < knobs.lead_brake_prob:
            t0 = WARMUP_S + float(rng.uniform(2.0, 15.0))
            lead.brake = (t0, t0 + float(rng.uniform(1.5, 3.5)))
            events.append("lead brakes")
        events.append("lead vehicle")
    ahead = ego.v0 * (WARMUP_S + float(rng.uniform(4.0, 12.0)))
    s_block = ego.s + ahead
    c = ego.route.connector
    lane_end = c[1] - 40.0 if c else ego.route.path.length - 30.0
    if rng.random() < knobs.stopped_in_lane_prob and s_block < lane_end and (lane0.left or lane0.right):
        st = spawn_vehicle(sim, lane0.id, s_block, category="vehicle.car" if rng.random() < 0.7 else "vehicle.truck",
                           route=ego.route)
        st.stalled, st.v, st.v0 = True, 0.0, 0.0
        events.append("stopped vehicle in lane")
    if rng.random() < knobs.cut_in_prob and (lane0.left or lane0.right):
        side = lane0.left if lane0.left is not None else lane0.right
        cut = spawn_vehicle(sim, side, 0.0, category="vehicle.car",
                            route=route_from(layout, side, rng))
        s_proj, _ = cut.route.path.project(ego.route.path.xy(ego.s)[None])
        cut.s = float(s_proj[0]) - float(rng.uniform(5, 25))
        cut.v0 = ego.v0 * float(rng.uniform(1.1, 1.3))
        cut.v = ego.v * 1.1
        cut.cut_in_on = ego.id
        events.append("cut-in")
    if rng.random() < knobs.crossing_prob:
        _crossing_peds(sim, rng, knobs, ego, events)


def _crossing_peds(sim, rng, knobs: WorldKnobs, ego: Agent, events: list[str]) -> None:
    """Pedestrians timed to cross the ego's route about when the ego gets there."""
    layout = sim.layout
    jay = rng.random() < knobs.jaywalk_frac or not layout.crossings
    meet_t = WARMUP_S + float(rng.uniform(3.0, 14.0))
    s_meet = min(ego.s + ego.v0 * meet_t, ego.route.path.length - 10)
    p_meet, h = ego.route.path.pose(s_meet)
    if not jay:
        dists = [np.linalg.norm(cw.xy(cw.length / 2) - p_meet) for cw in layout.crossings]
        cw = layout.crossings[int(np.argmin(dists))]
        if min(dists) > 60:
            jay = True
    if jay:
        nrm = np.array([-np.sin(h), np.cos(h)])
        span = 2 * LANE_W + SHOULDER_W + 3.0
        side = rng.choice([-1, 1])
        cw = Path(resample(np.stack([p_meet + side * nrm * span, p_meet - side * nrm * span])))
    n = int(rng.integers(1, 4))
    group_speed = float(rng.uniform(1.1, 1.6))
    for k in range(n):
        cat = "human.pedestrian.child" if rng.random() < 0.15 else "human.pedestrian.adult"
        approach = float(rng.uniform(1.0, 1.5)) * meet_t * 0.5
        start = cw.xy(0.0)
        back = cw.heading(0.0) + np.pi / 2 * rng.choice([-1, 1])
        pre = start + approach * np.array([np.cos(back), np.sin(back)])
        path = Path(resample(np.concatenate([np.stack([pre, start]), cw.points[1:]])))
        a = _agent(cat, rng, "walk", route=Route(path, [(-1, 0.0, path.length)], None),
                   s=float(rng.uniform(0, 0.5)), v0=group_speed)
        a.d = (k - (n - 1) / 2) * 0.85  # side by side, walking together
        a.cross = (approach, approach + cw.length)
        a.careful_ttc = 0.8 if jay else 3.0
        sim.add(a)
    events.append("jaywalkers" if jay else "crosswalk pedestrians")


def _construction(sim: Simulation, rng, ego: Agent, near_ego: bool, ego_lane_ok: bool) -> None:
    """Cones tapering a lane closed, barriers, a construction vehicle and workers."""
    layout = sim.layout
    lanes = [ln for ln in layout.lanes if ln.kind in ("road", "in", "out") and ln.path.length > 120]
    if near_ego:
        own = layout.lanes[ego.route.lanes[0][0]]
        same_dir, stack = set(), [own.id]
        while stack:  # the ego's carriageway: its lane and every same-direction neighbour
            i = stack.pop()
            if i is not None and i not in same_dir:
                same_dir.add(i)
                stack += [layout.lanes[i].left, layout.lanes[i].right]
        cands = [ln for ln in lanes if ln.road == own.road and (ego_lane_ok or ln.id not in same_dir)]
        lane = cands[int(rng.integers(len(cands)))] if cands else own
        ahead = ego.route.path.xy(min(ego.s + ego.v0 * (WARMUP_S + rng.uniform(2, 8)), ego.route.path.length - 1))
        s_proj, _ = lane.path.project(ahead[None])
        s0 = float(np.clip(s_proj[0] - 10.0, 20, lane.path.length - 60))
    else:
        lane = lanes[int(rng.integers(len(lanes)))]
        s0 = float(rng.uniform(20, lane.path.length - 60))
    length = float(rng.uniform(25, 40))
    open_side = 1.0 if lane.left is not None else -1.0  # cones line the edge towards the open lane
    edge = LANE_W / 2 - 0.25
    for j, s in enumerate((s0, s0 + length + 1.5)):  # a barrier across the closed lane at each end
        xy, h = lane.path.pose(s, 0.0)
        sim.add(_agent("movable_object.barrier", rng, "static", static_xy=xy, static_yaw=float(h)))
    for s in np.arange(s0 + 2.0, s0 + length, 3.0):  # taper from the far edge to the open edge
        frac = min(1.0, (s - s0 - 2.0) / 12.0)
        xy, h = lane.path.pose(s, open_side * edge * (2 * frac - 1))
        sim.add(_agent("movable_object.trafficcone", rng, "static", static_xy=xy, static_yaw=float(rng.uniform(-3, 3))))
    veh = _agent("vehicle.construction", rng, "static", parked=True)
    veh.static_xy, h = lane.path.pose(s0 + length * 0.65, -open_side * (LANE_W / 2 - veh.lwh[1] / 2 + 0.7))
    veh.static_yaw = float(h)
    sim.add(veh)
    for j in range(int(rng.integers(1, 3))):  # workers in the closed lane, clear of the vehicle
        s = s0 + length * 0.65 - veh.lwh[0] / 2 - 1.5 - 1.5 * j
        xy, h = lane.path.pose(s, open_side * 0.4)
        sim.add(_agent("human.pedestrian.construction_worker", rng, "static", static_xy=xy,
                       static_yaw=float(rng.uniform(-3, 3))))


def _roadside(sim: Simulation, rng, knobs: WorldKnobs) -> None:
    layout = sim.layout
    jc, jr = layout.junction_center, layout.junction_radius
    for path in layout.parking:
        s = float(rng.exponential(100 / knobs.parked_per_100m))
        while s < path.length - 5:
            xy, h = path.pose(s)
            if jc is not None and np.linalg.norm(xy - jc) < jr + 15:
                s += 10
                continue
            cat = "vehicle.car" if rng.random() < 0.85 else ("vehicle.trailer" if rng.random() < 0.5 else "vehicle.truck")
            if rng.random() < 0.08:
                cat = "vehicle.motorcycle"
            a = _agent(cat, rng, "static", static_xy=xy, static_yaw=float(h) + (np.pi if rng.random() < 0.2 else 0),
                       parked=True)
            if _free_on(sim, path, s, a.lwh[0]):
                sim.add(a)
            s += a.lwh[0] + float(rng.exponential(100 / knobs.parked_per_100m))
    for i, path in enumerate(layout.sidewalks):
        outer = -1.0 if i % 2 == 0 else 1.0  # sidewalks come in (right, left) pairs: outer = away from the road
        for s in np.arange(float(rng.uniform(0, 40)), path.length, float(rng.uniform(30, 70))):
            if rng.random() < 0.5:  # parked bicycles along the building side
                xy, h = path.pose(s, outer * 1.5)
                sim.add(_agent("vehicle.bicycle", rng, "static", static_xy=xy, static_yaw=float(h)))
        n = int(path.length / 100 * knobs.peds_per_100m)
        for _ in range(n):
            r = rng.random()
            cat = "human.pedestrian.adult" if r < 0.85 else ("human.pedestrian.child" if r < 0.96
                                                            else "human.pedestrian.police_officer")
            s = float(rng.uniform(0, path.length - 5))
            if rng.random() < 0.35:  # standing at the kerb side
                xy, h = path.pose(s, -outer * float(rng.uniform(1.4, 1.6)))
                sim.add(_agent(cat, rng, "static", static_xy=xy, static_yaw=float(h) + float(rng.uniform(-0.4, 0.4))))
            else:  # walking, keeping to the right of the walking direction
                p = path if rng.random() < 0.5 else path.reversed()
                a = _agent(cat, rng, "walk", route=Route(p, [(-1, 0.0, p.length)], None), s=s,
                           v0=float(rng.uniform(1.0, 1.6)))
                a.d = -float(rng.uniform(0.35, 0.55))
                sim.add(a)


def _cyclists(sim: Simulation, rng, knobs: WorldKnobs) -> None:
    for lane in sim.layout.lanes:
        if lane.kind == "connector" or lane.right is not None or rng.random() > knobs.cyclist_prob:
            continue
        s = float(rng.uniform(10, lane.path.length - 40))
        if not _free_on(sim, lane.path, s, 12.0):
            continue
        route = route_from(sim.layout, lane.id, rng, "right") if lane.successors else None
        a = _agent("vehicle.bicycle", rng, "drive", route=route or Route(lane.path, [(lane.id, 0, lane.path.length)], None),
                   s=s, ridden=True)
        a.v0 = float(rng.uniform(3.5, 6.0))
        a.v = a.v0
        a.extra["lane_offset"] = a.d = a.d_target = -(LANE_W / 2 - 0.7)
        sim.add(a)


def populate(sim: Simulation, rng, knobs: WorldKnobs, rich: bool = False) -> list[str]:
    """Place the ego, traffic, roadside life and the ego-facing events; returns the event names."""
    sim.rare_boost = knobs.rare_boost * (2.0 if rich else 1.0)
    sim.inflow_rate = knobs.inflow_rate
    events: list[str] = []
    ego = _place_ego(sim, rng, sim.layout)
    _ego_events(sim, rng, knobs, ego, events)
    if rich or rng.random() < knobs.construction_prob:
        blocked = "stopped vehicle in lane" in events  # never close both lanes: nobody could pass
        _construction(sim, rng, ego, near_ego=rich or rng.random() < 0.75, ego_lane_ok=not blocked)
        events.append("construction zone")
    _traffic(sim, rng, knobs, ego)
    _roadside(sim, rng, knobs)
    _cyclists(sim, rng, knobs)
    if rich:  # make sure every detection class shows up near the ego's route
        lane = sim.layout.lanes[ego.route.lanes[0][0]]
        opp = [ln for ln in sim.layout.lanes if ln.kind != "connector" and ln.road == lane.road and ln.id != lane.id
               and ln.left is None]
        for cat in ("vehicle.bus.rigid", "vehicle.truck", "vehicle.motorcycle"):
            tgt = opp[int(rng.integers(len(opp)))] if opp else lane
            s_p, _ = tgt.path.project(ego.route.path.xy(ego.s + ego.v0 * 10)[None])
            a = spawn_vehicle(sim, tgt.id, float(s_p[0]) - float(rng.uniform(0, 40)), category=cat)
            if cat == "vehicle.truck" and not any(o.parent == a.id for o in sim.agents):
                t = _agent("vehicle.trailer", rng, "tow", parent=a.id)
                t.tow_gap = a.lwh[0] / 2 + t.lwh[0] / 2 + 0.8
                sim.add(t)
        # ... and a parked trailer on the kerb the ego will pass.
        target = ego.route.path.xy(min(ego.s + ego.v0 * (WARMUP_S + 6), ego.route.path.length - 1))
        kerb = min(sim.layout.parking, key=lambda p: abs(p.project(target[None])[1][0]))
        s_k = float(kerb.project(target[None])[0][0])
        xy, h = kerb.pose(s_k)
        trailer = _agent("vehicle.trailer", rng, "static", static_xy=xy, static_yaw=float(h), parked=True)
        for o in sim.agents:  # make room on the kerb
            if o.mode == "static" and o.parked and np.linalg.norm(sim.pose(o)[0] - xy) < 9.0:
                o.active = False
        sim.add(trailer)
    _remove_overlaps(sim)
    # Only what can come near the ego during the scene is simulated.
    reach = ego.route.path.xy(np.linspace(ego.s, min(ego.s + ego.v0 * (WARMUP_S + 24), ego.route.path.length), 20))
    centre = reach.mean(0)
    radius = float(np.linalg.norm(reach - centre, axis=1).max()) + 110.0
    sim.spawn_region = (centre, radius)
    for a in sim.agents:
        if a.active and not a.is_ego and np.linalg.norm(sim.pose(a)[0] - centre) > radius:
            a.active = False
            for o in sim.agents:
                if o.parent == a.id:
                    o.active = False
    return events


def _footprint(sim: Simulation, a: Agent):
    from shapely.geometry import Polygon

    (x, y), yaw = sim.pose(a)
    l, w = a.lwh[0], a.lwh[1]
    c, s = np.cos(yaw), np.sin(yaw)
    return Polygon([(x + c * dx - s * dy, y + s * dx + c * dy)
                    for dx, dy in ((l / 2, w / 2), (l / 2, -w / 2), (-l / 2, -w / 2), (-l / 2, w / 2))])


def _remove_overlaps(sim: Simulation) -> None:
    """Drop agents whose footprint overlaps one placed before them (the ego is always kept), so that
    no two annotated boxes intersect at t = 0."""
    from shapely.strtree import STRtree

    kept = []
    for a in sim.agents:
        if not a.active:
            continue
        fp = _footprint(sim, a)
        if kept and not a.is_ego:
            tree = STRtree([k[1] for k in kept])
            hits = [kept[i] for i in tree.query(fp)]
            if any(fp.intersection(g).area > 0.01 and not (a.parent == o.id or o.parent == a.id) for o, g in hits):
                a.active = False
                for o in sim.agents:
                    if o.parent == a.id:
                        o.active = False
                continue
        kept.append((a, fp))
