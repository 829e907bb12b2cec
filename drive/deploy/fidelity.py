"""Accuracy of a reduced-precision graph against the fp32 one, on the same frames.

Raw output differences hide what matters: whether the decoded detections and the plan still agree. So beside
per-output error statistics this reports detection agreement (the reference's top detections found again, and
their centre / size / yaw error) and the plan's largest deviation in metres.
"""
from __future__ import annotations

from typing import Any, Iterable, Mapping, Sequence

import numpy as np

from drive.deploy.export import DeployError, Inputs, diff_stats, ort_session, run_onnx, split_batch


def detection_agreement(ref: Mapping[str, np.ndarray], test: Mapping[str, np.ndarray], top_n: int = 10,
                        radius: float = 1.0) -> dict[str, float]:
    """For the reference's ``top_n`` detections: the share found in the test output (same label, centre
    within ``radius`` metres, anywhere in its top-K) and the mean centre / size / yaw error of matches.

    ``decisive`` detections are those whose score beats the reference's K-th score, and every other cell
    of its 3x3 peak window, by more than twice the largest score change anywhere on the map: no score
    error of that size can push them out of the top-K or move their peak to a neighbouring cell, so a
    faithful variant must find every one of them (``decisive_match_rate`` = 1). Near-ties at the cut-off
    or between neighbouring cells (common with untrained weights) only affect ``match_rate``.
    """
    matched, centre, size, yaw = 0, [], [], []
    rb, rs, rl = ref["boxes"][0], ref["scores"][0], ref["labels"][0]
    tb, tl = test["boxes"][0], test["labels"][0]
    sig = lambda x: 1.0 / (1.0 + np.exp(-x.astype(np.float64)))  # noqa: E731
    noise = float(np.abs(sig(ref["det_heatmap"]) - sig(test["det_heatmap"])).max())
    cutoff = float(rs.min())
    prob = sig(ref["det_heatmap"][0])  # (C, S, S)
    padded = np.pad(prob, ((0, 0), (1, 1), (1, 1)), constant_values=-np.inf)
    s = prob.shape[-1]
    neighbours = np.max([padded[:, 1 + dy:1 + dy + s, 1 + dx:1 + dx + s]
                         for dy in (-1, 0, 1) for dx in (-1, 0, 1) if (dy, dx) != (0, 0)], axis=0)
    order = np.argsort(-rs)[:top_n]
    decisive, decisive_hit = 0, 0
    for i in order:
        channel = prob[int(rl[i])].ravel()
        cell = int(np.argmin(np.abs(channel - rs[i])))  # the peak cell the score was read from
        peak_margin = channel[cell] - neighbours[int(rl[i])].ravel()[cell]
        is_decisive = int(rs[i] - cutoff > 2 * noise and peak_margin > 2 * noise)
        decisive += is_decisive
        same = np.flatnonzero(tl == rl[i])
        if not len(same):
            continue
        d = np.linalg.norm(tb[same, :2] - rb[i, :2], axis=-1)
        j = same[int(np.argmin(d))]
        if d.min() <= radius:
            matched += 1
            decisive_hit += is_decisive
            centre.append(float(d.min()))
            size.append(float(np.abs(tb[j, 3:6] - rb[i, 3:6]).max()))
            yaw.append(float(np.abs(np.angle(np.exp(1j * (tb[j, 6] - rb[i, 6]))))))
    n = len(order)
    return {"top_n": n, "match_rate": matched / max(n, 1), "decisive": decisive,
            "decisive_match_rate": decisive_hit / decisive if decisive else float("nan"),
            "centre_err_m": float(np.mean(centre)) if centre else float("nan"),
            "size_err_m": float(np.mean(size)) if size else float("nan"), "yaw_err_rad": float(np.mean(yaw)) if yaw else float("nan")}


def accuracy_metrics(ref: Mapping[str, np.ndarray], test: Mapping[str, np.ndarray], top_n: int = 10,
                     radius: float = 1.0) -> dict[str, Any]:
    """Per-frame comparison of a variant's outputs with reference outputs (fp32 graph or eager)."""
    stats = diff_stats(ref, test)
    dense = ("bev", "det_heatmap", "det_regression", "det_attributes", "map_logits")
    rel = {k: float(np.linalg.norm(test[k].astype(np.float64) - ref[k]) / max(np.linalg.norm(ref[k].astype(np.float64)), 1e-12))
           for k in dense if k in ref}
    heat_r, heat_t = 1 / (1 + np.exp(-ref["det_heatmap"])), 1 / (1 + np.exp(-test["det_heatmap"]))
    return {"rel_l2": rel, "diff": stats, "score_map_max_abs": float(np.abs(heat_r - heat_t).max()),
            "detections": detection_agreement(ref, test, top_n, radius),
            "plan_max_abs_m": float(np.abs(test["plan"] - ref["plan"]).max()),
            "plan_refined_max_abs_m": float(np.abs(test["plan_refined"] - ref["plan_refined"]).max())}


def aggregate_metrics(per_frame: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """Worst case over frames for errors, mean for the match rate."""
    if not per_frame:
        raise DeployError("no frames to aggregate")
    rel = {k: max(f["rel_l2"][k] for f in per_frame) for k in per_frame[0]["rel_l2"]}
    diff = {k: {"max_abs": max(f["diff"][k]["max_abs"] for f in per_frame),
                "mean_abs": float(np.mean([f["diff"][k]["mean_abs"] for f in per_frame]))} for k in per_frame[0]["diff"]}
    dets = [f["detections"] for f in per_frame]
    n_dec = sum(d["decisive"] for d in dets)
    det = {"top_n": dets[0]["top_n"], "match_rate": float(np.mean([d["match_rate"] for d in dets])),
           "decisive": n_dec, "decisive_match_rate": (sum(d["decisive_match_rate"] * d["decisive"] for d in dets if d["decisive"])
                                                     / n_dec) if n_dec else float("nan")}
    for k in ("centre_err_m", "size_err_m", "yaw_err_rad"):
        vals = [f["detections"][k] for f in per_frame if not np.isnan(f["detections"][k])]
        det[k] = float(np.max(vals)) if vals else float("nan")
    return {"frames": len(per_frame), "rel_l2": rel, "diff": diff, "detections": det,
            "score_map_max_abs": max(f["score_map_max_abs"] for f in per_frame),
            "plan_max_abs_m": max(f["plan_max_abs_m"] for f in per_frame),
            "plan_refined_max_abs_m": max(f["plan_refined_max_abs_m"] for f in per_frame)}


def compare_to_reference(ref_path: str, test_path: str, inputs_list: Iterable[Inputs], threads: int = 1,
                         top_n: int = 10, radius: float = 1.0) -> dict[str, Any]:
    """Run both graphs on the same frames; ``aggregate_metrics`` of ``accuracy_metrics`` per frame."""
    ref_s, test_s = ort_session(ref_path, threads), ort_session(test_path, threads)
    frames = [f for item in inputs_list for f in split_batch(item)]
    return aggregate_metrics([accuracy_metrics(run_onnx(ref_s, f), run_onnx(test_s, f), top_n, radius) for f in frames])
