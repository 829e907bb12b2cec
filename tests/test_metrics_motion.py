"""Motion metrics on hand-made cases with answers worked out by hand."""
import math

import numpy as np
import pytest
import torch

from drive.metrics.motion import (concat_matched, constant_velocity_future, displacement_errors,
                                  gather_matched_motion, match_predictions_to_gt, min_ade_fde)
from drive.types import CLASSES

CAR, PED, BARRIER, BIKE = (CLASSES.index(n) for n in ("car", "pedestrian", "barrier", "bicycle"))
GT = np.stack([np.arange(1, 7) * 1.0, np.zeros(6)], axis=1)  # (6, 2)


def lateral(*offsets):
    """A mode = GT shifted sideways by per-step offsets."""
    return GT + np.array(offsets, np.float64)[:, None] * np.array([0.0, 1.0])


def test_mode_on_gt_scores_zero():
    pred = np.stack([GT, lateral(*[5.0] * 6)])[None]  # (1, 2, 6, 2)
    out = min_ade_fde(torch.from_numpy(pred), None, GT[None], np.ones((1, 6), bool))
    assert out["minADE"] == 0.0 and out["minFDE"] == 0.0 and out["MR"] == 0.0 and out["num_agents"] == 1


def test_closer_mode_wins_and_minima_are_independent():
    pred = np.stack([lateral(*[1.0] * 6), lateral(*[3.0] * 6)])[None]
    out = min_ade_fde(pred, np.array([[0.2, 0.8]]), GT[None], np.ones((1, 6), bool))
    assert out["minADE"] == pytest.approx(1.0) and out["minFDE"] == pytest.approx(1.0)
    assert out["ADE_top1"] == pytest.approx(3.0) and out["FDE_top1"] == pytest.approx(3.0)  # most probable mode
    # k = 1: only the most probable mode is considered
    assert min_ade_fde(pred, np.array([[0.2, 0.8]]), GT[None], np.ones((1, 6), bool), k=1)["minADE"] == \
        pytest.approx(3.0)
    with pytest.raises(ValueError):
        min_ade_fde(pred, None, GT[None], np.ones((1, 6), bool), k=1)
    # mode A: perfect until a 4 m miss at the end (ADE 4/6, FDE 4); mode B: 1 m everywhere (ADE 1, FDE 1).
    pred = np.stack([lateral(0, 0, 0, 0, 0, 4.0), lateral(*[1.0] * 6)])[None]
    out = min_ade_fde(pred, None, GT[None], np.ones((1, 6), bool))
    assert out["minADE"] == pytest.approx(4.0 / 6.0) and out["minFDE"] == pytest.approx(1.0)


def test_partial_future_uses_valid_steps_and_last_valid_step():
    pred = lateral(1.0, 1.0, 1.0, 3.0, 9.0, 9.0)[None, None]
    mask = np.array([[True, True, True, True, False, False]])
    ade, fde, has = displacement_errors(pred, GT[None], mask)
    assert ade[0, 0] == pytest.approx(6.0 / 4.0) and fde[0, 0] == pytest.approx(3.0) and has[0]


def test_miss_rate_and_agents_without_future():
    pred = np.stack([lateral(*[2.5] * 6)[None], lateral(*[1.5] * 6)[None], lateral(*[9.0] * 6)[None]])
    mask = np.ones((3, 6), bool)
    mask[2] = False  # no valid future: skipped
    out = min_ade_fde(pred, None, np.repeat(GT[None], 3, 0), mask, miss_threshold=2.0)
    assert out["MR"] == pytest.approx(0.5) and out["num_agents"] == 2
    assert out["minFDE"] == pytest.approx(2.0)  # (2.5 + 1.5) / 2
    empty = min_ade_fde(pred[2:], None, GT[None], mask[2:])
    assert math.isnan(empty["minADE"]) and empty["num_agents"] == 0


def test_class_groups():
    pred = np.stack([lateral(*[1.0] * 6)[None], lateral(*[3.0] * 6)[None], lateral(*[7.0] * 6)[None],
                     lateral(*[2.0] * 6)[None]])
    labels = np.array([CAR, PED, BARRIER, BIKE])
    out = min_ade_fde(pred, None, np.repeat(GT[None], 4, 0), np.ones((4, 6), bool), labels=labels)
    assert out["minADE_vehicle"] == pytest.approx(1.0)
    assert out["minADE_pedestrian"] == pytest.approx(3.0)
    assert out["minADE_cyclist"] == pytest.approx(2.0)
    assert out["minADE"] == pytest.approx(2.0) and out["num_agents"] == 3  # the barrier is in no group
    assert out["MR_pedestrian"] == 1.0 and out["MR_vehicle"] == 0.0


def test_greedy_matching_by_score_same_class_within_distance():
    gt = np.zeros((3, 9))
    gt[0, :2], gt[1, :2], gt[2, :2] = [10.0, 0.0], [20.0, 0.0], [30.0, 0.0]
    gt_labels = np.array([CAR, PED, CAR])
    gt_mask = np.array([True, True, False])  # row 2 is padding
    pred = np.zeros((5, 9))
    pred[:, :2] = [[10.5, 0.0], [10.1, 0.0], [20.0, 0.0], [30.0, 0.0], [14.0, 0.0]]
    labels = np.array([CAR, CAR, CAR, CAR, CAR])
    scores = np.array([0.9, 0.5, 0.8, 0.7, 0.6])
    m = match_predictions_to_gt(pred, scores, labels, gt, gt_labels, gt_mask, max_dist=2.0)
    # pred 0 (higher score) takes GT 0 though pred 1 is closer; pred 2 is the wrong class; pred 3 matches padding
    # only; pred 4 is 4 m away.
    assert m.tolist() == [0, -1, -1, -1, -1]
    labels[2] = PED
    assert match_predictions_to_gt(pred, scores, labels, gt, gt_labels, gt_mask)[2] == 1
    assert (match_predictions_to_gt(pred[:0], scores[:0], labels[:0], gt, gt_labels, gt_mask) == -1).all()


def test_gather_matched_motion_adds_box_centres():
    pred_boxes = np.zeros((2, 9))
    pred_boxes[:, :2] = [[10.0, 1.0], [50.0, 0.0]]
    trajs = np.zeros((2, 2, 6, 2))
    trajs[0, 0] = np.stack([np.arange(1, 7) * 1.0, np.zeros(6)], 1)  # mode 0: 1 m per step along +x
    trajs[0, 1] = 5.0
    gt_boxes = np.zeros((1, 9))
    gt_boxes[0, :2] = [10.0, 1.0]
    gt_future = (GT + [10.0, 1.0])[None]
    part = gather_matched_motion(pred_boxes, np.array([0.9, 0.8]), np.array([CAR, CAR]), trajs,
                                 np.array([[2.0, 0.0], [0.0, 0.0]]), gt_boxes, np.array([CAR]), np.array([True]),
                                 gt_future, np.ones((1, 6), bool))
    assert part["pred"].shape == (1, 2, 6, 2) and part["labels"].tolist() == [CAR]
    assert part["probs"][0] == pytest.approx([math.e ** 2 / (math.e ** 2 + 1), 1 / (math.e ** 2 + 1)])
    allp = concat_matched([part, gather_matched_motion(pred_boxes[:0], np.zeros(0), np.zeros(0), trajs[:0],
                                                       np.zeros((0, 2)), gt_boxes, np.array([CAR]), np.array([True]),
                                                       gt_future, np.ones((1, 6), bool))])
    out = min_ade_fde(allp["pred"], allp["probs"], allp["gt"], allp["mask"], labels=allp["labels"])
    assert out["minADE"] == pytest.approx(0.0) and out["num_agents_vehicle"] == 1


def test_constant_velocity_baseline():
    boxes = np.zeros((2, 9))
    boxes[0, [0, 1, 7, 8]] = [1.0, 2.0, 2.0, -1.0]
    cv = constant_velocity_future(torch.from_numpy(boxes))
    assert cv.shape == (2, 6, 2)
    assert cv[0, 0] == pytest.approx([2.0, 1.5]) and cv[0, 5] == pytest.approx([7.0, -1.0])
    assert (cv[1] == 0).all()
    # on an agent that really keeps its velocity the baseline is exact
    out = min_ade_fde(cv[:1, None], None, cv[:1], np.ones((1, 6), bool))
    assert out["minADE"] == 0.0
