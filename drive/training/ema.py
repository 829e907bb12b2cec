"""Exponential moving average of the model weights (optional, ``system.ema_decay``).

A thin ``torch.optim.swa_utils.AveragedModel`` with ``use_buffers=True`` (BatchNorm statistics are averaged
too). It is a sub-module of the system, so its weights are part of every checkpoint and a resumed run
continues the same average; validation and export use it when enabled.

The decay warms up as in timm's ``ModelEmaV3`` and mmdet's EMA hooks: update ``n`` (counting from the first,
which copies the model) uses ``min(decay, (1 + n) / (10 + n))``. Without it a 0.999 average over a
2000-step CPU run would still hold 0.999^2000 = 14 % of the random initial weights.
"""
from __future__ import annotations

import torch
from torch import Tensor, nn
from torch.optim.swa_utils import AveragedModel


def warmed_decay(decay: float, n: int) -> float:
    """The decay of the ``n``-th update after the initial copy (``n >= 1``)."""
    return min(float(decay), (1.0 + n) / (10.0 + n))


def _ema_multi_avg_fn(decay: float):
    @torch.no_grad()
    def update(ema_params: list[Tensor], model_params: list[Tensor], num_averaged: Tensor) -> None:
        d = warmed_decay(decay, int(num_averaged))
        if torch.is_floating_point(ema_params[0]) or torch.is_complex(ema_params[0]):
            torch._foreach_lerp_(ema_params, model_params, 1.0 - d)
        else:  # integer buffers (BatchNorm's num_batches_tracked): follow the model
            for e, m in zip(ema_params, model_params, strict=True):
                e.copy_(m)

    return update


class EMA(AveragedModel):
    def __init__(self, model: nn.Module, decay: float):
        if not 0.0 < decay < 1.0:
            raise ValueError(f"ema decay must be in (0, 1), got {decay}")
        super().__init__(model, multi_avg_fn=_ema_multi_avg_fn(decay), use_buffers=True)
        self.decay = float(decay)
        for p in self.parameters():
            p.requires_grad_(False)
