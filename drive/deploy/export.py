"""Export a ``DrivingModel`` to a static-shape, standard-domain ONNX graph and check it against eager.

The graph (batch 1, fixed image size, opset 18 by default) is what every edge toolchain gets:

Inputs (``drive.models.INPUT_NAMES`` order)
    ``images``      (1, N, 3, H, W) float32, RGB in [0, 1] normalised with ``drive.types.IMAGE_MEAN / IMAGE_STD``,
                    cameras in ``drive.types.CAMERAS`` order
    ``ego2img``     (1, N, 4, 4) float32, ego -> ``(u*d, v*d, d, 1)`` pixels of the *resized* image
    ``ego_status``  (1, 3) float32, speed m/s, acceleration m/s^2, yaw rate rad/s
    ``command``     (1,) int64 index into ``drive.types.COMMANDS``
    ``prev_bev``    (1, C, S, S) float32, the ``bev`` output of the previous frame; zeros on a first frame
    ``prev_T_cur``  (1, 4, 4) float32, current ego frame -> previous keyframe's ego frame
    ``has_prev``    (1,) float32, 1 when ``prev_bev`` is a real previous frame, else 0

Outputs (``ModelOutputs.export_names()`` order): ``bev`` (loop it back as the next ``prev_bev``),
the dense detection maps, decoded detections (fixed top-K: ``boxes``, ``scores``, ``labels``,
``attrs``), ``map_logits``, ``motion_trajs``, ``motion_mode_logits``, ``plan``, ``plan_refined``,
``plan_change``. Decoding is inside the graph with static shapes (sigmoid, max-pool peak keep,
TopK, Gather); there is no NMS, no ``NonZero`` and no control flow.

Every node carries the exporter's ``pkg.torch.onnx.name_scopes`` metadata; ``node_stages`` maps
nodes to model stages (backbone, neck, view transform, heads, feasibility) from it, which the
profiler and the quantizer use.
"""
from __future__ import annotations

import ast
import contextlib
import os
import re
import tempfile
import time
from collections import Counter
from typing import Any, Iterable, Mapping, Optional, Sequence, Union

import numpy as np
import onnx
import torch
from torch import Tensor

from drive.hashing import sha256_file
from drive.staging import staged_file

from drive.models import INPUT_NAMES, FlatOutputs, ModelOutputs
from drive.models.build import ModelConfig
from drive.models.example_inputs import example_inputs
from drive.models.model import DrivingModel

OUTPUT_NAMES: tuple[str, ...] = ModelOutputs.export_names()
# Top-level children of DrivingModel, in forward order; nodes outside them are "other" (glue reshapes).
STAGES: tuple[str, ...] = ("backbone", "neck", "view_transform", "detection_head", "map_head", "motion_head",
                           "planning_head", "feasibility")
DEFAULT_DOMAINS = {"", "ai.onnx"}
FORBIDDEN_OPS = {"If", "Loop", "Scan", "NonZero"}

INPUT_DOC: dict[str, str] = {
    "images": "(1, N, 3, H, W) float32 RGB scaled to [0, 1] then normalised with IMAGE_MEAN / IMAGE_STD; "
              "cameras in CAMERAS order",
    "ego2img": "(1, N, 4, 4) float32 ego -> (u*d, v*d, d, 1) in pixels of the resized image (img_aug @ K4 @ cam_T_ego)",
    "ego_status": "(1, 3) float32 speed m/s, longitudinal acceleration m/s^2, yaw rate rad/s",
    "command": "(1,) int64 index into COMMANDS (right, left, straight)",
    "prev_bev": "(1, C, S, S) float32 the previous frame's `bev` output; zeros on the first frame of a scene",
    "prev_T_cur": "(1, 4, 4) float32 current ego frame -> previous keyframe's ego frame",
    "has_prev": "(1,) float32 1.0 if prev_bev comes from a real previous frame, else 0.0",
}
OUTPUT_DOC: dict[str, str] = {
    "bev": "(1, C, S, S) BEV features (row = y, col = x); feed back as the next frame's prev_bev",
    "det_heatmap": "(1, 10, S, S) class heatmap logits (CLASSES order)",
    "det_regression": "(1, 10, S, S) offset(2) z log-size(3) sin cos vel(2)",
    "det_attributes": "(1, 8, S, S) attribute logits (ATTRIBUTES order)",
    "boxes": "(1, K, 9) decoded top-K boxes x y z l w h yaw vx vy, ego frame (m, rad, m/s)",
    "scores": "(1, K) sigmoid scores of the top-K peaks (empty slots have low scores)",
    "labels": "(1, K) int64 index into CLASSES",
    "attrs": "(1, K) int64 index into ATTRIBUTES, -1 where the class has none",
    "map_logits": "(1, Sm, Sm) drivable-area logits on the map grid, row = y, col = x",
    "motion_trajs": "(1, K, M, T, 2) per top-K agent and mode, cumulative xy offsets from the box centre (m)",
    "motion_mode_logits": "(1, K, M) mode logits",
    "plan": "(1, T, 2) planned ego waypoints, cumulative, ego frame (m), 0.5 s steps",
    "plan_refined": "(1, T, 2) plan after the feasibility layer",
    "plan_change": "(1,) max waypoint displacement by the feasibility layer (m)",
}

Inputs = Union[Sequence[Tensor], Mapping[str, Any]]


class DeployError(RuntimeError):
    """A deploy step cannot proceed (bad input, bad target, unwritable output). CLIs exit non-zero on it."""


# ----------------------------------------------------------------------------------------------------
# inputs
# ----------------------------------------------------------------------------------------------------
def as_args(inputs: Inputs) -> tuple[Tensor, ...]:
    """A 7-tuple of tensors (``INPUT_NAMES`` order) from a tuple or a name -> array/tensor mapping."""
    if isinstance(inputs, Mapping):
        missing = [n for n in INPUT_NAMES if n not in inputs]
        if missing:
            raise DeployError(f"inputs lack {missing}; expected {list(INPUT_NAMES)}")
        inputs = [inputs[n] for n in INPUT_NAMES]
    if len(inputs) != len(INPUT_NAMES):
        raise DeployError(f"expected {len(INPUT_NAMES)} inputs {list(INPUT_NAMES)}, got {len(inputs)}")
    return tuple(x if isinstance(x, Tensor) else torch.as_tensor(np.asarray(x)) for x in inputs)


def as_feeds(inputs: Inputs) -> dict[str, np.ndarray]:
    """Name -> numpy array (float32 / int64 as the graph expects)."""
    args = as_args(inputs)
    feeds = {}
    for name, x in zip(INPUT_NAMES, args):
        a = x.detach().cpu().numpy()
        feeds[name] = a.astype(np.int64) if name == "command" else a.astype(np.float32)
    return feeds


def split_batch(inputs: Inputs) -> list[tuple[Tensor, ...]]:
    """Batch-B inputs -> B batch-1 input tuples (the exported graph has batch 1)."""
    args = as_args(inputs)
    return [tuple(x[i:i + 1] for x in args) for i in range(args[0].shape[0])]


def default_example(model: DrivingModel, config: ModelConfig, seed: int = 0) -> tuple[Tensor, ...]:
    """Batch-1 example with a previous frame (``has_prev = 1``), so the temporal path is traced with data."""
    return split_batch(example_inputs(2, config.image_hw, model.bev_shape, config.num_cameras, seed))[1]


# ----------------------------------------------------------------------------------------------------
# graph checks and stage map
# ----------------------------------------------------------------------------------------------------
def check_graph(model: onnx.ModelProto) -> dict[str, int]:
    """Raise ``DeployError`` on a non-default domain or data-dependent control flow; return op counts."""
    ops = Counter(n.op_type for n in model.graph.node)
    domains = {n.domain for n in model.graph.node}
    if not domains <= DEFAULT_DOMAINS:
        raise DeployError(f"graph uses non-default ONNX domains {sorted(domains - DEFAULT_DOMAINS)}")
    bad = sorted(set(ops) & FORBIDDEN_OPS)
    if bad:
        raise DeployError(f"graph contains {bad} (data-dependent control flow / shapes), which edge compilers reject")
    return dict(sorted(ops.items()))


def _scopes(node: onnx.NodeProto) -> list[str]:
    for p in node.metadata_props:
        if p.key == "pkg.torch.onnx.name_scopes":
            try:
                return list(ast.literal_eval(p.value))
            except (ValueError, SyntaxError):
                return []
    return []


def node_meta(node: onnx.NodeProto, key: str) -> str:
    return next((p.value for p in node.metadata_props if p.key == key), "")


def stage_of_scopes(scopes: Sequence[str]) -> str:
    """First component of the module path (scopes look like ``'model.view_transform.layers.0'``) that is a
    top-level stage, else 'other'."""
    return next((p for s in scopes for p in s.split(".") if p in STAGES), "other")


def _base_name(name: str) -> str:
    """Strip suffixes that graph rewriters append to a node's name ('/MatMulAddFusion', '_token_12', '_nchwc')."""
    name = re.sub(r"(_token_\d+)+$", "", name.split("/")[0])
    return re.sub(r"_nchwc$", "", name)


def node_stages(model: onnx.ModelProto, reference: Optional[onnx.ModelProto] = None) -> dict[str, str]:
    """Node name -> stage. Uses the exporter's scope metadata; for graphs rewritten by other tools
    (quant_pre_process, the quantizer, ORT's optimiser) pass the exported graph as ``reference``:
    nodes are matched by name, then by the tensors they produce (fusions keep output names, Q/DQ
    suffixes are stripped), then inherit the stage of their producers / consumers."""
    ref = reference if reference is not None else model
    ref_stage = {n.name: stage_of_scopes(_scopes(n)) for n in ref.graph.node}
    ref_tensor = {o: ref_stage[n.name] for n in ref.graph.node for o in n.output}
    stages: dict[str, str] = {}

    def strip(name: str) -> str:
        for suffix in ("_QuantizeLinear_Output", "_DequantizeLinear_Output", "_quantized", "_output_0", "_nchwc"):
            name = name.replace(suffix, "")
        return name

    for n in model.graph.node:
        s = _scopes(n)
        if s:
            stages[n.name] = stage_of_scopes(s)
        elif n.name in ref_stage:
            stages[n.name] = ref_stage[n.name]
        elif _base_name(n.name) in ref_stage:
            stages[n.name] = ref_stage[_base_name(n.name)]
        else:  # fused / rewritten nodes keep the name or the output tensor of the last node they replace
            hit = next((ref_tensor[strip(o)] for o in [*n.output, n.name] if strip(o) in ref_tensor), None)
            if hit is not None:
                stages[n.name] = hit
    # propagate along edges for whatever is left (new reshapes, Q/DQ nodes)
    producer = {o: n.name for n in model.graph.node for o in n.output}
    consumers: dict[str, list[str]] = {}
    for n in model.graph.node:
        for i in n.input:
            consumers.setdefault(i, []).append(n.name)
    for _ in range(8):
        changed = False
        for n in model.graph.node:
            if n.name in stages:
                continue
            near = [stages.get(producer.get(i, ""), "") for i in n.input]
            near += [stages.get(c, "") for o in n.output for c in consumers.get(o, [])]
            near = [s for s in near if s and s != "other"]
            if near:
                stages[n.name] = Counter(near).most_common(1)[0][0]
                changed = True
        if not changed:
            break
    for n in model.graph.node:
        stages.setdefault(n.name, "other")
    return stages


def io_spec(model: onnx.ModelProto) -> dict[str, list[dict]]:
    """Inputs / outputs with shape, dtype and meaning."""
    def entry(v: onnx.ValueInfoProto, doc: Mapping[str, str]) -> dict:
        t = v.type.tensor_type
        return {"name": v.name, "shape": [d.dim_value if d.HasField("dim_value") else d.dim_param for d in t.shape.dim],
                "dtype": onnx.helper.tensor_dtype_to_np_dtype(t.elem_type).name, "meaning": doc.get(v.name, "")}
    return {"inputs": [entry(v, INPUT_DOC) for v in model.graph.input],
            "outputs": [entry(v, OUTPUT_DOC) for v in model.graph.output]}


# ----------------------------------------------------------------------------------------------------
# atomic writing
# ----------------------------------------------------------------------------------------------------
def check_writable_dir(out_dir: str) -> str:
    """Create ``out_dir`` if needed and prove it is writable; ``DeployError`` with the reason otherwise."""
    out_dir = os.path.abspath(out_dir)
    try:
        os.makedirs(out_dir, exist_ok=True)
        fd, probe = tempfile.mkstemp(dir=out_dir, prefix=".write-probe-")
        os.close(fd)
        os.remove(probe)
    except OSError as e:
        raise DeployError(f"output directory {out_dir!r} is not writable: {e.strerror or e}") from e
    return out_dir


@contextlib.contextmanager
def atomic_path(path: str):
    """Yield a temporary path in the target directory; on success ``os.replace`` it onto ``path``,
    on any error remove it, so a half-written file never appears under the final name."""
    check_writable_dir(os.path.dirname(os.path.abspath(path)) or ".")
    with staged_file(path) as tmp:
        yield tmp


def save_onnx_atomic(model: onnx.ModelProto, path: str) -> None:
    with atomic_path(path) as tmp:
        onnx.save(model, tmp)


# The image preprocessing a graph expects, as model metadata (onnxruntime: ``get_modelmeta().custom_metadata_map``).
CROP_KEY = "drive.image_crop_top"


def set_preprocess_metadata(model: onnx.ModelProto, image_crop_top: float) -> None:
    onnx.helper.set_model_props(model, {**{p.key: p.value for p in model.metadata_props},
                                        CROP_KEY: repr(float(image_crop_top))})


def copy_preprocess_metadata(src_path: str, dst_path: str) -> None:
    """Carry the preprocessing metadata of an fp32 graph to a variant written by another tool."""
    src = onnx.load(src_path, load_external_data=False)
    value = next((p.value for p in src.metadata_props if p.key == CROP_KEY), None)
    if value is None:
        return
    dst = onnx.load(dst_path)
    set_preprocess_metadata(dst, float(value))
    save_onnx_atomic(dst, dst_path)


# ----------------------------------------------------------------------------------------------------
# export and parity
# ----------------------------------------------------------------------------------------------------
def export_onnx(model: DrivingModel, config: ModelConfig, out_path: str, example: Optional[Inputs] = None,
                opset: int = 18) -> dict:
    """Export ``model`` (eval mode, batch 1, static shapes) to ``out_path`` with ``torch.onnx.export(dynamo=True)``.

    Args:
        model: a built ``DrivingModel`` (its weights are exported as they are).
        config: its ``ModelConfig`` (image size, cameras, BEV grid of the static graph).
        out_path: target ``.onnx`` file; written through a temporary file in the same directory and
            ``os.replace``d at the end, so nothing half-written is left on failure.
        example: batch-1 inputs to trace with (tuple or name -> array mapping); default: example
            inputs with a previous frame. Only shapes matter: the model has no data-dependent branches.
        opset: ONNX opset (>= 16 for GridSample; 18 is tested).

    Returns a dict: path, opset, sha256, bytes, seconds, nodes, op counts, inputs/outputs (name,
    shape, dtype, meaning). Raises ``DeployError`` on an unwritable directory, a non-default domain or
    control flow in the graph.
    """
    if opset < 16:
        raise DeployError(f"opset {opset} < 16 has no GridSample; use 16 or later (18 is tested)")
    out_path = os.path.abspath(out_path)
    check_writable_dir(os.path.dirname(out_path))
    args = split_batch(example)[0] if example is not None else default_example(model, config)
    was_training = model.training
    wrapper = FlatOutputs(model).eval()
    t0 = time.perf_counter()
    try:
        with torch.no_grad():
            program = torch.onnx.export(wrapper, args, dynamo=True, opset_version=opset, input_names=list(INPUT_NAMES),
                                        output_names=list(OUTPUT_NAMES), verbose=False)
        proto = program.model_proto
        ops = check_graph(proto)
        with atomic_path(out_path) as tmp:
            program.save(tmp)
            saved = onnx.load(tmp)
            set_preprocess_metadata(saved, config.image_crop_top)
            onnx.save(saved, tmp)
    finally:
        model.train(was_training)
    info = {"path": out_path, "opset": opset, "sha256": sha256_file(out_path), "bytes": os.path.getsize(out_path),
            "seconds": round(time.perf_counter() - t0, 2), "nodes": len(proto.graph.node), "op_counts": ops}
    info.update(io_spec(proto))
    return info


def ort_session(onnx_path: str, threads: int = 1, profile_prefix: Optional[str] = None,
                optimized_path: Optional[str] = None):
    """An onnxruntime CPU session with fixed intra-op threads (and optional profiling)."""
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.log_severity_level = 3
    so.intra_op_num_threads = threads
    so.inter_op_num_threads = 1
    if profile_prefix:
        so.enable_profiling = True
        so.profile_file_prefix = profile_prefix
    if optimized_path:
        so.optimized_model_filepath = optimized_path
    return ort.InferenceSession(onnx_path, so, providers=["CPUExecutionProvider"])


def run_onnx(session, inputs: Inputs) -> dict[str, np.ndarray]:
    names = [o.name for o in session.get_outputs()]
    return dict(zip(names, session.run(None, as_feeds(inputs))))


def run_eager(model: DrivingModel, inputs: Inputs) -> dict[str, np.ndarray]:
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            out = model(*as_args(inputs)).to_tuple()
    finally:
        model.train(was_training)
    return {n: t.numpy() for n, t in zip(OUTPUT_NAMES, out)}


def diff_stats(ref: Mapping[str, np.ndarray], test: Mapping[str, np.ndarray]) -> dict[str, dict[str, float]]:
    """Per output: max_abs, mean_abs of ``test - ref`` and the reference's max magnitude."""
    stats = {}
    for name, r in ref.items():
        d = np.abs(test[name].astype(np.float64) - r.astype(np.float64))
        stats[name] = {"max_abs": float(d.max()), "mean_abs": float(d.mean()), "ref_max_abs": float(np.abs(r).max())}
    return stats


def parity(onnx_path: str, model: DrivingModel, inputs_list: Iterable[Inputs], threads: int = 1) -> dict[str, dict]:
    """onnxruntime vs eager on real inputs. Batch-B inputs are split into B frames.

    Returns per output name ``{"max_abs", "mean_abs", "ref_max_abs"}`` aggregated over all frames (max of
    maxima, mean of means), plus ``"_frames"``: the number of frames compared.
    """
    session = ort_session(onnx_path, threads)
    per: dict[str, list[dict]] = {}
    frames = 0
    for batch in inputs_list:
        for frame in split_batch(batch):
            stats = diff_stats(run_eager(model, frame), run_onnx(session, frame))
            for k, v in stats.items():
                per.setdefault(k, []).append(v)
            frames += 1
    if not frames:
        raise DeployError("parity needs at least one input frame")
    out: dict[str, Any] = {k: {"max_abs": max(s["max_abs"] for s in v), "mean_abs": float(np.mean([s["mean_abs"] for s in v])),
                               "ref_max_abs": max(s["ref_max_abs"] for s in v)} for k, v in per.items()}
    out["_frames"] = frames
    return out
