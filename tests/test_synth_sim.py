"""The traffic simulation behaves: nothing overlaps, the ego brakes for what is in its way."""
from __future__ import annotations

import numpy as np
import pytest
from shapely.geometry import Polygon

from drive.data.synth.agents import EGO_CENTER_OFFSET, EGO_LWH, Agent, route_from
from drive.data.synth.catalog import attribute_for
from drive.data.synth.layout import LAYOUTS, build_layout
from drive.data.synth.scene import _simulate
from drive.data.synth.sim import Simulation
from drive.data.synth.world import plan_world


def _poly(b):
    x, y, _, l, w, _, yaw = b
    c, s = np.cos(yaw), np.sin(yaw)
    return Polygon([(x + c * dx - s * dy, y + s * dx + c * dy)
                    for dx, dy in ((l / 2, w / 2), (l / 2, -w / 2), (-l / 2, -w / 2), (-l / 2, w / 2))])


@pytest.mark.parametrize("index", [0, 3, pytest.param(2, marks=pytest.mark.slow), pytest.param(9, marks=pytest.mark.slow)])
def test_annotated_boxes_never_overlap(index):
    plan = plan_world(10, 0, 160, 90, keyframes=40)[index]
    _, _, sim, _, _, snaps = _simulate(plan, 0)
    overlaps = 0
    for sn in snaps:
        polys = [_poly(b) for b in sn.boxes]
        for i in range(len(polys)):
            for j in range(i + 1, len(polys)):
                a, b = sim.agents[sn.ids[i]], sim.agents[sn.ids[j]]
                if a.parent == b.id or b.parent == a.id:  # a truck and its trailer touch at the hitch
                    continue
                inter = polys[i].intersection(polys[j]).area
                overlaps += inter > 0.05 * min(polys[i].area, polys[j].area)
    assert overlaps <= 2, overlaps  # over 40 keyframes and ~100 agents


def _ego_sim(layout_kind="straight", v=10.0):
    rng = np.random.default_rng(0)
    layout = build_layout(layout_kind, rng)
    sim = Simulation(layout, rng)
    lane = next(ln for ln in layout.lanes if ln.kind == "road")
    ego = Agent(-1, "vehicle.car", EGO_LWH.copy(), np.ones(3), "drive", route=route_from(layout, lane.id, rng),
                s=40.0, v=v, v0=v, is_ego=True, center_offset=EGO_CENTER_OFFSET)
    sim.add(ego)
    sim.inflow_rate = 0.0
    return sim, ego, lane


def test_ego_stops_for_pedestrians_across_the_road():
    sim, ego, lane = _ego_sim()
    for d in np.arange(-9.0, 9.5, 1.5):  # a crowd across the whole carriageway: no lane to pass in
        xy, _ = lane.path.pose(100.0, d)
        sim.add(Agent(-1, "human.pedestrian.adult", np.array([0.7, 0.7, 1.75]), np.ones(3), "static",
                      static_xy=xy, static_yaw=0.0))
    fronts = []
    for _ in range(150):
        sim.step()
        xy, yaw = sim.pose(ego)
        s_front, _ = lane.path.project((xy + EGO_LWH[0] / 2 * np.array([np.cos(yaw), np.sin(yaw)]))[None])
        fronts.append(float(s_front[0]))
    assert max(fronts) < 100.0 - 0.35 - 1.0  # stops at least a metre short of the crowd
    assert ego.v < 0.1 and ego.leader_kind == "static"
    assert sim.snapshot().situation == "stopped"


def test_ego_passes_a_single_obstacle_in_its_lane():
    sim, ego, lane = _ego_sim()
    xy, _ = lane.path.pose(100.0)
    sim.add(Agent(-1, "vehicle.car", np.array([4.5, 1.9, 1.7]), np.ones(3), "static", static_xy=xy,
                  static_yaw=float(lane.path.heading(100.0)), stalled=True))
    for _ in range(150):
        sim.step()
    xy, _ = sim.pose(ego)
    s, d = lane.path.project(xy[None])
    assert s[0] > 110.0 and abs(d[0]) > 2.5  # went past it, in the neighbouring lane


def test_ego_keeps_its_distance_to_a_braking_lead():
    sim, ego, lane = _ego_sim()
    lead = sim.add(Agent(-1, "vehicle.car", np.array([4.5, 1.9, 1.7]), np.ones(3), "drive", route=ego.route,
                         s=ego.s + 25.0, v=10.0, v0=10.0, brake=(2.0, 5.0)))
    min_gap, min_speed = np.inf, np.inf
    for _ in range(100):
        sim.step()
        boxes = []
        for a in (ego, lead):
            (x, y), yaw = sim.pose(a)
            boxes.append(_poly((x, y, 0.0, a.lwh[0], a.lwh[1], 0.0, yaw)))
        min_gap = min(min_gap, boxes[0].distance(boxes[1]))
        min_speed = min(min_speed, ego.v)
    assert min_gap > 1.0  # never touched it (braked, or changed lanes to pass)
    assert min_speed < 8.0 or abs(ego.d) > 1.0  # and it did react


def test_attributes_follow_kinematics():
    assert attribute_for("vehicle.car", 5.0, False, False) == "vehicle.moving"
    assert attribute_for("vehicle.car", 0.0, False, False) == "vehicle.stopped"
    assert attribute_for("vehicle.car", 0.0, True, False) == "vehicle.parked"
    assert attribute_for("vehicle.bicycle", 4.0, False, True) == "cycle.with_rider"
    assert attribute_for("vehicle.motorcycle", 0.0, True, False) == "cycle.without_rider"
    assert attribute_for("human.pedestrian.adult", 1.2, False, False) == "pedestrian.moving"
    assert attribute_for("human.pedestrian.child", 0.0, False, False) == "pedestrian.standing"
    assert attribute_for("movable_object.trafficcone", 0.0, False, False) is None


@pytest.mark.parametrize("kind", LAYOUTS)
def test_lanes_lie_on_the_drivable_area(kind):
    layout = build_layout(kind, np.random.default_rng(1))
    drivable = layout.drivable
    H = drivable.shape[0]
    for lane in layout.lanes:
        pts = lane.path.points
        col = np.round(pts[:, 0] / 0.1).astype(int)
        row = np.round(H - pts[:, 1] / 0.1).astype(int)
        assert drivable[row, col].mean() > 0.98, (kind, lane.kind)
    for walk in layout.sidewalks:  # walkways are not drivable (away from junction mouths)
        pts = walk.points
        col = np.round(pts[:, 0] / 0.1).astype(int)
        row = np.round(H - pts[:, 1] / 0.1).astype(int)
        assert drivable[row, col].mean() < 0.15
    if kind in ("intersection", "t_junction"):
        assert any(layout.conflicts.values())  # crossing connectors conflict
