"""The one place where configs become objects (``hydra.utils.instantiate``), each checked for its type,
and where the contracts between the parts are checked before any training step runs.

Config groups map 1:1 to constructors (``configs/``): ``data`` -> ``DrivingDataModule``, ``model`` ->
``ModelConfig`` (then ``drive.models.build_model``), ``loss`` -> ``LossConfig``, ``optimizer`` ->
``partial(torch.optim.AdamW)``, ``scheduler`` -> ``partial(warmup_cosine)``, ``trainer`` ->
``lightning.Trainer``, ``logger`` / ``callbacks`` -> named loggers / callbacks; the nodes ``temporal``,
``system`` and ``metrics`` of ``train.yaml`` -> ``TemporalDataModule``, ``DrivingSystem``, ``ValidationMetrics``.
"""
from __future__ import annotations

import dataclasses
import functools
import inspect
import logging
import os
from dataclasses import dataclass
from typing import Any, Optional

import lightning as L
import torch
from hydra.utils import instantiate
from lightning.pytorch.loggers import CSVLogger, Logger
from omegaconf import DictConfig, OmegaConf

from drive.data.datamodule import DrivingDataModule
from drive.losses import LossConfig
from drive.models.build import ModelConfig
from drive.models.build import build_model as build_model_from_config
from drive.models.model import DrivingModel

from .system import DrivingSystem
from .temporal import TemporalDataModule
from .validation import ValidationMetrics

log = logging.getLogger(__name__)


def _expect(obj: Any, cls: type | tuple, what: str) -> Any:
    if not isinstance(obj, cls):
        names = cls.__name__ if isinstance(cls, type) else " or ".join(c.__name__ for c in cls)
        raise TypeError(f"config '{what}' built a {type(obj).__name__}, expected {names}")
    return obj


def _tuples(obj: Any) -> Any:
    """Dataclass config with Hydra's lists turned back into the tuples the dataclasses declare."""
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return dataclasses.replace(obj, **{f.name: _tuples(getattr(obj, f.name)) for f in dataclasses.fields(obj)})
    if isinstance(obj, (list, tuple)):
        return tuple(_tuples(v) for v in obj)
    return obj


def _partial_of(obj: Any, what: str) -> functools.partial:
    if not isinstance(obj, functools.partial):
        raise TypeError(f"config '{what}' must set `_partial_: true` (got {type(obj).__name__})")
    return obj


# --------------------------------------------------------------------------- parts

def build_model_config(cfg: DictConfig) -> ModelConfig:
    return _tuples(_expect(instantiate(cfg.model, _convert_="all"), ModelConfig, "model"))


def build_model(cfg: DictConfig) -> DrivingModel:
    return _expect(build_model_from_config(build_model_config(cfg)), DrivingModel, "model")


def build_loss(cfg: DictConfig) -> LossConfig:
    return _tuples(_expect(instantiate(cfg.loss, _convert_="all"), LossConfig, "loss"))


def build_datamodule(cfg: DictConfig) -> TemporalDataModule:
    data = _expect(instantiate(cfg.data, _convert_="all"), DrivingDataModule, "data")
    wrap = _partial_of(instantiate(cfg.temporal, _partial_=True), "temporal")
    return _expect(wrap(data=data), TemporalDataModule, "temporal")


def _require_partial(node: DictConfig, what: str) -> None:
    if not node.get("_partial_", False):
        raise TypeError(f"config '{what}' must set `_partial_: true` (its target is called later with "
                        f"objects that exist only at fit time)")


def build_optimizer(cfg: DictConfig) -> functools.partial:
    _require_partial(cfg.optimizer, "optimizer")
    opt = _partial_of(instantiate(cfg.optimizer, _convert_="all"), "optimizer")
    if not (isinstance(opt.func, type) and issubclass(opt.func, torch.optim.Optimizer)):
        raise TypeError(f"config 'optimizer' must target a torch.optim.Optimizer, got {opt.func}")
    return opt


def build_scheduler(cfg: DictConfig) -> Optional[functools.partial]:
    if cfg.get("scheduler") is None:
        return None
    _require_partial(cfg.scheduler, "scheduler")
    sched = _partial_of(instantiate(cfg.scheduler, _convert_="all"), "scheduler")
    if "total_steps" not in inspect.signature(sched.func).parameters:
        raise TypeError(f"config 'scheduler' target {sched.func} must take total_steps (the system passes the "
                        f"trainer's estimated_stepping_batches)")
    return sched


def build_metrics(cfg: DictConfig) -> Optional[ValidationMetrics]:
    if cfg.get("metrics") is None:
        return None
    return _expect(instantiate(cfg.metrics), ValidationMetrics, "metrics")


def plain_config(cfg: DictConfig) -> dict:
    """The resolved config as plain dicts / lists / scalars (what checkpoints store as hyper-parameters)."""
    return OmegaConf.to_container(cfg, resolve=True, throw_on_missing=False)


def build_system(cfg: DictConfig, model: Optional[DrivingModel] = None) -> DrivingSystem:
    model = build_model(cfg) if model is None else model
    # The parts are objects already: bind the node's own options, then call (Hydra would turn dataclass
    # kwargs back into configs, and hparams must stay a plain dict).
    make = _partial_of(instantiate(cfg.system, _partial_=True, _convert_="all"), "system")
    system = make(model=model, loss=build_loss(cfg), optimizer=build_optimizer(cfg), scheduler=build_scheduler(cfg),
                  metrics=build_metrics(cfg), hparams=plain_config(cfg))
    return _expect(system, DrivingSystem, "system")


def build_callbacks(cfg: DictConfig) -> list[L.Callback]:
    out = []
    for name, node in (cfg.get("callbacks") or {}).items():
        if node is not None:
            out.append(_expect(instantiate(node, _convert_="all"), L.Callback, f"callbacks.{name}"))
    return out


def build_loggers(cfg: DictConfig) -> list[Logger]:
    """The configured loggers; a TensorBoard logger whose package is missing falls back to CSV."""
    out = []
    for name, node in (cfg.get("logger") or {}).items():
        if node is None:
            continue
        try:
            lg = instantiate(node, _convert_="all")
        except Exception as e:  # Hydra wraps the ModuleNotFoundError of a missing tensorboard
            if "tensorboard" not in str(e).lower():
                raise
            log.warning("logger %s unavailable (%s); logging to CSV instead", name, e)
            lg = CSVLogger(save_dir=cfg.paths.output_dir, name="csv_fallback")
        out.append(_expect(lg, Logger, f"logger.{name}"))
    return out


def build_trainer(cfg: DictConfig, callbacks: Optional[list] = None, loggers: Optional[list] = None) -> L.Trainer:
    callbacks = build_callbacks(cfg) if callbacks is None else callbacks
    loggers = build_loggers(cfg) if loggers is None else loggers
    trainer = instantiate(cfg.trainer, callbacks=callbacks, logger=loggers or False, _convert_="all")
    return _expect(trainer, L.Trainer, "trainer")


# --------------------------------------------------------------------------- contracts

def check_contracts(cfg: DictConfig, data: TemporalDataModule, model_cfg: ModelConfig) -> None:
    """Raise on configs whose parts disagree (before anything heavy runs)."""
    d = data.config
    problems = []
    if tuple(d.image_size) != tuple(model_cfg.image_hw):
        problems.append(f"data.image_size {tuple(d.image_size)} != model.image_hw {tuple(model_cfg.image_hw)}")
    if abs(d.image_crop_top - model_cfg.image_crop_top) > 1e-9:
        problems.append(f"data.image_crop_top {d.image_crop_top} != model.image_crop_top {model_cfg.image_crop_top}")
    if abs(d.bev_range - model_cfg.bev_range) > 1e-6:
        problems.append(f"data.bev_range {d.bev_range} != model.bev_range {model_cfg.bev_range}")
    if d.map_size != model_cfg.map.map_size:
        problems.append(f"data.map_size {d.map_size} != model.map.map_size {model_cfg.map.map_size}")
    if abs(d.bev_range - model_cfg.map.map_range) > 1e-6:
        problems.append(f"data.bev_range {d.bev_range} (extent of the drivable raster) != model.map.map_range "
                        f"{model_cfg.map.map_range}")
    if d.augment.seed is None:
        problems.append("data.augment.seed is null: training order and augmentation must be seeded")
    if not d.with_targets:
        problems.append("data.with_targets is false: training needs targets")
    if cfg.trainer.get("use_distributed_sampler", True):
        problems.append("trainer.use_distributed_sampler must be false: the training sampler shards by rank "
                        "itself (drive.training.temporal.ResumableSampler)")
    if cfg.trainer.get("accumulate_grad_batches", 1) != 1 and cfg.system.get("ema_decay"):
        log.warning("EMA is updated once per optimiser step (accumulate_grad_batches > 1)")
    if problems:
        raise ValueError("inconsistent config:\n  " + "\n  ".join(problems))


# --------------------------------------------------------------------------- everything

@dataclass
class Run:
    datamodule: TemporalDataModule
    system: DrivingSystem
    trainer: L.Trainer


def build_run(cfg: DictConfig) -> Run:
    """Seed, then build and cross-check data, model, system and trainer."""
    L.seed_everything(int(cfg.seed), workers=True, verbose=False)
    if cfg.get("threads"):
        torch.set_num_threads(int(cfg.threads))
    datamodule = build_datamodule(cfg)
    model_cfg = build_model_config(cfg)
    check_contracts(cfg, datamodule, model_cfg)
    model = _expect(build_model_from_config(model_cfg), DrivingModel, "model")
    if cfg.get("init_from"):
        init_weights(model, model_cfg, str(cfg.init_from))
    system = build_system(cfg, model)
    trainer = build_trainer(cfg)
    return Run(datamodule, system, trainer)


def init_weights(model: DrivingModel, model_cfg: ModelConfig, path: str) -> None:
    """Fine-tuning: start from the model weights of a drive-train checkpoint (EMA ones if it has them).

    Unlike ``ckpt_path`` (resume: optimiser, step, data order), only the weights are taken; the checkpoint
    must hold exactly this model (same config: ``drive.evaluation.checkpoint.load_model`` checks every
    tensor name and shape, naming the first mismatch).
    """
    from drive.evaluation.checkpoint import load_model

    source, _, meta = load_model(path, model_config=model_cfg)
    model.load_state_dict(source.state_dict(), strict=True)
    log.info("init_from %s (%s weights, step %s, sha256 %s)", meta.path, meta.weights, meta.global_step,
             meta.sha256[:12])


def ensure_world(cfg: DictConfig) -> None:
    """Generate the synthetic world into ``data.root`` when it has no tables and ``synth`` is configured."""
    root, version, synth = cfg.data.root, cfg.data.version, cfg.get("synth")
    if synth is None or os.path.isdir(os.path.join(root, version)):
        return
    if os.path.abspath(root) != os.path.abspath(synth.out):
        return  # not the synthetic world's root: the data module reports the missing data
    if int(os.environ.get("LOCAL_RANK", "0")) != 0:
        raise FileNotFoundError(f"{root}/{version} missing in a DDP child process")
    log.info("no data at %s/%s: generating the synthetic world (a few minutes)", root, version)
    generate = _partial_of(instantiate(cfg.synth, _convert_="all"), "synth")
    generate()
