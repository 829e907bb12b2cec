"""Distillation from an offboard teacher's maps: BEV feature imitation and soft-heatmap distillation.

The teacher's maps of a keyframe (``drive.data.teacher_maps``) are in that keyframe's real ego frame on the
teacher's grid; the student sees the sample through the training augmentation ``ego' = A ego`` (rotation and
y-flip, ``drive.data.augment.BevAug``) on its own grid. ``align_teacher_maps`` samples a teacher map at every
student cell centre ``p'``, i.e. at ``A^-1 p'`` in the teacher's frame (bilinear, zero outside; ``valid`` says
how much of a cell the teacher covered). A flipped sample takes the teacher's features of the *mirrored* world
(its TTA passes) with ``A M`` (``M`` = the y-flip, ``A M`` a pure rotation): a BEV feature is not mirror-
symmetric, so flipping the real world's map would teach the wrong thing. Class probabilities are, so the
heatmap is always aligned from the real world's map.

Losses, each a weighted mean over cells with the foreground weight
``w = valid * (background_weight + max_k p_teacher[k])`` (foreground-guided imitation as in BEVDistill,
ICLR 2023, and DistillBEV, ICCV 2023, with the teacher's own heatmap as the foreground instead of the labels):

* ``feature``: ``mean_c (adapter(bev_student) - bev_teacher)^2``, the adapter a 1x1 convolution to the teacher's
  width (training only, never exported);
* ``heatmap``: the binary KL divergence ``sum_k KL(p_teacher[k] || sigmoid(logit_student[k]))``, zero exactly
  when the student's probabilities equal the teacher's.

A sample without teacher maps has ``w = 0`` (the base world's human-labelled frames): the terms are still
computed, so every parameter stays in the graph (DDP needs that), with zero gradient.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch
import torch.nn.functional as F
from torch import Tensor

from drive.models.geometry import bev_cell_centers

FLIP_Y = torch.diag(torch.tensor([1.0, -1.0, 1.0, 1.0], dtype=torch.float64))


@dataclass
class DistillLossConfig:
    weight: float = 0.0  # 0 = off (no adapter is built)
    feature_weight: float = 1.0
    heatmap_weight: float = 1.0
    background_weight: float = 0.1  # cells the teacher calls empty still count this much
    targets_dir: Optional[str] = None  # directory of <sample_token>.npz teacher maps (drive.data.teacher_maps)


@dataclass
class DistillTargets:
    """Teacher maps of a batch on the student's grid, in each sample's (augmented) frame."""

    bev: Tensor  # (B, C_teacher, S, S)
    heatmap: Tensor  # (B, K, S, S) probabilities
    weight: Tensor  # (B, 1, S, S) foreground weight x coverage; 0 for samples without maps
    feature_valid: Tensor  # (B,) 1 where the feature target is usable (a flipped sample needs mirrored maps)


def augmentation_of(global_T_ego_aug: Tensor, global_T_ego: Tensor) -> Tensor:
    """``A`` with ``ego' = A ego`` from the augmented and the real pose (``global_T_ego_aug = global_T_ego A^-1``)."""
    return torch.linalg.inv(global_T_ego_aug.double()) @ global_T_ego.double()


def is_flipped(A_44: Tensor) -> bool:
    return bool(torch.det(A_44[:2, :2].double()) < 0)


def align_teacher_maps(maps_CSS: Tensor, A_44: Tensor, teacher_range: float, size: int,
                       bev_range: float) -> tuple[Tensor, Tensor]:
    """Sample ``maps_CSS`` (teacher grid, real frame) at the student's cell centres of the frame ``A ego``.

    Returns ``(aligned (C, size, size), valid (1, size, size))``; ``valid`` is the bilinear coverage in [0, 1]."""
    p = bev_cell_centers(size, bev_range).to(torch.float64).reshape(-1, 2)
    pts = torch.cat([p, p.new_zeros(len(p), 1), p.new_ones(len(p), 1)], dim=1)
    q = (torch.linalg.inv(A_44.double()) @ pts.T).T[:, :2]
    grid = (q / float(teacher_range)).float().reshape(1, size, size, 2).to(maps_CSS.device)
    src = torch.cat([maps_CSS.float(), maps_CSS.new_ones(1, *maps_CSS.shape[1:]).float()], dim=0)  # + coverage
    out = F.grid_sample(src[None], grid, mode="bilinear", padding_mode="zeros", align_corners=False)[0]
    return out[:-1], out[-1:].clamp(0.0, 1.0)


def foreground_weight(heatmap_BKSS: Tensor, valid_B1SS: Tensor, background: float) -> Tensor:
    return valid_B1SS * (float(background) + heatmap_BKSS.amax(dim=1, keepdim=True))


def _weighted_mean(per_cell_B1SS: Tensor, weight_B1SS: Tensor) -> Tensor:
    return (per_cell_B1SS * weight_B1SS).sum() / weight_B1SS.sum().clamp_min(1e-6)


def feature_distill_loss(adapted_BCSS: Tensor, teacher_BCSS: Tensor, weight_B1SS: Tensor) -> Tensor:
    """Foreground-weighted mean over cells of the channel-mean squared error."""
    return _weighted_mean((adapted_BCSS - teacher_BCSS).pow(2).mean(dim=1, keepdim=True), weight_B1SS)


def binary_kl_with_logits(logits: Tensor, p: Tensor) -> Tensor:
    """Elementwise ``KL(Bernoulli(p) || Bernoulli(sigmoid(logits)))`` (BCE minus the target's entropy)."""
    p = p.clamp(0.0, 1.0)
    entropy = -(torch.xlogy(p, p) + torch.xlogy(1.0 - p, 1.0 - p))
    return F.binary_cross_entropy_with_logits(logits, p, reduction="none") - entropy


def heatmap_distill_loss(logits_BKSS: Tensor, teacher_BKSS: Tensor, weight_B1SS: Tensor) -> Tensor:
    """Foreground-weighted mean over cells of the class-summed binary KL."""
    return _weighted_mean(binary_kl_with_logits(logits_BKSS, teacher_BKSS).sum(dim=1, keepdim=True), weight_B1SS)


def distill_loss(adapted_bev: Tensor, heatmap_logits: Tensor, targets: DistillTargets,
                 cfg: DistillLossConfig) -> dict[str, Tensor]:
    """``distill_feature``, ``distill_heatmap`` and their weighted sum ``distill`` (before ``cfg.weight``)."""
    w_feat = targets.weight * targets.feature_valid.view(-1, 1, 1, 1).to(targets.weight)
    feat = feature_distill_loss(adapted_bev, targets.bev, w_feat)
    heat = heatmap_distill_loss(heatmap_logits, targets.heatmap, targets.weight)
    return {"distill_feature": feat, "distill_heatmap": heat,
            "distill": cfg.feature_weight * feat + cfg.heatmap_weight * heat}
