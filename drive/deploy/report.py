"""``drive profile``: measure one or more models on this host, estimate them on edge chips, write a report.

``run_profile(subjects, targets, report_dir)`` profiles every ``ProfileSubject`` (an eager model
and / or its exported graphs) with ``drive.deploy.profile.profile_model``, estimates each on the
requested chips (``drive.deploy.chips``), and writes into ``report_dir``:

* ``profile.json``: everything (host measurements, graph costs, host roofline, chip estimates);
* ``profile.md``: tables: latency per variant, per-stage breakdown, top operators, chip estimates,
  and a side-by-side comparison when there are several subjects (e.g. edge vs cloud, BEVFormer
  vs bilinear view transform);
* ``stage_latency.png``: per-stage latency bars per target (host measured, chips estimated; log scale);
* ``accuracy_latency.png``: accuracy vs host latency per precision, when accuracy numbers are
  given (``accuracy={subject: {precision: {metric: value}}}``, e.g. from drive-eval runs:
  ``drive profile ... --eval int8=EVAL_DIR``, or ``drive.deploy.accuracy.evaluate_precisions``).

Chip numbers are estimates, not measurements; every output says so.
"""
from __future__ import annotations

import json
import os
import tempfile
from dataclasses import dataclass, field, fields, is_dataclass
from typing import Any, Iterable, Mapping, Optional, Sequence

import numpy as np
import onnx

from drive.deploy.chips import ESTIMATE_NOTE, estimate_targets, get_targets, host_corrections, load_catalogue
from drive.deploy.export import (STAGES, DeployError, Inputs, atomic_path, check_writable_dir, default_example,
                                 export_onnx, split_batch)
from drive.deploy.profile import matmul_probe, profile_model
from drive.models.build import ModelConfig
from drive.models.example_inputs import example_inputs
from drive.models.model import DrivingModel

HOST_NOTE = "host figures are measurements on this CPU (other processes may share the cores)"


@dataclass
class ProfileSubject:
    """One model to profile.

    Attributes:
        name: label in the report.
        model / config: eager model and its config (optional for an ONNX-only subject).
        onnx: precision -> graph path; missing precisions in ``precisions`` are produced from the
            model (fp32 export, fp16 conversion, int8 calibrated on ``calibration``).
        inputs: one frame to time with (default: synthetic example with a previous frame).
        calibration: frames for int8 (default: 16 synthetic frames — latency is meaningful, the
            int8 accuracy then is not).
        attention_matmuls_float: passed to ``quantize_int8``.
    """

    name: str
    model: Optional[DrivingModel] = None
    config: Optional[ModelConfig] = None
    onnx: dict = field(default_factory=dict)
    inputs: Optional[Inputs] = None
    calibration: Optional[list] = None
    attention_matmuls_float: bool = True
    quant_report: Optional[dict] = None  # filled when run_profile quantizes the model itself


def example_from_graph(onnx_path: str, seed: int = 0) -> tuple:
    """A plausible batch-1 frame for a graph, from its input shapes (nuScenes-like rig, random images)."""
    graph = onnx.load(onnx_path, load_external_data=False).graph
    shapes = {v.name: [d.dim_value for d in v.type.tensor_type.shape.dim] for v in graph.input}
    _, n, _, h, w = shapes["images"]
    c, s = shapes["prev_bev"][1], shapes["prev_bev"][2]
    return split_batch(example_inputs(2, (h, w), (c, s, s), n, seed))[1]


def _prepare(subject: ProfileSubject, precisions: Sequence[str], work_dir: str) -> dict[str, str]:
    """Fill in missing graphs; returns precision -> path."""
    from drive.deploy.quantize import quantize_int8, to_fp16

    paths = dict(subject.onnx)
    if "fp32" not in paths:
        if subject.model is None or subject.config is None:
            raise DeployError(f"{subject.name}: no fp32 graph and no model to export")
        paths["fp32"] = os.path.join(work_dir, f"{subject.name}_fp32.onnx")
        export_onnx(subject.model, subject.config, paths["fp32"])
    if "fp16" in precisions and "fp16" not in paths:
        paths["fp16"] = os.path.join(work_dir, f"{subject.name}_fp16.onnx")
        to_fp16(paths["fp32"], paths["fp16"])
    if "int8" in precisions and "int8" not in paths:
        calib = subject.calibration
        if calib is None:
            calib = [example_from_graph(paths["fp32"], seed=100 + i) for i in range(16)]
        paths["int8"] = os.path.join(work_dir, f"{subject.name}_int8.onnx")
        subject.quant_report = quantize_int8(paths["fp32"], paths["int8"], calib, len(calib),
                                             attention_matmuls_float=subject.attention_matmuls_float)
    return {p: paths[p] for p in ["fp32", *[q for q in precisions if q != "fp32"]] if p in paths}


def run_profile(subjects: Sequence[ProfileSubject], targets: Iterable[str] | str = ("orin-x",),
                report_dir: Optional[str] = None, runs: int = 100, warmup: int = 10, threads: Optional[int] = None,
                precisions: Sequence[str] = ("fp32", "int8"), accuracy: Optional[Mapping] = None,
                catalogue_path: Optional[str] = None, host_bandwidth_gbs: float = 34.0,
                op_profile_runs: int = 10) -> dict[str, Any]:
    """Profile ``subjects`` on this host, estimate them on ``targets``, write the report if ``report_dir``.

    Targets are validated first (``UnknownTargetError`` lists the catalogue) and the report directory
    is checked writable before any measurement. Returns the report dict (also ``profile.json``).
    """
    from drive.deploy.quantize import sensitive_nodes

    names = [s.name for s in subjects]
    if len(set(names)) < len(names):
        raise DeployError(f"profile subjects need distinct names, got {names}")
    chips = get_targets(targets, load_catalogue(catalogue_path))
    if report_dir is not None:
        report_dir = check_writable_dir(report_dir)
    threads = threads or os.cpu_count() or 1
    probe = matmul_probe(threads=threads)
    result: dict[str, Any] = {"note": ESTIMATE_NOTE, "host_note": HOST_NOTE, "targets": [c.key for c in chips],
                              "threads": threads, "probe": probe, "host_bandwidth_gbs": host_bandwidth_gbs,
                              "subjects": {}}
    with tempfile.TemporaryDirectory(prefix="drive-profile-") as tmp:
        work = os.path.join(report_dir, "onnx") if report_dir else tmp
        os.makedirs(work, exist_ok=True)
        for subject in subjects:
            paths = _prepare(subject, precisions, work)
            frame = subject.inputs if subject.inputs is not None else (
                default_example(subject.model, subject.config) if subject.model is not None
                else example_from_graph(paths["fp32"]))
            fp32 = onnx.load(paths["fp32"], load_external_data=False)
            floats = sorted(sensitive_nodes(fp32, attention_matmuls=subject.attention_matmuls_float))
            prof = profile_model(subject.name, subject.model, subject.config, paths, frame, runs, warmup, threads,
                                 op_profile_runs, probe, host_bandwidth_gbs, floats)
            corrections = host_corrections(prof["host_roofline"])
            costs = prof["graph_costs"]
            footprint = {p: sum(c["weight_bytes"] + c["act_footprint_bytes"] for c in costs[p].values()) for p in costs}
            prof["host_corrections"] = corrections
            prof["chips"] = estimate_targets(costs, chips, corrections, {n.op_type for n in fp32.graph.node}, footprint)
            prof["onnx_paths"] = paths
            if subject.quant_report:
                keys = ("scheme", "by_op_type", "quantized_nodes", "quantized_by_stage", "kept_float_candidates",
                        "calibration")
                prof["int8_report"] = {k: subject.quant_report[k] for k in keys if k in subject.quant_report}
            result["subjects"][subject.name] = prof
        if accuracy:
            result["accuracy"] = accuracy
        if report_dir is not None:
            result["paths"] = write_report(result, report_dir)
    return result


# ----------------------------------------------------------------------------------------------------
# writing
# ----------------------------------------------------------------------------------------------------
def _fmt(x: Any, nd: int = 1) -> str:
    if x is None:
        return "–"
    if isinstance(x, bool):
        return "yes" if x else "no"
    if isinstance(x, (int, np.integer)):
        return f"{x:,}"
    if isinstance(x, float):
        if x != x:
            return "–"
        return f"{x:.{nd}f}" if abs(x) >= 10 ** (-nd) or x == 0 else f"{x:.2e}"
    return str(x)


def _table(header: Sequence[str], rows: Iterable[Sequence[Any]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(_fmt(c) for c in r) + " |" for r in rows]
    return lines + [""]


def render_markdown(result: Mapping[str, Any]) -> str:
    subjects = result["subjects"]
    out = ["# Deployment profile", "",
           f"> {ESTIMATE_NOTE}. {HOST_NOTE}. Threads: {result['threads']}; matmul probe "
           f"{result['probe']['gflops']:.0f} GFLOP/s (best of 10, n = {result['probe']['n']}); "
           f"host memory bandwidth taken as {result['host_bandwidth_gbs']} GB/s.", ""]
    if len(subjects) > 1:
        out += ["## Side by side", ""]
        targets = result["targets"]
        header = ["model", "params M", "GFLOP", "eager p50 ms", "ORT fp32 p50", "ORT int8 p50", "host floor ms"]
        header += [f"{t} int8 est. ms" for t in targets]
        anchored_targets = [t for t in targets if any((p["chips"][t].get("int8") or {}).get("anchored")
                                                      for p in subjects.values())]
        header += [f"{t} int8 anchored ms" for t in anchored_targets]
        rows = []
        for name, p in subjects.items():
            lat = p["latency"]
            row = [name, p.get("params", {}).get("total", 0) / 1e6 if "params" in p else None,
                   p["graph_flops_total"] / 1e9, lat.get("torch_eager_fp32", {}).get("p50_ms"),
                   lat.get("ort_fp32", {}).get("p50_ms"), lat.get("ort_int8", {}).get("p50_ms"),
                   p["host_roofline"]["floor_ms"]]
            row += [p["chips"][t].get("int8", {}).get("estimate_ms") for t in targets]
            row += [((p["chips"][t].get("int8") or {}).get("anchored") or {}).get("estimate_ms") for t in anchored_targets]
            rows.append(row)
        out += _table(header, rows)
    for name, p in subjects.items():
        out += [f"## {name}", ""]
        out += ["### Host latency (measured)", ""]
        rows = []
        for variant, s in p["latency"].items():
            prec = variant.split("_")[-1]
            rows.append([variant, s["p50_ms"], s["p90_ms"], s["p99_ms"], s["runs"], s["memory"]["peak_mb"],
                         s["memory"]["baseline_mb"], p["file_bytes"].get(prec, 0) / 2**20 if variant.startswith("ort") else None])
        out += _table(["variant", "p50 ms", "p90 ms", "p99 ms", "runs", "peak RSS MiB", "RSS before MiB", "file MiB"], rows)
        hr = p["host_roofline"]
        out += ["### Per stage (host)", "",
                f"Host roofline floor {hr['floor_ms']:.2f} ms (FLOPs / probe, bytes / bandwidth); ORT fp32 wall p50 "
                f"{hr['wall_p50_ms']:.1f} ms = {hr['wall_over_floor']:.1f}x the floor. Stage times are onnxruntime "
                "kernel times (sum below wall time).", ""]
        rows = []
        int8_stage = p["ort_ops"].get("int8", {}).get("by_stage_ms", {})
        flops_t = p.get("flops", {}).get("stages", {})
        eager = p.get("torch_stage_ms", {})
        for stage, s in hr["stages"].items():
            rows.append([stage, p.get("params", {}).get(stage, 0) / 1e6 if "params" in p else None,
                         flops_t.get(stage, 0) / 1e9 if flops_t else None, s["gflop"], s["mbytes"], eager.get(stage),
                         s["measured_ms"], int8_stage.get(stage), s["floor_ms"], s["bound"], s["measured_over_floor"],
                         100 * s["achieved_fraction_of_probe"] if s["achieved_fraction_of_probe"] is not None else None])
        out += _table(["stage", "params M", "GFLOP torch", "GFLOP graph", "MB moved", "eager ms", "ORT fp32 ms",
                       "ORT int8 ms", "floor ms", "bound", "measured/floor", "% of probe"], rows)
        if p.get("flops", {}).get("view_transform_parts"):
            parts = p["flops"]["view_transform_parts"]
            out += ["View transform GFLOP by part: " + ", ".join(f"{k} {v / 1e9:.3f}" for k, v in parts.items()), ""]
        for prec, ops in p["ort_ops"].items():
            out += [f"### Top operators, ORT {prec} (kernel {ops['kernel_total_ms']:.1f} ms / run)", ""]
            out += _table(["op type", "ms", "share %"], [[o["op_type"], o["ms"], 100 * o["share"]] for o in ops["by_op_type"][:10]])
        if p.get("int8_report"):
            r = p["int8_report"]
            out += ["### INT8: kept in float", "",
                    f"Scheme: {r['scheme']}. Calibration: {r['calibration']}. Quantized: {r['quantized_nodes']}; "
                    f"kept float among candidates: {r['kept_float_candidates']}; quantized per stage: "
                    f"{r.get('quantized_by_stage', '–')}.", ""]
            out += _table(["op type", "count", "reasons"],
                          [[t, v["count"], "; ".join(f"{k} ({c})" for k, c in v["reasons"].items())]
                           for t, v in r["by_op_type"].items()])
        out += ["### Edge chips (ESTIMATES, not measurements)", ""]
        rows = []
        for target, per in p["chips"].items():
            for prec, e in per.items():
                flags = ", ".join([f"{o} (unsupported)" for o in e["unsupported_ops"]] +
                                  [f"{o} (restricted)" for o in e["restricted_ops"]])
                rows.append([target, prec, e["estimate_ms"], e["roofline_ms"], e["fps"], e["energy_mj_per_frame"],
                             e["meets_10hz"], e["meets_20hz"], e["memory"]["fits"], flags or "–",
                             ", ".join(e["uncertain_figures"]) or "–"])
        out += _table(["target", "precision", "estimate ms", "roofline ms", "fps", "mJ / frame", "10 Hz", "20 Hz",
                       "memory fits", "ops to check", "uncertain figures"], rows)
        for target, per in p["chips"].items():
            a = (per.get("int8") or {}).get("anchored")
            if a:
                an = a["anchor"]
                out += [f"Chip-side anchor on {target}: the estimator gives {an['estimate_ms']:.2f} ms for {an['what']} "
                        f"against {an['published_ms']} ms published ({an['source']}): x{a['factor']:.1f}. Anchored INT8 "
                        f"estimate (compute-bound stages x{a['factor']:.1f}, memory-bound as estimated): "
                        f"{a['estimate_ms']:.1f} ms ({a['fps']:.0f} fps; 10 Hz {_fmt(a['meets_10hz'])}, 20 Hz "
                        f"{_fmt(a['meets_20hz'])}); every stage x{a['factor']:.1f} (upper bound): {a['upper_bound_ms']:.1f} ms. "
                        "Per stage: " + ", ".join(f"{k} {v:.2f}" for k, v in a["stages"].items()), ""]
        first = next(iter(p["chips"].values()), {})
        if first:
            e = next(iter(first.values()))
            out += ["Per-stage estimate (ms) on " + e["target"] + f" ({e['precision']}): " +
                    ", ".join(f"{k} {v['estimate_ms']:.2f} (roofline {v['roofline_ms']:.3f}, x{v['correction']:.1f})"
                              for k, v in e["stages"].items()), "",
                    "Assumptions: " + "; ".join(e["assumptions"]), ""]
    if result.get("accuracy"):
        out += ["## Accuracy vs latency", "", "Accuracy figures as given to the report; latency = host ORT p50.", ""]
        rows = []
        for name, per in result["accuracy"].items():
            for prec, metrics in per.items():
                lat = subjects.get(name, {}).get("latency", {}).get(f"ort_{prec}", {}).get("p50_ms")
                rows += [[name, prec, k, v, lat] for k, v in metrics.items()]
        out += _table(["model", "precision", "metric", "value", "host p50 ms"], rows)
    return "\n".join(out)


def plot_stage_latency(result: Mapping[str, Any], path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    subjects = result["subjects"]
    fig, axes = plt.subplots(len(subjects), 1, figsize=(11, 3.6 * len(subjects)), squeeze=False)
    for ax, (name, p) in zip(axes[:, 0], subjects.items()):
        stages = [s for s in STAGES if s in p["host_roofline"]["stages"]]
        series = {"host ORT fp32 (measured)": [p["ort_ops"]["fp32"]["by_stage_ms"].get(s, 0) for s in stages]}
        if "int8" in p["ort_ops"]:
            series["host ORT int8 (measured)"] = [p["ort_ops"]["int8"]["by_stage_ms"].get(s, 0) for s in stages]
        for target, per in p["chips"].items():
            if "int8" in per:
                series[f"{target} int8 (estimate)"] = [per["int8"]["stages"].get(s, {}).get("estimate_ms", 0) for s in stages]
                if per["int8"].get("anchored"):
                    series[f"{target} int8 (anchored estimate)"] = [per["int8"]["anchored"]["stages"].get(s, 0)
                                                                     for s in stages]
        width = 0.8 / len(series)
        x = np.arange(len(stages))
        for i, (label, vals) in enumerate(series.items()):
            ax.bar(x + i * width, np.maximum(vals, 1e-4), width, label=label, hatch="//" if "estimate" in label else None)
        ax.set_yscale("log")
        ax.set_xticks(x + 0.4 - width / 2)
        ax.set_xticklabels(stages, rotation=20, fontsize=8)
        ax.set_ylabel("ms per frame")
        ax.set_title(f"{name}: per-stage latency (chip bars are ESTIMATES)", fontsize=10)
        ax.legend(fontsize=7, ncol=2)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_accuracy_latency(result: Mapping[str, Any], path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    acc = result["accuracy"]
    given = {m for per in acc.values() for ms in per.values() for m in ms}
    headline = [m for m in ("NDS", "mAP", "map_iou", "minADE", "plan_l2_avg_averaged") if m in given]
    metrics = headline or sorted(given)
    fig, axes = plt.subplots(1, len(metrics), figsize=(4.5 * len(metrics), 3.6), squeeze=False)
    for ax, metric in zip(axes[0], metrics):
        for name, per in acc.items():
            pts = [(result["subjects"][name]["latency"][f"ort_{prec}"]["p50_ms"], m[metric], prec)
                   for prec, m in per.items() if metric in m and f"ort_{prec}" in result["subjects"].get(name, {}).get("latency", {})]
            if not pts:
                continue
            ax.plot([p[0] for p in pts], [p[1] for p in pts], "o-", label=name)
            for xx, yy, prec in pts:
                ax.annotate(prec, (xx, yy), fontsize=7)
        ax.set_xlabel("host ORT p50 ms")
        ax.set_ylabel(metric)
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def jsonable(x: Any) -> Any:
    if is_dataclass(x):
        return {f.name: jsonable(getattr(x, f.name)) for f in fields(x)}
    if isinstance(x, Mapping):
        return {str(k): jsonable(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [jsonable(v) for v in x]
    if isinstance(x, (np.floating, np.integer)):
        return x.item()
    if isinstance(x, float) and x == float("inf"):
        return None
    return x


def write_report(result: Mapping[str, Any], report_dir: str) -> dict[str, str]:
    """profile.json, profile.md and the plots into ``report_dir`` (each written atomically)."""
    report_dir = check_writable_dir(report_dir)
    paths = {"json": os.path.join(report_dir, "profile.json"), "md": os.path.join(report_dir, "profile.md"),
             "stage_plot": os.path.join(report_dir, "stage_latency.png")}
    with atomic_path(paths["md"]) as tmp:
        with open(tmp, "w") as f:
            f.write(render_markdown(result))
    with atomic_path(paths["stage_plot"]) as tmp:
        plot_stage_latency(result, tmp + ".png")
        os.replace(tmp + ".png", tmp)
    if result.get("accuracy"):
        paths["accuracy_plot"] = os.path.join(report_dir, "accuracy_latency.png")
        with atomic_path(paths["accuracy_plot"]) as tmp:
            plot_accuracy_latency(result, tmp + ".png")
            os.replace(tmp + ".png", tmp)
    with atomic_path(paths["json"]) as tmp:
        with open(tmp, "w") as f:
            json.dump(jsonable({**result, "paths": paths}), f, indent=1, default=str)
    return paths
