"""CenterPoint-style detection head on the BEV map, with export-friendly decoding.

Raw maps (for the losses): class heatmap logits (B, 10, S, S), regression (B, 10, S, S) with
channels ``REG_*`` below, attribute logits (B, 8, S, S).

Decoding uses only static-shape ops: sigmoid -> 3x3 max-pool peak keep (a 0/1 multiplier) ->
flatten over classes and cells -> fixed ``top_k`` -> gather. No NMS, no ``nonzero``, no boolean
masks; empty slots simply carry low scores. Boxes are ``(x, y, z, l, w, h, yaw, vx, vy)`` in the
ego frame (``drive/types.py``).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from drive.types import ATTRIBUTES, CLASSES

# Regression channels. Offset is the position of the centre inside its cell, in cells, in [0, 1).
REG_OFFSET = slice(0, 2)
REG_Z = slice(2, 3)
REG_LOG_SIZE = slice(3, 6)  # log(l, w, h)
REG_SIN = slice(6, 7)
REG_COS = slice(7, 8)
REG_VEL = slice(8, 10)
NUM_REG = 10


def allowed_attributes() -> Tensor:
    """(num_classes, num_attributes) 0/1: which attributes a class can carry (devkit semantics)."""
    table = torch.zeros(len(CLASSES), len(ATTRIBUTES))
    for ci, cls in enumerate(CLASSES):
        if cls in ("car", "truck", "construction_vehicle", "bus", "trailer"):
            prefix = "vehicle."
        elif cls in ("motorcycle", "bicycle"):
            prefix = "cycle."
        elif cls == "pedestrian":
            prefix = "pedestrian."
        else:
            continue
        for ai, attr in enumerate(ATTRIBUTES):
            if attr.startswith(prefix):
                table[ci, ai] = 1.0
    return table


@dataclass
class DetectionOutputs:
    heatmap: Tensor  # (B, num_classes, S, S) logits
    regression: Tensor  # (B, NUM_REG, S, S)
    attributes: Tensor  # (B, num_attributes, S, S) logits
    boxes: Tensor  # (B, K, 9) ego frame
    scores: Tensor  # (B, K)
    labels: Tensor  # (B, K) int64
    attrs: Tensor  # (B, K) int64, -1 where the class has no attribute


def _branch(in_ch: int, hidden: int, out_ch: int, bias_init: float = 0.0) -> nn.Sequential:
    seq = nn.Sequential(
        nn.Conv2d(in_ch, hidden, 3, 1, 1, bias=False), nn.BatchNorm2d(hidden), nn.ReLU(inplace=True),
        nn.Conv2d(hidden, out_ch, 1),
    )
    nn.init.constant_(seq[-1].bias, bias_init)
    return seq


class CenterPointHead(nn.Module):
    """Heatmap + regression + attribute branches and top-K decoding.

    Args:
        in_channels: BEV channels C.
        bev_size, bev_range: the BEV grid the head runs on (see ``drive/types.py``).
        head_channels: hidden width of the shared conv and each branch.
        top_k: fixed number of decoded boxes K.
        temporal_regression: the regression branch (offset, size, heading, velocity) reads the current map and
            the previous frame's map aligned to the current ego frame, both through the shared conv, side by
            side (BEVDet4D's two-frame concat, here only for the box branch). Velocity is a displacement between
            two frames, and a moving object's heading is its direction of travel: the pair shows both
            directly, where the temporal self-attention inside the encoder has to learn to carry them.
    """

    def __init__(self, in_channels: int = 64, bev_size: int = 50, bev_range: float = 51.2, head_channels: int = 64,
                 top_k: int = 100, num_classes: int = len(CLASSES), num_attributes: int = len(ATTRIBUTES),
                 temporal_regression: bool = False) -> None:
        super().__init__()
        if top_k > num_classes * bev_size * bev_size:
            raise ValueError("top_k larger than the number of heatmap cells")
        self.bev_size, self.bev_range, self.top_k, self.num_classes = bev_size, bev_range, top_k, num_classes
        self.shared = nn.Sequential(
            nn.Conv2d(in_channels, head_channels, 3, 1, 1, bias=False), nn.BatchNorm2d(head_channels), nn.ReLU(inplace=True)
        )
        self.heatmap = _branch(head_channels, head_channels, num_classes, bias_init=-2.19)  # CenterNet prior 0.1
        self.temporal_regression = temporal_regression
        self.regression = _branch(head_channels * (2 if temporal_regression else 1), head_channels, NUM_REG)
        self.attribute = _branch(head_channels, head_channels, num_attributes)
        self.register_buffer("allowed_attrs", allowed_attributes()[:num_classes, :num_attributes], persistent=False)

    def forward(self, bev_BCYX: Tensor, aligned_prev_BCYX: Optional[Tensor] = None) -> DetectionOutputs:
        """``aligned_prev_BCYX``: the previous BEV in the current ego frame (the current map itself on a first
        frame); required when ``temporal_regression``, ignored otherwise."""
        x = self.shared(bev_BCYX)
        if self.temporal_regression:  # fixed at construction
            if aligned_prev_BCYX is None:
                raise ValueError("CenterPointHead(temporal_regression=True) needs the aligned previous BEV")
            reg = self.regression(torch.cat([x, self.shared(aligned_prev_BCYX)], dim=1))
        else:
            reg = self.regression(x)
        heat, attr = self.heatmap(x), self.attribute(x)
        boxes, scores, labels, attrs = self.decode(heat, reg, attr)
        return DetectionOutputs(heat, reg, attr, boxes, scores, labels, attrs)

    def decode(self, heat_BKYX: Tensor, reg_BRYX: Tensor, attr_BAYX: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        b, ncls, s, _ = heat_BKYX.shape
        prob = heat_BKYX.sigmoid()
        peak = (F.max_pool2d(prob, 3, 1, 1) == prob).to(prob.dtype)
        scores, idx = torch.topk((prob * peak).reshape(b, -1), self.top_k, dim=1)
        labels = torch.div(idx, s * s, rounding_mode="floor")
        cell = idx - labels * (s * s)
        row = torch.div(cell, s, rounding_mode="floor")
        col = cell - row * s
        reg = torch.gather(reg_BRYX.reshape(b, NUM_REG, -1), 2, cell[:, None, :].expand(b, NUM_REG, -1)).transpose(1, 2)
        res = 2.0 * self.bev_range / s
        x = (col.to(reg.dtype) + reg[..., 0]) * res - self.bev_range
        y = (row.to(reg.dtype) + reg[..., 1]) * res - self.bev_range
        size = reg[..., REG_LOG_SIZE].clamp(max=5.0).exp()
        yaw = torch.atan2(reg[..., REG_SIN], reg[..., REG_COS])
        boxes = torch.cat([x[..., None], y[..., None], reg[..., REG_Z], size, yaw, reg[..., REG_VEL]], dim=-1)
        na = attr_BAYX.shape[1]
        attr_logits = torch.gather(attr_BAYX.reshape(b, na, -1), 2, cell[:, None, :].expand(b, na, -1)).transpose(1, 2)
        allowed = self.allowed_attrs[labels]  # (B, K, A)
        attr_id = torch.where(allowed > 0, attr_logits, torch.full_like(attr_logits, -1e4)).argmax(dim=-1)
        attrs = torch.where(allowed.amax(dim=-1) > 0, attr_id, torch.full_like(attr_id, -1))
        return boxes, scores, labels, attrs
