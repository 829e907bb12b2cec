"""CenterPoint detection loss: Gaussian focal loss on heatmaps, L1 on box regression, attribute CE.

Targets are built from ``Targets.boxes / labels / mask``; boxes with ``num_pts == 0`` are skipped
(the devkit's evaluation filters them), as are boxes whose centre falls outside the BEV grid.
Heatmap targets use CenterPoint's Gaussian radius (CornerNet formula, ``min_overlap``, at least
``min_radius`` cells) around the integer centre cell, so each GT has a peak of exactly 1 there.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from drive.models.heads.detection import NUM_REG
from drive.types import Targets


@dataclass
class DetectionLossConfig:
    heatmap_weight: float = 1.0
    regression_weight: float = 0.25
    attribute_weight: float = 0.2
    min_overlap: float = 0.1
    min_radius: int = 2
    # offset x y, z, log l w h, sin, cos, vx vy (CenterPoint nuScenes code weights)
    code_weights: tuple[float, ...] = (1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 0.2, 0.2)
    # Regression supervised at the (2r+1)^2 cells around each centre, weighted by the box's heatmap Gaussian
    # (TTFNet's answer to CenterNet's slow convergence: more regression samples per box); 0 = centre cell only.
    regression_radius: int = 0


def gaussian_radius(height: Tensor, width: Tensor, min_overlap: float) -> Tensor:
    """CenterPoint / CornerNet Gaussian radius (in cells) for boxes of ``height`` x ``width`` cells."""
    mo = min_overlap
    b1 = height + width
    c1 = width * height * (1 - mo) / (1 + mo)
    r1 = (b1 + (b1**2 - 4 * c1).clamp(min=0).sqrt()) / 2
    b2 = 2 * (height + width)
    c2 = (1 - mo) * width * height
    r2 = (b2 + (b2**2 - 16 * c2).clamp(min=0).sqrt()) / 2
    a3 = 4 * mo
    b3 = -2 * mo * (height + width)
    c3 = (mo - 1) * width * height
    r3 = (b3 + (b3**2 - 4 * a3 * c3).clamp(min=0).sqrt()) / 2
    return torch.minimum(torch.minimum(r1, r2), r3)


@dataclass
class DetectionTargets:
    heatmap: Tensor  # (B, num_classes, S, S) in [0, 1], 1 at every GT centre cell
    cell_index: Tensor  # (B, M) int64 flat index row * S + col of each box centre
    regression: Tensor  # (B, M, NUM_REG)
    valid: Tensor  # (B, M) bool: real box, num_pts > 0, centre inside the grid
    sigma: Tensor  # (B, M) standard deviation (cells) of each box's heatmap Gaussian


def build_detection_targets(targets: Targets, num_classes: int, bev_size: int, bev_range: float,
                            min_overlap: float = 0.1, min_radius: int = 2) -> DetectionTargets:
    boxes, labels = targets.boxes, targets.labels
    s, res = bev_size, 2.0 * bev_range / bev_size
    gx = (boxes[..., 0] + bev_range) / res
    gy = (boxes[..., 1] + bev_range) / res
    col, row = gx.floor(), gy.floor()
    inside = (col >= 0) & (col < s) & (row >= 0) & (row < s)
    valid = targets.mask & (targets.num_pts > 0) & (labels >= 0) & (labels < num_classes) & inside
    col_i, row_i = col.clamp(0, s - 1).long(), row.clamp(0, s - 1).long()
    cell_index = row_i * s + col_i

    length, width = boxes[..., 3] / res, boxes[..., 4] / res
    radius = gaussian_radius(length, width, min_overlap).floor().clamp(min=min_radius)  # (B, M)
    sigma = (2 * radius + 1) / 6
    ar = torch.arange(s, device=boxes.device, dtype=boxes.dtype)
    dx = ar.view(1, 1, 1, s) - col_i.to(boxes.dtype)[..., None, None]
    dy = ar.view(1, 1, s, 1) - row_i.to(boxes.dtype)[..., None, None]
    r = radius[..., None, None]
    window = (dx.abs() <= r) & (dy.abs() <= r)
    gauss = torch.exp(-(dx**2 + dy**2) / (2 * sigma[..., None, None] ** 2)) * window * valid[..., None, None]
    onehot = F.one_hot(labels.clamp(min=0), num_classes).to(boxes.dtype) * valid[..., None]  # (B, M, K)
    heat = torch.stack([(gauss * onehot[..., k, None, None]).amax(dim=1) if gauss.shape[1] else
                        gauss.new_zeros(gauss.shape[0], s, s) for k in range(num_classes)], dim=1)

    yaw = boxes[..., 6]
    reg = torch.stack([
        gx - col, gy - row, boxes[..., 2],
        boxes[..., 3].clamp(min=1e-3).log(), boxes[..., 4].clamp(min=1e-3).log(), boxes[..., 5].clamp(min=1e-3).log(),
        yaw.sin(), yaw.cos(), boxes[..., 7], boxes[..., 8],
    ], dim=-1)
    return DetectionTargets(heat, cell_index, reg, valid, sigma)


def spread_regression(t: DetectionTargets, bev_size: int, radius: int) -> tuple[Tensor, Tensor, Tensor]:
    """Every box's regression target at the ``(2 radius + 1)^2`` cells around its centre cell.

    Returns cell indices (B, M*K), targets (B, M*K, NUM_REG) and weights (B, M*K): the box's heatmap Gaussian at
    each cell (1 at the centre), 0 outside the grid or for invalid boxes. Radius 0 is CenterPoint's centre cell. Only the centre offset changes from
    cell to cell (it is measured from the cell that predicts it); size, height, heading and velocity do not."""
    s = bev_size
    d = torch.arange(-radius, radius + 1, device=t.cell_index.device)
    dy, dx = torch.meshgrid(d, d, indexing="ij")
    dy, dx = dy.reshape(-1), dx.reshape(-1)  # (K,)
    row, col = t.cell_index // s, t.cell_index % s
    row_k, col_k = row[..., None] + dy, col[..., None] + dx  # (B, M, K)
    inside = (row_k >= 0) & (row_k < s) & (col_k >= 0) & (col_k < s) & t.valid[..., None]
    dist2 = (dx**2 + dy**2).to(t.regression.dtype)
    weight = torch.exp(-dist2 / (2 * t.sigma[..., None] ** 2)) * inside
    reg = t.regression[..., None, :].expand(*row_k.shape, t.regression.shape[-1]).clone()
    reg[..., 0] -= dx.to(reg.dtype)
    reg[..., 1] -= dy.to(reg.dtype)
    cells = (row_k.clamp(0, s - 1) * s + col_k.clamp(0, s - 1)).flatten(1)
    return cells, reg.flatten(1, 2), weight.flatten(1)


def gaussian_focal_loss(logits: Tensor, target: Tensor, alpha: float = 2.0, gamma: float = 4.0) -> Tensor:
    """CenterNet focal loss on sigmoid heatmaps, normalised by the number of peaks (at least 1)."""
    pos = (target >= 1.0).to(logits.dtype)
    neg_w = (1 - target).pow(gamma)
    p = logits.sigmoid().clamp(1e-4, 1 - 1e-4)
    pos_loss = -F.logsigmoid(logits) * (1 - p).pow(alpha) * pos
    neg_loss = -F.logsigmoid(-logits) * p.pow(alpha) * neg_w * (1 - pos)
    return (pos_loss.sum() + neg_loss.sum()) / pos.sum().clamp(min=1.0)


def gather_cells(map_BCYX: Tensor, cell_index_BM: Tensor) -> Tensor:
    """Values of a (B, C, S, S) map at flat cells (B, M) -> (B, M, C)."""
    b, c = map_BCYX.shape[:2]
    flat = map_BCYX.reshape(b, c, -1)
    return torch.gather(flat, 2, cell_index_BM[:, None, :].expand(b, c, -1)).transpose(1, 2)


def detection_loss(heatmap: Tensor, regression: Tensor, attributes: Tensor, targets: Targets, bev_range: float,
                   cfg: DetectionLossConfig = DetectionLossConfig()) -> dict[str, Tensor]:
    """Returns ``det_heatmap``, ``det_regression``, ``det_attribute`` and their weighted sum ``detection``."""
    b, ncls, s, _ = heatmap.shape
    t = build_detection_targets(targets, ncls, s, bev_range, cfg.min_overlap, cfg.min_radius)
    hm = gaussian_focal_loss(heatmap, t.heatmap)

    cells, reg_target, weight = spread_regression(t, s, cfg.regression_radius)  # radius 0: the centre cells, weight 1
    pred = gather_cells(regression, cells)
    finite = torch.isfinite(reg_target).to(pred.dtype)  # e.g. NaN velocities of static objects
    code_w = pred.new_tensor(cfg.code_weights[:NUM_REG])
    l1 = (pred - reg_target.nan_to_num(0.0)).abs() * code_w * finite * weight[..., None]
    reg = l1.sum() / weight.sum().clamp(min=1.0)  # a weighted mean: the same scale as centre-only

    attr_logits = gather_cells(attributes, t.cell_index)
    attr_valid = (t.valid & (targets.attributes >= 0)).to(attr_logits.dtype)
    ce = F.cross_entropy(attr_logits.reshape(-1, attr_logits.shape[-1]), targets.attributes.clamp(min=0).reshape(-1),
                         reduction="none").view_as(attr_valid)
    attr = (ce * attr_valid).sum() / attr_valid.sum().clamp(min=1.0)

    total = cfg.heatmap_weight * hm + cfg.regression_weight * reg + cfg.attribute_weight * attr
    return {"det_heatmap": hm, "det_regression": reg, "det_attribute": attr, "detection": total}
