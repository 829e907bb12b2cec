"""Helpers for the evaluation tests: hand-built drive-train checkpoints of the tiny model and fast options."""
from __future__ import annotations

import os

import torch
from omegaconf import OmegaConf

from drive.evaluation.runner import EvalOptions
from drive.models import build_model, tiny_config

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY_YAML = os.path.join(ROOT, "configs", "model", "tiny.yaml")


def tiny_hparams(**model_overrides) -> dict:
    """A run config as drive-train saves it (plain types), with the tiny model node (dotted overrides)."""
    model = OmegaConf.load(TINY_YAML)
    for key, value in model_overrides.items():
        OmegaConf.update(model, key.replace("__", "."), value)
    return {"model": OmegaConf.to_container(model, resolve=True), "task_name": "test"}


def write_checkpoint(path, seed: int = 0, hparams: dict | None = None, model=None, **model_overrides) -> str:
    """A Lightning-layout checkpoint ('state_dict' with 'model.' keys, 'hyper_parameters') of a tiny model."""
    hparams = hparams or tiny_hparams(**model_overrides)
    if model is None:
        from drive.evaluation.checkpoint import model_config_of

        torch.manual_seed(seed)
        model = build_model(model_config_of(hparams, "test"))
    ckpt = {"state_dict": {f"model.{k}": v for k, v in model.state_dict().items()}, "hyper_parameters": hparams,
            "epoch": 0, "global_step": 0, "drive_format": 1}
    torch.save(ckpt, str(path))
    return str(path)


def fast_options(root: str, split: str, out_dir: str, **kw) -> EvalOptions:
    base = dict(root=root, version="v1.0-mini", split=split, out_dir=str(out_dir), train_split="mini_train",
                model_config=tiny_config(), ego_mlp_steps=100, num_workers=0, num_cases=1)
    base.update(kw)
    return EvalOptions(**base)
