"""Benchmark: task-level accuracy of each exported precision through drive-eval (same split, same frames).

Runs ``drive-eval`` with the torch backend and with the ONNX backend on ``model_fp32.onnx`` and (if
present) ``model_int8.onnx`` / ``model_fp16.onnx`` of an export directory, and reports NDS, mAP and
planning L2 (both conventions) of each and their differences from torch eager.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from benchlib import ROOT, record  # noqa: E402


def run_eval(ckpt: str, out: str, extra: list[str]) -> tuple[dict, float]:
    t0 = time.time()
    subprocess.run([os.path.join(ROOT, ".venv", "bin", "drive-eval"), f"ckpt_path={ckpt}", f"hydra.run.dir={out}",
                    *extra], check=True, cwd=ROOT)
    with open(os.path.join(out, "metrics.json")) as f:
        return json.load(f), time.time() - t0


def headline(m: dict) -> dict:
    plan = m["planning"]["methods"]["plan_refined"]
    return {"NDS": m["detection"]["NDS"], "mAP": m["detection"]["mAP"],
            "l2_avg_per_step": plan["l2_avg_per_step"], "l2_avg_averaged": plan["l2_avg_averaged"],
            "collision_avg_averaged": plan.get("collision_avg_averaged")}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--ckpt", required=True)
    p.add_argument("--export-dir", required=True)
    p.add_argument("--out", default="outputs/bench_export_accuracy")
    a = p.parse_args()
    rows, seconds = {}, {}
    m, seconds["torch"] = run_eval(a.ckpt, os.path.join(a.out, "torch"), [])
    rows["torch"] = headline(m)
    for prec in ("fp32", "fp16", "int8"):
        path = os.path.abspath(os.path.join(a.export_dir, f"model_{prec}.onnx"))
        if os.path.exists(path):
            m, seconds[prec] = run_eval(a.ckpt, os.path.join(a.out, prec), ["backend=onnx", f"onnx_path={path}"])
            rows[f"onnx_{prec}"] = headline(m)
    ref = rows["torch"]
    deltas = {k: {n: (v[n] - ref[n]) if v[n] is not None and ref[n] is not None else None for n in ref}
              for k, v in rows.items() if k != "torch"}
    figures = {"metrics": rows, "delta_vs_torch": deltas, "eval_seconds": seconds}
    print(json.dumps(figures, indent=1))
    parts = [f"{k}: NDS {v['NDS']:.4f}, L2avg(ST-P3) {v['l2_avg_averaged']:.3f} m" for k, v in rows.items()]
    worst = max((abs(d["NDS"]), abs(d["l2_avg_averaged"])) for d in deltas.values()) if deltas else (0, 0)
    record("export_accuracy", figures, "; ".join(parts) + f"; max |dNDS| {worst[0]:.4f}, |dL2| {worst[1]:.4f} m")


if __name__ == "__main__":
    main()
