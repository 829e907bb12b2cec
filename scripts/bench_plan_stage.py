"""Benchmark: the planner stage on a trained checkpoint, camera-only and with ego status, against the baselines.

    python scripts/bench_plan_stage.py --ckpt outputs/base/checkpoints/last.ckpt --run-dir outputs/plan_base \\
        --out benchmarks/plan_stage_base.json data.root=data/synth30 data.train_split=synth_train data.val_split=synth_val

For each head variant (``model.planning.use_ego_status`` false / true) it runs ``drive-train experiment=plan_stage
init_from=CKPT`` in process (the frozen model over the train and val splits once, then the head alone for
``plan_stage.epochs``), and reports on the val split, planning L2 at 1 / 2 / 3 s in both conventions:
the checkpoint's own (jointly trained) head on the same cached inputs, each retrained head (its epoch picked
on held-out train scenes), and the ego-status MLP and constant-velocity baselines of ``bench_train.py``
(the MLP fit on the whole train split). Extra arguments are drive-train overrides.
Writes ``--out`` and appends a line to BENCHMARKS.md.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import resource
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import torch  # noqa: E402
from hydra import compose, initialize_config_dir  # noqa: E402

from bench_train import constant_velocity_baseline, ego_mlp_baseline, ego_table, read_stage_summary  # noqa: E402
from drive.metrics.planning import plan_l2  # noqa: E402
from drive.training import builders  # noqa: E402
from drive.training.run import train  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
KEYS = [f"l2_{h}s_{c}" for c in ("per_step", "averaged") for h in (1, 2, 3)] + ["l2_avg_per_step", "l2_avg_averaged"]


def compose_cfg(out_dir: str, ckpt: str, ego: bool, overrides: list[str]):
    with initialize_config_dir(config_dir=os.path.join(ROOT, "configs"), version_base="1.3"):
        return compose("train", overrides=["experiment=plan_stage", f"init_from={ckpt}", f"paths.output_dir={out_dir}",
                                           f"model.planning.use_ego_status={str(ego).lower()}", *overrides])


def rounded(d: dict) -> dict:
    return {k: (round(float(d[k]), 4) if d.get(k) is not None and math.isfinite(float(d[k])) else None) for k in KEYS}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--ckpt", required=True, help="a drive-train checkpoint (its perception stays frozen)")
    p.add_argument("--run-dir", default=None, help="default outputs/bench_plan/<date>_<time>")
    p.add_argument("--out", default=os.path.join(ROOT, "benchmarks", "plan_stage.json"))
    p.add_argument("overrides", nargs="*", help="drive-train overrides, e.g. data.root=... plan_stage.epochs=40")
    a = p.parse_args()
    t_start, load_start = time.time(), os.getloadavg()[0]
    run_dir = a.run_dir or os.path.join("outputs", "bench_plan", time.strftime("%Y-%m-%d_%H-%M-%S"))

    variants, cfg = {}, None
    for name, ego in (("camera_only", False), ("ego_status", True)):
        cfg = compose_cfg(os.path.join(run_dir, name), a.ckpt, ego, a.overrides)
        t0 = time.time()
        train(cfg)
        summary, best = read_stage_summary(os.path.join(run_dir, name))
        variants[name] = {"minutes": round((time.time() - t0) / 60, 2), "best_epoch": summary["best_epoch"],
                          "epochs": len(summary["history"]), "frames": summary["frames"],
                          "val": rounded({k[len("val/plan_"):]: v for k, v in best.items() if k.startswith("val/plan_")}),
                          "holdout": rounded({k[len("holdout/plan_"):]: v for k, v in best.items()
                                              if k.startswith("holdout/plan_")}),
                          "checkpoint": os.path.abspath(os.path.join(run_dir, name, "checkpoints", "last.ckpt"))}
        source = summary["source_head"]  # the same for both variants: the checkpoint's head on the same inputs
    joint_ego = bool(summary["source_use_ego_status"])

    dm = builders.build_datamodule(cfg)
    dm.setup("fit")
    train_t, val_t = ego_table(dm.data.train_set), ego_table(dm.data.val_set)
    gt, mask = val_t["future"], val_t["future_mask"]
    baselines = {"ego_mlp": rounded(plan_l2(ego_mlp_baseline(train_t, val_t, seed=int(cfg.seed)), gt, mask)),
                 "constant_velocity": rounded(plan_l2(constant_velocity_baseline(val_t), gt, mask))}
    figures = {
        "checkpoint": os.path.abspath(a.ckpt), "joint_head_uses_ego_status": joint_ego,
        "wall_minutes": round((time.time() - t_start) / 60, 2), "threads": torch.get_num_threads(),
        "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
        "load_avg_start": round(load_start, 2), "load_avg_end": round(os.getloadavg()[0], 2),
        "joint_head": {"val": rounded(source["val"]), "holdout": rounded(source.get("holdout", {}))},
        "stage": variants, "baselines": baselines, "overrides": a.overrides,
    }
    print(json.dumps(figures, indent=1))

    def avg(d: dict) -> str:
        return f"{d['l2_avg_averaged']} ({d['l2_avg_per_step']})"

    v = variants
    summary_line = (f"val ST-P3 avg L2 (per-step avg): joint head {avg(figures['joint_head']['val'])}; stage camera-only "
                    f"{avg(v['camera_only']['val'])} (epoch {v['camera_only']['best_epoch']}, "
                    f"{v['camera_only']['minutes']} min); stage ego-status {avg(v['ego_status']['val'])} "
                    f"(epoch {v['ego_status']['best_epoch']}, {v['ego_status']['minutes']} min); ego-MLP "
                    f"{avg(baselines['ego_mlp'])}, const-vel {avg(baselines['constant_velocity'])}; "
                    f"train frames {v['camera_only']['frames']['train']}, holdout {v['camera_only']['frames'].get('holdout')}")
    from benchlib import record

    record("plan_stage", figures, summary_line, path=a.out)
    print(summary_line)


if __name__ == "__main__":
    main()
