"""The end of every round: fine-tune the edge model on the label store, re-export it with ``drive export``'s
code, re-profile it with ``drive profile``'s code, evaluate it on the fixed long-tail val world with
``drive-eval``'s code (ONNX backend: the deployable graph is what gets scored), and score label sets
against the hidden truth with the devkit.
"""
from __future__ import annotations

import json
import logging
import os
import tempfile
from typing import Optional

import torch

from .config import LoopConfig
from .errors import LabellingError
from .fleet import FLEET_SCENE_PREFIX

log = logging.getLogger(__name__)

CONFIGS = os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))), "configs")


def finetune(cfg: LoopConfig, init_ckpt: str, store_root: str, version: str, out_dir: str,
             maps_dir: Optional[str] = None) -> dict:
    """drive-train on ``store_root/version`` (split ``loop_train``) starting from ``init_ckpt``'s weights with the
    checkpoint's own model config; resumes from ``out_dir``'s ``last.ckpt`` after a crash. With
    ``retrain.distill.weight > 0`` the keyframes that have teacher maps in ``maps_dir`` are also distilled
    (``maps_dir=None``: no teacher, no distillation)."""
    from hydra import compose, initialize_config_dir
    from omegaconf import OmegaConf

    from drive.training.run import train

    ckpt = torch.load(init_ckpt, map_location="cpu", weights_only=True)
    model_node = (ckpt.get("hyper_parameters") or {}).get("model")
    if not model_node:
        raise LabellingError(f"{init_ckpt}: no model config in its hyper_parameters (not a drive-train checkpoint)")
    rt = cfg.retrain
    last = os.path.join(out_dir, "checkpoints", "last.ckpt")
    overrides = [
        f"paths.output_dir={out_dir}", f"data.root={store_root}", f"data.version={version}",
        "data.train_split=loop_train", "data.val_split=loop_train", f"data.batch_size={rt.batch_size}",
        f"data.num_workers={rt.num_workers}", f"trainer.max_steps={rt.steps}", "trainer.max_epochs=-1",
        "trainer.limit_val_batches=0", "final_validation=false", "trainer.max_time=null",
        f"optimizer.lr={rt.lr}", f"scheduler.warmup_steps={rt.warmup_steps}", f"seed={cfg.seed}", "synth=null",
        "callbacks.bev_plot=null", "callbacks.model_checkpoint=null", "metrics=null",
        f"+init_from={init_ckpt}", f"+temporal.repeat_scenes.{FLEET_SCENE_PREFIX}={int(rt.fleet_repeat)}",
        *rt.overrides]
    distill = _distill_overrides(cfg, store_root, version, maps_dir)
    overrides += distill.pop("overrides")
    if os.path.isfile(last):
        overrides.append(f"ckpt_path={last}")
        log.info("resuming the interrupted fine-tuning from %s", last)
    if cfg.threads:
        overrides.append(f"threads={cfg.threads}")
    with initialize_config_dir(config_dir=CONFIGS, version_base="1.3"):
        run_cfg = compose("train", overrides=overrides)
    run_cfg.model = OmegaConf.create(model_node)  # the checkpoint's own model, whatever preset made it
    metrics = train(run_cfg)
    if not os.path.isfile(last):
        raise LabellingError(f"fine-tuning wrote no {last}")
    losses = _loss_curve(out_dir)
    if distill["weight"]:
        distill.update({k: _start_end(_loss_curve(out_dir, f"train/distill_{k}")) for k in ("feature", "heatmap")})
    return {"init_from": os.path.abspath(init_ckpt), "checkpoint": last, "steps": int(metrics.get("global_step", 0)),
            "data": {"root": store_root, "version": version, "split": "loop_train"},
            "loss_first": losses[0] if losses else None, "loss_last": losses[-1] if losses else None,
            "distill": distill}


def _distill_overrides(cfg: LoopConfig, store_root: str, version: str, maps_dir: Optional[str]) -> dict:
    """The ``loss.distill`` overrides and how many of the version's labelled keyframes have teacher maps."""
    from dataclasses import asdict

    from drive.data.teacher_maps import maps_path

    from .store import LABEL_INDEX_FILE
    from .tables import read_json

    d = cfg.retrain.distill
    if d.weight <= 0 or maps_dir is None:  # None: a strategy without a teacher (humans label everything)
        return {"weight": 0.0, "overrides": []}
    if not os.path.isdir(maps_dir):
        raise LabellingError(f"retrain.distill.weight > 0 but there is no teacher maps directory {maps_dir!r}")
    tokens = list(read_json(os.path.join(store_root, version, LABEL_INDEX_FILE), "label index"))
    frames = sum(os.path.isfile(maps_path(maps_dir, t)) for t in tokens)
    if frames == 0:
        raise LabellingError(f"retrain.distill.weight > 0 but none of the {len(tokens)} labelled keyframes of "
                             f"{store_root}/{version} has teacher maps in {maps_dir} (a teacher step from before "
                             "maps were kept? delete the round's teacher.json and rerun)")
    return {"weight": d.weight, "frames_with_maps": frames, "maps_dir": maps_dir,
            "overrides": [f"loss.distill.{k}={v}" for k, v in asdict(d).items()]
            + [f"loss.distill.targets_dir={maps_dir}"]}


def _loss_curve(run_dir: str, column: str = "train/loss") -> list[float]:
    import csv
    import glob

    out = []
    for path in sorted(glob.glob(os.path.join(run_dir, "**", "metrics.csv"), recursive=True)):
        with open(path) as f:
            out += [float(r[column]) for r in csv.DictReader(f) if r.get(column)]
    return out


def _start_end(values: list[float]) -> dict:
    """Means of the first and the last quarter of the logged values that are not 0 (a batch without teacher
    maps logs a distillation term of exactly 0)."""
    v = [x for x in values if x != 0.0]
    if not v:
        return {"start": None, "end": None, "logged": 0}
    q = max(1, len(v) // 4)
    return {"start": round(sum(v[:q]) / q, 4), "end": round(sum(v[-q:]) / q, 4), "logged": len(v)}


def export(cfg: LoopConfig, ckpt: str, out_dir: str, calib_root: str, calib_version: str) -> dict:
    """``drive export`` of the round's checkpoint (fp32 always, plus the configured precision)."""
    from drive.deploy.calibration import frame_source
    from drive.deploy.command import run_export
    from drive.evaluation.checkpoint import load_model

    def loader(path):
        model, config, meta = load_model(path)
        return model, config, meta.summary()

    precision = cfg.export.precision
    source = frame_source(loader, ckpt, calib_root, calib_version, "loop_train")
    summary = run_export(loader, ckpt, out_dir, precision, source, cfg.export.calib_samples)  # int8: calibration; else parity
    graphs = {"fp32": os.path.join(out_dir, "model_fp32.onnx")}
    if precision != "fp32":
        graphs[precision] = os.path.join(out_dir, f"model_{precision}.onnx")
    parity = summary.get("parity_fp32_vs_eager", {})
    return {"checkpoint": os.path.abspath(ckpt), "graphs": graphs, "precision": precision,
            "parity_fp32_vs_eager": parity, "cards": summary.get("cards")}


def profile(cfg: LoopConfig, name: str, exp: dict, report_dir: str) -> dict:
    """``drive profile`` of the round's graphs: host latency and the chip-fit estimates."""
    from drive.deploy.report import ProfileSubject, run_profile

    precisions = list(exp["graphs"])
    res = run_profile([ProfileSubject(name=name, onnx=dict(exp["graphs"]))], cfg.profile.targets, report_dir,
                      runs=cfg.profile.runs, warmup=cfg.profile.warmup, threads=cfg.threads, precisions=precisions,
                      op_profile_runs=3)
    prof = res["subjects"][name]
    lat = {k: v["p50_ms"] for k, v in prof["latency"].items()}
    chips = {t: {p: {"estimate_ms": e["estimate_ms"], "meets_10hz": e["meets_10hz"], "meets_20hz": e["meets_20hz"],
                     "fits": e["memory"]["fits"], "unsupported_ops": sorted(e["unsupported_ops"]),
                     "anchored_ms": (e.get("anchored") or {}).get("estimate_ms")}
                 for p, e in per.items()} for t, per in prof["chips"].items()}
    return {"report": os.path.join(report_dir, "profile.md"), "latency_p50_ms": lat, "chips": chips,
            "file_bytes": prof["file_bytes"]}


def evaluate_longtail(cfg: LoopConfig, ckpt: str, graph: str, longtail_root: str, out_dir: str) -> dict:
    """drive-eval's pipeline with the ONNX backend on the fixed long-tail val split."""
    from drive.evaluation.runner import EvalOptions, evaluate
    from drive.evaluation.summary import summarise_eval

    m = evaluate(EvalOptions(root=longtail_root, version="v1.0-mini", split="longtail_val", out_dir=out_dir,
                             backend="onnx", onnx_path=graph, ckpt_path=ckpt, train_split=None, report=False,
                             threads=cfg.threads, render_curves=False, num_cases=0))
    return summarise_eval(m)


def score_against_truth(truth_root: str, scene_tokens: list[str], results: dict[str, list], split: str,
                        out_dir: str, truth_version: str = "v1.0-mini") -> dict:
    """Devkit DetectionEval of ``results`` (sample token -> submission records) against the hidden truth of
    ``scene_tokens``; the scenes become the custom split ``split`` of the truth root's ``splits.json``."""
    from drive.data.nusc import open_nuscenes
    from drive.metrics.detection import evaluate_detection, write_results

    nusc = open_nuscenes(truth_root, truth_version)
    names = [nusc.get("scene", t)["name"] for t in scene_tokens]
    _add_split(os.path.join(truth_root, truth_version, "splits.json"), split, names)
    samples = [s["token"] for s in nusc.sample if s["scene_token"] in set(scene_tokens)]
    full = {t: list(results.get(t, [])) for t in samples}
    os.makedirs(out_dir, exist_ok=True)
    if not any(full.values()):
        return {"mAP": 0.0, "NDS": 0.0, "boxes": 0, "empty": True}
    path = write_results(os.path.join(out_dir, "results.json"), full)
    scores = evaluate_detection(nusc, path, split, out_dir)
    return {"mAP": scores["mAP"], "NDS": scores["NDS"], "mATE": scores.get("mATE"), "mASE": scores.get("mASE"),
            "mAOE": scores.get("mAOE"), "boxes": sum(len(v) for v in full.values()), "samples": len(samples)}


def _add_split(path: str, name: str, scenes: list[str]) -> None:
    splits = {}
    if os.path.isfile(path):
        with open(path) as f:
            splits = json.load(f)
    if splits.get(name) == scenes:
        return
    splits[name] = scenes
    fd, tmp = tempfile.mkstemp(prefix=".tmp_", suffix=".json", dir=os.path.dirname(path))
    with os.fdopen(fd, "w") as f:
        json.dump(splits, f, indent=1)
    os.replace(tmp, path)


def latest_checkpoint(run_dir: str) -> Optional[str]:
    path = os.path.join(run_dir, "checkpoints", "last.ckpt")
    return path if os.path.isfile(path) else None
