"""Deployment benchmark of the edge preset on this CPU, side by side in one run.

    python scripts/bench_deploy.py [--runs 100] [--threads 2] [--calib 16] [--targets orin-x] [--report DIR]
    python scripts/bench_deploy.py --ckpt RUN/checkpoints/last.ckpt --calib 64 [--precisions fp32,fp16,int8]

Without ``--ckpt`` it builds ``edge_config()`` with random weights (latency and FLOPs are what matter;
int8 is compared with the fp32 graph on tensors only) and calibrates on a synthetic scene. With
``--ckpt`` it loads the trained model, calibrates INT8 on the first ``--calib`` frames of the run's
training split (the model's own previous BEV looped in) and scores every precision with drive-eval on
the run's val split (``--split``): eager torch, ONNX fp32 / fp16 / int8, NDS / mAP / map IoU / minADE /
planning L2, the deltas against the export goals (``drive.deploy.accuracy``) and the
accuracy-vs-latency plot in the report. In both cases it exports, quantizes (INT8 QDQ), then
measures torch eager vs onnxruntime fp32 vs onnxruntime int8 (p50 / p90 / p99 over ``--runs``),
the host roofline floor (graph FLOPs / matmul-probe GFLOP/s, bytes / 34 GB/s) and the measured /
floor ratio, a per-stage table, and the ESTIMATED Orin INT8 latency (roofline x host correction;
not a measurement), and the same with the chip-side anchor (CUDA-FastBEV's backbone on Orin): compute-bound
stages scaled by published / estimated, and the upper bound with every stage scaled.
Writes ``benchmarks/deploy.json`` (``deploy_trained.json`` with ``--ckpt``) and one line in ``BENCHMARKS.md``.
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from benchlib import record  # noqa: E402

from drive.deploy.accuracy import accuracy_deltas, evaluate_precisions  # noqa: E402
from drive.deploy.calibration import frame_source  # noqa: E402
from drive.deploy.chips import ESTIMATE_NOTE, anchor_check, get_targets  # noqa: E402
from drive.deploy.export import export_onnx, parity, split_batch  # noqa: E402
from drive.deploy.fidelity import compare_to_reference  # noqa: E402
from drive.deploy.quantize import quantize_int8, take_samples, temporal_inputs, to_fp16  # noqa: E402
from drive.evaluation.checkpoint import load_model  # noqa: E402
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
    ap.add_argument("--ckpt", default=None, help="trained drive-train checkpoint (real calibration + drive-eval)")
    ap.add_argument("--split", default=None, help="--ckpt: drive-eval split (default: the run's data.val_split)")
    ap.add_argument("--precisions", default="fp32,int8", help="ONNX precisions (fp32 and int8 always; add fp16)")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    precisions = ["fp32", "int8"] + (["fp16"] if "fp16" in args.precisions.split(",") else [])
    if args.ckpt:
        model, cfg, meta = load_model(args.ckpt)
        data = (meta.hyper_parameters or {}).get("data", {}) or {}
        root, version = data.get("root", "data/synth"), data.get("version", "v1.0-mini")
        split = args.split or data.get("val_split", "mini_val")
        frames = take_samples(frame_source(lambda p: (model, cfg, {"data": data}), args.ckpt)(), args.calib + 4)
        calib, evals = frames[:args.calib], frames[args.calib:]
    else:
        cfg = edge_config(view_transform=args.view_transform)
        model = build_model(cfg).eval()
        calib = scene(model, cfg, args.calib, seed=100)
        evals = scene(model, cfg, 4, seed=500)

    evaluated, deltas = {}, {}
    with tempfile.TemporaryDirectory(prefix="bench-deploy-") as work:
        graphs = {p: os.path.join(work, f"edge_{p}.onnx") for p in precisions}
        export = export_onnx(model, cfg, graphs["fp32"])
        par = parity(graphs["fp32"], model, evals[:2])
        qrep = quantize_int8(graphs["fp32"], graphs["int8"], calib, args.calib)
        if "fp16" in graphs:
            to_fp16(graphs["fp32"], graphs["fp16"])
        acc = compare_to_reference(graphs["fp32"], graphs["int8"], evals[1:])
        if args.ckpt:
            evaluated = evaluate_precisions(args.ckpt, graphs, root, version, split, os.path.join(work, "eval"),
                                            threads=args.threads)
            deltas = accuracy_deltas(evaluated)
            for k, v in evaluated.items():
                print(f"drive-eval {split} {k:6s}: " + ", ".join(f"{m} {x:.4f}" for m, x in v.items() if x is not None))
            for k, v in deltas.items():
                print(f"{k} vs {v['reference']}: " + ", ".join(f"d{m} {x:+.4f}" for m, x in v["delta"].items())
                      + f"  goal {v['goal_max_abs']} met: {v['meets_goal']}")
        subject = ProfileSubject("edge", model, cfg, onnx=graphs, inputs=evals[1])
        accuracy = {"edge": {p: {m: x for m, x in evaluated[p].items() if x is not None} for p in graphs}} if evaluated else None
        result = run_profile([subject], args.targets, args.report, runs=args.runs, warmup=args.warmup,
                             threads=args.threads, precisions=precisions, accuracy=accuracy)
    p = result["subjects"]["edge"]
    lat, hr = p["latency"], p["host_roofline"]
    orin = p["chips"].get("orin-x", {}).get("int8")
    anchored = orin["anchored"] if orin else None
    anchor = anchored["anchor"] if anchored else anchor_check(get_targets("orin-x")[0],
                                                              correction=p["host_corrections"].get("backbone", 1.0))

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
    source = "trained weights, held-out train frames" if args.ckpt else "untrained weights, synthetic scene"
    print(f"int8 vs fp32 ({source}): BEV rel L2 {acc['rel_l2']['bev']:.3f}, "
          f"top-10 detections matched {acc['detections']['match_rate']:.2f} (centre err {acc['detections']['centre_err_m']:.3f} m), "
          f"plan max {acc['plan_max_abs_m']:.3f} m; fp32 parity max {max(v['max_abs'] for k, v in par.items() if k != '_frames'):.1e}")
    if orin:
        print(f"Orin X INT8 {ESTIMATE_NOTE}: {orin['estimate_ms']:.1f} ms (roofline {orin['roofline_ms']:.2f} ms), "
              f"{orin['fps']:.0f} fps, 10 Hz {orin['meets_10hz']}, 20 Hz {orin['meets_20hz']}")
    print(f"anchor: estimator gives {anchor['estimate_ms']:.1f} ms for the CUDA-FastBEV R18 backbone on Orin "
          f"vs {anchor['published_ms']} ms published -> published / estimate = {anchor['published_over_estimate']:.1f}x")
    if anchored:
        print(f"Orin X INT8 anchored ESTIMATE (compute-bound stages x {anchored['factor']:.1f}): "
              f"{anchored['estimate_ms']:.1f} ms, 20 Hz {anchored['meets_20hz']}; every stage x {anchored['factor']:.1f} "
              f"(upper bound): {anchored['upper_bound_ms']:.1f} ms")

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
                       "orin_int8_estimate_ms": orin["stages"].get(s, {}).get("estimate_ms") if orin else None,
                       "orin_int8_bound": orin["stages"].get(s, {}).get("bound") if orin else None,
                       "orin_int8_anchored_ms": anchored["stages"].get(s) if anchored else None}
                   for s, v in hr["stages"].items()},
        "ort_top_ops_fp32": p["ort_ops"]["fp32"]["by_op_type"][:8],
        "ort_top_ops_int8": p["ort_ops"]["int8"]["by_op_type"][:8],
        "int8_vs_fp32": {"bev_rel_l2": acc["rel_l2"]["bev"], "rel_l2": acc["rel_l2"], "detections": acc["detections"],
                         "plan_max_abs_m": acc["plan_max_abs_m"]},
        "int8_quantized_nodes": qrep["quantized_nodes"], "int8_kept_float": {k: v["count"] for k, v in qrep["by_op_type"].items()},
        "fp32_parity_max_abs": max(v["max_abs"] for k, v in par.items() if k != "_frames"),
        "export_seconds": export["seconds"],
        "chips_estimates_not_measurements": {t: {pr: {"estimate_ms": e["estimate_ms"], "roofline_ms": e["roofline_ms"],
                                                      "anchored_ms": (e["anchored"] or {}).get("estimate_ms"),
                                                      "anchored_upper_bound_ms": (e["anchored"] or {}).get("upper_bound_ms")}
                                                 for pr, e in per.items()} for t, per in p["chips"].items()},
        "fastbev_anchor": anchor,
        "checkpoint": os.path.abspath(args.ckpt) if args.ckpt else None,
        "drive_eval": {"split": split, "by_precision": evaluated, "deltas": deltas} if args.ckpt else None,
    }
    summary = (f"edge {cfg.view_transform}, {args.threads} thr: eager {lat['torch_eager_fp32']['p50_ms']:.0f} / "
               f"ORT fp32 {lat['ort_fp32']['p50_ms']:.0f} / ORT int8 {lat['ort_int8']['p50_ms']:.0f} ms p50; "
               f"host floor {hr['floor_ms']:.1f} ms ({hr['wall_over_floor']:.0f}x); int8 BEV rel err "
               f"{acc['rel_l2']['bev']:.3f}; Orin int8 ESTIMATE {orin['estimate_ms']:.1f} ms"
               + (f", anchored {anchored['estimate_ms']:.1f} ms (upper bound {anchored['upper_bound_ms']:.1f})" if anchored else "")
               if orin else "")
    if args.ckpt:
        ev = evaluated
        summary = (f"trained {os.path.basename(os.path.dirname(os.path.dirname(os.path.abspath(args.ckpt))))}; " + summary
                   + "; drive-eval " + split + ": " + ", ".join(
                       f"{k} NDS {ev[k]['NDS']:.4f} L2 {ev[k]['plan_l2_avg_averaged']:.3f}" for k in ev)
                   + "; goals met: " + ", ".join(f"{k} {v['meets_goal']}" for k, v in deltas.items()))
    if not args.no_record:
        print(record("deploy_trained" if args.ckpt else "deploy", jsonable(figures), summary))


if __name__ == "__main__":
    main()
