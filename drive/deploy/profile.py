"""Host measurement: latency, memory, parameters, FLOPs and bytes per stage, per-operator profiles.

Everything measured here is measured on *this* machine (a CPU); chip figures are estimates and
live in ``drive.deploy.chips``.

* Latency: p50 / p90 / p99 over ``runs`` calls after ``warmup`` calls, for torch eager (fp32) and
  onnxruntime at every precision given, with a fixed number of intra-op threads.
* Memory: peak resident set size while a variant is built and run. The peak mark is reset through
  ``/proc/self/clear_refs`` (Linux) before each variant, so each figure covers that variant only;
  it still includes the Python / torch baseline (reported alongside). Fallback: ``getrusage``
  (process-lifetime peak). psutil is not used (not installed).
* Parameters and FLOPs per stage from ``torch.utils.flop_counter.FlopCounterMode`` (mm / bmm /
  addmm / conv: 2 FLOPs per MAC; grid_sample, norms, softmax and element-wise ops are not
  counted), grouped by the model's top-level children and the parts of the view transform.
* Graph costs per stage from the ONNX graph (``graph_costs``): the same FLOP rule on Conv / MatMul
  / Gemm from inferred shapes, plus bytes moved (weights at the storage precision + activations
  read and written by the "heavy" ops; element-wise and shape ops are assumed fused into them, as
  TensorRT and NPU compilers do). These feed the host and chip rooflines.
* onnxruntime per-operator profile (``SessionOptions.enable_profiling``): kernel time by op type,
  by node and by stage (nodes of the optimised graph are mapped to stages through the exported
  graph's scope metadata).
* A matmul probe (n x n fp32 on the configured threads) gives this machine's attainable GFLOP/s;
  per stage, achieved = stage FLOPs / stage kernel time, as a fraction of the probe.
"""
from __future__ import annotations

import json
import os
import resource
import statistics
import tempfile
import time
from collections import Counter, defaultdict
from contextlib import contextmanager
from dataclasses import asdict
from typing import Any, Callable, Iterable, Mapping, Optional, Sequence

import numpy as np
import onnx
import torch
from torch.utils.flop_counter import FlopCounterMode

from drive.deploy.export import (STAGES, Inputs, as_args, as_feeds, node_stages, ort_session, split_batch)
from drive.models.build import ModelConfig
from drive.models.model import DrivingModel

HEAVY_OPS = {"Conv", "ConvInteger", "QLinearConv", "MatMul", "MatMulInteger", "QLinearMatMul", "Gemm", "GridSample",
             "Softmax", "LayerNormalization", "ReduceMean", "ReduceSum", "ReduceMax", "ReduceMin", "MaxPool",
             "AveragePool", "TopK", "Gather", "GatherElements", "GatherND", "Resize", "CumSum", "ArgMax"}
PRECISION_BYTES = {"fp32": 4, "fp16": 2, "int8": 1}


# ----------------------------------------------------------------------------------------------------
# timing and memory
# ----------------------------------------------------------------------------------------------------
def latency_stats(times_s: Sequence[float]) -> dict[str, float]:
    ms = np.asarray(times_s, dtype=np.float64) * 1e3
    return {"runs": int(ms.size), "p50_ms": float(np.percentile(ms, 50)), "p90_ms": float(np.percentile(ms, 90)),
            "p99_ms": float(np.percentile(ms, 99)), "mean_ms": float(ms.mean()), "min_ms": float(ms.min())}


def time_callable(fn: Callable[[], Any], runs: int = 100, warmup: int = 10) -> dict[str, float]:
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(runs):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return latency_stats(times)


@contextmanager
def torch_threads(threads: Optional[int]):
    old = torch.get_num_threads()
    if threads:
        torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(old)


def _status_kb(key: str) -> Optional[int]:
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(key + ":"):
                    return int(line.split()[1])
    except OSError:
        return None
    return None


def reset_peak_rss() -> bool:
    """Reset the kernel's peak-RSS mark (VmHWM) of this process; False where unsupported."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def rss_mb() -> dict[str, float]:
    """Current and peak resident set size in MiB (``/proc/self/status``; ``getrusage`` fallback for the peak)."""
    cur, peak = _status_kb("VmRSS"), _status_kb("VmHWM")
    if peak is None:
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # kB on Linux
    return {"current_mb": (cur or 0) / 1024.0, "peak_mb": peak / 1024.0}


@contextmanager
def memory_window():
    """``with memory_window() as mem: ...`` -> mem = {baseline_mb, peak_mb, peak_is_windowed}."""
    windowed = reset_peak_rss()
    mem: dict[str, Any] = {"baseline_mb": rss_mb()["current_mb"], "peak_is_windowed": windowed}
    try:
        yield mem
    finally:
        mem["peak_mb"] = rss_mb()["peak_mb"]


def time_torch(model: DrivingModel, inputs: Inputs, runs: int = 100, warmup: int = 10,
               threads: Optional[int] = None) -> dict[str, Any]:
    """Eager fp32 latency (eval, no_grad) and peak RSS."""
    args = as_args(inputs)
    model.eval()
    with torch_threads(threads), torch.no_grad(), memory_window() as mem:
        stats = time_callable(lambda: model(*args), runs, warmup)
    stats["memory"] = mem
    return stats


def time_onnx(onnx_path: str, inputs: Inputs, runs: int = 100, warmup: int = 10, threads: int = 1) -> dict[str, Any]:
    """onnxruntime CPU latency and peak RSS (session build included in the memory window)."""
    feeds = as_feeds(inputs)
    with memory_window() as mem:
        session = ort_session(onnx_path, threads)
        stats = time_callable(lambda: session.run(None, feeds), runs, warmup)
    stats["memory"] = mem
    return stats


def matmul_probe(n: int = 1024, threads: Optional[int] = None, repeats: int = 10) -> dict[str, float]:
    """Attainable fp32 GFLOP/s of this machine: best of ``repeats`` n x n x n matmuls."""
    a, b = torch.randn(n, n), torch.randn(n, n)
    with torch_threads(threads):
        torch.matmul(a, b)
        times = []
        for _ in range(repeats):
            t = time.perf_counter()
            torch.matmul(a, b)
            times.append(time.perf_counter() - t)
    flops = 2.0 * n ** 3
    return {"n": n, "threads": threads or torch.get_num_threads(), "gflops": flops / min(times) / 1e9,
            "gflops_median": flops / statistics.median(times) / 1e9}


# ----------------------------------------------------------------------------------------------------
# parameters, FLOPs and eager stage times (torch)
# ----------------------------------------------------------------------------------------------------
def stage_params(model: DrivingModel) -> dict[str, int]:
    out = {name: sum(p.numel() for p in child.parameters()) for name, child in model.named_children()}
    out["total"] = sum(out.values())
    return out


def count_flops(module: torch.nn.Module, *args: Any) -> dict[str, int]:
    """FlopCounterMode totals of ``module(*args)``: ``{"total": n, <module path>: n, ...}``."""
    counter = FlopCounterMode(display=False, depth=None)
    with counter:
        module(*args)
    out = {k: int(sum(v.values())) for k, v in counter.get_flop_counts().items()}
    out["total"] = int(counter.get_total_flops())
    return out


def stage_flops(model: DrivingModel, inputs: Inputs) -> dict[str, Any]:
    """Forward FLOPs per stage for batch-1 inputs (FlopCounterMode rules, see the module notes).

    Returns ``{"stages": {child: flops}, "view_transform_parts": {...}, "total": flops}``; view transform
    parts are the encoder layers' ``temporal_attn``, ``spatial_attn``, ``ffn`` summed over layers and
    ``(other)`` (reference points, ego-motion warp, norms, positional MLP).
    """
    args = as_args(split_batch(inputs)[0])
    model.eval()
    counts = count_flops(model, *args)  # grad mode on: the module tracker needs it
    total = counts.pop("total")
    root = type(model).__name__
    stages = {name: counts.get(f"{root}.{name}", 0) for name, _ in model.named_children()}
    parts: dict[str, int] = defaultdict(int)
    for path, flops in counts.items():
        p = path.split(".")
        if len(p) == 5 and p[1:3] == ["view_transform", "layers"]:
            parts[p[4]] += flops
    if parts:
        parts["(other)"] = stages.get("view_transform", 0) - sum(parts.values())
    return {"stages": stages, "view_transform_parts": dict(parts), "total": total}


def torch_stage_times(model: DrivingModel, inputs: Inputs, runs: int = 10, threads: Optional[int] = None) -> dict[str, float]:
    """Median eager wall time per top-level stage (forward hooks), ms."""
    args = as_args(split_batch(inputs)[0])
    times: dict[str, list[float]] = defaultdict(list)
    starts: dict[str, float] = {}
    handles = []
    for name, child in model.named_children():
        handles.append(child.register_forward_pre_hook(lambda m, a, n=name: starts.__setitem__(n, time.perf_counter())))
        handles.append(child.register_forward_hook(lambda m, a, o, n=name: times[n].append(time.perf_counter() - starts[n])))
    model.eval()
    try:
        with torch_threads(threads), torch.no_grad():
            model(*args)
            times.clear()
            for _ in range(runs):
                model(*args)
    finally:
        for h in handles:
            h.remove()
    # a stage called k times per forward contributes k samples per run: sum them per run
    out = {}
    for name, v in times.items():
        k = max(len(v) // runs, 1)
        out[name] = statistics.median(sum(v[i * k:(i + 1) * k]) for i in range(runs)) * 1e3
    return out


# ----------------------------------------------------------------------------------------------------
# ONNX graph costs
# ----------------------------------------------------------------------------------------------------
def _shapes(model: onnx.ModelProto) -> dict[str, tuple[int, ...]]:
    inferred = onnx.shape_inference.infer_shapes(model)
    shapes = {}
    for v in [*inferred.graph.value_info, *inferred.graph.input, *inferred.graph.output]:
        dims = v.type.tensor_type.shape.dim
        if all(d.HasField("dim_value") for d in dims):
            shapes[v.name] = tuple(d.dim_value for d in dims)
    for init in model.graph.initializer:
        shapes[init.name] = tuple(init.dims)
    return shapes


def node_flops(node: onnx.NodeProto, shapes: Mapping[str, tuple[int, ...]]) -> int:
    """2 x MACs of Conv / MatMul / Gemm (and their integer forms) from static shapes, else 0."""
    op = node.op_type
    try:
        if op in ("Conv", "ConvInteger", "QLinearConv"):
            w = shapes[node.input[3 if op == "QLinearConv" else 1]]
            out = shapes[node.output[0]]
            return 2 * int(np.prod(out)) * int(np.prod(w[1:]))
        if op in ("MatMul", "MatMulInteger", "QLinearMatMul"):
            a = shapes[node.input[0]]
            out = shapes[node.output[0]]
            return 2 * int(np.prod(out)) * int(a[-1])
        if op == "Gemm":
            trans_a = next((a.i for a in node.attribute if a.name == "transA"), 0)
            a = shapes[node.input[0]]
            out = shapes[node.output[0]]
            return 2 * int(np.prod(out)) * int(a[0] if trans_a else a[-1])
    except KeyError:
        return 0
    return 0


def graph_costs(model: onnx.ModelProto, precision: str = "fp32", float_nodes: Iterable[str] = (),
                reference: Optional[onnx.ModelProto] = None) -> dict[str, dict[str, float]]:
    """Per stage: ``flops`` (of which ``flops_float`` in ``float_nodes``), ``weight_bytes``,
    ``act_bytes`` (heavy ops' inputs read + outputs written), ``bytes`` = weights + act_bytes, and
    ``act_footprint_bytes`` (every node output, no buffer reuse: an upper bound), at ``precision``
    (int8: weights and activations of quantizable ops 1 byte, float nodes 2 bytes as fp16 on a chip)."""
    shapes = _shapes(model)
    stages = node_stages(model, reference)
    init = {i.name for i in model.graph.initializer}
    floats = set(float_nodes)
    b = PRECISION_BYTES[precision]
    costs: dict[str, dict[str, float]] = defaultdict(lambda: defaultdict(float))
    weights_seen: set[str] = set()
    for n in model.graph.node:
        c = costs[stages.get(n.name, "other")]
        nb = 2 if (precision == "int8" and n.name in floats) else b
        f = node_flops(n, shapes)
        c["flops"] += f
        if n.name in floats:
            c["flops_float"] += f
        for i in n.input:
            if i in init and i not in weights_seen and i in shapes:
                weights_seen.add(i)
                c["weight_bytes"] += int(np.prod(shapes[i])) * nb if shapes[i] else nb
        c["act_footprint_bytes"] += sum(int(np.prod(shapes[t])) * nb for t in n.output if t in shapes)
        if n.op_type in HEAVY_OPS:
            acts = [i for i in n.input if i and i not in init] + list(n.output)
            c["act_bytes"] += sum(int(np.prod(shapes[t])) * nb for t in acts if t in shapes)
    out = {}
    for stage, c in costs.items():
        out[stage] = {k: float(c.get(k, 0.0))
                      for k in ("flops", "flops_float", "weight_bytes", "act_bytes", "act_footprint_bytes")}
        out[stage]["bytes"] = out[stage]["weight_bytes"] + out[stage]["act_bytes"]
    return out


# ----------------------------------------------------------------------------------------------------
# onnxruntime per-operator profile
# ----------------------------------------------------------------------------------------------------
def ort_op_profile(onnx_path: str, inputs: Inputs, runs: int = 10, threads: int = 1,
                   reference: Optional[onnx.ModelProto] = None, top: int = 15) -> dict[str, Any]:
    """Kernel time per op type, per node and per stage (ms per run), from onnxruntime's JSON trace.

    ``reference``: the exported fp32 graph (scope metadata) when ``onnx_path`` is a quantized / fp16
    variant. Kernel times exclude the executor's overhead, so their sum is below the wall time.
    """
    feeds = as_feeds(inputs)
    with tempfile.TemporaryDirectory(prefix="ortprof-") as work:
        opt_path = os.path.join(work, "optimized.onnx")
        session = ort_session(onnx_path, threads, profile_prefix=os.path.join(work, "trace"), optimized_path=opt_path)
        session.run(None, feeds)  # warm-up, excluded below
        for _ in range(runs):
            session.run(None, feeds)
        trace_path = session.end_profiling()
        with open(trace_path) as f:
            trace = json.load(f)
        optimized = onnx.load(opt_path)
    ref = reference if reference is not None else onnx.load(onnx_path, load_external_data=False)
    stages = node_stages(optimized, ref)
    runs_seen = [e for e in trace if e.get("cat") == "Session" and e.get("name") == "model_run"]
    first_counted = sorted(e["ts"] for e in runs_seen)[1] if len(runs_seen) > 1 else 0
    by_type: Counter = Counter()
    by_node: Counter = Counter()
    by_stage: Counter = Counter()
    node_type = {}
    for e in trace:
        if e.get("cat") != "Node" or not e["name"].endswith("_kernel_time") or e["ts"] < first_counted:
            continue
        name = e["name"][: -len("_kernel_time")]
        op = e.get("args", {}).get("op_name", "?")
        by_type[op] += e["dur"]
        by_node[name] += e["dur"]
        node_type[name] = op
        by_stage[stages.get(name, "other")] += e["dur"]
    n = max(len(runs_seen) - 1, 1)
    total = sum(by_type.values()) / n / 1e3
    return {
        "runs": n, "threads": threads, "kernel_total_ms": total,
        "by_op_type": [{"op_type": k, "ms": v / n / 1e3, "share": v / n / 1e3 / max(total, 1e-9)}
                       for k, v in by_type.most_common(top)],
        "top_nodes": [{"node": k, "op_type": node_type[k], "stage": stages.get(k, "other"), "ms": v / n / 1e3}
                      for k, v in by_node.most_common(top)],
        "by_stage_ms": {k: v / n / 1e3 for k, v in sorted(by_stage.items(), key=lambda kv: -kv[1])},
    }


# ----------------------------------------------------------------------------------------------------
# host roofline
# ----------------------------------------------------------------------------------------------------
def host_roofline(costs: Mapping[str, Mapping[str, float]], measured_ms: Mapping[str, float], gflops: float,
                  bandwidth_gbs: float) -> dict[str, Any]:
    """Per stage: compute and memory floors on this machine (probe GFLOP/s, ``bandwidth_gbs``), the
    measured kernel time, measured / floor (the correction factor the chip estimator reuses) and the
    achieved fraction of the probe's GFLOP/s."""
    stages = {}
    for stage in sorted(set(costs) | set(measured_ms), key=lambda s: STAGES.index(s) if s in STAGES else 99):
        c = costs.get(stage, {"flops": 0.0, "bytes": 0.0})
        t_c = c["flops"] / (gflops * 1e9) * 1e3
        t_m = c["bytes"] / (bandwidth_gbs * 1e9) * 1e3
        floor = max(t_c, t_m)
        meas = measured_ms.get(stage)
        stages[stage] = {"gflop": c["flops"] / 1e9, "mbytes": c["bytes"] / 1e6, "compute_floor_ms": t_c,
                         "memory_floor_ms": t_m, "floor_ms": floor, "bound": "compute" if t_c >= t_m else "memory",
                         "measured_ms": meas,
                         "measured_over_floor": (meas / floor) if (meas and floor > 0) else None,
                         "achieved_gflops": (c["flops"] / (meas * 1e-3) / 1e9) if meas else None,
                         "achieved_fraction_of_probe": (c["flops"] / (meas * 1e-3) / 1e9 / gflops) if meas else None}
    floor_total = sum(s["floor_ms"] for s in stages.values())
    meas_total = sum(s["measured_ms"] or 0.0 for s in stages.values())
    return {"probe_gflops": gflops, "bandwidth_gbs": bandwidth_gbs, "stages": stages, "floor_ms": floor_total,
            "measured_kernel_ms": meas_total, "measured_over_floor": meas_total / floor_total if floor_total else None}


# ----------------------------------------------------------------------------------------------------
# one model, all precisions
# ----------------------------------------------------------------------------------------------------
def profile_model(name: str, model: Optional[DrivingModel], config: Optional[ModelConfig],
                  onnx_paths: Mapping[str, str], inputs: Inputs, runs: int = 100, warmup: int = 10,
                  threads: Optional[int] = None, op_profile_runs: int = 10, probe: Optional[Mapping] = None,
                  host_bandwidth_gbs: float = 34.0, float_nodes: Iterable[str] = ()) -> dict[str, Any]:
    """Measure one model on this host.

    Args:
        model / config: the eager model and its config (optional: an ONNX-only profile skips eager
            timing, parameters and torch FLOPs).
        onnx_paths: precision ('fp32', 'fp16', 'int8') -> graph. 'fp32' is required for stage
            mapping, graph costs and the host roofline.
        inputs: one batch-1 frame (tuple or mapping).
        threads: intra-op threads for torch and onnxruntime (default: all cores).
        probe: a ``matmul_probe`` result to reuse (else measured here).
        float_nodes: nodes of the fp32 graph that stay float in int8 (costed at fp16 bytes on chips).
    """
    threads = threads or os.cpu_count() or 1
    frame = split_batch(inputs)[0]
    if "fp32" not in onnx_paths:
        raise ValueError("profile_model needs the fp32 graph (onnx_paths['fp32'])")
    reference = onnx.load(onnx_paths["fp32"], load_external_data=False)
    out: dict[str, Any] = {"name": name, "threads": threads, "runs": runs, "warmup": warmup,
                           "config": asdict(config) if config is not None else None,
                           "note": "host measurements on this CPU; chip figures elsewhere are estimates"}
    probe = dict(probe) if probe else matmul_probe(threads=threads)
    out["probe"] = probe
    latency: dict[str, Any] = {}
    if model is not None:
        out["params"] = stage_params(model)
        out["flops"] = stage_flops(model, frame)
        latency["torch_eager_fp32"] = time_torch(model, frame, runs, warmup, threads)
        out["torch_stage_ms"] = torch_stage_times(model, frame, runs=min(runs, 10), threads=threads)
    out["file_bytes"] = {p: os.path.getsize(path) for p, path in onnx_paths.items()}
    out["ort_ops"] = {}
    for precision, path in onnx_paths.items():
        latency[f"ort_{precision}"] = time_onnx(path, frame, runs, warmup, threads)
        out["ort_ops"][precision] = ort_op_profile(path, frame, op_profile_runs, threads, reference)
    out["latency"] = latency
    floats = list(float_nodes)
    out["graph_costs"] = {p: graph_costs(reference, p, floats) for p in ("fp32", "fp16", "int8")}
    out["graph_flops_total"] = sum(c["flops"] for c in out["graph_costs"]["fp32"].values())
    out["host_roofline"] = host_roofline(out["graph_costs"]["fp32"], out["ort_ops"]["fp32"]["by_stage_ms"],
                                         probe["gflops"], host_bandwidth_gbs)
    p50 = latency["ort_fp32"]["p50_ms"]
    out["host_roofline"]["wall_p50_ms"] = p50
    out["host_roofline"]["wall_over_floor"] = p50 / out["host_roofline"]["floor_ms"] if out["host_roofline"]["floor_ms"] else None
    return out
