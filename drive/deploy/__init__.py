"""Deployment: export, reduced precision, host profiling, chip estimates, reports and model cards.

The model stays plain PyTorch; everything here wraps a built ``DrivingModel`` + its ``ModelConfig``.

* ``export``   ``export_onnx`` (static batch-1 graph, default ONNX domain, atomic write), ``parity``,
               ``run_export`` / ``add_export_arguments`` / ``export_command`` for ``drive export``.
* ``quantize`` ``to_fp16``, ``quantize_int8`` (QDQ, calibrated; sensitive ops kept float, with a
               report), ``temporal_inputs`` (calibration frames with the model's own ``prev_bev``).
* ``fidelity`` ``compare_to_reference``: a variant against the fp32 graph (output errors, detection
               agreement, plan deviation).
* ``profile``  host measurement: latency percentiles, peak RSS, params / FLOPs / bytes per stage,
               onnxruntime per-operator profile, matmul probe, host roofline.
* ``chips``    catalogue (``configs/deploy/chips.yaml``) and per-stage roofline ESTIMATES.
* ``report``   ``run_profile`` and the report files of ``drive profile``; ``profile_cli`` its arguments and command;
               profile.json / profile.md / plots, several models side by side.
* ``card``     ``write_model_card``: ``<model>.card.json`` next to each graph.

Errors a user can cause (bad target, short calibration set, unwritable directory) raise
``DeployError`` subclasses; the CLI helpers turn them into exit code 2.
"""
from drive.deploy.chips import UnknownTargetError, estimate, get_targets, load_catalogue
from drive.deploy.card import write_model_card
from drive.deploy.command import run_export
from drive.deploy.export import DeployError, export_onnx, parity
from drive.deploy.fidelity import compare_to_reference
from drive.deploy.quantize import CalibrationError, quantize_int8, temporal_inputs, to_fp16
from drive.deploy.report import ProfileSubject, run_profile

__all__ = ["DeployError", "CalibrationError", "UnknownTargetError", "export_onnx", "parity", "run_export", "to_fp16",
           "quantize_int8", "compare_to_reference", "temporal_inputs", "load_catalogue", "get_targets", "estimate",
           "run_profile", "ProfileSubject", "write_model_card"]
