"""``Distiller``: the training-only part of distilling an offboard teacher into the edge model.

It holds the 1x1-conv adapter from the student's BEV width to the teacher's (never exported: it lives in the
``DrivingSystem``, not the model) and reads the teacher maps of the batch's keyframes by sample token from
``DistillLossConfig.targets_dir`` (``drive.data.teacher_maps``), aligned to each sample's augmented frame on
the student's grid. The losses are ``drive.losses.distill``.
"""
from __future__ import annotations

import glob
import os
from typing import Optional, Sequence

import torch
from torch import Tensor, nn

from drive.data.errors import DataError
from drive.data.teacher_maps import maps_path, read_teacher_maps
from drive.losses.distill import (FLIP_Y, DistillLossConfig, DistillTargets, align_teacher_maps, augmentation_of,
                                  distill_loss, foreground_weight, is_flipped)
from drive.types import SampleMeta


class Distiller(nn.Module):
    """Args: student_channels / bev_size / bev_range: the student's BEV map; num_classes: its heatmap classes;
    cfg: ``DistillLossConfig`` (``targets_dir`` must hold at least one maps file: its shape sets the adapter)."""

    def __init__(self, student_channels: int, bev_size: int, bev_range: float, num_classes: int,
                 cfg: DistillLossConfig):
        super().__init__()  # the weights' signs are checked with the loss config (check_loss_config)
        directory = os.path.abspath(os.path.expanduser(str(cfg.targets_dir or "")))
        if not cfg.targets_dir or not os.path.isdir(directory):
            raise DataError(f"loss.distill.targets_dir: no directory of teacher maps at {cfg.targets_dir!r} "
                            "(the labelling loop's teacher step writes them)", "loss.distill.targets_dir")
        first = sorted(glob.glob(os.path.join(directory, "*.npz")))
        if not first:
            raise DataError(f"loss.distill.targets_dir: {directory} holds no teacher maps (*.npz)", directory)
        probe = read_teacher_maps(first[0])
        if probe.heatmap.shape[0] != num_classes:
            raise DataError(f"{first[0]}: teacher heatmap has {probe.heatmap.shape[0]} classes, the student "
                            f"{num_classes}", first[0])
        self.cfg, self.directory = cfg, directory
        self.bev_size, self.bev_range = int(bev_size), float(bev_range)
        self.teacher_channels, self.num_classes = int(probe.bev.shape[0]), int(num_classes)
        self.adapter = nn.Conv2d(student_channels, self.teacher_channels, kernel_size=1)

    def targets(self, metas: Sequence[SampleMeta], device: torch.device) -> DistillTargets:
        """The batch's teacher maps; zeros and weight 0 for a keyframe without a maps file."""
        s = self.bev_size
        per = [self._one(m) for m in metas]
        zeros_bev, zeros_heat = torch.zeros(self.teacher_channels, s, s), torch.zeros(self.num_classes, s, s)
        return DistillTargets(bev=torch.stack([b if b is not None else zeros_bev for b, _, _, _ in per]).to(device),
                              heatmap=torch.stack([h if h is not None else zeros_heat for _, h, _, _ in per]).to(device),
                              weight=torch.stack([w for _, _, w, _ in per]).to(device),
                              feature_valid=torch.tensor([ok for _, _, _, ok in per]).to(device))

    def _one(self, m: SampleMeta) -> tuple[Optional[Tensor], Optional[Tensor], Tensor, float]:
        """(bev, heatmap, weight, feature usable) of one keyframe on the student's grid, in its augmented frame."""
        s = self.bev_size
        path = maps_path(self.directory, m.sample_token)
        if not os.path.isfile(path):
            return None, None, torch.zeros(1, s, s), 0.0
        maps = read_teacher_maps(path)
        if maps.bev.shape[0] != self.teacher_channels or maps.heatmap.shape[0] != self.num_classes:
            raise DataError(f"{path}: teacher maps with {maps.bev.shape[0]} BEV channels and "
                            f"{maps.heatmap.shape[0]} classes, expected {self.teacher_channels} and "
                            f"{self.num_classes} (maps of two teachers in one directory?)", path)
        A = augmentation_of(torch.as_tensor(m.global_T_ego, dtype=torch.float64),
                            torch.as_tensor(maps.global_T_ego, dtype=torch.float64))
        heat, valid = align_teacher_maps(torch.from_numpy(maps.heatmap.astype("float32")), A, maps.bev_range, s,
                                         self.bev_range)
        weight = foreground_weight(heat[None], valid[None], self.cfg.background_weight)[0]
        src, A_src = (maps.bev_mirror, A @ FLIP_Y) if is_flipped(A) else (maps.bev, A)
        if src is None:  # a flipped sample and no mirrored passes: the heatmap only
            return None, heat, weight, 0.0
        bev, _ = align_teacher_maps(torch.from_numpy(src.astype("float32")), A_src, maps.bev_range, s, self.bev_range)
        return bev, heat, weight, 1.0

    def forward(self, bev_BCSS: Tensor, heatmap_logits_BKSS: Tensor, metas: Sequence[SampleMeta]) -> dict[str, Tensor]:
        """``distill_feature``, ``distill_heatmap``, ``distill``; a batch without maps gives zeros, every parameter
        still in the graph."""
        t = self.targets(metas, bev_BCSS.device)
        return distill_loss(self.adapter(bev_BCSS), heatmap_logits_BKSS, t, self.cfg)
