"""Load a ``DrivingModel`` from a ``drive-train`` checkpoint, strictly, with errors that name the problem.

Checkpoint layout (``drive.training``: Lightning checkpoint, ``torch.load(weights_only=True)``-safe):
``state_dict`` with the ``DrivingSystem``'s ``model.``-prefixed weights (and ``ema.module.``-prefixed ones
when EMA was on), ``hyper_parameters`` = the resolved run config (plain types) whose ``model`` node is a
``drive.models.build.ModelConfig`` Hydra node. The model is rebuilt from that node (the same builder
training uses) and the weights are loaded strictly: a missing, unexpected or differently shaped key is an
``EvalError`` naming the first such key. EMA weights are used when present (what validation and export use).
"""
from __future__ import annotations

import os
import zipfile
from dataclasses import dataclass
from typing import Any, Optional

import torch

from drive.hashing import sha256_file
from drive.models.build import ModelConfig, build_model
from drive.models.model import DrivingModel

from .errors import EvalError


@dataclass
class CheckpointMeta:
    path: str
    sha256: str
    weights: str  # "ema" or "model": which prefix of the state_dict was loaded
    epoch: Optional[int]
    global_step: Optional[int]
    hyper_parameters: dict  # the training run's resolved config

    def summary(self) -> dict:
        return {"path": self.path, "sha256": self.sha256, "weights": self.weights, "epoch": self.epoch,
                "global_step": self.global_step}


sha256_of = sha256_file


def model_config_of(hyper_parameters: dict, where: str) -> ModelConfig:
    """The ``ModelConfig`` of a run config's ``model`` node, via the training builders (one instantiate site)."""
    from omegaconf import OmegaConf

    from drive.training.builders import build_model_config

    if not isinstance(hyper_parameters, dict) or not isinstance(hyper_parameters.get("model"), dict):
        raise EvalError(f"{where}: hyper_parameters has no 'model' node; not a drive-train checkpoint")
    try:
        return build_model_config(OmegaConf.create({"model": hyper_parameters["model"]}))
    except Exception as e:  # Hydra wraps the constructor's TypeError / ValueError
        raise EvalError(f"{where}: its 'model' config does not build a ModelConfig: {e}") from e


def check_state_dict(expected: dict[str, torch.Tensor], got: dict[str, torch.Tensor], where: str) -> None:
    """Raise ``EvalError`` naming the first key (in the model's order) that is missing, unexpected or reshaped."""
    for key, value in expected.items():
        if key not in got:
            raise EvalError(f"{where}: weights do not fit the model built from its config: key {key!r} is missing "
                            f"({len(set(expected) - set(got))} missing in all)")
        if tuple(got[key].shape) != tuple(value.shape):
            raise EvalError(f"{where}: weights do not fit the model built from its config: key {key!r} has shape "
                            f"{tuple(got[key].shape)}, the model expects {tuple(value.shape)}")
    extra = [k for k in got if k not in expected]
    if extra:
        raise EvalError(f"{where}: weights do not fit the model built from its config: unexpected key {extra[0]!r} "
                        f"({len(extra)} unexpected in all)")


def _read(path: str) -> dict[str, Any]:
    if not path or not os.path.isfile(path):
        raise EvalError(f"checkpoint not found: {path}")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # corrupt file, or pickled objects that weights_only refuses
        what = ("not a torch.save archive (a Lightning .ckpt is a zip file)" if not zipfile.is_zipfile(path)
                else f"{type(e).__name__}: {(str(e).splitlines() or [''])[0]}")
        raise EvalError(f"cannot read checkpoint {path}: {what}") from e
    if not isinstance(ckpt, dict) or not isinstance(ckpt.get("state_dict"), dict):
        raise EvalError(f"{path} is not a Lightning checkpoint (no 'state_dict')")
    return ckpt


def load_model(ckpt_path: str, use_ema: bool = True,
               model_config: Optional[ModelConfig] = None) -> tuple[DrivingModel, ModelConfig, CheckpointMeta]:
    """``(model in eval mode, its ModelConfig, CheckpointMeta)`` from a ``drive-train`` checkpoint.

    model_config: build this config instead of the saved one (e.g. to check a checkpoint against the config
    of another run); the weights must still fit it exactly.
    """
    path = os.path.abspath(os.path.expanduser(str(ckpt_path)))
    ckpt = _read(path)
    hparams = ckpt.get("hyper_parameters") or {}
    cfg = model_config if model_config is not None else model_config_of(hparams, path)
    try:
        model = build_model(cfg)
    except (TypeError, ValueError) as e:
        raise EvalError(f"{path}: cannot build the model of its config: {e}") from e
    state = ckpt["state_dict"]
    prefix = "ema.module." if use_ema and any(k.startswith("ema.module.") for k in state) else "model."
    weights = {k[len(prefix):]: v for k, v in state.items() if isinstance(k, str) and k.startswith(prefix)}
    if not weights:
        raise EvalError(f"{path}: no '{prefix}'-prefixed weights in its state_dict (keys start with "
                        f"{sorted({k.split('.')[0] for k in state})[:5]})")
    check_state_dict(model.state_dict(), weights, path)
    model.load_state_dict(weights, strict=True)
    meta = CheckpointMeta(path=path, sha256=sha256_of(path), weights="ema" if prefix.startswith("ema") else "model",
                          epoch=ckpt.get("epoch"), global_step=ckpt.get("global_step"), hyper_parameters=hparams)
    return model.eval(), cfg, meta
