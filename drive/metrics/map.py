"""Drivable-area segmentation IoU on the BEV grid (row = y, col = x, see ``drive/types.py``).

Data-set IoU = (sum over samples of intersection cells) / (sum over samples of union cells): one pooled ratio,
the way BEV segmentation papers (LSS, BEVFusion) report it, not a mean of per-sample IoUs (which over-weights
samples with little drivable area). Samples with ``valid == 0`` (placeholder map) are left out entirely.
Accumulate ``drivable_iou_counts`` per batch, sum the counts, and finish with ``iou_from_counts``; or call
``drivable_iou`` once on the concatenated arrays.
"""
from __future__ import annotations

import numpy as np

from .planning import to_numpy


def drivable_iou_counts(pred, target, valid=None, threshold: float = 0.5, is_logits: bool = True
                        ) -> tuple[float, float]:
    """(intersection, union) cell counts over the valid samples.

    pred ``(N, S, S)``: logits (``is_logits=True``, e.g. ``ModelOutputs.map_logits``) or probabilities;
    a cell is predicted drivable when sigmoid(logit) > threshold (resp. prob > threshold).
    target ``(N, S, S)`` {0, 1} (``Targets.drivable``), valid ``(N,)`` (``Targets.map_valid``; None: all).
    """
    p = to_numpy(pred, np.float64)
    if is_logits:
        p = 1.0 / (1.0 + np.exp(-np.clip(p, -60.0, 60.0)))
    t = to_numpy(target, np.float64) > 0.5
    if p.shape != t.shape:
        raise ValueError(f"pred {p.shape} and target {t.shape} differ")
    p = p > threshold
    ok = np.ones(p.shape[0], bool) if valid is None else to_numpy(valid).reshape(-1) > 0
    p, t = p[ok], t[ok]
    return float((p & t).sum()), float((p | t).sum())


def iou_from_counts(intersection: float, union: float) -> float:
    """IoU of accumulated counts; NaN when the union is empty (nothing drivable anywhere, nothing predicted)."""
    return float(intersection / union) if union > 0 else float("nan")


def drivable_iou(pred, target, valid=None, threshold: float = 0.5, is_logits: bool = True) -> float:
    """Pooled drivable IoU of a whole data set (see the module doc)."""
    return iou_from_counts(*drivable_iou_counts(pred, target, valid, threshold, is_logits))
