"""Driving-situation labels: the derived rule on hand-made trajectories, and the world file."""
import json
import math
import os
from types import SimpleNamespace

import numpy as np
import torch

from drive.evaluation.situations import SituationLabeller, derive_situation, world_situations
from drive.types import CLASSES


def _straight(speed):
    t = 0.5 * np.arange(1, 7)
    return np.stack([speed * t, np.zeros(6)], 1), np.zeros(6), np.ones(6, bool)


def _no_boxes():
    return np.zeros((0, 9)), np.zeros(0, np.int64), np.zeros(0, bool)


def test_rules_on_hand_cases():
    fut, yaw, mask = _straight(8.0)
    assert derive_situation(fut, yaw, mask, *_no_boxes()) == "cruising"
    car = np.zeros((1, 9))
    car[0, :2] = (15.0, 0.5)
    assert derive_situation(fut, yaw, mask, car, np.array([CLASSES.index("car")]), np.ones(1, bool)) == "following"
    # the same box as a pedestrian, or beside the lane, or padding: not following
    ped = np.array([CLASSES.index("pedestrian")])
    assert derive_situation(fut, yaw, mask, car, ped, np.ones(1, bool)) == "cruising"
    assert derive_situation(fut, yaw, mask, car, np.array([0]), np.zeros(1, bool)) == "cruising"
    car[0, 1] = 3.5
    assert derive_situation(fut, yaw, mask, car, np.array([0]), np.ones(1, bool)) == "cruising"
    # 16 degrees at the end: turning; 14: not
    assert derive_situation(fut, np.full(6, math.radians(16)), mask, *_no_boxes()) == "turning"
    assert derive_situation(fut, np.full(6, math.radians(-14)), mask, *_no_boxes()) == "cruising"
    # braking to a stop: the last second covers 0.8 m -> 0.8 m/s < 1 m/s
    braking = np.array([[3.0, 0], [5.5, 0], [7.0, 0], [7.6, 0], [8.0, 0], [8.4, 0]])
    assert derive_situation(braking, np.zeros(6), mask, *_no_boxes()) == "stopping"
    assert derive_situation(np.zeros((6, 2)), np.zeros(6), mask, *_no_boxes()) == "stopping"  # standing still
    # only the first two waypoints valid: their last second (now -> waypoint 2) decides
    short = np.array([True, True, False, False, False, False])
    assert derive_situation(fut, yaw, short, *_no_boxes()) == "cruising"
    assert derive_situation(fut, yaw, np.zeros(6, bool), *_no_boxes()) == "unknown"


def test_world_file_is_used_when_present_and_missing_tokens_fall_back(tmp_path):
    assert world_situations(str(tmp_path), "v1.0-mini") is None
    os.makedirs(tmp_path / "v1.0-mini")
    with open(tmp_path / "v1.0-mini" / "drive_world.json", "w") as f:
        json.dump({"situations": {"a": {"situation": "lane_change", "leader": None}}}, f)
    labeller = SituationLabeller(str(tmp_path), "v1.0-mini")
    assert labeller.world == {"a": "lane_change"}

    fut = torch.tensor(_straight(8.0)[0])[None]
    T = SimpleNamespace(ego_future=fut, ego_future_yaw=torch.zeros(1, 6),  # one keyframe's targets, batch dim 1
                        ego_future_mask=torch.ones(1, 6, dtype=torch.bool), boxes=torch.zeros(1, 0, 9),
                        labels=torch.zeros(1, 0, dtype=torch.long), mask=torch.zeros(1, 0, dtype=torch.bool))
    assert labeller("a", T) == "lane_change" and labeller("b", T) == "cruising"
    assert labeller.sources == {"world": 1, "derived": 1}
