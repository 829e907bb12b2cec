"""``train(cfg)``: what ``drive-train`` does with a composed config.

1. generate the synthetic world when ``data.root`` is empty (``synth`` node);
2. write the resolved config to ``<output_dir>/config.yaml`` (Hydra also keeps ``.hydra/``);
3. build and cross-check everything (``builders.build_run``);
4. ``trainer.fit(..., ckpt_path=cfg.ckpt_path)`` (resume from any checkpoint, mid-epoch included);
5. write the final ``checkpoints/last.ckpt``, validate the final weights if fit stopped between
   validations (``final_validation``), write ``metrics.json`` and return the metrics.
"""
from __future__ import annotations

import json
import logging
import math
import os

from lightning.pytorch.utilities import rank_zero_only
from omegaconf import DictConfig, OmegaConf

from . import builders

log = logging.getLogger(__name__)


@rank_zero_only
def save_resolved_config(cfg: DictConfig, out_dir: str) -> str:
    os.makedirs(out_dir, exist_ok=True)
    path = os.path.join(out_dir, "config.yaml")
    OmegaConf.save(cfg, path, resolve=True)
    return path


def train(cfg: DictConfig) -> dict[str, float]:
    stage = cfg.get("stage", "full")
    if stage not in ("full", "planning"):
        raise ValueError(f"stage must be 'full' or 'planning', got {stage!r}")
    builders.ensure_world(cfg)
    if stage == "planning":  # retrain the planning head on the frozen init_from model (plan_stage.py)
        from .plan_stage import train_planner

        return train_planner(cfg)
    save_resolved_config(cfg, cfg.paths.output_dir)
    run = builders.build_run(cfg)
    trainer, system = run.trainer, run.system
    trainer.fit(system, datamodule=run.datamodule, ckpt_path=cfg.get("ckpt_path"))
    # last.ckpt always holds the final state (step-triggered saves need not fall on the last step)
    for cb in trainer.checkpoint_callbacks:
        if getattr(cb, "filename", None) == "last" or getattr(cb, "save_last", False):
            trainer.save_checkpoint(os.path.join(cb.dirpath, "last.ckpt"), weights_only=False)
            break
    # metrics of the final weights: validate once more when fit ended between validations
    if (cfg.get("final_validation", True) and trainer.limit_val_batches and trainer.state.status == "finished"
            and system.last_validated_step != trainer.global_step):
        trainer.validate(system, datamodule=run.datamodule, verbose=False)
    metrics = {k: float(v) for k, v in trainer.callback_metrics.items() if v.numel() == 1}
    if trainer.is_global_zero:
        metrics["global_step"] = float(trainer.global_step)
        with open(os.path.join(cfg.paths.output_dir, "metrics.json"), "w") as f:
            json.dump(dict(sorted(metrics.items())), f, indent=1)
        shown = {k: round(v, 4) for k, v in sorted(metrics.items()) if k.startswith("val/") and math.isfinite(v)}
        log.info("final metrics: %s", shown)
        log.info("run directory: %s", os.path.abspath(cfg.paths.output_dir))
    return metrics


def objective(cfg: DictConfig, metrics: dict[str, float]) -> float:
    """The value a Hydra sweeper minimises: ``cfg.optimized_metric`` (NaN when it was not logged)."""
    key = cfg.get("optimized_metric")
    return float(metrics.get(key, float("nan"))) if key else float("nan")
