"""``drive-train`` as a user runs it (subprocesses): a smoke run on a tiny world writes everything to its run
directory, resumes from last.ckpt, sweeps with -m, runs DDP with 2 CPU processes, and survives SIGKILL."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from drive.evaluation.checkpoint import load_model

REPO = Path(__file__).resolve().parents[1]


def drive_train(*overrides: str, timeout: int = 300, check: bool = True) -> subprocess.CompletedProcess:
    exe = Path(sys.executable).parent / "drive-train"
    cmd = [str(exe)] if exe.exists() else [sys.executable, "-m", "drive.cli.train"]
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONWARNINGS="ignore")
    proc = subprocess.run(cmd + list(overrides), cwd=REPO, env=env, capture_output=True, text=True, timeout=timeout)
    if check and proc.returncode != 0:
        raise AssertionError(f"drive-train {' '.join(overrides)} failed ({proc.returncode}):\n{proc.stderr[-4000:]}")
    return proc


def tiny(world: str, run_dir: Path, *extra: str) -> list[str]:
    return ["debug=fast", f"data.root={world}", f"hydra.run.dir={run_dir}", "threads=1", *extra]


def final_metrics(run_dir: Path) -> dict:
    return json.loads((run_dir / "metrics.json").read_text())


def test_run_writes_config_logs_checkpoints_picture_and_resumes(synth_world, tmp_path):
    run = tmp_path / "run"
    drive_train(*tiny(synth_world, run, "logger=default", "trainer.limit_val_batches=null"))

    resolved = (run / "config.yaml").read_text()
    assert "${" not in resolved and str(synth_world) in resolved
    assert (run / ".hydra" / "config.yaml").exists() and (run / ".hydra" / "overrides.yaml").exists()
    assert list((run / "tensorboard").glob("events.out.tfevents.*"))
    assert "train/loss" in (run / "csv" / "version_0" / "metrics.csv").read_text().splitlines()[0]
    assert (run / "checkpoints" / "last.ckpt").exists() and list((run / "checkpoints").glob("best-*.ckpt"))
    pngs = list((run / "bev").glob("bev_epoch000_*.png"))
    assert pngs and pngs[0].stat().st_size > 10_000
    assert json.loads((run / "throughput.json").read_text())["samples_per_s"] > 0
    m = final_metrics(run)
    for key in ("val/det_NDS", "val/det_mAP", "val/map_iou", "val/minADE", "val/plan_l2_1s_per_step",
                "val/plan_l2_1s_averaged", "val/plan_l2_avg_per_step", "val/plan_l2_avg_averaged", "val/loss"):
        assert key in m, key  # the whole val split was run, so the devkit scored it
    assert m["global_step"] == 4 and m["val/temporal_link_rate"] > 0.5

    # checkpoints load without pickle, and carry the config to rebuild the model
    ckpt = torch.load(run / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    assert ckpt["global_step"] == 4 and ckpt["hyper_parameters"]["model"]["embed_dim"] == 32
    model, _, meta = load_model(str(run / "checkpoints" / "last.ckpt"))
    assert meta.weights == "model" and meta.global_step == 4
    assert all(torch.equal(v, ckpt["state_dict"]["model." + k]) for k, v in model.state_dict().items())

    # resume: one more epoch from last.ckpt in the same run directory
    drive_train(*tiny(synth_world, run, f"ckpt_path={run / 'checkpoints' / 'last.ckpt'}", "trainer.max_epochs=2"))
    assert final_metrics(run)["global_step"] == 8
    assert torch.load(run / "checkpoints" / "last.ckpt", weights_only=True)["global_step"] == 8
    assert list((run / "bev").glob("bev_epoch001_*.png"))
    assert (run / "csv" / "version_0" / "metrics.csv").exists() and (run / "csv" / "version_1" / "metrics.csv").exists()


def test_bad_data_root_is_one_clear_error(tmp_path):
    proc = drive_train("debug=fast", f"data.root={tmp_path / 'nowhere'}", "synth=null",
                       f"hydra.run.dir={tmp_path / 'run'}", check=False)
    assert proc.returncode == 2
    assert f"drive-train: error: nuScenes root not found: {tmp_path / 'nowhere'}" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_multirun_sweep(synth_world, tmp_path):
    sweep = tmp_path / "sweep"
    drive_train("-m", "debug=fast", f"data.root={synth_world}", f"hydra.sweep.dir={sweep}", "threads=1",
                "optimizer.lr=1e-3,3e-4", "trainer.limit_train_batches=2", "trainer.limit_val_batches=2")
    lrs = sorted(float(torch.load(sweep / str(i) / "checkpoints" / "last.ckpt", weights_only=True)
                       ["hyper_parameters"]["optimizer"]["lr"]) for i in (0, 1))
    assert lrs == [3e-4, 1e-3]
    assert (sweep / "0" / "config.yaml").exists() and (sweep / "1" / "metrics.json").exists()


def test_ddp_two_cpu_processes(synth_world, tmp_path):
    run = tmp_path / "ddp"
    drive_train(*tiny(synth_world, run, "trainer=ddp"))  # strategy ddp, devices 2, gloo on CPU
    assert (run / "train_ddp_process_1.log").exists()  # the second rank ran
    m = final_metrics(run)
    assert m["global_step"] == 4 and "val/loss" in m
    assert json.loads((run / "throughput.json").read_text())["timed_samples"] % 4 == 0  # 2 ranks x batch 2
    ckpt = torch.load(run / "checkpoints" / "last.ckpt", weights_only=True)
    assert ckpt["global_step"] == 4


def test_sigkill_mid_epoch_then_resume_equals_an_uninterrupted_run(synth_world, tmp_path):
    """Killed with SIGKILL (no cleanup) in epoch 1 after a mid-epoch checkpoint, resumed from last.ckpt:
    same final weights (bit for bit, EMA included) and metrics as a run that was never interrupted."""
    common = ["trainer.limit_train_batches=5", "trainer.max_epochs=2", "trainer.limit_val_batches=3",
              "data.num_workers=1", "callbacks.last_checkpoint.every_n_train_steps=2", "metrics.detection_eval=false",
              "system.ema_decay=0.9"]
    ref, killed = tmp_path / "reference", tmp_path / "killed"
    drive_train(*tiny(synth_world, ref, *common))

    proc = drive_train(*tiny(synth_world, killed, *common, "+callbacks.fault._target_=drive.training.callbacks.FaultInjection",
                             "+callbacks.fault.at_step=7"), check=False)
    assert proc.returncode == -9, proc.stderr[-3000:]  # SIGKILL
    last = killed / "checkpoints" / "last.ckpt"
    ckpt = torch.load(last, map_location="cpu", weights_only=True)
    assert ckpt["global_step"] == 6 and ckpt["TemporalDataModule"] == {"epoch": 1, "consumed_batches": 1, "epoch_done": False}
    assert not (killed / "metrics.json").exists()
    shutil.copy(last, tmp_path / "resume_from.ckpt")

    drive_train(*tiny(synth_world, killed, *common, f"ckpt_path={tmp_path / 'resume_from.ckpt'}"))
    a = torch.load(ref / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    b = torch.load(last, map_location="cpu", weights_only=True)
    assert a["global_step"] == b["global_step"] == 10
    assert a["state_dict"].keys() == b["state_dict"].keys() and any(k.startswith("ema.") for k in a["state_dict"])
    differ = {k: (a["state_dict"][k].double() - b["state_dict"][k].double()).abs().max().item()
              for k in a["state_dict"] if not torch.equal(a["state_dict"][k], b["state_dict"][k])}
    assert not differ, sorted(differ.items(), key=lambda kv: -kv[1])[:5]  # bit for bit
    for sa, sb in zip(a["optimizer_states"][0]["state"].values(), b["optimizer_states"][0]["state"].values()):
        assert torch.equal(sa["exp_avg"], sb["exp_avg"]) and torch.equal(sa["exp_avg_sq"], sb["exp_avg_sq"])
    assert a["lr_schedulers"] == b["lr_schedulers"]
    ma, mb = final_metrics(ref), final_metrics(killed)
    for key in [k for k in ma if k.startswith("val/")]:
        assert ma[key] == pytest.approx(mb[key], abs=1e-6, nan_ok=True), key


@pytest.mark.slow
def test_bench_train_script_end_to_end(synth_world, tmp_path):
    out = tmp_path / "train.json"
    env = dict(os.environ, OMP_NUM_THREADS="1")
    proc = subprocess.run([sys.executable, "scripts/bench_train.py", "--minutes", "2.5", "--no-record", "--out", str(out),
                           "--run-dir", str(tmp_path / "run"), "--devkit-seconds", "5", "--plan-stage-minutes", "1",
                           "--stage-override", "model.planning.use_ego_status=true",
                           "model=tiny", f"data.root={synth_world}", "data.num_workers=0", "plan_stage.epochs=4",
                           "plan_stage.holdout_scenes=2", "plan_stage.num_workers=0", "plan_stage.batch_size=16"],
                          cwd=REPO, env=env, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    fig = json.loads(out.read_text())["figures"]
    assert fig["steps"] >= 1 and fig["train_samples_per_s"] > 0 and fig["peak_rss_mb"] > 0
    for name in ("ego_mlp", "constant_velocity"):
        assert fig["baselines"][name]["plan_l2_1s_per_step"] is not None
    assert fig["model"]["NDS"] is not None and fig["model"]["plan_l2_1s_averaged"] is not None
    stage = fig["plan_stage"]  # the planner stage ran on the joint run's checkpoint, inside the budget's tail
    assert stage["epochs_run"] == 4 and 0 <= stage["best_epoch"] < 4 and stage["head_minutes_cap"] >= 1.0
    from omegaconf import OmegaConf

    assert stage["use_ego_status"] is True  # the stage-only override reached the stage and not the joint run
    assert OmegaConf.load(tmp_path / "run" / "config.yaml").model.planning.use_ego_status is False
    # the stage scores the joint head on its cached (fp16) inputs: the joint run's own validation figure, nearly
    assert stage["joint_head_val"]["plan_l2_avg_averaged"] == pytest.approx(fig["model"]["plan_l2_avg_averaged"], rel=0.02)
    assert os.path.exists(stage["checkpoint"]) and stage["val"]["plan_l2_3s_per_step"] > 0
