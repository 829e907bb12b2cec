"""Exponential moving average of the model weights (optional, ``system.ema_decay``).

A thin ``torch.optim.swa_utils.AveragedModel`` with the EMA update and ``use_buffers=True`` (BatchNorm
statistics are averaged too). It is a sub-module of the system, so its weights are part of every
checkpoint and a resumed run continues the same average; validation and export use it when enabled.
"""
from __future__ import annotations

from torch import nn
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn


class EMA(AveragedModel):
    def __init__(self, model: nn.Module, decay: float):
        if not 0.0 < decay < 1.0:
            raise ValueError(f"ema decay must be in (0, 1), got {decay}")
        super().__init__(model, multi_avg_fn=get_ema_multi_avg_fn(decay), use_buffers=True)
        self.decay = float(decay)
        for p in self.parameters():
            p.requires_grad_(False)
