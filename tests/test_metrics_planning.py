"""Planning metrics on hand-made cases with answers worked out by hand."""
import math

import numpy as np
import pytest
import torch

from drive.metrics.planning import (agents_future_boxes, boxes_overlap_bev, collision_rates, ego_boxes,
                                    initial_speed_agreement, offroad_rates, plan_collisions, plan_l2, plan_offroad,
                                    planning_metrics, yaw_from_trajectory)

STRAIGHT = np.stack([np.arange(1, 7) * 2.5, np.zeros(6)], axis=1)[None]  # (1, 6, 2): 5 m/s along +x


def test_l2_constant_offset_is_one_in_both_conventions():
    gt = np.repeat(STRAIGHT, 3, axis=0)
    pred = gt + np.array([0.6, 0.8])  # 1 m off at every step
    out = plan_l2(torch.from_numpy(pred), torch.from_numpy(gt), torch.ones(3, 6, dtype=torch.bool))
    for conv in ("per_step", "averaged"):
        for h in (1, 2, 3):
            assert out[f"l2_{h}s_{conv}"] == pytest.approx(1.0)
        assert out[f"l2_avg_{conv}"] == pytest.approx(1.0)


def test_l2_growing_error_per_step_vs_averaged():
    gt = STRAIGHT.copy()
    pred = gt + np.array([0.0, 0.0, 1.0, 1.0, 2.0, 2.0])[None, :, None] * np.array([0.0, 1.0])  # lateral errors
    out = plan_l2(pred, gt)
    # per_step: the error AT waypoints 2 / 4 / 6.
    assert [out[f"l2_{h}s_per_step"] for h in (1, 2, 3)] == pytest.approx([0.0, 1.0, 2.0])
    # averaged: mean(0, 0) = 0; mean(0, 0, 1, 1) = 0.5; mean(0, 0, 1, 1, 2, 2) = 1.
    assert [out[f"l2_{h}s_averaged"] for h in (1, 2, 3)] == pytest.approx([0.0, 0.5, 1.0])
    assert out["l2_avg_per_step"] == pytest.approx(1.0)
    assert out["l2_avg_averaged"] == pytest.approx(0.5)


def test_l2_samples_with_invalid_steps_are_left_out_of_that_horizon_only():
    gt = np.repeat(STRAIGHT, 2, axis=0)
    pred = gt.copy()
    pred[1] += np.array([0.0, 3.0])  # sample 1 is 3 m off everywhere
    mask = np.ones((2, 6), bool)
    mask[1, 2] = False  # sample 1: waypoint 3 unknown -> out of averaged 2 s / 3 s, still in per_step 2 s / 3 s
    mask[1, 5] = False  # waypoint 6 unknown -> out of per_step 3 s too
    out = plan_l2(pred, gt, mask)
    assert out["l2_1s_per_step"] == pytest.approx(1.5) and out["l2_1s_averaged"] == pytest.approx(1.5)
    assert out["l2_2s_per_step"] == pytest.approx(1.5) and out["l2_2s_averaged"] == pytest.approx(0.0)
    assert out["l2_3s_per_step"] == pytest.approx(0.0) and out["l2_3s_averaged"] == pytest.approx(0.0)
    assert out["count_3s_per_step"] == 1 and out["count_1s_averaged"] == 2
    none = plan_l2(pred, gt, np.zeros((2, 6), bool))
    assert math.isnan(none["l2_1s_per_step"]) and math.isnan(none["l2_avg_averaged"])


def test_initial_speed_agreement_hand_case():
    # GT: 10, 5 and 0 m/s straight ahead (waypoint 1 at 5, 2.5, 0 m); the plan always drives 5 m/s (2.5 m in 0.5 s),
    # sideways in the first sample (the speed, not the direction, is compared)
    t = np.arange(1, 7)[:, None] * np.array([[1.0, 0.0]])
    gt = np.stack([5.0 * t, 2.5 * t, 0.0 * t])
    pred = np.stack([2.5 * t[:, ::-1], 2.5 * t, 2.5 * t])
    m = initial_speed_agreement(pred, gt)
    assert m["speed_mae_mps"] == pytest.approx((5.0 + 0.0 + 5.0) / 3)
    assert m["speed_bias_mps"] == pytest.approx((-5.0 + 0.0 + 5.0) / 3)
    assert math.isnan(m["speed_corr"])  # a constant plan speed has no correlation
    assert m["speed_count"] == 3
    # a plan at half the GT speed correlates perfectly and is biased by -half the mean speed
    m = initial_speed_agreement(0.5 * gt, gt)
    assert m["speed_corr"] == pytest.approx(1.0)
    assert m["speed_bias_mps"] == pytest.approx(-0.5 * 5.0)
    # a sample whose first GT waypoint is invalid is left out
    mask = np.ones((3, 6), bool)
    mask[0, 0] = False
    m = initial_speed_agreement(pred, gt, mask)
    assert m["speed_count"] == 2 and m["speed_mae_mps"] == pytest.approx(2.5)


def test_yaw_from_trajectory():
    traj = np.array([[[1.0, 0.0], [1.0, 1.0], [1.05, 1.0], [1.05, 1.0], [0.05, 1.0], [0.05, 1.0]],
                     [[0.05, 0.0], [0.0, 1.0], [0.0, 1.0], [0.0, 1.0], [0.0, 1.0], [0.0, 1.0]]])
    yaw = yaw_from_trajectory(traj)
    # +x, then +y (left 90 deg), then 5 cm steps keep +y, then back along -x.
    assert yaw[0] == pytest.approx([0.0, math.pi / 2, math.pi / 2, math.pi / 2, math.pi, math.pi])
    # first move is only 5 cm: keeps the initial yaw 0, then ~+y (atan2(1, -0.05)).
    assert yaw[1, 0] == 0.0 and yaw[1, 1] == pytest.approx(math.atan2(1.0, -0.05))


def test_ego_box_centre_is_ahead_of_the_rear_axle():
    box = ego_boxes(np.array([[[10.0, 5.0]]]), np.array([[math.pi / 2]]))[0, 0]
    assert box == pytest.approx([10.0, 6.4, 4.084, 1.85, math.pi / 2])


def test_oriented_overlap_is_not_centre_distance():
    # A thin diagonal stick and a small square whose axis-aligned boxes overlap but the oriented ones do not.
    stick = np.array([0.0, 0.0, 4.0, 0.2, math.pi / 4])
    square = np.array([1.2, -1.2, 1.0, 1.0, 0.0])
    assert not boxes_overlap_bev(stick, square)
    assert boxes_overlap_bev(stick, np.array([1.2, 1.2, 1.0, 1.0, 0.3]))  # on the stick
    # A 12 m bus whose centre is 6.5 m away still overlaps the ego box; a car 0.5 m beside does not.
    ego = np.array([0.0, 0.0, 4.0, 2.0, 0.0])
    assert boxes_overlap_bev(ego, np.array([6.5, 0.0, 12.0, 2.5, 0.0]))
    assert not boxes_overlap_bev(ego, np.array([0.0, 2.5, 4.0, 2.0, 0.0]))
    assert not boxes_overlap_bev(ego, np.array([0.0, 2.0, 4.0, 2.0, 0.0]))  # touching edges do not collide
    # 45 deg rotated square: corner reaches 1.0 + 0.5 * sqrt(2) = 1.707 from its centre.
    diamond = np.array([0.0, 2.0 + 0.7, 1.0, 1.0, math.pi / 4])  # corner at y = 2.7 - 0.707 = 1.993 > 1
    assert not boxes_overlap_bev(ego, diamond)
    assert boxes_overlap_bev(ego, np.array([0.0, 1.6, 1.0, 1.0, math.pi / 4]))  # corner at y = 0.893 < 1
    # broadcasting (N, M, T, 5) against (N, 1, T, 5)
    assert boxes_overlap_bev(np.zeros((2, 1, 6, 5)) + ego, np.zeros((2, 3, 6, 5)) + ego).shape == (2, 3, 6)


def _parked_car_scene():
    """Sample 0 drives into a car parked 14 m ahead, reaching it at 2 s and staying; sample 1 has no agents."""
    pred = np.array([[[2.5, 0.0], [5.0, 0.0], [7.5, 0.0], [10.0, 0.0], [10.0, 0.0], [10.0, 0.0]],
                     [[2.5, 0.0], [5.0, 0.0], [7.5, 0.0], [10.0, 0.0], [10.0, 0.0], [10.0, 0.0]]])
    boxes = np.zeros((2, 1, 9))
    boxes[0, 0, :7] = [14.0, 0.0, 0.8, 4.0, 1.8, 1.5, 0.0]  # rear bumper at x = 12
    future = np.repeat(boxes[:, :, None, :2], 6, axis=2)
    future_yaw = np.zeros((2, 1, 6))
    mask = np.array([[True], [False]])
    return pred, agents_future_boxes(boxes, future, future_yaw, np.ones((2, 1, 6), bool), mask)


def test_collision_with_parked_car_from_two_seconds():
    pred, (ag, ag_mask) = _parked_car_scene()
    assert ag.shape == (2, 1, 6, 7) and ag_mask[1].sum() == 0
    flags = plan_collisions(pred, None, ag, ag_mask)
    # ego front = x + 1.4 + 2.042: 10.94 at waypoint 3 (< 12, clear), 13.44 from waypoint 4 on (hit).
    assert flags.tolist() == [[False, False, False, True, True, True], [False] * 6]
    rates = collision_rates(flags)
    assert [rates[f"collision_{h}s_per_step"] for h in (1, 2, 3)] == pytest.approx([0.0, 0.5, 0.5])
    # per-step rates 0, 0, 0, .5, .5, .5 -> averaged 1 s: 0; 2 s: .5 / 4 = .125; 3 s: 1.5 / 6 = .25
    assert [rates[f"collision_{h}s_averaged"] for h in (1, 2, 3)] == pytest.approx([0.0, 0.125, 0.25])
    # invalid (sample, step) pairs do not count: without sample 1 the per-step rate at 2 s is 1.
    valid = np.array([[True] * 6, [True, True, True, False, False, False]])
    assert collision_rates(flags, valid)["collision_2s_per_step"] == pytest.approx(1.0)
    # a masked agent never collides
    assert not plan_collisions(pred, None, ag, np.zeros_like(ag_mask)).any()


def test_gt_plan_scores_zero_l2_and_no_collision():
    gt = STRAIGHT.copy()  # 5 m/s along +x
    boxes = np.zeros((1, 3, 9))
    boxes[0, 0, :7] = [0.0, 3.5, 0.8, 4.5, 1.9, 1.6, 0.0]  # parallel car in the next lane, same speed
    boxes[0, 1, :7] = [30.0, -10.0, 0.8, 4.5, 1.9, 1.6, math.pi / 2]  # crosses ahead at x = 30 well before us
    boxes[0, 2, :7] = [-8.0, 0.0, 0.8, 4.5, 1.9, 1.6, 0.0]  # follows 8 m behind
    t = np.arange(1, 7) * 0.5
    future = np.zeros((1, 3, 6, 2))
    future[0, 0] = np.stack([5.0 * t, np.full(6, 3.5)], 1)
    future[0, 1] = np.stack([np.full(6, 30.0), -10.0 + 10.0 * t], 1)
    future[0, 2] = np.stack([-8.0 + 5.0 * t, np.zeros(6)], 1)
    future_yaw = np.zeros((1, 3, 6))
    future_yaw[0, 1] = math.pi / 2
    ag, ag_mask = agents_future_boxes(boxes, future, future_yaw, np.ones((1, 3, 6), bool), np.ones((1, 3), bool))
    out = planning_metrics(gt, gt, np.ones((1, 6), bool), ag, ag_mask)
    assert out["l2_avg_per_step"] == 0.0 and out["l2_avg_averaged"] == 0.0
    assert out["collision_avg_per_step"] == 0.0 and out["collision_avg_averaged"] == 0.0
    # the metric is not blind: drifting into the next lane hits the parallel car once the ego's left side
    # (y + 0.925) passes the car's right side (3.5 - 0.95 = 2.55): y = 1.5 -> 2.425 clear, y = 2.5 -> hit.
    swerve = gt + np.array([0.0, 0.0, 0.5, 1.5, 2.5, 3.5])[None, :, None] * np.array([0.0, 1.0])
    flags = plan_collisions(swerve, np.zeros((1, 6)), ag, ag_mask)
    assert flags[0].tolist() == [False, False, False, False, True, True]


def _road_raster(n=2, bev_range=51.2, size=200):
    """Drivable where the cell centre has |y| < 4 m (a straight road along x)."""
    res = 2 * bev_range / size
    y = -bev_range + (np.arange(size) + 0.5) * res
    road = (np.abs(y) < 4.0)[:, None] & np.ones((1, size), bool)  # row = y
    return np.repeat(road[None].astype(np.float32), n, axis=0)


def test_offroad_corners_and_centre():
    pred = np.array([[[2.5, 0.0], [5.0, 0.0], [7.5, 0.0], [10.0, 2.0], [12.5, 3.5], [15.0, 6.0]]] * 2)
    yaw = np.zeros((2, 6))
    drivable = _road_raster()
    drivable[1] = 0.0  # sample 1 has a placeholder (all-zero) map ...
    map_valid = np.array([1.0, 0.0])  # ... flagged invalid
    corners = plan_offroad(pred, drivable, 51.2, map_valid, yaw, mode="corners")
    centre = plan_offroad(pred, drivable, 51.2, map_valid, yaw, mode="centre")
    # half width 0.925: corners reach |y| 2.925 (on), 4.425 (off), 6.925 (off); centres 2, 3.5, 6.
    assert corners.tolist() == [[False] * 4 + [True, True], [False] * 6]
    assert centre.tolist() == [[False] * 5 + [True], [False] * 6]
    rates = offroad_rates(corners, map_valid)
    assert [rates[f"offroad_{h}s_per_step"] for h in (1, 2, 3)] == pytest.approx([0.0, 0.0, 1.0])
    assert [rates[f"offroad_{h}s_averaged"] for h in (1, 2, 3)] == pytest.approx([0.0, 0.0, 2.0 / 6.0])
    # points beyond the raster are unknown, not off-road
    far = np.array([[[60.0, 20.0]] * 6])
    assert not plan_offroad(far, _road_raster(1), 51.2, np.ones(1), np.zeros((1, 6))).any()
    with pytest.raises(ValueError):
        plan_offroad(pred, drivable, 51.2, mode="wheels")


def test_gt_ego_future_on_the_synthetic_world_is_clean(synth_world):
    """Integration: the data layer's GT ego future as the plan, against the GT agents and drivable raster of every
    keyframe of the synthetic world -> L2 0, no collision, never off-road (the world's ego drives legally)."""
    from drive.data.bev_map import DrivableMap
    from drive.data.dataset import index_samples
    from drive.data.nusc import open_nuscenes, scenes_of_split
    from drive.data.targets import build_targets, ego_trajectory

    nusc = open_nuscenes(synth_world, "v1.0-mini")
    records = index_samples(nusc, scenes_of_split(nusc, "mini_val"), with_targets=True)
    maps = DrivableMap(0.25)
    targets = []
    for r in records:
        drivable, valid = maps.rasterize(r.map_file, r.global_T_ego, 51.2, 200)
        targets.append(build_targets(r.annotations, ego_trajectory(r.track), drivable, valid, 51.2))
    stack = {k: np.stack([getattr(t, k).numpy() for t in targets]) for k in
             ("boxes", "future", "future_yaw", "future_mask", "mask", "ego_future", "ego_future_yaw",
              "ego_future_mask", "drivable", "map_valid")}
    assert stack["map_valid"].all() and stack["mask"].sum() > 100
    ag, ag_mask = agents_future_boxes(stack["boxes"], stack["future"], stack["future_yaw"], stack["future_mask"],
                                      stack["mask"])
    out = planning_metrics(stack["ego_future"], stack["ego_future"], stack["ego_future_mask"], ag, ag_mask,
                           stack["ego_future_yaw"], stack["drivable"], 51.2, stack["map_valid"])
    for conv in ("per_step", "averaged"):
        assert out[f"l2_avg_{conv}"] == 0.0
        assert out[f"collision_avg_{conv}"] == 0.0 and out[f"offroad_avg_{conv}"] == 0.0
    assert out["count_3s_per_step"] > 0
