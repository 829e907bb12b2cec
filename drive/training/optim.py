"""Learning-rate schedule and parameter groups.

``warmup_cosine``: linear warm-up from ``warmup_start_factor * lr`` to ``lr`` over ``warmup_steps``
optimiser steps, then a cosine decay to ``min_factor * lr`` at ``total_steps`` (the trainer's
``estimated_stepping_batches``, passed in by the system). Stepped every optimiser step.
"""
from __future__ import annotations

import math

from torch import nn
from torch.optim import Optimizer
from torch.optim.lr_scheduler import LambdaLR


class WarmupCosine:
    """``step -> lr factor``; a callable object, so ``LambdaLR.state_dict`` stores its plain fields."""

    def __init__(self, warmup_steps: int, total_steps: int, min_factor: float, warmup_start_factor: float):
        self.warmup_steps, self.total_steps = int(warmup_steps), max(int(total_steps), 1)
        self.min_factor, self.warmup_start_factor = float(min_factor), float(warmup_start_factor)

    def __call__(self, step: int) -> float:
        if step < self.warmup_steps:
            a = step / max(self.warmup_steps, 1)
            return self.warmup_start_factor + (1.0 - self.warmup_start_factor) * a
        span = max(self.total_steps - self.warmup_steps, 1)
        t = min(max(step - self.warmup_steps, 0) / span, 1.0)
        return self.min_factor + (1.0 - self.min_factor) * 0.5 * (1.0 + math.cos(math.pi * t))


def warmup_cosine(optimizer: Optimizer, total_steps: int, warmup_steps: int = 200, min_factor: float = 0.05,
                  warmup_start_factor: float = 0.01) -> LambdaLR:
    """Linear warm-up then cosine decay (see module doc). Warm-up is capped at a tenth of training."""
    warmup = min(int(warmup_steps), max(int(total_steps) // 10, 1))
    return LambdaLR(optimizer, WarmupCosine(warmup, total_steps, min_factor, warmup_start_factor))


def parameter_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    """Weight decay on weight matrices / kernels only; none on biases, norms and embeddings (ndim <= 1)."""
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        (no_decay if p.ndim <= 1 or name.endswith(".bias") else decay).append(p)
    return [{"params": decay, "weight_decay": float(weight_decay), "name": "decay"},
            {"params": no_decay, "weight_decay": 0.0, "name": "no_decay"}]
