"""Motion forecasting metrics: minADE / minFDE / miss rate over K modes, per class group.

Conventions (chosen and fixed here):

* Trajectories are ABSOLUTE ego-frame positions ``(T, 2)`` of the agent's box centre at t + 0.5 ... t + 3.0 s.
  The model's ``motion_trajs`` are cumulative offsets from each predicted box centre: add the centre first
  (``gather_matched_motion`` does it).
* ADE of a mode = mean over the VALID future steps of the Euclidean error; FDE = error at the LAST valid step.
  ``minADE`` and ``minFDE`` are each the minimum over modes, independently (nuScenes prediction / UniAD
  convention; Argoverse instead reports the ADE of the min-FDE mode). A miss is ``minFDE > miss_threshold``
  (2 m, UniAD's MR). Agents without any valid future step are skipped.
* Class groups (``CLASS_GROUPS``): vehicle = car, truck, bus, trailer, construction_vehicle; cyclist = bicycle,
  motorcycle (two-wheelers move like each other, not like cars); pedestrian. Barriers and cones are static and
  belong to no group; the overall numbers are over the three groups only.
* Predictions are matched to GT boxes per sample (``match_predictions_to_gt``): greedy by descending score, same
  class, centre distance <= 2 m, each GT used once (the devkit's detection matching at the 2 m threshold).

Aggregate over a data set by concatenating the per-agent arrays of every sample, then call ``min_ade_fde``.
"""
from __future__ import annotations

from typing import Optional, Sequence

import numpy as np

from drive.types import CLASSES

from .planning import to_numpy

CLASS_GROUPS: dict[str, tuple[str, ...]] = {
    "vehicle": ("car", "truck", "bus", "trailer", "construction_vehicle"),
    "cyclist": ("bicycle", "motorcycle"),
    "pedestrian": ("pedestrian",),
}
GROUP_OF_LABEL = np.full(len(CLASSES), -1, np.int64)
for _g, _names in enumerate(CLASS_GROUPS.values()):
    for _n in _names:
        GROUP_OF_LABEL[CLASSES.index(_n)] = _g


def displacement_errors(pred, gt, mask):
    """Per-agent per-mode ADE and FDE.

    pred ``(N, K, T, 2)``, gt ``(N, T, 2)``, mask ``(N, T)`` -> (ade ``(N, K)``, fde ``(N, K)``, has_future ``(N,)``).
    Rows without a valid step hold NaN.
    """
    pred, gt = to_numpy(pred, np.float64), to_numpy(gt, np.float64)
    mask = to_numpy(mask).astype(bool)
    if pred.ndim != 4 or gt.ndim != 3 or pred.shape[2:] != gt.shape[1:] or pred.shape[0] != gt.shape[0]:
        raise ValueError(f"expected pred (N, K, T, 2) and gt (N, T, 2), got {pred.shape} and {gt.shape}")
    err = np.linalg.norm(pred - gt[:, None], axis=-1)  # (N, K, T)
    n_valid = mask.sum(axis=1)
    has = n_valid > 0
    with np.errstate(invalid="ignore", divide="ignore"):
        ade = (err * mask[:, None]).sum(-1) / n_valid[:, None]
    last = np.where(has, mask.shape[1] - 1 - np.argmax(mask[:, ::-1], axis=1), 0)
    fde = np.take_along_axis(err, last[:, None, None], axis=2)[..., 0]
    ade[~has], fde[~has] = np.nan, np.nan
    return ade, fde, has


def min_ade_fde(pred, probs, gt, mask, miss_threshold: float = 2.0, labels=None,
                k: Optional[int] = None) -> dict[str, float]:
    """minADE, minFDE (metres) and miss rate MR over the agents of a data set.

    pred: ``(N, K, T, 2)`` absolute ego-frame positions of K modes; probs: ``(N, K)`` mode probabilities or
    logits (only their order matters) or None; gt ``(N, T, 2)``; mask ``(N, T)`` bool.
    k: use only the k most probable modes (needs probs); None = all modes.
    labels: ``(N,)`` indices into CLASSES; given, the result also holds ``<metric>_<group>`` for each of
    ``CLASS_GROUPS`` and the overall numbers are over agents of the three groups only.
    With probs, ``ADE_top1`` / ``FDE_top1`` of the most probable mode are added. ``num_agents`` counts the agents
    used. Empty -> NaN.
    """
    pred = to_numpy(pred, np.float64)
    if k is not None and k < pred.shape[1]:
        if probs is None:
            raise ValueError("k < number of modes needs probs to rank the modes")
        order = np.argsort(-to_numpy(probs, np.float64), axis=1, kind="stable")[:, :k]
        pred = np.take_along_axis(pred, order[:, :, None, None], axis=1)
        probs = np.take_along_axis(to_numpy(probs, np.float64), order, axis=1)
    ade, fde, has = displacement_errors(pred, gt, mask)
    top = None if probs is None else np.argmax(to_numpy(probs, np.float64), axis=1)

    def summary(sel: np.ndarray, suffix: str) -> dict[str, float]:
        sel = sel & has
        n = int(sel.sum())
        nan = float("nan")
        res = {f"minADE{suffix}": float(ade[sel].min(axis=1).mean()) if n else nan,
               f"minFDE{suffix}": float(fde[sel].min(axis=1).mean()) if n else nan,
               f"MR{suffix}": float((fde[sel].min(axis=1) > miss_threshold).mean()) if n else nan,
               f"num_agents{suffix}": float(n)}
        if top is not None:
            res[f"ADE_top1{suffix}"] = float(ade[sel, top[sel]].mean()) if n else nan
            res[f"FDE_top1{suffix}"] = float(fde[sel, top[sel]].mean()) if n else nan
        return res

    if labels is None:
        return summary(np.ones(len(ade), bool), "")
    group = GROUP_OF_LABEL[np.clip(to_numpy(labels).astype(np.int64), 0, len(CLASSES) - 1)]
    group = np.where(to_numpy(labels).astype(np.int64) >= 0, group, -1)
    out = summary(group >= 0, "")
    for g, name in enumerate(CLASS_GROUPS):
        out.update(summary(group == g, f"_{name}"))
    return out


def match_predictions_to_gt(pred_boxes, pred_scores, pred_labels, gt_boxes, gt_labels, gt_mask=None,
                            max_dist: float = 2.0) -> np.ndarray:
    """Greedy matching of predictions ``(K, 9)`` to GT boxes ``(M, 9)`` of one sample.

    Predictions are visited by descending score; each takes the nearest (BEV centre distance) unmatched GT of
    the same class within ``max_dist``. Returns ``(K,)`` int64: index of the matched GT row, -1 for none.
    gt_mask ``(M,)`` bool marks real GT rows (None: all; labels < 0 never match).
    """
    pb, gb = to_numpy(pred_boxes, np.float64), to_numpy(gt_boxes, np.float64)
    pl, gl = to_numpy(pred_labels).astype(np.int64), to_numpy(gt_labels).astype(np.int64)
    gm = (np.ones(len(gb), bool) if gt_mask is None else to_numpy(gt_mask).astype(bool)) & (gl >= 0)
    out = np.full(len(pb), -1, np.int64)
    if len(pb) == 0 or not gm.any():
        return out
    dist = np.linalg.norm(pb[:, None, :2] - gb[None, :, :2], axis=-1)  # (K, M)
    dist = np.where((pl[:, None] == gl[None, :]) & gm[None, :], dist, np.inf)
    taken = np.zeros(len(gb), bool)
    for i in np.argsort(-to_numpy(pred_scores, np.float64), kind="stable"):
        d = np.where(taken, np.inf, dist[i])
        j = int(np.argmin(d))
        if d[j] <= max_dist:
            out[i], taken[j] = j, True
    return out


def gather_matched_motion(pred_boxes, pred_scores, pred_labels, trajs, mode_logits, gt_boxes, gt_labels, gt_mask,
                          gt_future, gt_future_mask, max_dist: float = 2.0, score_threshold: float = 0.0):
    """Matched (prediction, GT) pairs of one sample, ready to be concatenated and fed to ``min_ade_fde``.

    trajs ``(K, modes, T, 2)`` cumulative offsets from each predicted box centre (``ModelOutputs.motion_trajs``
    of one sample), mode_logits ``(K, modes)``; gt_future ``(M, T, 2)`` absolute, gt_future_mask ``(M, T)``.
    Predictions under ``score_threshold`` are ignored. Returns a dict of arrays over the n matched agents:
    ``pred`` (n, modes, T, 2) absolute, ``probs`` (n, modes) softmax of the logits, ``gt`` (n, T, 2),
    ``mask`` (n, T), ``labels`` (n,) GT labels.
    """
    scores = to_numpy(pred_scores, np.float64)
    keep = np.nonzero(scores >= score_threshold)[0]
    pb = to_numpy(pred_boxes, np.float64)[keep]
    match = match_predictions_to_gt(pb, scores[keep], to_numpy(pred_labels)[keep], gt_boxes, gt_labels, gt_mask,
                                    max_dist)
    sel, gi = keep[match >= 0], match[match >= 0]
    tr = to_numpy(trajs, np.float64)[sel] + pb[match >= 0][:, None, None, :2]
    logits = to_numpy(mode_logits, np.float64)[sel]
    e = np.exp(logits - logits.max(axis=1, keepdims=True)) if len(logits) else logits
    probs = e / e.sum(axis=1, keepdims=True) if len(logits) else logits
    return dict(pred=tr, probs=probs, gt=to_numpy(gt_future, np.float64)[gi],
                mask=to_numpy(gt_future_mask).astype(bool)[gi], labels=to_numpy(gt_labels).astype(np.int64)[gi])


def concat_matched(parts: Sequence[dict]) -> dict:
    """Concatenate ``gather_matched_motion`` dicts of many samples (empty parts allowed)."""
    if not parts:
        raise ValueError("no parts to concatenate")
    return {key: np.concatenate([p[key] for p in parts], axis=0) for key in parts[0]}


def constant_velocity_future(boxes, steps: int = 6, dt: float = 0.5) -> np.ndarray:
    """Constant-velocity baseline ``(M, steps, 2)``: centre + (vx, vy) * dt * k for k = 1..steps (ego frame)."""
    b = to_numpy(boxes, np.float64)
    t = dt * np.arange(1, steps + 1, dtype=np.float64)
    return b[:, None, 0:2] + b[:, None, 7:9] * t[None, :, None]
