"""Drivable IoU on hand-made rasters."""
import math

import numpy as np
import pytest
import torch

from drive.metrics.map import drivable_iou, drivable_iou_counts, iou_from_counts


def test_iou_counts_probabilities_and_logits():
    target = np.zeros((1, 4, 4))
    target[0, 0, :4] = 1  # 4 drivable cells
    prob = np.zeros((1, 4, 4))
    prob[0, 0, :3] = 0.9  # 3 of them found ...
    prob[0, 3, 3] = 0.7  # ... plus one false cell
    prob[0, 2, 2] = 0.5  # exactly at the threshold: not drivable (strict >)
    assert drivable_iou_counts(prob, target, is_logits=False) == (3.0, 5.0)
    assert drivable_iou(prob, target, is_logits=False) == pytest.approx(0.6)
    logits = torch.logit(torch.from_numpy(np.clip(prob, 1e-6, 1 - 1e-6)))
    assert drivable_iou(logits, torch.from_numpy(target), torch.ones(1)) == pytest.approx(0.6)
    assert drivable_iou(prob, target, threshold=0.8, is_logits=False) == pytest.approx(3.0 / 4.0)


def test_pooled_over_the_data_set_and_invalid_maps_left_out():
    target = np.zeros((3, 10, 10))
    pred = np.zeros((3, 10, 10))
    target[0, 0, 0] = pred[0, 0, 0] = 1  # sample 0: 1 cell, IoU 1
    target[1, :5] = 1  # sample 1: 50 cells, 25 found -> IoU 0.5
    pred[1, :5, :5] = 1
    pred[2] = 1  # sample 2: placeholder map (all zero), invalid -> ignored
    iou = drivable_iou(pred, target, np.array([1.0, 1.0, 0.0]), is_logits=False)
    assert iou == pytest.approx(26.0 / 51.0)  # pooled, not the mean of 1 and 0.5
    assert math.isnan(iou_from_counts(0.0, 0.0))
    with pytest.raises(ValueError):
        drivable_iou(pred[:, :5], target, is_logits=False)
