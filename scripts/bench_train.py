"""Benchmark: train the edge model on the synthetic world within a time budget, then score it on the val split.

    python scripts/bench_train.py                       # 30 min budget, experiment=edge, data/synth
    python scripts/bench_train.py --minutes 5 trainer.max_epochs=1 ...   # extra args are drive-train overrides

1. Calibrate: time a few real training steps (data loading included) and one validation frame.
2. Train with ``drive.training.run.train`` for as many optimiser steps as fit in the budget minus the
   final validation (``trainer.max_steps``, so the LR schedule ends where training ends; ``trainer.max_time``
   guards the budget), validating only at the end (full val split: devkit NDS / mAP, map IoU,
   minADE / minFDE, planning L2 at 1 / 2 / 3 s in both conventions).
3. Baselines on the same split, planning L2 only: an ego-status MLP (ego_status + command -> 6 waypoints,
   trained on the train split) and constant-velocity extrapolation of the last ego displacement.
4. Throughput (samples/s, from the run's ThroughputETA callback: wall time per batch incl. data loading,
   validation excluded) and peak memory (``ru_maxrss`` of this process and of its worker children).
5. With ``--plan-stage-minutes M`` the budget holds UniAD's second stage too: the joint run gets M minutes
   less, then ``drive-train experiment=plan_stage init_from=<run>/checkpoints/last.ckpt`` (same overrides, plus
   any ``--stage-override``, e.g. an ego-status head on camera-only perception) retrains the planning head on the
   frozen perception, its epochs capped by what is left of the budget; its val planning L2 (epoch picked on
   held-out train scenes) is reported beside the joint head's.
Writes ``--out`` (default benchmarks/train.json) and appends a line to BENCHMARKS.md (``--no-record``: JSON only).
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

import numpy as np  # noqa: E402
import torch  # noqa: E402
from hydra import compose, initialize_config_dir  # noqa: E402

from drive.data.features import command_index, ego_status  # noqa: E402
from drive.data.targets import ego_trajectory  # noqa: E402
from drive.metrics.planning import plan_l2  # noqa: E402
from drive.training import builders  # noqa: E402
from drive.training.run import train  # noqa: E402
from drive.types import COMMANDS, FUTURE_STEPS  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PLAN_KEYS = [f"l2_{h}s_{c}" for c in ("per_step", "averaged") for h in (1, 2, 3)] + ["l2_avg_per_step", "l2_avg_averaged"]


def compose_cfg(run_dir: str, overrides: list[str], experiment: str = "edge"):
    with initialize_config_dir(config_dir=os.path.join(ROOT, "configs"), version_base="1.3"):
        return compose("train", overrides=[f"experiment={experiment}", f"paths.output_dir={run_dir}", *overrides])


def calibrate(cfg, steps: int = 6) -> tuple[float, float, int]:
    """Seconds per training step (data loading included; the 2nd fastest of ``steps`` after the first, i.e.
    optimistic: ``trainer.max_time`` cuts training if the machine is slower) and per validation frame."""
    run = builders.build_run(cfg)
    dm, system = run.datamodule, run.system
    dm.setup("fit")
    opt = torch.optim.AdamW(system.model.parameters(), lr=1e-5)
    times, t0 = [], time.perf_counter()
    system.train()
    for i, batch in enumerate(dm.train_dataloader()):
        loss = system.training_step(batch, i)
        opt.zero_grad()
        loss.backward()
        opt.step()
        now = time.perf_counter()
        times.append(now - t0)
        t0 = now
        if len(times) > steps:
            break
    rest = sorted(times[1:])
    step_s = float(rest[1] if len(rest) > 1 else times[-1])
    system.eval()
    val = dm.val_dataloader()
    vt = []
    with torch.no_grad():
        for i, batch in enumerate(val):
            t0 = time.perf_counter()
            f = batch.features
            system.model(f.images, f.ego2img, f.ego_status, f.command, torch.zeros(1, *system.model.bev_shape),
                         f.prev_T_cur, f.has_prev)
            vt.append(time.perf_counter() - t0)
            if i == 2:
                break
    return step_s, float(np.median(vt)), len(dm.val_set)


# --------------------------------------------------------------------------- planning baselines

def ego_table(ds) -> dict[str, np.ndarray]:
    """ego_status, command, past / future of every keyframe of a data set, from its records (no images)."""
    rows = {"status": [], "command": [], "past": [], "past_mask": [], "future": [], "future_mask": []}
    for i in range(len(ds)):
        track = ds.record(i).track
        ego = ego_trajectory(track)
        rows["status"].append(ego_status(track))
        rows["command"].append(command_index(track))
        rows["past"].append(ego.past)
        rows["past_mask"].append(ego.past_mask)
        rows["future"].append(ego.future)
        rows["future_mask"].append(ego.future_mask)
    return {k: np.asarray(v) for k, v in rows.items()}


def mlp_inputs(t: dict) -> torch.Tensor:
    onehot = np.eye(len(COMMANDS))[t["command"]]
    return torch.as_tensor(np.concatenate([t["status"], onehot], axis=1), dtype=torch.float32)


def ego_mlp_baseline(train_t: dict, val_t: dict, seed: int = 0, iters: int = 3000) -> np.ndarray:
    """ego_status (speed, acceleration, yaw rate) + one-hot command -> 6 waypoints; masked L1, AdamW, full batch."""
    torch.manual_seed(seed)
    x, xv = mlp_inputs(train_t), mlp_inputs(val_t)
    mean, std = x.mean(0), x.std(0).clamp(min=1e-3)
    y = torch.as_tensor(train_t["future"], dtype=torch.float32)
    m = torch.as_tensor(train_t["future_mask"], dtype=torch.float32)[..., None]
    net = torch.nn.Sequential(torch.nn.Linear(x.shape[1], 128), torch.nn.ReLU(), torch.nn.Linear(128, 128),
                              torch.nn.ReLU(), torch.nn.Linear(128, FUTURE_STEPS * 2))
    opt = torch.optim.AdamW(net.parameters(), lr=3e-3, weight_decay=1e-4)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, iters)
    for _ in range(iters):
        pred = net((x - mean) / std).view(-1, FUTURE_STEPS, 2)
        loss = ((pred - y).abs() * m).sum() / m.sum().clamp(min=1.0)
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
    with torch.no_grad():
        return net((xv - mean) / std).view(-1, FUTURE_STEPS, 2).numpy()


def constant_velocity_baseline(t: dict, dt: float = 0.5) -> np.ndarray:
    """Last ego displacement (t-0.5 s -> now, in the current frame) repeated; speed along x at a scene start."""
    v = -t["past"][:, -1] / dt
    v = np.where(t["past_mask"][:, -1:], v, np.stack([t["status"][:, 0], np.zeros(len(v))], 1))
    steps = dt * np.arange(1, FUTURE_STEPS + 1)
    return v[:, None, :] * steps[None, :, None]


# --------------------------------------------------------------------------- planner stage

def read_stage_summary(out_dir: str) -> tuple[dict, dict]:
    """A planner stage's ``plan_stage.json`` and its picked epoch's history row (the last epoch without a holdout)."""
    with open(os.path.join(out_dir, "plan_stage.json")) as f:
        summary = json.load(f)
    epoch = summary["best_epoch"]
    return summary, summary["history"][epoch if epoch is not None else -1]


def run_plan_stage(a, run_dir: str, t_start: float, frame_s: float, n_train: int, n_val: int) -> dict:
    """The planner stage on the joint run's last checkpoint, inside what is left of ``--minutes``.

    The frozen-model passes (train, mirrored train, val) cannot be cut short, so they are estimated from the
    calibrated seconds per val frame (x1.6 for data loading beside the model, measured on synth30) and the
    head's epochs get the rest (``plan_stage.max_minutes``, at least one minute)."""
    out = os.path.join(run_dir, "plan_stage")
    overrides = a.overrides + a.stage_override
    probe = compose_cfg(out, overrides, experiment="plan_stage")
    passes = n_train * (2 if probe.plan_stage.mirror_train else 1) + n_val
    left_s = a.minutes * 60 - (time.time() - t_start) - passes * frame_s * 1.6 - 30.0
    head_minutes = round(max(left_s / 60, 1.0), 2)
    cfg = compose_cfg(out, overrides + [f"init_from={os.path.join(run_dir, 'checkpoints', 'last.ckpt')}",
                                          f"plan_stage.max_minutes={head_minutes}"], experiment="plan_stage")
    print(f"planner stage: {passes} frozen-model frames, head epochs capped at {head_minutes} min", flush=True)
    t0 = time.time()
    train(cfg)
    summary, best = read_stage_summary(out)
    return {"minutes": round((time.time() - t0) / 60, 2), "head_minutes_cap": head_minutes,
            "best_epoch": summary["best_epoch"], "epochs_run": len(summary["history"]), "frames": summary["frames"],
            "use_ego_status": summary["use_ego_status"],
            "val": {f"plan_{k}": round(float(best[f"val/plan_{k}"]), 4) for k in PLAN_KEYS},
            "joint_head_val": {f"plan_{k}": round(float(summary["source_head"]["val"][k]), 4) for k in PLAN_KEYS},
            "checkpoint": os.path.abspath(os.path.join(out, "checkpoints", "last.ckpt"))}


# --------------------------------------------------------------------------- main

def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--minutes", type=float, default=30.0, help="total budget: calibration + training + validation (+ the planner stage)")
    p.add_argument("--run-dir", default=None, help="default outputs/bench/<date>_<time>")
    p.add_argument("--out", default=os.path.join(ROOT, "benchmarks", "train.json"))
    p.add_argument("--no-record", action="store_true", help="write --out only, no BENCHMARKS.md line")
    p.add_argument("--devkit-seconds", type=float, default=30.0, help="reserve for the devkit evaluation")
    p.add_argument("--plan-stage-minutes", type=float, default=0.0,
                   help="reserve this much of the budget for the planner stage after the joint run (0: no stage)")
    p.add_argument("--stage-override", action="append", default=[], metavar="KEY=VALUE",
                   help="an override for the planner stage only, e.g. model.planning.use_ego_status=true (repeatable)")
    p.add_argument("overrides", nargs="*", help="drive-train overrides, e.g. data.root=... model=tiny")
    a = p.parse_args()
    t_start = time.time()
    load_start = os.getloadavg()[0]
    run_dir = a.run_dir or os.path.join("outputs", "bench", time.strftime("%Y-%m-%d_%H-%M-%S"))
    cfg = compose_cfg(run_dir, a.overrides)
    builders.ensure_world(cfg)

    step_s, frame_s, n_val = calibrate(cfg)
    val_s = 2.0 * n_val * frame_s + a.devkit_seconds  # + metrics, loading, contention
    train_s = a.minutes * 60 - (time.time() - t_start) - val_s - a.plan_stage_minutes * 60
    steps = max(1, int(train_s / step_s))
    guard = max(int(train_s), 60)
    print(f"calibration: {step_s:.2f} s/step, {frame_s:.2f} s/val frame ({n_val} frames) -> {steps} steps "
          f"in {train_s / 60:.1f} min", flush=True)
    cfg = compose_cfg(run_dir, a.overrides + [
        f"trainer.max_steps={steps}", "trainer.max_epochs=-1", "trainer.check_val_every_n_epoch=100000",
        f"trainer.max_time=00:{guard // 3600:02d}:{guard // 60 % 60:02d}:{guard % 60:02d}"])
    metrics = train(cfg)  # validates the final weights once (final_validation)
    with open(os.path.join(run_dir, "throughput.json")) as f:
        throughput = json.load(f)

    dm = builders.build_datamodule(cfg)
    dm.setup("fit")
    train_t, val_t = ego_table(dm.data.train_set), ego_table(dm.data.val_set)
    gt, mask = val_t["future"], val_t["future_mask"]
    baselines = {"ego_mlp": plan_l2(ego_mlp_baseline(train_t, val_t, seed=int(cfg.seed)), gt, mask),
                 "constant_velocity": plan_l2(constant_velocity_baseline(val_t), gt, mask)}

    stage = run_plan_stage(a, run_dir, t_start, frame_s, len(dm.data.train_set), n_val) if a.plan_stage_minutes > 0 else None

    def val(key: str) -> float:
        v = metrics.get(f"val/{key}", float("nan"))
        return round(float(v), 4) if math.isfinite(v) else None

    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    rss_children = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
    figures = {
        "budget_minutes": a.minutes, "wall_minutes": round((time.time() - t_start) / 60, 2),
        "steps": int(metrics.get("global_step", 0)), "batch_size": int(cfg.data.batch_size),
        "train_samples_per_s": round(throughput["samples_per_s"], 3),
        "calibration_s_per_step": round(step_s, 3), "val_s_per_frame": round(frame_s, 3),
        "peak_rss_mb": round(rss, 1), "peak_rss_children_mb": round(rss_children, 1),
        "load_avg_start": round(load_start, 2), "load_avg_end": round(os.getloadavg()[0], 2),
        "threads": torch.get_num_threads(), "run_dir": os.path.abspath(run_dir),
        "model": {"NDS": val("det_NDS"), "mAP": val("det_mAP"), "mAOE": val("det_mAOE"), "mAVE": val("det_mAVE"),
                  "flip_rate": val("det_flip_rate"), "moving_speed_ratio": val("det_moving_speed_ratio"),
                  "map_iou": val("map_iou"), "minADE": val("minADE"),
                  "minFDE": val("minFDE"), "MR": val("MR"), **{f"plan_{k}": val(f"plan_{k}") for k in PLAN_KEYS}},
        "baselines": {name: {f"plan_{k}": round(v[k], 4) if math.isfinite(v[k]) else None for k in PLAN_KEYS}
                      for name, v in baselines.items()},
        "overrides": a.overrides, "plan_stage_minutes": a.plan_stage_minutes, "stage_overrides": a.stage_override,
    }
    if stage is not None:
        figures["plan_stage"] = stage
    print(json.dumps(figures, indent=1))
    m, b = figures["model"], figures["baselines"]
    summary = (f"{figures['steps']} steps x {figures['batch_size']} in {figures['wall_minutes']} min, "
               f"{figures['train_samples_per_s']} samples/s, peak RSS {figures['peak_rss_mb']:.0f} MB; val: "
               f"NDS {m['NDS']} mAP {m['mAP']} mAOE {m['mAOE']} flip {m['flip_rate']} mAVE {m['mAVE']} "
               f"moving speed ratio {m['moving_speed_ratio']} mapIoU {m['map_iou']} minADE {m['minADE']} minFDE {m['minFDE']}; "
               f"L2 1/2/3 s per_step {m['plan_l2_1s_per_step']}/{m['plan_l2_2s_per_step']}/{m['plan_l2_3s_per_step']} "
               f"averaged {m['plan_l2_1s_averaged']}/{m['plan_l2_2s_averaged']}/{m['plan_l2_3s_averaged']}; "
               f"ego-MLP avg {b['ego_mlp']['plan_l2_avg_per_step']}/{b['ego_mlp']['plan_l2_avg_averaged']}, "
               f"const-vel avg {b['constant_velocity']['plan_l2_avg_per_step']}/"
               f"{b['constant_velocity']['plan_l2_avg_averaged']} (per_step/averaged)")
    if stage is not None:
        sv = stage["val"]
        head = "ego status" if stage["use_ego_status"] else "camera-only"
        summary += (f"; planner stage ({head} head, {stage['minutes']} min, epoch {stage['best_epoch']} of {stage['epochs_run']}): "
                    f"L2 avg {sv['plan_l2_avg_per_step']}/{sv['plan_l2_avg_averaged']}")
    if a.no_record:
        os.makedirs(os.path.dirname(os.path.abspath(a.out)), exist_ok=True)
        with open(a.out, "w") as f:
            json.dump({"name": "train", "date": time.strftime("%Y-%m-%d %H:%M"), "command": " ".join(sys.argv),
                       "figures": figures, "summary": summary}, f, indent=1)
        print(summary)
        return
    from benchlib import record

    record("train", figures, summary, path=a.out)  # only --out: a second run must not overwrite train.json
    print(summary)


if __name__ == "__main__":
    main()
