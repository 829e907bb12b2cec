"""Drivable-area loss: BCE + Dice, each sample weighted by ``Targets.map_valid``."""
from __future__ import annotations

from dataclasses import dataclass

import torch.nn.functional as F
from torch import Tensor


@dataclass
class MapLossConfig:
    bce_weight: float = 1.0
    dice_weight: float = 1.0
    smooth: float = 1.0


def map_loss(logits_BYX: Tensor, drivable_BYX: Tensor, map_valid_B: Tensor,
             cfg: MapLossConfig = MapLossConfig()) -> dict[str, Tensor]:
    """Returns ``map_bce``, ``map_dice`` and their weighted sum ``map``; 0 when no sample has a map."""
    if logits_BYX.shape != drivable_BYX.shape:
        raise ValueError(f"map logits {tuple(logits_BYX.shape)} and drivable target {tuple(drivable_BYX.shape)} differ")
    w = map_valid_B.to(logits_BYX.dtype)
    n = w.sum().clamp(min=1.0)
    bce = F.binary_cross_entropy_with_logits(logits_BYX, drivable_BYX, reduction="none").mean(dim=(1, 2))
    p = logits_BYX.sigmoid()
    inter = (p * drivable_BYX).sum(dim=(1, 2))
    dice = 1 - (2 * inter + cfg.smooth) / (p.sum(dim=(1, 2)) + drivable_BYX.sum(dim=(1, 2)) + cfg.smooth)
    bce, dice = (bce * w).sum() / n, (dice * w).sum() / n
    return {"map_bce": bce, "map_dice": dice, "map": cfg.bce_weight * bce + cfg.dice_weight * dice}
