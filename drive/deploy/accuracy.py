"""Task-level accuracy of each exported precision, measured by drive-eval on a split.

Tensor parity (``drive.deploy.export.parity``) says the graphs compute the same numbers; what a
deployment engineer signs off is the score: NDS / mAP, map IoU, minADE and planning L2 of the
eager model and of every ONNX graph on the same frames, through the same pipeline
(``drive.evaluation.runner.evaluate`` with ``backend=torch`` or ``backend=onnx``, the BEV looped
frame to frame as on the car). The deltas are checked against the goals of the export issue:
fp32 ONNX within 0.001 of eager (NDS and planning L2), INT8 within 0.005 NDS and 0.02 m L2 of fp32;
fp16 is held to the INT8 tolerance.
"""
from __future__ import annotations

import os
from typing import Mapping, Optional

# precision -> (reference run, {metric: max |delta|})
GOALS: dict[str, tuple[str, dict[str, float]]] = {
    "fp32": ("torch", {"NDS": 0.001, "plan_l2_avg_averaged": 0.001}),
    "fp16": ("fp32", {"NDS": 0.005, "plan_l2_avg_averaged": 0.02}),
    "int8": ("fp32", {"NDS": 0.005, "plan_l2_avg_averaged": 0.02}),
}
COMPARED = ("NDS", "mAP", "map_iou", "minADE", "plan_l2_avg_averaged", "plan_l2_avg_per_step", "collision_avg_averaged")


def evaluate_precisions(ckpt_path: str, graphs: Mapping[str, str], root: str, version: str, split: str,
                        out_dir: str, threads: Optional[int] = None, eager: bool = True) -> dict[str, dict]:
    """drive-eval of the eager checkpoint (key ``torch``, when ``eager``) and of each ONNX graph
    (``graphs``: precision -> path) on ``split``; each run writes its metrics under ``out_dir/<key>``.
    Returns ``{key: summarise_eval(metrics)}``."""
    from drive.evaluation.runner import EvalOptions, evaluate
    from drive.evaluation.summary import summarise_eval

    runs = ([("torch", "torch", None)] if eager else []) + [(p, "onnx", g) for p, g in graphs.items()]
    results = {}
    for key, backend, graph in runs:
        m = evaluate(EvalOptions(root=root, version=version, split=split, out_dir=os.path.join(out_dir, key),
                                 backend=backend, onnx_path=graph, ckpt_path=ckpt_path, train_split=None,
                                 report=False, render_curves=False, num_cases=0, threads=threads))
        results[key] = summarise_eval(m)
    return results


def accuracy_deltas(results: Mapping[str, Mapping[str, Optional[float]]]) -> dict[str, dict]:
    """For every precision in ``results`` whose reference run is there too: the delta of each compared
    metric (``value - reference``), the goal, and whether every goal metric is within tolerance."""
    out = {}
    for prec, (ref, goal) in GOALS.items():
        if prec not in results or ref not in results:
            continue
        deltas = {k: results[prec][k] - results[ref][k] for k in COMPARED
                  if results[prec].get(k) is not None and results[ref].get(k) is not None}
        out[prec] = {"reference": ref, "delta": deltas, "goal_max_abs": dict(goal),
                     "meets_goal": all(k in deltas and abs(deltas[k]) <= tol for k, tol in goal.items())}
    return out
