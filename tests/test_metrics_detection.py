"""Detection submission format on a hand case, and the devkit round trip on the synthetic world:
GT annotations -> data layer (ego frame) -> ``boxes_to_nusc`` (global) -> devkit scores them perfect."""
import json
import math
import os

import numpy as np
import pytest
from pyquaternion import Quaternion

from drive.metrics.detection import (boxes_to_nusc, evaluate_detection, heading_velocity_diagnostics,
                                     sample_tokens_of_split, write_results)
from drive.types import ATTRIBUTES, CLASSES


def _rot_z(theta, t=(0.0, 0.0, 0.0)):
    T = np.eye(4)
    T[:2, :2] = [[math.cos(theta), -math.sin(theta)], [math.sin(theta), math.cos(theta)]]
    T[:3, 3] = t
    return T


def test_boxes_to_nusc_hand_case():
    global_T_ego = _rot_z(math.pi / 2, (100.0, 200.0, 0.5))  # ego at (100, 200) heading +y
    boxes = np.zeros((5, 9))
    boxes[0] = [10.0, 0.0, 1.0, 4.5, 1.9, 1.6, 0.0, 1.0, 0.0]  # car 10 m ahead, moving forward
    boxes[1] = [0.0, 5.0, 0.5, 0.5, 2.0, 1.0, math.pi / 2, 0.0, 0.0]  # barrier on the left
    boxes[2] = [0.0, -5.0, 0.5, 4.5, 1.9, 1.6, 0.0, 0.0, 0.0]  # car with an irrelevant attribute
    labels = np.array([CLASSES.index("car"), CLASSES.index("barrier"), CLASSES.index("car"), CLASSES.index("car"),
                       -1])
    attrs = np.array([ATTRIBUTES.index("vehicle.moving"), -1, ATTRIBUTES.index("pedestrian.moving"), -1, -1])
    scores = np.array([0.9, 0.8, 0.7, 0.05, 0.99])  # box 3 under the threshold, box 4 is padding
    recs = boxes_to_nusc(boxes, scores, labels, attrs, global_T_ego, "tok", score_threshold=0.1)
    assert [r["detection_score"] for r in recs] == pytest.approx([0.9, 0.8, 0.7])
    car, barrier, parked = recs
    assert car["sample_token"] == "tok" and car["detection_name"] == "car"
    assert car["translation"] == pytest.approx([100.0, 210.0, 1.5])  # z stays the box centre
    assert car["size"] == pytest.approx([1.9, 4.5, 1.6])  # nuScenes order w, l, h
    assert car["rotation"] == pytest.approx([math.cos(math.pi / 4), 0.0, 0.0, math.sin(math.pi / 4)])
    assert car["velocity"] == pytest.approx([0.0, 1.0])
    assert car["attribute_name"] == "vehicle.moving"
    assert barrier["translation"] == pytest.approx([95.0, 200.0, 1.0])
    assert abs(Quaternion(barrier["rotation"]).yaw_pitch_roll[0]) == pytest.approx(math.pi)
    assert barrier["attribute_name"] == "" and barrier["detection_name"] == "barrier"
    assert parked["attribute_name"] == "vehicle.parked"  # irrelevant prediction -> class default
    assert len(boxes_to_nusc(boxes, scores, labels, None, global_T_ego, "tok", max_boxes=2)) == 2
    assert boxes_to_nusc(np.zeros((0, 9)), np.zeros(0), np.zeros(0), None, global_T_ego, "tok") == []


def test_write_results_is_atomic_and_round_trips(tmp_path):
    path = write_results(str(tmp_path / "sub" / "results.json"), {"a": [{"x": 1}], "b": []})
    with open(path) as f:
        data = json.load(f)
    assert data["results"] == {"a": [{"x": 1}], "b": []} and data["meta"]["use_camera"] is True
    assert os.listdir(tmp_path / "sub") == ["results.json"]  # no temp file left behind
    with pytest.raises(TypeError):  # not JSON-serialisable: the old file stays intact
        write_results(path, {"a": [object()]})
    with open(path) as f:
        assert json.load(f)["results"]["a"] == [{"x": 1}]
    assert os.listdir(tmp_path / "sub") == ["results.json"]


@pytest.fixture(scope="module")
def world(synth_world):
    from drive.data.dataset import index_samples
    from drive.data.nusc import open_nuscenes, scenes_of_split

    nusc = open_nuscenes(synth_world, "v1.0-mini")
    return nusc, index_samples(nusc, scenes_of_split(nusc, None), with_targets=True)


def _gt_results(records, shift=0.0):
    """GT boxes of each keyframe from the data layer (ego frame) back to the submission format; boxes without
    lidar / radar points are dropped like the devkit drops them from the GT."""
    out = {}
    for r in records:
        a = r.annotations
        keep = a.num_pts > 0
        boxes = a.boxes[keep].astype(np.float64)
        boxes[:, 0] += shift
        out[r.sample_token] = boxes_to_nusc(boxes, np.ones(keep.sum()), a.labels[keep], a.attributes[keep],
                                            r.global_T_ego, r.sample_token)
    return out


@pytest.mark.parametrize("split", ["mini_val", "synth_val"])  # built-in and custom (splits.json) names
def test_gt_round_trip_scores_perfect(world, tmp_path, split):
    nusc, records = world
    path = write_results(str(tmp_path / "results.json"), _gt_results(records))  # every scene: extras dropped
    out = evaluate_detection(nusc, path, split, str(tmp_path / "eval"))
    assert out["mAP"] == pytest.approx(1.0, abs=1e-6) and out["NDS"] == pytest.approx(1.0, abs=1e-6)
    for err in ("mATE", "mASE", "mAOE", "mAVE", "mAAE"):
        assert out[err] == pytest.approx(0.0, abs=1e-4)
    assert all(out[f"AP_{c}"] == pytest.approx(1.0) for c in CLASSES)  # every class is in the val scenes
    assert out["flip_rate"] == 0.0 and out["moving_speed_ratio"] == pytest.approx(1.0, abs=1e-4)
    assert os.path.isfile(tmp_path / "eval" / "metrics_summary.json")


def test_shifted_boxes_lose_and_missing_samples_are_named(world, tmp_path):
    nusc, records = world
    path = write_results(str(tmp_path / "shifted.json"), _gt_results(records, shift=1.0))
    out = evaluate_detection(nusc, path, "mini_val", str(tmp_path / "eval"))
    assert out["mATE"] == pytest.approx(1.0, abs=1e-3)  # 1 m off, every class
    assert out["mAP"] < 0.9 and out["NDS"] < 0.9  # the 0.5 m threshold misses everything
    res = _gt_results(records)
    drop = sample_tokens_of_split(nusc, "mini_val")[:3]
    path = write_results(str(tmp_path / "partial.json"), {k: v for k, v in res.items() if k not in drop})
    with pytest.raises(ValueError, match="misses 3 of the 16 samples"):
        evaluate_detection(nusc, path, "mini_val", str(tmp_path / "eval2"))


def _box(name, xy, yaw, vel, score=None):
    from nuscenes.eval.detection.data_classes import DetectionBox
    return DetectionBox(sample_token="s", translation=(xy[0], xy[1], 1.0), size=(1.9, 4.5, 1.6),
                        rotation=tuple(Quaternion(axis=[0, 0, 1], angle=yaw).elements), velocity=vel,
                        detection_name=name, detection_score=-1.0 if score is None else score)


def test_heading_velocity_diagnostics_hand_case():
    from nuscenes.eval.common.data_classes import EvalBoxes

    gt, pred = EvalBoxes(), EvalBoxes()
    gt.add_boxes("s", [_box("car", (10, 0), 0.0, (10.0, 0.0)),  # moving at 10 m/s
                       _box("car", (20, 0), 0.0, (0.0, 0.0)),  # parked
                       _box("car", (30, 0), 0.0, (4.0, 0.0)),  # moving at 4 m/s
                       _box("pedestrian", (0, 5), 1.0, (0.0, 0.0))])
    pred.add_boxes("s", [_box("car", (10.5, 0), math.pi - 0.1, (0.0, 0.0), 0.9),  # faces backwards, says parked
                         _box("car", (20, 0.3), 0.2, (0.0, 0.0), 0.8),  # right
                         _box("car", (30, 0), 0.0, (4.0, 3.0), 0.7),  # right heading, 3 m/s off sideways
                         _box("car", (10.8, 0), 0.0, (10.0, 0.0), 0.3),  # second on the taken car: unmatched
                         _box("pedestrian", (0, 8), 1.0, (0.0, 0.0), 0.9)])  # 3 m off: no match
    out = heading_velocity_diagnostics(gt, pred)
    assert out["flip_rate_car"] == pytest.approx(1 / 3) and out["flip_rate"] == pytest.approx(1 / 3)
    assert out["flip_matches"] == 3 and math.isnan(out["flip_rate_pedestrian"])
    assert out["moving_matches"] == 2
    assert out["moving_speed_ratio"] == pytest.approx((0.0 + 5.0) / (10.0 + 4.0))
    assert out["moving_vel_err"] == pytest.approx((10.0 + 3.0) / 2)
    assert out["static_vel_err"] == pytest.approx(0.0)
