"""``drive export``: checkpoint -> fp32 ONNX [+ fp16 | int8] with parity, quantization report and model cards.

The orchestration and CLI glue around ``drive.deploy.export`` (graph export and parity) and
``drive.deploy.quantize``; the checkpoint loader and the calibration frames are injected by the caller.
"""
from __future__ import annotations

import os
import shutil
import tempfile
from typing import Any, Callable, Iterable, Optional

from drive.deploy.export import (DeployError, Inputs, check_writable_dir, default_example, export_onnx, parity)
from drive.models.build import ModelConfig
from drive.models.model import DrivingModel


def run_export(load_model: Callable[[str], tuple[DrivingModel, ModelConfig, dict]], ckpt_path: str, out_dir: str,
               precision: str = "fp32", calib_iter_factory: Optional[Callable[[], Iterable[Inputs]]] = None,
               calib_samples: int = 64, opset: int = 18, parity_frames: int = 4) -> dict:
    """``drive export``: checkpoint -> ``out_dir/model_fp32.onnx`` [+ ``model_fp16.onnx`` | ``model_int8.onnx``]
    + a model card next to each graph.

    Args:
        load_model: ``load_model(ckpt_path) -> (model, model_config, meta)`` injected by the caller
            (``meta`` may describe the checkpoint: epoch, metrics, data set; it goes into the card).
        precision: 'fp32', 'fp16' or 'int8'. fp16 / int8 are produced from the fp32 graph, which is kept.
        calib_iter_factory: ``() -> iterable of batch-1 input mappings`` (``INPUT_NAMES`` keys) of real
            frames, in scene order when possible (``prev_bev`` must be the model's own previous BEV, see
            ``drive.deploy.quantize.temporal_inputs``). Required for int8: the first ``calib_samples``
            frames calibrate, the next ``parity_frames`` (if any) are the held-out parity / accuracy
            frames. For fp32 / fp16 its first frames are the parity inputs; without it, parity uses
            synthetic example inputs.
        calib_samples: frames to calibrate int8 on; fewer available -> ``CalibrationError``.

    Returns a summary dict (paths, parity, quantization report, card paths).
    """
    from drive.deploy.quantize import CalibrationError

    if precision not in ("fp32", "fp16", "int8"):
        raise DeployError(f"unknown precision {precision!r} (expected fp32, fp16 or int8)")
    if precision == "int8" and calib_iter_factory is None:
        raise CalibrationError("int8 needs calibration data: pass calib_iter_factory")
    created = not os.path.exists(out_dir)
    out_dir = check_writable_dir(out_dir)
    try:
        return _checked_export(load_model, ckpt_path, out_dir, precision, calib_iter_factory, calib_samples, opset,
                               parity_frames)
    except BaseException:
        if created and os.path.isdir(out_dir) and not os.listdir(out_dir):
            os.rmdir(out_dir)  # a failed export leaves no trace, not even the directory it made
        raise


def _checked_export(load_model, ckpt_path: str, out_dir: str, precision: str, calib_iter_factory, calib_samples: int,
                    opset: int, parity_frames: int) -> dict:
    from drive.deploy.quantize import CalibrationError, take_samples

    calib, held_out = None, None
    if precision == "int8":  # fail before any work when the calibration set is short
        frames = take_samples(calib_iter_factory(), calib_samples + parity_frames, what="calibration frames",
                              strict=False)
        if len(frames) < calib_samples:
            raise CalibrationError(f"int8 calibration frames: asked for {calib_samples} but the source yielded "
                                   f"only {len(frames)}")
        calib, held_out = frames[:calib_samples], frames[calib_samples:]
    model, config, meta = load_model(ckpt_path)
    model.eval()
    # Everything is written into a hidden staging directory and moved into out_dir only when every graph,
    # parity check and card succeeded: a failed int8 / fp16 step leaves no fp32 graph of a half-done export.
    stage = tempfile.mkdtemp(prefix=".export_partial_", dir=out_dir)
    try:
        summary = _export_into(stage, model, config, meta, ckpt_path, precision, calib, held_out,
                               calib_iter_factory, calib_samples, opset, parity_frames)
        for name in sorted(os.listdir(stage), key=lambda n: n.endswith(".card.json")):  # cards last
            os.replace(os.path.join(stage, name), os.path.join(out_dir, name))
    finally:
        shutil.rmtree(stage, ignore_errors=True)
    return _rebase(summary, stage, out_dir)


def _rebase(x: Any, old: str, new: str) -> Any:
    """The summary with staging-directory paths turned into their final ones."""
    if isinstance(x, str):
        return x.replace(old, new)
    if isinstance(x, dict):
        return {k: _rebase(v, old, new) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return type(x)(_rebase(v, old, new) for v in x)
    return x


def _export_into(out_dir: str, model: DrivingModel, config: ModelConfig, meta: dict, ckpt_path: str, precision: str,
                 calib: Optional[list], held_out: Optional[list], calib_iter_factory, calib_samples: int, opset: int,
                 parity_frames: int) -> dict:
    from drive.deploy.card import write_model_card
    from drive.deploy.fidelity import compare_to_reference
    from drive.deploy.quantize import quantize_int8, take_samples, to_fp16

    if calib is not None:
        parity_inputs = held_out or calib[:parity_frames]
        parity_source = (f"{len(held_out)} frames of the calibration iterator after the {calib_samples} used to calibrate"
                         if held_out else f"first {len(parity_inputs)} calibration frames (in-sample: no spare frames)")
    elif calib_iter_factory is not None:
        parity_inputs = take_samples(calib_iter_factory(), parity_frames, what="parity frames", strict=False)
        parity_source = f"first {len(parity_inputs)} frames of the calibration iterator"
    else:
        parity_inputs = [default_example(model, config, seed=s) for s in range(parity_frames)]
        parity_source = f"{parity_frames} synthetic example frames (random images, nuScenes-like rig)"
    fp32_path = os.path.join(out_dir, "model_fp32.onnx")
    export = export_onnx(model, config, fp32_path, opset=opset)
    fp32_parity = parity(fp32_path, model, parity_inputs)
    summary: dict[str, Any] = {"checkpoint": os.path.abspath(ckpt_path), "out_dir": out_dir, "precision": precision,
                               "export": export, "parity_fp32_vs_eager": fp32_parity, "parity_inputs": parity_source}
    cards = {"fp32": write_model_card(fp32_path, config, export, "fp32", parity=fp32_parity, parity_inputs=parity_source,
                                      checkpoint_path=ckpt_path, checkpoint_meta=meta)}
    if precision == "fp16":
        path = os.path.join(out_dir, "model_fp16.onnx")
        report = to_fp16(fp32_path, path)
        acc = compare_to_reference(fp32_path, path, parity_inputs)
        summary.update(fp16=report, accuracy_fp16_vs_fp32=acc)
        cards["fp16"] = write_model_card(path, config, export, "fp16", parity=acc, parity_inputs=parity_source,
                                         checkpoint_path=ckpt_path, checkpoint_meta=meta, precision_report=report)
    elif precision == "int8":
        path = os.path.join(out_dir, "model_int8.onnx")
        report = quantize_int8(fp32_path, path, calib, calib_samples)
        acc = compare_to_reference(fp32_path, path, parity_inputs)
        summary.update(int8=report, accuracy_int8_vs_fp32=acc)
        cards["int8"] = write_model_card(path, config, export, "int8", parity=acc, parity_inputs=parity_source,
                                         checkpoint_path=ckpt_path, checkpoint_meta=meta, precision_report=report)
    summary["cards"] = cards
    return summary


def add_export_arguments(parser) -> None:
    """Arguments of ``drive export CKPT --out DIR [--precision] [--calib-samples N] [--opset 18]``."""
    parser.add_argument("checkpoint", help="checkpoint file (loaded by the injected load_model)")
    parser.add_argument("--out", required=True, help="output directory (created; files written atomically)")
    parser.add_argument("--precision", default="fp32", choices=["fp32", "fp16", "int8"])
    parser.add_argument("--calib-samples", type=int, default=64, help="int8 calibration frames (error if fewer exist)")
    parser.add_argument("--opset", type=int, default=18)


def export_command(args, load_model: Callable, calib_iter_factory: Optional[Callable] = None) -> int:
    """Run ``drive export`` from parsed ``args``; prints a JSON summary, returns the exit code
    (0 ok, 2 on ``DeployError`` such as too few calibration frames or an unwritable directory)."""
    import json
    import sys

    try:
        summary = run_export(load_model, args.checkpoint, args.out, args.precision, calib_iter_factory,
                             args.calib_samples, args.opset)
    except DeployError as e:
        print(f"drive export: error: {e}", file=sys.stderr)
        return 2
    print(json.dumps({k: summary[k] for k in ("out_dir", "precision", "cards")}, indent=1))
    return 0
