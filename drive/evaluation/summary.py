"""The headline figures of a drive-eval ``metrics.json``, flat, for tables, plots and comparisons."""
from __future__ import annotations

import json
import os
from typing import Any, Mapping, Union

from .errors import EvalError


def summarise_eval(m: Mapping[str, Any]) -> dict:
    """NDS, mAP, minADE / minFDE, map IoU, planning L2 / collision of the refined plan (both conventions),
    and inference time per frame, from a drive-eval metrics dict (missing parts are None)."""
    det, plan, motion = m.get("detection", {}) or {}, m.get("planning", {}) or {}, m.get("motion", {}) or {}
    model_motion = motion.get("model", {}) if isinstance(motion.get("model"), dict) else {}
    refined = _method(plan, "plan_refined")
    return {"NDS": det.get("NDS"), "mAP": det.get("mAP"), "minADE": model_motion.get("minADE"),
            "minFDE": model_motion.get("minFDE"), "map_iou": (m.get("map") or {}).get("drivable_iou"),
            "plan_l2_avg_averaged": refined.get("l2_avg_averaged"), "plan_l2_avg_per_step": refined.get("l2_avg_per_step"),
            "collision_avg_averaged": refined.get("collision_avg_averaged"),
            "inference_s_per_frame": (m.get("run") or {}).get("inference_s_per_frame")}


def load_eval_summary(path: Union[str, os.PathLike]) -> dict:
    """``summarise_eval`` of a drive-eval output directory or its ``metrics.json``."""
    path = os.fspath(path)
    file = os.path.join(path, "metrics.json") if os.path.isdir(path) else path
    try:
        with open(file) as f:
            return summarise_eval(json.load(f))
    except (OSError, ValueError) as e:
        raise EvalError(f"{file}: not a readable drive-eval metrics.json ({e})") from None


def _method(plan: Mapping, name: str) -> dict:
    """The flat figures of one planning method, whatever nesting the planning block uses."""
    for key in ("methods", "by_method"):
        if isinstance(plan.get(key), dict) and name in plan[key]:
            return plan[key][name]
    return plan.get(name, {}) if isinstance(plan.get(name), dict) else {}
