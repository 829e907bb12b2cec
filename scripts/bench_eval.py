"""Benchmark: `drive-eval` wall clock over the default world's val split with the edge model (budget 5 min, 2 cores).

Without --ckpt the edge model is randomly initialised (random_init=true): the timing is what matters, the
metrics are meaningless and recorded as such.
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

BUDGET_S = 300.0


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--ckpt", default=None, help="drive-train checkpoint of the edge model (default: random init)")
    p.add_argument("--root", default="data/synth")
    p.add_argument("--out", default="outputs/bench_eval")
    p.add_argument("overrides", nargs="*", help="extra drive-eval overrides")
    a = p.parse_args()
    exe = os.path.join(os.path.dirname(sys.executable), "drive-eval")
    args = [exe, f"data.root={a.root}", f"hydra.run.dir={a.out}", "model=edge"]
    args += [f"ckpt_path={os.path.abspath(a.ckpt)}"] if a.ckpt else ["random_init=true"]
    t0 = time.perf_counter()
    proc = subprocess.run(args + a.overrides, cwd=ROOT, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        sys.exit(f"drive-eval failed ({proc.returncode}):\n{proc.stderr[-2000:]}")
    with open(os.path.join(ROOT, a.out, "metrics.json")) as f:
        m = json.load(f)
    run, pl = m["run"], m["planning"]["methods"]
    figures = {
        "wall_s": round(wall, 1), "budget_s": BUDGET_S, "within_budget": wall <= BUDGET_S,
        "loop_s": round(run["loop_s"], 1), "inference_s_per_frame": round(run["inference_s_per_frame"], 3),
        "samples": run["samples"], "split": run["split"], "weights": "checkpoint" if a.ckpt else "random init",
        "checkpoint_sha256": (run.get("checkpoint") or {}).get("sha256"),
        "NDS": m["detection"].get("NDS"), "amota": m["tracking"].get("amota"),
        "plan_l2_avg_per_step": pl["plan_refined"]["l2_avg_per_step"],
        "plan_l2_avg_averaged": pl["plan_refined"]["l2_avg_averaged"],
    }
    print(json.dumps(figures, indent=1))
    record("eval", figures, f"drive-eval {run['split']} ({run['samples']} frames), edge model "
           f"({figures['weights']}): {figures['wall_s']} s wall (budget {BUDGET_S:.0f} s), "
           f"{figures['inference_s_per_frame']} s/frame inference")


if __name__ == "__main__":
    main()
