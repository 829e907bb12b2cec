"""Deployment benchmark of the edge preset on this CPU, side by side in one run.

    python scripts/bench_deploy.py [--runs 100] [--threads 2] [--calib 16] [--targets orin-x] [--report DIR]

Builds ``edge_config()`` (random weights: latency and FLOPs are what matter here; accuracy of the
int8 graph is measured against the fp32 graph, not against ground truth), exports it, quantizes it
(INT8 QDQ calibrated on a synthetic scene whose ``prev_bev`` comes from the model itself), then
measures torch eager vs onnxruntime fp32 vs onnxruntime int8 (p50 / p90 / p99 over ``--runs``),
the host roofline floor (graph FLOPs / matmul-probe GFLOP/s, bytes / 34 GB/s) and the measured /
floor ratio, a per-stage table, and the ESTIMATED Orin INT8 latency (roofline x host correction;
not a measurement), with the CUDA-FastBEV backbone anchor as a sanity check of the estimator.
Writes ``benchmarks/deploy.json`` and one line in ``BENCHMARKS.md`` (scripts/benchlib.py).
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from benchlib import record  # noqa: E402

from drive.deploy.chips import ESTIMATE_NOTE, fastbev_backbone_check, load_catalogue  # noqa: E402
from drive.deploy.export import export_onnx, parity, split_batch  # noqa: E402
from drive.deploy.quantize import compare_to_reference, quantize_int8, temporal_inputs  # noqa: E402
from drive.deploy.report import ProfileSubject, jsonable, run_profile  # noqa: E402
from drive.models import INPUT_NAMES, build_model, edge_config  # noqa: E402
from drive.models.example_inputs import example_inputs  # noqa: E402


def scene(model, cfg, n: int, seed: int) -> list[dict]:
    frames = []
    for i in range(n):
        f = dict(zip(INPUT_NAMES, split_batch(example_inputs(2, cfg.image_hw, model.bev_shape, cfg.num_cameras, seed + i))[1]))
        f["has_prev"] = torch.tensor([0.0 if i == 0 else 1.0])
        del f["prev_bev"]
        frames.append(f)
    return list(temporal_inputs(model, frames))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", type=int, default=100)
    ap.add_argument("--warmup", type=int, default=10)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--calib", type=int, default=16, help="int8 calibration frames")
    ap.add_argument("--targets", default="orin-x")
    ap.add_argument("--view-transform", default="bevformer", choices=["bevformer", "bilinear"])
    ap.add_argument("--report", default=None, help="also write profile.json / profile.md / plots here")
    ap.add_argument("--no-record", action="store_true", help="do not write benchmarks/deploy.json")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    cfg = edge_config(view_transform=args.view_transform)
    model = build_model(cfg).eval()

    with tempfile.TemporaryDirectory(prefix="bench-deploy-") as work:
        fp32 = os.path.join(work, "edge_fp32.onnx")
        int8 = os.path.join(work, "edge_int8.onnx")
        export = export_onnx(model, cfg, fp32)
        calib = scene(model, cfg, args.calib, seed=100)
        evals = scene(model, cfg, 4, seed=500)
        par = parity(fp32, model, evals[:2])
        qrep = quantize_int8(fp32, int8, calib, args.calib)
        acc = compare_to_reference(fp32, int8, evals[1:])
        subject = ProfileSubject("edge", model, cfg, onnx={"fp32": fp32, "int8": int8}, inputs=evals[1])
        result = run_profile([subject], args.targets, args.report, runs=args.runs, warmup=args.warmup,
                             threads=args.threads)
    p = result["subjects"]["edge"]
    lat, hr = p["latency"], p["host_roofline"]
    orin = p["chips"].get("orin-x", {}).get("int8")
    anchor = fastbev_backbone_check(load_catalogue(), "orin-x", correction=p["host_corrections"].get("backbone", 1.0))

    print(f"edge ({cfg.view_transform}): {p['params']['total'] / 1e6:.2f} M params, "
          f"{p['graph_flops_total'] / 1e9:.2f} GFLOP (graph), threads {args.threads}, "
          f"probe {result['probe']['gflops']:.0f} GFLOP/s")
    print(f"{'variant':18s} {'p50':>8s} {'p90':>8s} {'p99':>8s}  ms   peak RSS MiB")
    for k, s in lat.items():
        print(f"{k:18s} {s['p50_ms']:8.1f} {s['p90_ms']:8.1f} {s['p99_ms']:8.1f}      {s['memory']['peak_mb']:.0f}")
    print(f"host roofline floor {hr['floor_ms']:.2f} ms; ORT fp32 p50 / floor = {hr['wall_over_floor']:.1f}x")
    print(f"{'stage':16s} {'GFLOP':>7s} {'MB':>7s} {'eager':>7s} {'ortfp32':>8s} {'ortint8':>8s} {'floor':>7s} "
          f"{'meas/fl':>8s} {'%probe':>7s} {'orin est':>9s}")
    i8 = p["ort_ops"]["int8"]["by_stage_ms"]
    for stage, s in hr["stages"].items():
        o = orin["stages"].get(stage, {}).get("estimate_ms") if orin else None
        print(f"{stage:16s} {s['gflop']:7.3f} {s['mbytes']:7.1f} {p['torch_stage_ms'].get(stage, 0):7.1f} "
              f"{s['measured_ms'] or 0:8.1f} {i8.get(stage, 0):8.1f} {s['floor_ms']:7.2f} "
              f"{(s['measured_over_floor'] or 0):8.1f} {100 * (s['achieved_fraction_of_probe'] or 0):7.1f} "
              f"{(o or 0):9.2f}")
    print(f"int8 vs fp32 (untrained weights, synthetic scene): BEV rel L2 {acc['rel_l2']['bev']:.3f}, "
          f"top-10 detections matched {acc['detections']['match_rate']:.2f} (centre err {acc['detections']['centre_err_m']:.3f} m), "
          f"plan max {acc['plan_max_abs_m']:.3f} m; fp32 parity max {max(v['max_abs'] for k, v in par.items() if k != '_frames'):.1e}")
    if orin:
        print(f"Orin X INT8 {ESTIMATE_NOTE}: {orin['estimate_ms']:.1f} ms (roofline {orin['roofline_ms']:.2f} ms), "
              f"{orin['fps']:.0f} fps, 10 Hz {orin['meets_10hz']}, 20 Hz {orin['meets_20hz']}")
    print(f"anchor: estimator gives {anchor['estimate_ms']:.1f} ms for the CUDA-FastBEV R18 backbone on Orin "
          f"vs 13.9 ms published -> published / estimate = {anchor['published_over_estimate']:.1f}x")

    figures = {
        "config": "edge", "view_transform": cfg.view_transform, "threads": args.threads, "runs": args.runs,
        "params_m": p["params"]["total"] / 1e6, "gflop_graph": p["graph_flops_total"] / 1e9,
        "gflop_torch": p["flops"]["total"] / 1e9, "probe_gflops": result["probe"]["gflops"],
        "latency_ms": {k: {q: s[q] for q in ("p50_ms", "p90_ms", "p99_ms")} for k, s in lat.items()},
        "peak_rss_mb": {k: s["memory"]["peak_mb"] for k, s in lat.items()},
        "file_mb": {k: v / 2**20 for k, v in p["file_bytes"].items()},
        "host_floor_ms": hr["floor_ms"], "ort_fp32_over_floor": hr["wall_over_floor"],
        "stages": {s: {"gflop": v["gflop"], "mbytes": v["mbytes"], "eager_ms": p["torch_stage_ms"].get(s),
                       "ort_fp32_ms": v["measured_ms"], "ort_int8_ms": i8.get(s), "floor_ms": v["floor_ms"],
                       "measured_over_floor": v["measured_over_floor"],
                       "orin_int8_estimate_ms": orin["stages"].get(s, {}).get("estimate_ms") if orin else None}
                   for s, v in hr["stages"].items()},
        "ort_top_ops_fp32": p["ort_ops"]["fp32"]["by_op_type"][:8],
        "ort_top_ops_int8": p["ort_ops"]["int8"]["by_op_type"][:8],
        "int8_vs_fp32": {"bev_rel_l2": acc["rel_l2"]["bev"], "rel_l2": acc["rel_l2"], "detections": acc["detections"],
                         "plan_max_abs_m": acc["plan_max_abs_m"]},
        "int8_quantized_nodes": qrep["quantized_nodes"], "int8_kept_float": {k: v["count"] for k, v in qrep["by_op_type"].items()},
        "fp32_parity_max_abs": max(v["max_abs"] for k, v in par.items() if k != "_frames"),
        "export_seconds": export["seconds"],
        "chips_estimates_not_measurements": {t: {pr: {"estimate_ms": e["estimate_ms"], "roofline_ms": e["roofline_ms"]}
                                                 for pr, e in per.items()} for t, per in p["chips"].items()},
        "fastbev_anchor": anchor,
    }
    summary = (f"edge {cfg.view_transform}, {args.threads} thr: eager {lat['torch_eager_fp32']['p50_ms']:.0f} / "
               f"ORT fp32 {lat['ort_fp32']['p50_ms']:.0f} / ORT int8 {lat['ort_int8']['p50_ms']:.0f} ms p50; "
               f"host floor {hr['floor_ms']:.1f} ms ({hr['wall_over_floor']:.0f}x); int8 BEV rel err "
               f"{acc['rel_l2']['bev']:.3f}; Orin int8 ESTIMATE {orin['estimate_ms']:.1f} ms" if orin else "")
    if not args.no_record:
        print(record("deploy", jsonable(figures), summary))


if __name__ == "__main__":
    main()
