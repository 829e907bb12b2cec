"""Reduced-precision variants of an exported graph: FP16 and INT8 (post-training static, QDQ).

FP16 (``to_fp16``). ``onnxconverter-common`` is not a dependency; onnxruntime ships the same
converter as ``onnxruntime.transformers.float16``, which is what runs here. Initializers and
activations become float16, graph inputs and outputs stay float32 (``keep_io_types``: Cast
nodes at the boundary, so the runtime loop and ``prev_bev`` stay float32). Nodes that compute
sampling locations (camera projection, learned offsets, ego-motion warp, box centres), the
GridSample nodes and the feasibility optimiser stay float32 (``sensitive_nodes``): pixel
coordinates like ``u * d`` reach 1e4 and lose whole pixels in float16. On this CPU
onnxruntime has few float16 kernels and inserts Casts around the others, so FP16 runs (it is
verified in the tests) but is not faster here; it is an artifact for GPU / NPU toolchains.

INT8 (``quantize_int8``). ``quant_pre_process(skip_symbolic_shape=True)``, then onnxruntime
``quantize_static`` with ``QuantFormat.QDQ``, per-channel int8 weights, uint8 activations,
``reduce_range=True`` (7-bit weights: avoids the u8*s8 pair-sum saturation of AVX2 / non-VNNI
kernels), MinMax calibration on real frames. Only Conv / MatMul / Gemm are quantized
(where int8 pays); of those, ``sensitive_nodes`` keeps in float: everything that computes
sampling locations (a uint8 coordinate has ~1/256 of its range: whole pixels or BEV cells),
the feasibility layer, and optionally the attention MatMuls (q·kᵀ and p·v, both operands
activations). Softmax, LayerNormalization (fused or decomposed) and GridSample are listed in
``nodes_to_exclude`` too, so they stay float whatever ``op_types`` says. The returned report lists
every kept node with its op type, stage and reason.

Evidence (edge preset, random weights, 8 synthetic calibration frames, int8 vs fp32 graph):
quantizing the sampling-location path too raises the BEV relative error from 0.025 to 0.195 and
the yaw error of matched detections from 0.04 to 0.31 rad, so it stays float. Quantizing the
attention MatMuls as well changed nothing measurable (plan error 0.017 -> 0.019 m); they stay
float by default anyway (about 2% of the edge FLOPs; trained attention logits are peakier):
pass ``attention_matmuls_float=False`` to quantize them.

Two stages keep all their learned layers float (``INT8_FLOAT_STAGES``): the view transform, whose output
is the BEV state fed back as the next frame's ``prev_bev`` (8-bit error compounds frame to frame), and the
planning head. Evidence (the camera-only 30-minute checkpoint of 2026-12-07, 64 calibration frames,
drive-eval on synth_val, int8 minus fp32): with both quantized NDS -0.0003, ST-P3 L2 +0.032 m (the goal
is 0.02); planning head float +0.023 m; view transform and planning head float NDS 0.0000, mAP -0.0003,
L2 +0.011 m. Percentile instead of MinMax calibration gave +0.021 m alone, +0.019 with the planning head
float. On the host the view transform's int8 Gemms bought 1.7 of its 41 ms (it is GridSample-bound).
"""
from __future__ import annotations

import os
import tempfile
from collections import Counter, defaultdict
from typing import Any, Iterable, Iterator, Mapping, Optional, Sequence

import numpy as np
import onnx
import torch

from drive.deploy.export import (DeployError, Inputs, as_feeds, atomic_path, check_writable_dir, copy_preprocess_metadata,
                                 node_meta, node_stages, save_onnx_atomic, split_batch)
from drive.models import INPUT_NAMES
from drive.models.model import DrivingModel

REASONS: dict[str, str] = {
    "softmax": "Softmax: exponentials amplify input error and 8-bit outputs flush small attention / mode weights to 0",
    "layernorm": "LayerNorm (fused or decomposed): mean / variance over channels and a division; int8 cannot hold "
                 "both the mean and the deviations",
    "grid_sample": "GridSample: continuous bilinear sampling; kept float so features and coordinates are not "
                   "re-quantized per sample (and most int8 runtimes have no int8 kernel)",
    "sampling_grid": "computes sampling locations (camera projection, learned offsets, ego-motion warp, box centres): "
                     "int8 has ~1/256 of the range, i.e. whole pixels / BEV cells of error",
    "feasibility": "feasibility optimiser: unrolled iterations compound error, negligible FLOPs",
    "attention_matmul": "attention MatMul (q·kᵀ, p·v): both operands are activations with wide ranges",
    "head_output": "last learned layer before a task output (box regression, heatmap, map logits, trajectories, "
                   "plan): its 8-bit output grid becomes metric error in the box / waypoint; negligible FLOPs",
    "recurrent_state": "view transform: its projections write the BEV that is fed back as the next frame's prev_bev, "
                       "so their 8-bit error compounds frame to frame; GridSample-bound, int8 bought ~4 % of its time",
    "plan_head": "planning head: the ego plan is the output the car acts on; 0.8 % of the FLOPs",
}
# stages whose learned layers stay float in INT8 (reason key); evidence in the module notes
INT8_FLOAT_STAGES: dict[str, str] = {"view_transform": "recurrent_state", "planning_head": "plan_head"}
# outputs whose last learned layer stays float (the BEV state is not: its producers are the encoder's norms)
HEAD_OUTPUTS: tuple[str, ...] = ("det_heatmap", "det_regression", "det_attributes", "map_logits", "motion_trajs",
                                 "motion_mode_logits", "plan")
QUANT_OP_TYPES: tuple[str, ...] = ("Conv", "MatMul", "Gemm")
KEY_OPS: tuple[str, ...] = ("Conv", "MatMul", "Gemm", "GridSample", "Softmax", "LayerNormalization")
_STOP_AT = {"Conv", "MatMul", "Gemm"}  # included, not traversed: the learned projection producing offsets / boxes
_INTEGER_SOURCES = {"TopK", "ArgMax", "ArgMin"}  # indices: not a continuous coordinate path


class CalibrationError(DeployError):
    """The calibration set is missing or smaller than asked."""


# ----------------------------------------------------------------------------------------------------
# samples
# ----------------------------------------------------------------------------------------------------
def take_samples(source: Iterable[Inputs], n: int, what: str = "calibration frames", strict: bool = True) -> list[dict]:
    """The first ``n`` batch-1 frames of ``source`` as feed dicts; batch-B items count as B frames.
    ``strict``: fewer than ``n`` available -> ``CalibrationError`` naming both numbers."""
    if n <= 0:
        raise CalibrationError(f"{what}: asked for {n}; need at least 1")
    out: list[dict] = []
    for item in source:
        for frame in split_batch(item):
            out.append(as_feeds(frame))
            if len(out) == n:
                return out
    if strict:
        raise CalibrationError(f"{what}: asked for {n} but the source yielded only {len(out)}")
    return out


def temporal_inputs(model: DrivingModel, frames: Iterable[Mapping[str, Any]]) -> Iterator[dict]:
    """Complete calibration / evaluation frames with the model's own temporal state.

    ``frames`` yields batch-1 mappings with every input except ``prev_bev``, in scene order; when
    ``has_prev`` is 1 the previous frame's eager ``bev`` is filled in, otherwise zeros. This is how a
    runtime loops the graph, so calibration sees realistic ``prev_bev`` ranges.
    """
    model.eval()
    prev = None
    for frame in frames:
        f = dict(frame)
        has_prev = float(np.asarray(f["has_prev"]).reshape(-1)[0])
        zeros = torch.zeros(1, *model.bev_shape)
        f["prev_bev"] = prev if (prev is not None and has_prev > 0) else zeros
        feeds = as_feeds(f)
        with torch.no_grad():
            out = model(*[torch.as_tensor(feeds[n]) for n in INPUT_NAMES])
        prev = out.bev
        yield feeds


# ----------------------------------------------------------------------------------------------------
# which nodes stay float
# ----------------------------------------------------------------------------------------------------
def _decomposed_layernorm(graph: onnx.GraphProto) -> set[str]:
    """Nodes of ``(x - mean(x)) / sqrt(mean((x - mean)^2) + eps)`` patterns, with or without metadata."""
    producer = {o: n for n in graph.node for o in n.output}
    op_of = {n.name: n.op_type for n in graph.node}
    consumers: dict[str, list[onnx.NodeProto]] = defaultdict(list)
    for n in graph.node:
        for i in n.input:
            consumers[i].append(n)
    found: set[str] = set()
    for sub in (n for n in graph.node if n.op_type == "Sub" and len(n.input) == 2):
        mean = producer.get(sub.input[1])
        if mean is None or mean.op_type != "ReduceMean" or mean.input[0] != sub.input[0]:
            continue
        chain = {mean.name, sub.name}
        frontier = [sub]
        for _ in range(6):  # Pow/Mul -> ReduceMean -> Add -> Sqrt -> Div (-> Mul gamma -> Add beta)
            nxt = [c for f in frontier for o in f.output for c in consumers[o]
                   if c.op_type in ("Pow", "Mul", "ReduceMean", "Add", "Sqrt", "Div", "Reciprocal")]
            if not nxt:
                break
            chain.update(c.name for c in nxt)
            frontier = nxt
        if any(op_of[c] == "Sqrt" for c in chain):  # a normalisation, not just a centring
            found |= chain
    return found


def _grid_cone(graph: onnx.GraphProto) -> set[str]:
    """Nodes computing the ``grid`` input of every GridSample, back to the graph inputs, constants, the
    learned projection that produces offsets / boxes (included) or integer indices (excluded)."""
    producer = {o: n for n in graph.node for o in n.output}
    seen: set[str] = set()
    stack = [producer[n.input[1]] for n in graph.node if n.op_type == "GridSample" and n.input[1] in producer]
    while stack:
        node = stack.pop()
        if node.name in seen or node.op_type in _INTEGER_SOURCES:
            continue
        seen.add(node.name)
        if node.op_type in _STOP_AT:
            continue
        stack.extend(producer[i] for i in node.input if i in producer)
    return seen


def _head_output_layers(graph: onnx.GraphProto, outputs: Sequence[str] = HEAD_OUTPUTS) -> set[str]:
    """The Conv / MatMul / Gemm nodes nearest to each of ``outputs`` (walking back through shape and
    element-wise ops, not past the first learned layer of any path)."""
    producer = {o: n for n in graph.node for o in n.output}
    seen: set[str] = set()
    found: set[str] = set()
    stack = [producer[o.name] for o in graph.output if o.name in outputs and o.name in producer]
    while stack:
        node = stack.pop()
        if node.name in seen:
            continue
        seen.add(node.name)
        if node.op_type in QUANT_OP_TYPES:
            found.add(node.name)
            continue
        stack.extend(producer[i] for i in node.input if i in producer)
    return found


def sensitive_nodes(model: onnx.ModelProto, reference: Optional[onnx.ModelProto] = None,
                    attention_matmuls: bool = True, head_outputs: bool = True,
                    float_stages: Mapping[str, str] = INT8_FLOAT_STAGES) -> dict[str, str]:
    """Node name -> reason key (``REASONS``) for every node that should stay in float.

    ``reference``: the exported graph with scope metadata when ``model`` was rewritten (e.g. by
    ``quant_pre_process``), to find the feasibility stage and decomposed norms by module.
    ``float_stages``: stage -> reason key; their Conv / MatMul / Gemm nodes stay float too.
    """
    graph = model.graph
    stages = node_stages(model, reference)
    ref_nodes = {n.name: n for n in (reference or model).graph.node}
    initializers = {i.name for i in graph.initializer}
    constants = {o for n in graph.node if n.op_type == "Constant" for o in n.output} | initializers
    out: dict[str, str] = {}
    for name in _grid_cone(graph):
        out[name] = "sampling_grid"
    for name in _decomposed_layernorm(graph):
        out[name] = "layernorm"
    if head_outputs:
        for name in _head_output_layers(graph):
            out.setdefault(name, "head_output")
    for n in graph.node:
        ref = ref_nodes.get(n.name) or ref_nodes.get(n.name.split("/")[0])
        hierarchy = node_meta(ref, "pkg.torch.onnx.class_hierarchy") if ref is not None else ""
        if n.op_type == "Softmax":
            out[n.name] = "softmax"
        elif n.op_type == "LayerNormalization" or ("LayerNorm" in hierarchy and n.name not in out):
            out[n.name] = "layernorm"
        elif n.op_type == "GridSample":
            out[n.name] = "grid_sample"
        elif stages.get(n.name) == "feasibility":
            out.setdefault(n.name, "feasibility")
        elif stages.get(n.name) in float_stages and n.op_type in QUANT_OP_TYPES:
            out.setdefault(n.name, float_stages[stages[n.name]])
        elif attention_matmuls and n.op_type == "MatMul" and not any(i in constants for i in n.input):
            out.setdefault(n.name, "attention_matmul")
    return out


def keep_float_report(model: onnx.ModelProto, kept: Mapping[str, str], stages: Mapping[str, str],
                      relevant_ops: Optional[Sequence[str]] = None) -> dict:
    """Summary (op type -> count, reasons) and the node list; ``relevant_ops`` limits the node list to
    op types that the converter would otherwise have changed."""
    types = {n.name: n.op_type for n in model.graph.node}
    by_type: dict[str, dict] = {}
    others = 0
    for name, reason in kept.items():
        if relevant_ops is not None and types.get(name) not in relevant_ops:
            others += 1
            continue
        entry = by_type.setdefault(types.get(name, "?"), {"count": 0, "reasons": Counter()})
        entry["count"] += 1
        entry["reasons"][reason] += 1
    summary = {t: {"count": v["count"], "reasons": {REASONS[r]: c for r, c in v["reasons"].items()}}
               for t, v in sorted(by_type.items())}
    nodes = [{"node": name, "op_type": types.get(name, "?"), "stage": stages.get(name, "other"), "reason": reason}
             for name, reason in sorted(kept.items())
             if relevant_ops is None or types.get(name) in relevant_ops]
    return {"by_op_type": summary, "nodes": nodes, "other_nodes_kept": others, "reasons": REASONS,
            "note": "by_op_type / nodes list the op types the converter would otherwise change; other_nodes_kept "
                    "counts shape / element-wise nodes on the same paths"}


# ----------------------------------------------------------------------------------------------------
# FP16
# ----------------------------------------------------------------------------------------------------
def _dedupe_nodes(model: onnx.ModelProto) -> None:
    """The converter adds one Cast per (blocked consumer, fp16 input); two blocked consumers of one tensor
    give two identical Casts (same name and output), which is an invalid graph: keep the first."""
    seen: set[str] = set()
    keep = []
    for n in model.graph.node:
        if n.op_type == "Cast" and n.name in seen:
            continue
        seen.add(n.name)
        keep.append(n)
    del model.graph.node[:]
    model.graph.node.extend(keep)
    names: set[str] = set()
    infos = []
    for v in model.graph.value_info:
        if v.name not in names:
            names.add(v.name)
            infos.append(v)
    del model.graph.value_info[:]
    model.graph.value_info.extend(infos)


def to_fp16(fp32_path: str, out_path: str, keep_sensitive_float: bool = True) -> dict:
    """Float16 weights and activations, float32 graph inputs / outputs; sensitive nodes stay float32.

    Uses ``onnxruntime.transformers.float16.convert_float_to_float16`` (the onnxconverter-common
    converter vendored by onnxruntime). Returns a report: converter, kept-float nodes, sizes.
    """
    from onnxruntime.transformers.float16 import DEFAULT_OP_BLOCK_LIST, convert_float_to_float16

    model = onnx.load(fp32_path)
    kept = sensitive_nodes(model, attention_matmuls=False, float_stages={}) if keep_sensitive_float else {}
    # LayerNorm and Softmax run in float16 on GPUs; keep only what carries coordinates (and feasibility)
    kept = {k: v for k, v in kept.items() if v in ("sampling_grid", "grid_sample", "feasibility")}
    fp16 = convert_float_to_float16(model, keep_io_types=True, node_block_list=sorted(kept),
                                    op_block_list=list(DEFAULT_OP_BLOCK_LIST))
    _dedupe_nodes(fp16)
    fp16.ClearField("metadata_props")
    fp16.metadata_props.extend(model.metadata_props)
    save_onnx_atomic(fp16, out_path)
    report = keep_float_report(model, kept, node_stages(model), relevant_ops=KEY_OPS)
    report.update(converter="onnxruntime.transformers.float16.convert_float_to_float16 (keep_io_types=True)",
                  io="float32 at the graph boundary (Cast nodes inside)", path=os.path.abspath(out_path),
                  bytes=os.path.getsize(out_path), fp32_bytes=os.path.getsize(fp32_path),
                  note="onnxruntime CPU has few float16 kernels: it inserts Casts and runs float32 math; "
                       "this precision is for GPU / NPU toolchains")
    return report


# ----------------------------------------------------------------------------------------------------
# INT8
# ----------------------------------------------------------------------------------------------------
def quantize_int8(fp32_path: str, out_path: str, calibration: Iterable[Inputs], calib_samples: int,
                  attention_matmuls_float: bool = True, op_types: Sequence[str] = QUANT_OP_TYPES,
                  calibrate_method: str = "MinMax", symmetric_activations: bool = False) -> dict:
    """Post-training static INT8 (QDQ) calibrated on ``calib_samples`` real frames.

    Args:
        calibration: iterable of batch-1 input mappings (or tuples) in ``INPUT_NAMES`` order; it must
            yield at least ``calib_samples`` frames, else ``CalibrationError``.
        attention_matmuls_float: keep q·kᵀ / p·v MatMuls in float (default; see the module notes).
        op_types: op types to quantize (Conv, MatMul, Gemm: where int8 pays on CPU and accelerators).
        calibrate_method: onnxruntime ``CalibrationMethod`` name (MinMax, Percentile, Entropy).
        symmetric_activations: int8 symmetric activations (TensorRT-style explicit quantization)
            instead of uint8 asymmetric (the fast path of onnxruntime on x86).

    Returns a report with the calibration description, kept-float nodes by op type and reason,
    and counts of quantized nodes.
    """
    from onnxruntime.quantization import (CalibrationDataReader, CalibrationMethod, QuantFormat, QuantType,
                                          quantize_static)
    from onnxruntime.quantization.shape_inference import quant_pre_process

    samples = take_samples(calibration, calib_samples, what="int8 calibration frames", strict=True)
    out_dir = check_writable_dir(os.path.dirname(os.path.abspath(out_path)))
    reference = onnx.load(fp32_path)

    class _Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self._it = iter(samples)

        def get_next(self):
            return next(self._it, None)

        def rewind(self) -> None:
            self._it = iter(samples)

    with tempfile.TemporaryDirectory(dir=out_dir, prefix=".quant-") as work:
        pre = os.path.join(work, "pre.onnx")
        quant_pre_process(fp32_path, pre, skip_symbolic_shape=True)
        pre_model = onnx.load(pre)
        stages = node_stages(pre_model, reference)
        kept = sensitive_nodes(pre_model, reference, attention_matmuls=attention_matmuls_float)
        with atomic_path(out_path) as tmp:
            quantize_static(pre, tmp, _Reader(), quant_format=QuantFormat.QDQ, op_types_to_quantize=list(op_types),
                            per_channel=True, reduce_range=True,
                            activation_type=QuantType.QInt8 if symmetric_activations else QuantType.QUInt8,
                            weight_type=QuantType.QInt8, nodes_to_exclude=sorted(kept),
                            calibrate_method=getattr(CalibrationMethod, calibrate_method),
                            extra_options={"ActivationSymmetric": symmetric_activations,
                                           "CalibTensorRangeSymmetric": symmetric_activations})
    copy_preprocess_metadata(fp32_path, out_path)
    quantized = onnx.load(out_path, load_external_data=False)
    dq_consumers = {o for n in quantized.graph.node if n.op_type == "DequantizeLinear" for o in n.output}
    q_nodes = [n for n in quantized.graph.node if n.op_type in op_types and any(i in dq_consumers for i in n.input)]
    q_ops = Counter(n.op_type for n in q_nodes)
    q_stages = Counter(stages.get(n.name, "other") for n in q_nodes)
    candidates = Counter(n.op_type for n in pre_model.graph.node if n.op_type in op_types)
    report = keep_float_report(pre_model, kept, stages, relevant_ops=sorted(set(op_types) | set(KEY_OPS)))
    report.update(
        path=os.path.abspath(out_path), bytes=os.path.getsize(out_path), fp32_bytes=os.path.getsize(fp32_path),
        scheme={"format": "QDQ", "weights": "int8 per-channel, reduce_range=True (7-bit)",
                "activations": "int8 symmetric" if symmetric_activations else "uint8 asymmetric per-tensor",
                "calibration": calibrate_method, "op_types": list(op_types),
                "pre_process": "quant_pre_process(skip_symbolic_shape=True)"},
        calibration={"frames": len(samples), "asked": calib_samples},
        quantized_nodes=dict(q_ops), quantized_by_stage=dict(q_stages), candidate_nodes=dict(candidates),
        kept_float_candidates={t: candidates[t] - q_ops.get(t, 0) for t in candidates},
    )
    return report
