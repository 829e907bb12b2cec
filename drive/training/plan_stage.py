"""Planner stage: retrain the planning head on a trained model's frozen perception.

    drive-train experiment=plan_stage init_from=RUN/checkpoints/last.ckpt [model.planning.use_ego_status=true]

UniAD trains in two stages: perception first, then the planning side on a frozen BEV encoder. Here the
second stage is cheap enough for a CPU. The frozen model runs once over the train and val splits in
temporal order, each frame fed the previous frame's BEV exactly as at inference, and the planning head's
inputs (BEV map, agent tokens and scores, command, ego status: all it sees) are kept in memory with the
planning targets. The head then trains for many epochs on them, seconds each. Memory: about C x S x S x 2
bytes of BEV per keyframe (fp16), 0.32 MB for the edge model (64 x 50 x 50): 0.4 GB for synth30's 1200
keyframes, about 9 GB for nuScenes trainval's 28k training keyframes (a larger BEV grows it with S^2).

Why a stage of its own: in a joint CPU run the planner sees each frame about four times, while the
ego-status MLP it is compared with is fit to convergence (BENCHMARKS.md); and ``use_ego_status`` is a
switch of the head only, so both variants can be trained on one perception and compared on equal terms.

Data: with ``mirror_train`` (default) the frozen model also runs over the training split mirrored y -> -y (the
joint training's scene mirror: pixels and camera slots, command, yaw rate, targets), doubling the frames the
head learns from; on synth30 that lowered the val L2 of both head variants (BENCHMARKS.md, 2026-12-06 21:55).

Model selection: ``holdout_scenes`` scenes of the train split are left out of training and pick the epoch
(ST-P3 averaged L2); the val split is only reported. The output is a full drive-train checkpoint (the
source's weights with the new head, the run's config as hyper-parameters) that drive-eval, export and
profile read like any other, plus ``metrics.json`` with the per-epoch holdout and val L2.
"""
from __future__ import annotations

import copy
import json
import logging
import math
import os
from dataclasses import dataclass, fields, replace
from datetime import timedelta
from typing import Optional

import lightning as L
import numpy as np
import torch
from omegaconf import DictConfig
from torch import Tensor
from torch.utils.data import DataLoader, SequentialSampler, TensorDataset

from drive.data.augment import AugmentConfig
from drive.data.dataset import NuScenesDrivingDataset, collate
from drive.data.datamodule import DrivingDataModule
from drive.losses import LossConfig
from drive.losses.planning import planning_loss
from drive.metrics.planning import plan_l2
from drive.models.build import ModelConfig
from drive.models.build import build_model as build_model_from_config
from drive.models.heads.planning import PlanningHead
from drive.models.model import DrivingModel
from drive.staging import staged_file

log = logging.getLogger(__name__)

HEAD = "planning_head."


@dataclass
class PlanStageConfig:
    epochs: int = 60
    batch_size: int = 32
    lr: float = 1e-3
    weight_decay: float = 0.01
    warmup_frac: float = 0.05  # of all steps, linear warm-up before the cosine decay
    holdout_scenes: int = 4  # train scenes left out to pick the epoch (0: keep the last epoch)
    head_init: str = "fresh"  # fresh: a new head (seeded); checkpoint: start from the source's head
    num_workers: int = 2  # data loading while the frozen model runs over the splits
    mirror_train: bool = True  # also train on every training frame mirrored y -> -y (holdout and val stay as recorded)
    max_minutes: Optional[float] = None  # wall-clock cap on the head's training (Lightning max_time); None: epochs only

    def __post_init__(self) -> None:
        if self.head_init not in ("fresh", "checkpoint"):
            raise ValueError(f"plan_stage.head_init must be 'fresh' or 'checkpoint', got {self.head_init!r}")
        if self.epochs < 1 or self.batch_size < 1 or self.lr <= 0 or self.holdout_scenes < 0:
            raise ValueError(f"plan_stage: epochs, batch_size >= 1, lr > 0, holdout_scenes >= 0 ({self})")
        if self.max_minutes is not None and self.max_minutes <= 0:
            raise ValueError(f"plan_stage.max_minutes must be > 0 or null, got {self.max_minutes}")


@dataclass
class PlannerInputs:
    """What the planning head sees for N frames, and the planning targets (row i = frame i)."""

    bev: Tensor  # (N, C, S, S) float16 (halves the memory; the head computes in float32)
    command: Tensor  # (N,) int64
    ego_status: Tensor  # (N, 3)
    agent_tokens: Tensor  # (N, A, C) float16
    agent_scores: Tensor  # (N, A)
    ego_future: Tensor  # (N, T, 2)
    ego_future_mask: Tensor  # (N, T) bool
    future: Tensor  # (N, M, T, 2) GT agents' futures (collision penalty)
    future_mask: Tensor  # (N, M, T) bool
    mask: Tensor  # (N, M) bool
    drivable: Tensor  # (N, Sm, Sm) (off-road penalty)
    map_valid: Tensor  # (N,)

    def __len__(self) -> int:
        return int(self.bev.shape[0])

    def tensors(self) -> tuple[Tensor, ...]:
        return tuple(getattr(self, f.name) for f in fields(self))

    def subset(self, rows: Tensor) -> "PlannerInputs":
        return PlannerInputs(*(t[rows] for t in self.tensors()))


@dataclass
class PlanTargets:
    """The ``Targets`` fields that ``planning_loss`` reads."""

    ego_future: Tensor
    ego_future_mask: Tensor
    future: Tensor
    future_mask: Tensor
    mask: Tensor
    drivable: Tensor
    map_valid: Tensor


def _batch(rows: tuple[Tensor, ...]) -> tuple[tuple[Tensor, ...], PlanTargets]:
    x = PlannerInputs(*rows)
    head_args = (x.bev.float(), x.command, x.ego_status, x.agent_tokens.float(), x.agent_scores)
    return head_args, PlanTargets(x.ego_future, x.ego_future_mask, x.future, x.future_mask, x.mask, x.drivable,
                                  x.map_valid)


@torch.no_grad()
def collect_planner_inputs(model: DrivingModel, dataset: NuScenesDrivingDataset,
                           num_workers: int = 0) -> tuple[PlannerInputs, list[str]]:
    """Run the (frozen, eval-mode) model over ``dataset`` in temporal order; return the planning head's inputs
    per frame (captured by a forward pre-hook, so exactly what it received) and each frame's scene token."""
    from drive.evaluation.backends import TorchBackend
    from drive.evaluation.runner import BevStream

    stream = BevStream(TorchBackend(model))
    captured: dict[str, tuple] = {}
    handle = model.planning_head.register_forward_pre_hook(lambda module, args: captured.__setitem__("args", args))
    rows: list[list[Tensor]] = [[] for _ in fields(PlannerInputs)]
    scenes: list[str] = []
    loader = DataLoader(dataset, batch_size=1, sampler=SequentialSampler(dataset), num_workers=num_workers,
                        collate_fn=collate)
    try:
        for batch in loader:
            if batch.targets is None:
                raise ValueError("the planner stage needs targets (data.with_targets=true)")
            stream(batch)
            bev, command, status, tokens, scores = captured.pop("args")
            t = batch.targets
            values = (bev.half(), command, status, tokens.half(), scores, t.ego_future, t.ego_future_mask, t.future,
                      t.future_mask, t.mask, t.drivable, t.map_valid)
            for acc, v in zip(rows, values):
                acc.append(v.detach().cpu())
            scenes.append(batch.meta[0].scene_token)
    finally:
        handle.remove()
    if not scenes:
        raise ValueError(f"split {dataset.split!r} of {dataset.root} has no keyframes")
    return PlannerInputs(*(torch.cat(r) for r in rows)), scenes


MIRROR = AugmentConfig(enabled=True, image_scale=(1.0, 1.0), image_flip=0.0, bev_rotation_deg=0.0, bev_flip=1.0)


def mirrored_split(data_cfg, split: str) -> NuScenesDrivingDataset:
    """``split`` with every keyframe mirrored y -> -y and nothing else (the training augmentation's scene mirror:
    pixels and camera slots, camera matrices, ego motion, command, yaw rate, every target), in the order of the
    unaugmented split."""
    dm = DrivingDataModule(replace(data_cfg, train_split=split, val_split=None, augment=MIRROR))
    dm.setup("fit")
    return dm.train_set


def holdout_rows(scenes: list[str], count: int) -> np.ndarray:
    """Boolean row mask of the frames of ``count`` scenes spread evenly over the sorted scene tokens."""
    unique = sorted(set(scenes))
    if count >= len(unique):
        raise ValueError(f"plan_stage.holdout_scenes={count} leaves no training scene (the split has {len(unique)})")
    picked = {unique[int(i)] for i in np.linspace(0, len(unique) - 1, count).round()} if count else set()
    return np.array([s in picked for s in scenes])


class PlannerStage(L.LightningModule):
    """Trains ``head`` on cached inputs; validates on named sets, keeps the head of the best epoch."""

    def __init__(self, head: PlanningHead, loss: LossConfig, cfg: PlanStageConfig, val_names: list[str],
                 select: Optional[str]) -> None:
        super().__init__()
        self.head, self.loss_config, self.cfg = head, loss, cfg
        self.val_names, self.select = val_names, select
        self._plans: dict[int, list[tuple[Tensor, Tensor, Tensor]]] = {}
        self._train_losses: list[float] = []
        self.history: list[dict[str, float]] = []
        self.best: Optional[dict] = None

    def training_step(self, rows, batch_idx: int) -> Tensor:
        args, targets = _batch(rows)
        losses = planning_loss(self.head(*args), targets, self.loss_config.map_range, self.loss_config.planning)
        n = int(args[0].shape[0])
        self._train_losses.append(float(losses["planning"].detach()))
        if self._trainer is not None:  # also callable as a plain step (tests)
            self.log("train/planning", losses["planning"], prog_bar=True, batch_size=n)
            self.log_dict({f"train/{k}": v for k, v in losses.items() if k != "planning"}, batch_size=n)
        return losses["planning"]

    def on_validation_epoch_start(self) -> None:
        self._plans = {i: [] for i in range(len(self.val_names))}

    def validation_step(self, rows, batch_idx: int, dataloader_idx: int = 0) -> None:
        args, targets = _batch(rows)
        self._plans[dataloader_idx].append((self.head(*args), targets.ego_future, targets.ego_future_mask))

    def on_validation_epoch_end(self) -> None:
        if self.trainer.sanity_checking:
            return
        row: dict[str, float] = {"epoch": float(self.current_epoch),
                                 "train/planning": float(np.mean(self._train_losses)) if self._train_losses else math.nan}
        self._train_losses = []
        for i, name in enumerate(self.val_names):
            pred, gt, mask = (torch.cat(x).numpy() for x in zip(*self._plans[i]))
            for k, v in plan_l2(pred, gt, mask).items():
                if k.startswith("l2_"):
                    row[f"{name}/plan_{k}"] = v
        self.log_dict({k: v for k, v in row.items() if "/plan_l2" in k}, batch_size=1)
        self.history.append(row)
        key = f"{self.select}/plan_l2_avg_averaged" if self.select else None
        better = self.best is None or key is None or row[key] < self.best["row"][key]
        if better:  # no holdout: the last epoch
            self.best = {"epoch": self.current_epoch, "row": row, "state": copy.deepcopy(self.head.state_dict())}

    def configure_optimizers(self):
        opt = torch.optim.AdamW(self.head.parameters(), lr=self.cfg.lr, weight_decay=self.cfg.weight_decay)
        total = max(int(self.trainer.estimated_stepping_batches), 1)
        warm = max(int(self.cfg.warmup_frac * total), 1)

        def factor(step: int) -> float:
            if step < warm:
                return (step + 1) / warm
            return 0.5 * (1.0 + math.cos(math.pi * min(step - warm, total - warm) / max(total - warm, 1)))

        sched = torch.optim.lr_scheduler.LambdaLR(opt, factor)
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step", "frequency": 1}}


@torch.no_grad()
def evaluate_head(head: PlanningHead, inputs: PlannerInputs, batch_size: int = 256) -> dict[str, float]:
    """``plan_l2`` (both conventions) of ``head`` on cached inputs, e.g. the source model's own head."""
    was = head.training
    head.eval()
    plans = [head(*_batch(rows)[0]) for rows in DataLoader(TensorDataset(*inputs.tensors()), batch_size=batch_size)]
    head.train(was)
    return {k: v for k, v in plan_l2(torch.cat(plans).numpy(), inputs.ego_future.numpy(),
                                     inputs.ego_future_mask.numpy()).items() if k.startswith("l2_")}


def _first_difference(a, b, prefix: str = "model") -> str:
    """Dotted name of the first differing field of two (nested) dataclass configs."""
    for f in fields(a):
        x, y = getattr(a, f.name), getattr(b, f.name)
        if x != y:
            if hasattr(x, "__dataclass_fields__") and type(x) is type(y):
                return _first_difference(x, y, f"{prefix}.{f.name}")
            return f"{prefix}.{f.name} ({x!r} in the checkpoint, {y!r} in this run)"
    return prefix


def build_stage_model(source: DrivingModel, source_cfg: ModelConfig, run_cfg: ModelConfig, head_init: str,
                      where: str) -> DrivingModel:
    """The run's model: every weight but the planning head's from ``source`` (whose config must equal the run's
    except ``planning``); the head fresh (seeded by the caller) or, with ``head_init='checkpoint'``, the source's."""
    if replace(source_cfg, planning=run_cfg.planning) != run_cfg:
        raise ValueError(f"{where}: the checkpoint's model differs from this run's beyond model.planning: "
                         f"{_first_difference(source_cfg, run_cfg)}; pass the checkpoint's model config "
                         f"(e.g. model=cloud) and change only model.planning.*")
    if head_init == "checkpoint" and source_cfg.planning != run_cfg.planning:
        raise ValueError(f"{where}: plan_stage.head_init=checkpoint needs the checkpoint's planning head, but "
                         f"{_first_difference(source_cfg.planning, run_cfg.planning, 'model.planning')}")
    model = build_model_from_config(run_cfg)
    state = {k: v for k, v in source.state_dict().items() if not k.startswith(HEAD)}
    if head_init == "checkpoint":
        state.update({k: v for k, v in source.state_dict().items() if k.startswith(HEAD)})
    else:
        state.update({k: v for k, v in model.state_dict().items() if k.startswith(HEAD)})
    model.load_state_dict(state, strict=True)
    return model.eval()


def train_planner(cfg: DictConfig) -> dict[str, float]:
    """``drive-train stage=planning`` (``experiment=plan_stage``): see the module docstring."""
    from hydra.utils import instantiate

    from drive.evaluation.checkpoint import load_model

    from . import builders
    from .run import save_resolved_config

    if cfg.get("ckpt_path"):
        raise ValueError("the planner stage does not resume (ckpt_path); it is rerun from init_from in minutes")
    if not cfg.get("init_from"):
        raise ValueError("the planner stage needs init_from=<a drive-train checkpoint> (the frozen perception)")
    stage_cfg = instantiate(cfg.plan_stage, _convert_="all")
    if not isinstance(stage_cfg, PlanStageConfig):
        raise TypeError(f"config 'plan_stage' must build a PlanStageConfig, got {type(stage_cfg).__name__}")
    L.seed_everything(int(cfg.seed), workers=True, verbose=False)
    if cfg.get("threads"):
        torch.set_num_threads(int(cfg.threads))
    out_dir = cfg.paths.output_dir
    save_resolved_config(cfg, out_dir)
    run_model_cfg = builders.build_model_config(cfg)
    loss = builders.build_loss(cfg)
    source, source_cfg, meta = load_model(str(cfg.init_from))
    torch.manual_seed(int(cfg.seed))
    model = build_stage_model(source, source_cfg, run_model_cfg, stage_cfg.head_init, meta.path)

    datamodule = builders.build_datamodule(cfg)
    builders.check_contracts(cfg, datamodule, run_model_cfg)
    data_cfg = datamodule.config
    splits = {"train": data_cfg.train_split, "val": data_cfg.val_split}
    cached: dict[str, tuple[PlannerInputs, list[str]]] = {}
    for name, split in splits.items():
        if split is None:
            continue
        dm = DrivingDataModule(replace(data_cfg, val_split=split))  # the 'val' path: no augmentation, in order
        dm.setup("validate")
        log.info("planner stage: running the frozen model over %s (%d keyframes)", split, len(dm.val_set))
        cached[name] = collect_planner_inputs(model, dm.val_set, stage_cfg.num_workers)
        size = sum(t.numel() * t.element_size() for t in cached[name][0].tensors())
        log.info("planner stage: cached %d frames of %s, %.0f MB", len(cached[name][0]), split, size / 2**20)
    if "train" not in cached:
        raise ValueError("the planner stage needs data.train_split")

    train_inputs, train_scenes = cached["train"]
    held = holdout_rows(train_scenes, stage_cfg.holdout_scenes)
    sets = {"train": train_inputs.subset(torch.from_numpy(~held))}
    if stage_cfg.mirror_train:
        log.info("planner stage: running the frozen model over %s mirrored", splits["train"])
        mirrored, mirrored_scenes = collect_planner_inputs(model, mirrored_split(data_cfg, splits["train"]),
                                                           stage_cfg.num_workers)
        if mirrored_scenes != train_scenes:
            raise RuntimeError("the mirrored train split does not list the keyframes of the train split in order")
        rows = torch.from_numpy(~held)
        sets["train"] = PlannerInputs(*(torch.cat([a, b]) for a, b in zip(sets["train"].tensors(),
                                                                            mirrored.subset(rows).tensors())))
    val_sets: dict[str, PlannerInputs] = {}
    if held.any():
        val_sets["holdout"] = train_inputs.subset(torch.from_numpy(held))
    if "val" in cached:
        val_sets["val"] = cached["val"][0]
    gen = torch.Generator().manual_seed(int(cfg.seed))
    train_loader = DataLoader(TensorDataset(*sets["train"].tensors()), batch_size=stage_cfg.batch_size, shuffle=True,
                              generator=gen)
    val_loaders = [DataLoader(TensorDataset(*s.tensors()), batch_size=256) for s in val_sets.values()]

    head = model.planning_head.train()
    system = PlannerStage(head, loss, stage_cfg, list(val_sets), "holdout" if "holdout" in val_sets else None)
    max_time = None if stage_cfg.max_minutes is None else timedelta(minutes=stage_cfg.max_minutes)
    trainer = L.Trainer(max_epochs=stage_cfg.epochs, max_time=max_time, logger=builders.build_loggers(cfg) or False,
                        enable_checkpointing=False, num_sanity_val_steps=0, devices=1,  # one process: tiny head
                        accelerator=cfg.trainer.get("accelerator", "auto"), log_every_n_steps=10,
                        enable_progress_bar=False, enable_model_summary=False)
    trainer.fit(system, train_dataloaders=train_loader, val_dataloaders=val_loaders or None)
    if system.best is not None:
        head.load_state_dict(system.best["state"])
    model.eval()

    summary = {
        "source_checkpoint": meta.summary(),
        "source_head": {name: evaluate_head(source.planning_head, s) for name, s in val_sets.items()},
        "source_use_ego_status": source_cfg.planning.use_ego_status,
        "head_init": stage_cfg.head_init,
        "use_ego_status": run_model_cfg.planning.use_ego_status,
        "frames": {"train": len(sets["train"]), **{k: len(v) for k, v in val_sets.items()}},
        "holdout_scenes": sorted(set(np.asarray(train_scenes)[held].tolist())),
        "best_epoch": None if system.best is None else int(system.best["epoch"]),
        "history": system.history,
    }
    hparams = builders.plain_config(cfg)
    ckpt = {"state_dict": {f"model.{k}": v for k, v in model.state_dict().items()}, "hyper_parameters": hparams,
            "epoch": summary["best_epoch"] or 0, "global_step": int(trainer.global_step), "drive_format": 1,
            "plan_stage": json.loads(json.dumps(summary))}
    path = os.path.join(out_dir, "checkpoints", "last.ckpt")
    with staged_file(path) as tmp:
        torch.save(ckpt, tmp)
    metrics = {k: float(v) for k, v in (system.best["row"] if system.best else {}).items() if k != "epoch"}
    metrics["global_step"] = float(trainer.global_step)
    metrics["best_epoch"] = float(summary["best_epoch"] if summary["best_epoch"] is not None else -1)
    for name, payload in (("metrics.json", dict(sorted(metrics.items()))), ("plan_stage.json", summary)):
        with staged_file(os.path.join(out_dir, name)) as tmp, open(tmp, "w") as f:
            json.dump(payload, f, indent=1)
    log.info("planner stage: best epoch %s, %s; checkpoint %s", summary["best_epoch"],
             {k: round(v, 4) for k, v in metrics.items() if k.endswith("l2_avg_averaged")}, path)
    return metrics
