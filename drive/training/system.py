"""``DrivingSystem``: the LightningModule around a ``DrivingModel`` (losses, metrics, optimiser, EMA).

The model stays inference-only; everything that needs ground truth lives here.

Training step (temporal, BEVFormer-style, see ``drive/training/temporal.py``): the history frames of
the batch are encoded to BEV without gradient and in eval mode (oldest first, each fed the BEV of
the one before), then the current frame runs with gradient, ``prev_bev`` = the last history BEV and
``has_prev`` = whether that frame exists. The motion head is also asked for the GT boxes
(``query_boxes``), so every GT agent gets a motion loss. Losses are weighted by ``LossConfig`` and
each head's term is logged under ``train/``. With ``loss.perspective.weight > 0`` the system also
holds a ``PerspectiveHead`` on the camera features (training only, never exported; BEVFormer v2's
perspective supervision) and adds its loss. With ``loss.distill.weight > 0`` it holds a ``Distiller`` (adapter
+ the teacher maps of ``loss.distill.targets_dir``, training only) and adds the distillation of the current
frame's BEV and heatmap toward an offboard teacher's (``drive/losses/distill.py``).

Validation: one frame per step in temporal order. The BEV of a frame is kept and handed to the next
frame when that frame's ``prev_token`` is the frame just processed; otherwise (scene start, or a
shortened / sharded pass that skipped the predecessor) zeros and ``has_prev = 0``. Metrics:
``ValidationMetrics`` (one place), logged under ``val/`` at epoch end.
"""
from __future__ import annotations

import logging
from typing import Callable, Optional

import lightning as L
import torch
from torch import Tensor

from drive.losses import LossConfig, check_loss_config, perspective_loss, total_loss
from drive.models.heads.perspective import PerspectiveHead
from drive.models.model import DrivingModel, ModelOutputs
from drive.types import Batch, Features

from .distill import Distiller
from .ema import EMA
from .optim import parameter_groups
from .temporal import TemporalBatch
from .validation import ValidationMetrics

log = logging.getLogger(__name__)

OptimizerFactory = Callable[..., torch.optim.Optimizer]
SchedulerFactory = Callable[..., torch.optim.lr_scheduler.LRScheduler]


class DrivingSystem(L.LightningModule):
    """Args:
        model: the ``DrivingModel`` to train.
        loss: ``LossConfig`` (per-head weights and options).
        optimizer: ``functools.partial`` of an optimiser class (Hydra ``_partial_: true``); called with
            parameter groups (no weight decay on biases / norms / embeddings, see ``optim.parameter_groups``).
        scheduler: ``functools.partial`` of a scheduler factory taking ``(optimizer, total_steps=...)``,
            stepped every optimiser step; ``total_steps`` is the trainer's ``estimated_stepping_batches``. None: constant.
        metrics: ``ValidationMetrics`` (None: validation logs the loss only).
        ema_decay: None (off) or the EMA decay; validation then uses the averaged weights.
        teacher_forcing: pass the GT boxes to the motion head as ``query_boxes`` during training.
        hparams: the resolved run config (plain types) saved into every checkpoint.
    """

    def __init__(self, model: DrivingModel, loss: LossConfig, optimizer: OptimizerFactory,
                 scheduler: Optional[SchedulerFactory] = None, metrics: Optional[ValidationMetrics] = None,
                 ema_decay: Optional[float] = None, teacher_forcing: bool = True, hparams: Optional[dict] = None):
        super().__init__()
        if not isinstance(model, DrivingModel):
            raise TypeError(f"model must be a DrivingModel, got {type(model).__name__}")
        if not isinstance(loss, LossConfig):
            raise TypeError(f"loss must be a LossConfig, got {type(loss).__name__}")
        check_loss_config(loss, model)
        self.model, self.loss_config = model, loss
        self.optimizer_factory, self.scheduler_factory = optimizer, scheduler
        self.metrics = metrics
        self.ema = EMA(model, ema_decay) if ema_decay else None
        self.perspective_head: Optional[PerspectiveHead] = None
        if loss.perspective.weight > 0:
            self.perspective_head = PerspectiveHead(model.neck.lateral[0].out_channels, loss.perspective.hidden)
        self.distiller: Optional[Distiller] = None
        if loss.distill.weight > 0:
            vt = model.view_transform
            self.distiller = Distiller(vt.embed_dim, vt.bev_size, vt.bev_range, model.detection_head.num_classes,
                                       loss.distill)
        self.teacher_forcing = bool(teacher_forcing)
        if hparams:
            self.save_hyperparameters(hparams, logger=False)
        self._val_bev: Optional[Tensor] = None
        self._val_token = ""
        self.last_validated_step = -1  # global_step of the last full validation (not saved)

    # ------------------------------------------------------------------ BEV of the history queue

    def encode_bev(self, f: Features, prev_bev: Tensor, prev_T_cur: Tensor, has_prev: Tensor) -> Tensor:
        """Backbone + view transform only (the heads are not needed for a history frame)."""
        feats = self.model.encode_images(f.images)
        return self.model.view_transform(feats, f.ego2img, tuple(f.images.shape[-2:]), prev_bev, prev_T_cur, has_prev)

    @torch.no_grad()
    def history_bev(self, batch: TemporalBatch) -> tuple[Tensor, Tensor]:
        """``(prev_bev, has_prev)`` for the current frames: the history frames encoded oldest first, without
        gradient and in eval mode (BEVFormer's ``obtain_history_bev``); zeros / 0 where a frame is missing."""
        f = batch.current.features
        bev = f.images.new_zeros(f.images.shape[0], *self.model.bev_shape)
        has = f.images.new_zeros(f.images.shape[0])
        if not batch.history:
            return bev, has
        was_training = self.model.training
        self.model.eval()
        try:
            for frame in batch.history:
                valid = frame.valid
                if bool(valid.any()):
                    hp = frame.features.has_prev * has  # the previous slot must exist and be encoded
                    bev = self.encode_bev(frame.features, bev, frame.features.prev_T_cur, hp)
                    bev = bev * valid.view(-1, 1, 1, 1)
                else:
                    bev = torch.zeros_like(bev)
                has = valid
        finally:
            self.model.train(was_training)
        return bev, has * f.has_prev

    # ------------------------------------------------------------------ training

    def forward(self, f: Features, prev_bev: Tensor, has_prev: Tensor, **queries) -> ModelOutputs:
        return self.model(f.images, f.ego2img, f.ego_status, f.command, prev_bev, f.prev_T_cur, has_prev, **queries)

    def training_step(self, batch: TemporalBatch, batch_idx: int) -> Tensor:
        cur = batch.current
        t = cur.targets
        prev_bev, has_prev = self.history_bev(batch)
        queries = dict(query_boxes=t.boxes, query_labels=t.labels, query_mask=t.mask) if self.teacher_forcing else {}
        aux = self.perspective_head is not None
        out = self(cur.features, prev_bev, has_prev, return_image_feats=aux, **queries)
        losses = total_loss(out, t, self.loss_config)
        if aux:
            f = cur.features
            heat, depth = self.perspective_head(out.image_feats)
            persp = perspective_loss(heat, depth, t, f.ego2img, tuple(f.images.shape[-2:]), self.loss_config.perspective)
            losses.update(persp)
            losses["loss"] = losses["loss"] + self.loss_config.perspective.weight * persp["perspective"]
        if self.distiller is not None:
            dist = self.distiller(out.bev, out.det_heatmap, cur.meta)
            losses.update(dist)
            losses["loss"] = losses["loss"] + self.loss_config.distill.weight * dist["distill"]
        n = len(batch)
        self.log("train/loss", losses["loss"], prog_bar=True, batch_size=n)
        self.log_dict({f"train/{k}": v for k, v in losses.items() if k != "loss"}, batch_size=n)
        return losses["loss"]

    def optimizer_step(self, *args, **kwargs) -> None:
        super().optimizer_step(*args, **kwargs)
        # Here rather than in on_train_batch_end: callbacks (ModelCheckpoint) run before the module's
        # on_train_batch_end, so a checkpoint saved after step k must already hold EMA update k.
        if self.ema is not None:
            self.ema.update_parameters(self.model)

    def configure_optimizers(self):
        wd = getattr(self.optimizer_factory, "keywords", {}).get("weight_decay", 0.0)
        trained = torch.nn.ModuleList([self.model] + [m for m in (self.perspective_head, self.distiller) if m is not None])
        optimizer = self.optimizer_factory(parameter_groups(trained, wd))
        if self.scheduler_factory is None:
            return optimizer
        total = int(self.trainer.estimated_stepping_batches)
        scheduler = self.scheduler_factory(optimizer, total_steps=total)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step", "frequency": 1}}

    # ------------------------------------------------------------------ validation

    @property
    def eval_model(self) -> DrivingModel:
        """The weights validation and export use: the EMA average when enabled."""
        return self.ema.module if self.ema is not None else self.model

    def on_validation_epoch_start(self) -> None:
        self._val_bev, self._val_token = None, ""
        self._val_frames = self._val_linked = 0
        if self.metrics is not None:
            self.metrics.reset()

    def validation_step(self, batch: Batch, batch_idx: int) -> ModelOutputs:
        f = batch.features
        if f.images.shape[0] != 1:
            raise ValueError("validation runs one frame per step in temporal order (val batch size 1)")
        meta = batch.meta[0]
        linked = self._val_bev is not None and meta.prev_token != "" and meta.prev_token == self._val_token
        prev_bev = self._val_bev if linked else f.images.new_zeros(1, *self.model.bev_shape)
        has_prev = f.has_prev * float(linked)
        m = self.eval_model
        out = m(f.images, f.ego2img, f.ego_status, f.command, prev_bev, f.prev_T_cur, has_prev)
        self._val_bev, self._val_token = out.bev, meta.sample_token
        self._val_frames += 1
        self._val_linked += int(linked)
        if batch.targets is not None:
            losses = total_loss(out, batch.targets, self.loss_config)
            # sync_dist: under DDP every rank validates the whole split, so the mean over ranks is the value itself
            self.log("val/loss", losses["loss"], prog_bar=True, batch_size=1, sync_dist=True)
            self.log_dict({f"val/{k}": v for k, v in losses.items() if k != "loss"}, batch_size=1, sync_dist=True)
            if self.metrics is not None:
                self.metrics.update(batch, out)
        return out

    def on_validation_epoch_end(self) -> None:
        self._val_bev = None
        if self.trainer.sanity_checking:
            return
        if self.metrics is None:
            self.last_validated_step = self.global_step
            return
        self.last_validated_step = self.global_step
        values = self.metrics.compute(rank=self.global_rank)
        values["temporal_link_rate"] = self._val_linked / max(self._val_frames, 1)  # frames given a prev BEV
        # Every rank ran the whole val set (see TemporalDataModule.val_dataloader): identical values.
        self.log_dict({f"val/{k}": float(v) for k, v in values.items()}, batch_size=1, sync_dist=True)
        if self.global_rank == 0 and values:
            shown = {k: round(float(values[k]), 4) for k in ("det_NDS", "det_mAP", "map_iou", "minADE",
                                                              "plan_l2_avg_per_step", "plan_l2_avg_averaged")
                     if k in values}
            log.info("epoch %d validation: %s", self.current_epoch, shown)

    # ------------------------------------------------------------------ checkpoint

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        checkpoint["drive_format"] = 1  # plain types only: torch.load(..., weights_only=True) must work

