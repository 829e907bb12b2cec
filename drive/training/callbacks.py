"""Callbacks: training throughput + ETA, and a BEV picture of predictions vs truth every validation."""
from __future__ import annotations

import json
import logging
import os
import time
from typing import Optional

import lightning as L
import torch

from drive.types import Batch

from .visualize import draw_bev

log = logging.getLogger(__name__)


def _fmt(seconds: float) -> str:
    s = int(max(seconds, 0))
    return f"{s // 3600:d}:{s // 60 % 60:02d}:{s % 60:02d}"


class ThroughputETA(L.Callback):
    """Training samples/s (all ranks, validation excluded) and the ETA of the fit.

    Logged every step as ``perf/samples_per_s`` (mean over the last ``window`` steps, also on the
    progress bar) and ``perf/eta_min``; a console line every ``log_every_n_steps``; at the end of the
    fit ``throughput.json`` in ``out_dir`` with the mean over all steps after the first ``warmup_steps``.
    ETA = remaining optimiser steps x mean step time + remaining validations x mean validation time.
    """

    def __init__(self, out_dir: Optional[str] = None, window: int = 20, warmup_steps: int = 1,
                 log_every_n_steps: int = 10):
        self.out_dir, self.window, self.warmup_steps = out_dir, int(window), int(warmup_steps)
        self.log_every_n_steps = int(log_every_n_steps)
        self._t0: Optional[float] = None
        self._recent: list[tuple[float, int]] = []
        self._steps = 0
        self._time = 0.0
        self._samples = 0
        self._val_t0: Optional[float] = None
        self._val_times: list[float] = []

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._t0 = time.perf_counter()

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs, batch,
                           batch_idx: int) -> None:
        # wall time since the previous batch ended: data loading + step + callbacks (validation excluded)
        now = time.perf_counter()
        if self._t0 is None:
            self._t0 = now
            return
        dt, self._t0 = now - self._t0, now
        n = len(batch) * trainer.world_size
        self._steps += 1
        if self._steps > self.warmup_steps:
            self._time += dt
            self._samples += n
        self._recent = (self._recent + [(dt, n)])[-self.window:]
        rate = sum(k for _, k in self._recent) / max(sum(d for d, _ in self._recent), 1e-9)
        eta = self.eta_seconds(trainer)
        pl_module.log("perf/samples_per_s", rate, prog_bar=True, on_step=True, on_epoch=False, batch_size=1)
        pl_module.log("perf/eta_min", eta / 60.0, on_step=True, on_epoch=False, batch_size=1)
        if trainer.is_global_zero and self.log_every_n_steps and trainer.global_step % self.log_every_n_steps == 0:
            total = trainer.estimated_stepping_batches
            log.info("epoch %d step %d/%s | %.2f samples/s | ETA %s", trainer.current_epoch, trainer.global_step,
                     total if total != float("inf") else "?", rate, _fmt(eta))

    def eta_seconds(self, trainer: L.Trainer) -> float:
        step_time = (sum(d for d, _ in self._recent) / len(self._recent)) if self._recent else 0.0
        total = trainer.estimated_stepping_batches
        if total == float("inf"):
            return float("nan")
        remaining = max(int(total) - trainer.global_step, 0)
        eta = remaining * step_time * trainer.accumulate_grad_batches
        if self._val_times and trainer.num_training_batches not in (0, float("inf")):
            per_epoch = max(int(trainer.num_training_batches) // trainer.accumulate_grad_batches, 1)
            eta += remaining / per_epoch * (sum(self._val_times) / len(self._val_times))
        return eta

    def on_validation_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._val_t0 = time.perf_counter()

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self._val_t0 is not None and not trainer.sanity_checking:
            self._val_times.append(time.perf_counter() - self._val_t0)
        self._val_t0 = None
        if self._t0 is not None:
            self._t0 = time.perf_counter()  # do not count validation as training time

    def summary(self) -> dict:
        return {"samples_per_s": self._samples / self._time if self._time > 0 else float("nan"),
                "timed_steps": max(self._steps - self.warmup_steps, 0), "timed_samples": self._samples,
                "train_seconds": self._time, "val_seconds_mean": (sum(self._val_times) / len(self._val_times)
                                                                   if self._val_times else float("nan"))}

    def on_fit_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        s = self.summary()
        if trainer.is_global_zero:
            log.info("training throughput %.3f samples/s over %d steps", s["samples_per_s"], s["timed_steps"])
            if self.out_dir:
                os.makedirs(self.out_dir, exist_ok=True)
                with open(os.path.join(self.out_dir, "throughput.json"), "w") as f:
                    json.dump(s, f, indent=1)


class BevPlot(L.Callback):
    """After every validation, a PNG of one val frame: GT boxes vs predicted boxes (score >= threshold),
    GT drivable area vs predicted, the plan (raw and refined) vs the GT ego future.

    ``sample_index``: which val step to draw (a mid-scene frame, so the temporal path is exercised).
    Files: ``<out_dir>/bev_epoch<EEE>_step<SSSSSS>.png``; also sent to TensorBoard when that logger is used.
    """

    def __init__(self, out_dir: str, sample_index: int = 5, score_threshold: float = 0.3, dpi: int = 100):
        self.out_dir, self.sample_index = out_dir, int(sample_index)
        self.score_threshold, self.dpi = float(score_threshold), int(dpi)
        self._item = None
        self.last_path: Optional[str] = None

    def on_validation_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._item = None

    def on_validation_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs, batch,
                                batch_idx: int, dataloader_idx: int = 0) -> None:
        if not isinstance(batch, Batch) or batch.targets is None or outputs is None:
            return
        # the requested frame, or the last one seen when validation is shorter than that
        if self._item is None or batch_idx <= self.sample_index:
            self._item = (batch.to("cpu"), outputs.to("cpu"))

    def on_validation_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self._item is None or trainer.sanity_checking or not trainer.is_global_zero:
            return
        batch, out = self._item
        os.makedirs(self.out_dir, exist_ok=True)
        path = os.path.join(self.out_dir, f"bev_epoch{trainer.current_epoch:03d}_step{trainer.global_step:06d}.png")
        title = f"{batch.meta[0].sample_token[:8]}  epoch {trainer.current_epoch}  step {trainer.global_step}"
        with torch.no_grad():
            fig = draw_bev(batch, out, pl_module.loss_config.bev_range, pl_module.loss_config.map_range,
                           self.score_threshold, title)
        fig.savefig(path, dpi=self.dpi)
        self.last_path = path
        for lg in trainer.loggers:
            exp = getattr(lg, "experiment", None)
            if hasattr(exp, "add_figure"):
                exp.add_figure("val/bev", fig, global_step=trainer.global_step, close=False)
        self._item = None


class FaultInjection(L.Callback):
    """Kills its own process with a signal (default SIGKILL: no handler, no cleanup) when a training batch
    is about to start at ``global_step == at_step``. For fault-tolerance tests of checkpoint / resume."""

    def __init__(self, at_step: int, signal: str = "SIGKILL"):
        import signal as _signal

        self.at_step, self.signum = int(at_step), int(getattr(_signal, signal))

    def on_train_batch_start(self, trainer: L.Trainer, pl_module: L.LightningModule, batch, batch_idx: int) -> None:
        if trainer.global_step == self.at_step:
            log.warning("fault injection: signal %d at global step %d", self.signum, self.at_step)
            for h in logging.getLogger().handlers:
                h.flush()
            os.kill(os.getpid(), self.signum)
