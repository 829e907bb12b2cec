"""nuScenes detection submission writer and the devkit's ``DetectionEval`` behind one function.

``boxes_to_nusc`` turns ego-frame boxes ``(x, y, z, l, w, h, yaw, vx, vy)`` into the devkit's submission
records: translation = box centre in the GLOBAL frame (z is the box centre, as in the annotations), size
``[w, l, h]``, rotation = (w, x, y, z) quaternion of the global yaw (boxes are upright: rotation about +z
only), velocity = ``[vx, vy]`` rotated into the global frame, ``detection_name`` from ``CLASSES``,
``detection_score``, ``attribute_name``.

Attributes: the predicted one when the devkit lists it as relevant for the class
(``detection_name_to_rel_attributes``), else ``DEFAULT_ATTRIBUTE[class]`` (the table every mmdet3d-based stack
submits with: ``vehicle.parked`` for car/truck/trailer/construction_vehicle, ``vehicle.moving`` for bus,
``cycle.without_rider`` for two-wheelers, ``pedestrian.moving``, and ``''`` for barrier / traffic_cone).

mAP / NDS / TP errors all come from the devkit; nothing here re-computes them.
"""
from __future__ import annotations

import json
import os
import tempfile
from typing import Mapping, Optional

import numpy as np
from nuscenes.eval.detection.utils import detection_name_to_rel_attributes
from pyquaternion import Quaternion

from drive.types import ATTRIBUTES, CLASSES

from .planning import to_numpy

DETECTION_CONFIG = "detection_cvpr_2019"
MAX_BOXES_PER_SAMPLE = 500  # the devkit rejects files with more per sample
DEFAULT_ATTRIBUTE: dict[str, str] = {
    "car": "vehicle.parked",
    "truck": "vehicle.parked",
    "construction_vehicle": "vehicle.parked",
    "bus": "vehicle.moving",
    "trailer": "vehicle.parked",
    "barrier": "",
    "motorcycle": "cycle.without_rider",
    "bicycle": "cycle.without_rider",
    "pedestrian": "pedestrian.moving",
    "traffic_cone": "",
}
DEFAULT_META: dict[str, bool] = {
    "use_camera": True, "use_lidar": False, "use_radar": False, "use_map": False, "use_external": False,
}
TP_ERROR_KEYS = {"trans_err": "mATE", "scale_err": "mASE", "orient_err": "mAOE", "vel_err": "mAVE",
                 "attr_err": "mAAE"}


def attribute_for(detection_name: str, attr_index: int) -> str:
    """The submitted attribute: the predicted one if relevant for the class, else the class default."""
    if 0 <= attr_index < len(ATTRIBUTES) and ATTRIBUTES[attr_index] in detection_name_to_rel_attributes(detection_name):
        return ATTRIBUTES[attr_index]
    return DEFAULT_ATTRIBUTE[detection_name]


def boxes_to_global(boxes, global_T_ego):
    """Ego-frame boxes ``(K, 9)`` -> (centres ``(K, 3)``, yaws ``(K,)``, velocities ``(K, 2)``) in the global frame."""
    b = to_numpy(boxes, np.float64).reshape(-1, 9)
    T = to_numpy(global_T_ego, np.float64).reshape(4, 4)
    R, t = T[:3, :3], T[:3, 3]
    centre = b[:, :3] @ R.T + t
    heading = np.stack([np.cos(b[:, 6]), np.sin(b[:, 6]), np.zeros(len(b))], axis=1) @ R.T
    yaw = np.arctan2(heading[:, 1], heading[:, 0])
    vel = np.concatenate([b[:, 7:9], np.zeros((len(b), 1))], axis=1) @ R.T
    return centre, yaw, vel[:, :2]


def boxes_to_nusc(boxes, scores, labels, attrs, global_T_ego, sample_token: str, score_threshold: float = 0.0,
                  max_boxes: int = MAX_BOXES_PER_SAMPLE) -> list[dict]:
    """Detection submission records of one sample (see the module doc for the format).

    boxes ``(K, 9)`` ego frame, scores ``(K,)``, labels ``(K,)`` into CLASSES (negative = padding, dropped),
    attrs ``(K,)`` into ATTRIBUTES (-1 none) or None, global_T_ego 4x4 (``SampleMeta.global_T_ego``).
    Keeps boxes with score >= score_threshold, at most ``max_boxes`` of them (highest scores first).
    """
    scores = to_numpy(scores, np.float64).reshape(-1)
    labels = to_numpy(labels).astype(np.int64).reshape(-1)
    attrs = np.full(len(labels), -1, np.int64) if attrs is None else to_numpy(attrs).astype(np.int64).reshape(-1)
    b = to_numpy(boxes, np.float64).reshape(-1, 9)
    keep = np.nonzero((scores >= score_threshold) & (labels >= 0) & (labels < len(CLASSES)))[0]
    keep = keep[np.argsort(-scores[keep], kind="stable")][:max_boxes]
    centre, yaw, vel = boxes_to_global(b[keep], global_T_ego)
    out = []
    for j, i in enumerate(keep):
        name = CLASSES[labels[i]]
        out.append({
            "sample_token": sample_token,
            "translation": [float(v) for v in centre[j]],
            "size": [float(b[i, 4]), float(b[i, 3]), float(b[i, 5])],
            "rotation": [float(v) for v in Quaternion(axis=[0.0, 0.0, 1.0], angle=float(yaw[j])).elements],
            "velocity": [float(v) for v in vel[j]],
            "detection_name": name,
            "detection_score": float(scores[i]),
            "attribute_name": attribute_for(name, int(attrs[i])),
        })
    return out


def write_results(path: str, results_by_sample: Mapping[str, list], meta: Optional[Mapping] = None) -> str:
    """Write a submission ``{"meta": ..., "results": {sample_token: [records]}}`` atomically (temp file, then
    ``os.replace``), so a crash never leaves a half-written file. meta defaults to camera-only. Returns path."""
    path = os.path.abspath(path)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    payload = {"meta": dict(DEFAULT_META if meta is None else meta),
               "results": {k: list(v) for k, v in results_by_sample.items()}}
    fd, tmp = tempfile.mkstemp(prefix=".tmp_", suffix=".json", dir=os.path.dirname(path))
    try:
        with os.fdopen(fd, "w") as f:
            json.dump(payload, f)
        os.chmod(tmp, 0o644)  # mkstemp creates 0600
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise
    return path


def sample_tokens_of_split(nusc, split: str) -> list[str]:
    """Keyframe tokens of a devkit split (built-in names or ``splits.json`` custom names) present in ``nusc``."""
    from nuscenes.utils.splits import get_scenes_of_split

    try:
        names = set(get_scenes_of_split(split, nusc))
    except (ValueError, AssertionError, KeyError, FileNotFoundError) as e:
        raise ValueError(f"unknown split {split!r} for {nusc.dataroot}/{nusc.version}: {e}") from e
    scenes = {s["token"] for s in nusc.scene if s["name"] in names}
    return [s["token"] for s in nusc.sample if s["scene_token"] in scenes]


def prepare_result_file(nusc, result_path: str, split: str, out_dir: str) -> str:
    """Check a submission covers the split before the devkit asserts; returns the path to evaluate.

    Missing samples -> ``ValueError`` naming how many. Samples outside the split (e.g. inference over every
    scene) are dropped into ``<out_dir>/results_<split>.json`` (the devkit rejects them on built-in splits).
    """
    if not os.path.isfile(result_path):
        raise ValueError(f"result file not found: {result_path}")
    with open(result_path) as f:
        data = json.load(f)
    if not isinstance(data, dict) or not isinstance(data.get("results"), dict) or "meta" not in data:
        raise ValueError(f"{result_path} is not a nuScenes submission (needs 'meta' and a 'results' dict)")
    wanted = sample_tokens_of_split(nusc, split)
    if not wanted:
        raise ValueError(f"split {split!r} has no samples in {nusc.dataroot}/{nusc.version}")
    results = data["results"]
    missing = [t for t in wanted if t not in results]
    if missing:
        raise ValueError(f"{result_path} misses {len(missing)} of the {len(wanted)} samples of split {split!r} "
                         f"(e.g. {missing[0]}); every sample needs an entry, an empty list if nothing was found")
    if len(results) == len(wanted):
        return result_path
    keep = set(wanted)
    return write_results(os.path.join(out_dir, f"results_{split}.json"),
                         {k: v for k, v in results.items() if k in keep}, data["meta"])


def _finite(x) -> float:
    return float(x) if x is not None else float("nan")


def evaluate_and_save(ev, out_dir: str):
    """Run a devkit evaluator (DetectionEval / TrackingEval) and save its summary and details as the devkit's
    own ``main()`` would; returns (metrics, serialized summary)."""
    metrics, metric_data = ev.evaluate()
    summary = metrics.serialize()
    summary["meta"] = dict(ev.meta)
    with open(os.path.join(out_dir, "metrics_summary.json"), "w") as f:
        json.dump(summary, f, indent=2)
    with open(os.path.join(out_dir, "metrics_details.json"), "w") as f:
        json.dump(metric_data.serialize(), f, indent=2)
    return metrics, summary


def evaluate_detection(nusc, result_path: str, split: str, out_dir: str, verbose: bool = False,
                       config_name: str = DETECTION_CONFIG) -> dict[str, float]:
    """Run the devkit ``DetectionEval`` on a submission; returns a flat dict of floats.

    Keys: ``mAP``, ``NDS``, ``mATE``, ``mASE``, ``mAOE``, ``mAVE``, ``mAAE``, ``AP_<class>`` (mean over the
    0.5 / 1 / 2 / 4 m thresholds), ``<err>_<class>`` TP errors (NaN where the devkit has none) and the
    ``heading_velocity_diagnostics`` (flip rate, moving-object speed ratio) on the devkit's boxes. Works for
    built-in splits and custom ``splits.json`` names (devkit 1.2). Also writes the devkit's
    ``metrics_summary.json`` / ``metrics_details.json`` to ``out_dir``.
    """
    from nuscenes.eval.common.config import config_factory
    from nuscenes.eval.detection.evaluate import DetectionEval

    os.makedirs(out_dir, exist_ok=True)
    path = prepare_result_file(nusc, result_path, split, out_dir)
    try:
        ev = DetectionEval(nusc, config=config_factory(config_name), result_path=path, eval_set=split,
                           output_dir=out_dir, verbose=verbose)
    except AssertionError as e:
        raise ValueError(f"devkit rejected {path} for split {split!r}: {e}") from e
    metrics, summary = evaluate_and_save(ev, out_dir)
    out = {"mAP": float(metrics.mean_ap), "NDS": float(metrics.nd_score)}
    out.update(heading_velocity_diagnostics(ev.gt_boxes, ev.pred_boxes))
    for err, key in TP_ERROR_KEYS.items():
        out[key] = _finite(metrics.tp_errors[err])
    for name in metrics.cfg.class_names:
        out[f"AP_{name}"] = float(metrics.mean_dist_aps[name])
        for err in TP_ERROR_KEYS:
            out[f"{err}_{name}"] = _finite(metrics.get_label_tp(name, err))
    return out



# Heading and velocity diagnostics: what mAOE / mAVE do not say.
HEADING_CLASSES = ("car", "truck", "bus", "trailer", "construction_vehicle", "pedestrian", "motorcycle",
                   "bicycle")  # the classes the devkit scores with a 2*pi heading period (barrier: pi, cone: none)
MOVING_SPEED = 1.0  # m/s, a ground-truth box faster than this counts as moving


def heading_velocity_diagnostics(gt_boxes, pred_boxes, class_names=HEADING_CLASSES, dist_th: float = 2.0,
                                 moving_speed: float = MOVING_SPEED) -> dict[str, float]:
    """Flip rate and moving-object speed over the devkit's TP matches (``accumulate``'s greedy matching:
    predictions by descending score, each to the nearest free ground truth of its class within ``dist_th`` m
    centre distance).

    ``flip_rate[_<class>]``: share of matches whose heading is off by more than 90 degrees, i.e. a box facing
    backwards (a coin-flip heading gives 0.5 whatever the axis accuracy; mAOE alone cannot tell a 180-degree
    ambiguity from a spread of small errors). ``moving_speed_ratio``: mean predicted speed over mean true
    speed of matches whose truth moves faster than ``moving_speed`` (0 = the velocity head predicts
    "parked" for everything), ``moving_vel_err`` / ``static_vel_err``: their mean velocity L2 error (m/s).
    Inputs are the devkit's filtered ``EvalBoxes`` (``DetectionEval.gt_boxes`` / ``.pred_boxes``).
    """
    from nuscenes.eval.common.utils import center_distance, yaw_diff

    flips: dict[str, list[bool]] = {c: [] for c in class_names}
    moving, static = [], []  # (true speed, predicted speed, velocity error)
    for name in class_names:
        preds = sorted((b for b in pred_boxes.all if b.detection_name == name), key=lambda b: -b.detection_score)
        taken: set = set()
        for p in preds:
            best, best_d = None, np.inf
            for i, g in enumerate(gt_boxes[p.sample_token]):
                if g.detection_name == name and (p.sample_token, i) not in taken:
                    d = center_distance(g, p)
                    if d < best_d:
                        best, best_d = i, d
            if best is None or best_d >= dist_th:
                continue
            taken.add((p.sample_token, best))
            g = gt_boxes[p.sample_token][best]
            flips[name].append(bool(yaw_diff(g, p, period=2 * np.pi) > np.pi / 2))
            vg, vp = np.asarray(g.velocity[:2], float), np.asarray(p.velocity[:2], float)
            if np.all(np.isfinite(vg)) and np.all(np.isfinite(vp)):
                speed = float(np.linalg.norm(vg))
                (moving if speed > moving_speed else static).append(
                    (speed, float(np.linalg.norm(vp)), float(np.linalg.norm(vp - vg))))
    out: dict[str, float] = {}
    everything = [f for name in class_names for f in flips[name]]
    out["flip_rate"] = float(np.mean(everything)) if everything else float("nan")
    out["flip_matches"] = float(len(everything))
    for name in class_names:
        out[f"flip_rate_{name}"] = float(np.mean(flips[name])) if flips[name] else float("nan")
    m = np.asarray(moving, float).reshape(-1, 3)
    s = np.asarray(static, float).reshape(-1, 3)
    out["moving_matches"] = float(len(m))
    out["moving_speed_ratio"] = float(m[:, 1].mean() / m[:, 0].mean()) if len(m) else float("nan")
    out["moving_vel_err"] = float(m[:, 2].mean()) if len(m) else float("nan")
    out["static_vel_err"] = float(s[:, 2].mean()) if len(s) else float("nan")
    return out
