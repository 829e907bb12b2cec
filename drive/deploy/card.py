"""Model card: a JSON file next to an exported graph saying exactly how to feed it and what it returns.

``<model>.onnx`` -> ``<model>.card.json`` with the fields in ``CARD_FIELDS``: graph identity (file,
sha256, opset, precision), inputs / outputs (shape, dtype, meaning), image normalisation and camera
order, BEV / map grids and their conventions, the temporal loop, class / attribute / command
lists, the precision report (what stayed float and why, calibration set), parity figures, and the
source checkpoint (path and sha256 of the file given) with the resolved model config.
"""
from __future__ import annotations

import json
import os
import time
from dataclasses import asdict
from typing import Any, Mapping, Optional

import onnx

from drive.deploy.export import atomic_path, io_spec, sha256_file
from drive.models.build import ModelConfig
from drive.types import ATTRIBUTES, CAMERAS, CLASSES, COMMANDS, FUTURE_STEPS, IMAGE_MEAN, IMAGE_STD, KEYFRAME_HZ

CARD_VERSION = 1
CARD_FIELDS: tuple[str, ...] = (
    "card_version", "created", "model_file", "model_sha256", "model_bytes", "opset", "precision", "inputs", "outputs",
    "image_normalisation", "cameras", "bev_grid", "map_grid", "temporal", "detection", "motion_planning", "classes",
    "attributes", "commands", "precision_report", "calibration", "parity", "source_checkpoint", "model_config",
)


def card_path_for(onnx_path: str) -> str:
    root, _ = os.path.splitext(os.path.abspath(onnx_path))
    return root + ".card.json"


def _precision_summary(report: Optional[Mapping[str, Any]]) -> Optional[dict]:
    if not report:
        return None
    keep = ("scheme", "converter", "io", "by_op_type", "other_nodes_kept", "quantized_nodes", "quantized_by_stage",
            "kept_float_candidates", "note", "reasons")
    return {k: report[k] for k in keep if k in report}


def build_model_card(onnx_path: str, config: ModelConfig, precision: str, parity: Optional[Mapping] = None,
                     parity_inputs: str = "", checkpoint_path: Optional[str] = None,
                     checkpoint_meta: Optional[Mapping] = None, precision_report: Optional[Mapping] = None,
                     calibration_description: Optional[str] = None, opset: Optional[int] = None) -> dict:
    """The card as a dict (see ``CARD_FIELDS``)."""
    graph = onnx.load(onnx_path, load_external_data=False)
    spec = io_spec(graph)
    if opset is None:
        opset = next((o.version for o in graph.opset_import if o.domain in ("", "ai.onnx")), None)
    s, r = config.bev_size, config.bev_range
    res = 2.0 * r / s
    calib = None
    if precision_report and "calibration" in precision_report:
        calib = dict(precision_report["calibration"])
        calib["description"] = calibration_description or "frames from the calibration iterator given to drive export"
    ckpt = None
    if checkpoint_path:
        ckpt = {"path": os.path.abspath(checkpoint_path),
                "sha256": sha256_file(checkpoint_path) if os.path.isfile(checkpoint_path) else None,
                "meta": dict(checkpoint_meta or {})}
    return {
        "card_version": CARD_VERSION,
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "model_file": os.path.basename(onnx_path),
        "model_sha256": sha256_file(onnx_path),
        "model_bytes": os.path.getsize(onnx_path),
        "opset": opset,
        "precision": precision,
        "inputs": spec["inputs"],
        "outputs": spec["outputs"],
        "image_normalisation": {"mean": list(IMAGE_MEAN), "std": list(IMAGE_STD), "channel_order": "RGB",
                                "formula": "(pixel / 255 - mean) / std per channel",
                                "image_hw": list(config.image_hw), "image_crop_top": config.image_crop_top,
                                "note": "each image is resized to (round(H / (1 - image_crop_top)), W) and its top "
                                        "rows cut to (H, W) = image_hw; ego2img must describe that image"},
        "cameras": list(CAMERAS[:config.num_cameras]),
        "bev_grid": {"size": s, "range_m": r, "resolution_m": res, "channels": config.embed_dim,
                     "convention": "ego frame of the current keyframe, x forward, y left; row = y, col = x; "
                                   "cell (r, c) centre at x = -range + (c + 0.5) * res, y = -range + (r + 0.5) * res"},
        "map_grid": {"size": config.map.map_size, "range_m": config.map.map_range,
                     "convention": "drivable logits, same row = y, col = x convention"},
        "temporal": {"state_input": "prev_bev", "state_output": "bev",
                     "loop": "feed this frame's `bev` as the next frame's `prev_bev` with has_prev = 1 and "
                             "prev_T_cur = current ego -> previous ego; on a scene's first frame pass zeros and has_prev = 0",
                     "keyframe_hz": KEYFRAME_HZ},
        "detection": {"top_k": config.detection.top_k, "decoding": "in graph: sigmoid, 3x3 max-pool peaks, fixed top-K, "
                      "no NMS; empty slots carry low scores", "box_layout": "x y z l w h yaw vx vy (ego frame)"},
        "motion_planning": {"future_steps": FUTURE_STEPS, "step_s": 1.0 / KEYFRAME_HZ, "motion_modes": config.motion.num_modes,
                            "waypoints": "cumulative xy in the current ego frame", "uses_ego_status": config.planning.use_ego_status},
        "classes": list(CLASSES),
        "attributes": list(ATTRIBUTES),
        "commands": list(COMMANDS),
        "precision_report": _precision_summary(precision_report),
        "calibration": calib,
        "parity": {"inputs": parity_inputs, "reference": "eager fp32" if precision == "fp32" else "fp32 ONNX graph",
                   "figures": dict(parity) if parity else None},
        "source_checkpoint": ckpt,
        "model_config": asdict(config),
    }


def write_model_card(onnx_path: str, config: ModelConfig, export_info: Optional[Mapping] = None,
                     precision: str = "fp32", parity: Optional[Mapping] = None, parity_inputs: str = "",
                     checkpoint_path: Optional[str] = None, checkpoint_meta: Optional[Mapping] = None,
                     precision_report: Optional[Mapping] = None, calibration_description: Optional[str] = None,
                     out_path: Optional[str] = None) -> str:
    """Write ``<model>.card.json`` next to ``onnx_path`` (atomically); returns its path."""
    card = build_model_card(onnx_path, config, precision, parity, parity_inputs, checkpoint_path, checkpoint_meta,
                            precision_report, calibration_description,
                            opset=(export_info or {}).get("opset"))
    path = out_path or card_path_for(onnx_path)
    with atomic_path(path) as tmp:
        with open(tmp, "w") as f:
            json.dump(card, f, indent=1, default=str)
    return path
