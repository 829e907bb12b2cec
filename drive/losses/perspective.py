"""Perspective auxiliary loss: CenterNet heatmap of projected box centres + log-depth L1, per camera.

Targets come from the same ``Targets`` boxes as the BEV losses and the ``ego2img`` matrices the
model is given (so image augmentation is already inside them): each valid box (``num_pts > 0``)
whose centre projects in front of a camera (depth > ``min_depth``) and inside its image puts a
Gaussian peak on that camera's stride-s feature grid, radius from the projected 2D extent of its 8
corners (CornerNet formula as in the BEV head, at least ``min_radius`` cells). The depth target is
``log(depth)`` of the centre, regressed at the peak cell. The head is ``PerspectiveHead``.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from drive.losses.detection import gaussian_focal_loss, gaussian_radius
from drive.types import Targets


@dataclass
class PerspectiveLossConfig:
    weight: float = 0.0  # 0 = off (no head is built); configs/loss/default.yaml keeps it off (BENCHMARKS.md)
    heatmap_weight: float = 1.0
    depth_weight: float = 0.5
    min_overlap: float = 0.1
    min_radius: int = 1
    min_depth: float = 0.5  # metres in front of the camera
    hidden: int = 64  # width of PerspectiveHead's shared conv


@dataclass
class PerspectiveTargets:
    heatmap: Tensor  # (B, N, K, h, w) in [0, 1], exactly 1 at every projected centre cell
    cell_index: Tensor  # (B, N, M) flat row * w + col of each box's centre cell
    log_depth: Tensor  # (B, N, M)
    valid: Tensor  # (B, N, M) bool: box counted and its centre inside this camera's image


def box_corners(boxes_BM9: Tensor) -> Tensor:
    """(B, M, 9) boxes ``x y z l w h yaw ...`` -> (B, M, 8, 3) corners in the same frame."""
    half = boxes_BM9[..., 3:6] / 2
    signs = boxes_BM9.new_tensor([[sx, sy, sz] for sx in (1, -1) for sy in (1, -1) for sz in (1, -1)])  # (8, 3)
    local = half[..., None, :] * signs  # (B, M, 8, 3)
    c, s = boxes_BM9[..., 6].cos()[..., None], boxes_BM9[..., 6].sin()[..., None]
    x = c * local[..., 0] - s * local[..., 1]
    y = s * local[..., 0] + c * local[..., 1]
    return torch.stack([x, y, local[..., 2]], dim=-1) + boxes_BM9[..., None, 0:3]


def _project(points_BMP3: Tensor, ego2img_BN44: Tensor) -> tuple[Tensor, Tensor]:
    """(B, M, P, 3) ego points -> pixels (B, N, M, P, 2) and depth (B, N, M, P)."""
    homo = torch.cat([points_BMP3, torch.ones_like(points_BMP3[..., :1])], dim=-1)
    p = torch.einsum("bnij,bmpj->bnmpi", ego2img_BN44, homo)
    depth = p[..., 2]
    uv = p[..., :2] / depth.clamp(min=1e-3)[..., None]
    return uv, depth


def build_perspective_targets(targets: Targets, ego2img: Tensor, image_hw: tuple[int, int], feat_hw: tuple[int, int],
                              num_classes: int, cfg: PerspectiveLossConfig = PerspectiveLossConfig()) -> PerspectiveTargets:
    boxes, labels = targets.boxes, targets.labels
    (ih, iw), (fh, fw) = image_hw, feat_hw
    sy, sx = ih / fh, iw / fw
    centre_uv, centre_d = _project(boxes[..., None, 0:3], ego2img)  # (B, N, M, 1, .)
    centre_uv, centre_d = centre_uv[..., 0, :], centre_d[..., 0]
    corner_uv, corner_d = _project(box_corners(boxes), ego2img)  # (B, N, M, 8, .)

    counted = targets.mask & (targets.num_pts > 0) & (labels >= 0) & (labels < num_classes)  # (B, M)
    u, v = centre_uv[..., 0], centre_uv[..., 1]
    valid = counted[:, None] & (centre_d > cfg.min_depth) & (u >= 0) & (u < iw) & (v >= 0) & (v < ih)
    col, row = (u / sx).floor().clamp(0, fw - 1), (v / sy).floor().clamp(0, fh - 1)
    cell_index = (row * fw + col).long()

    # 2D extent from the corners in front of the camera, clipped to the image, in feature cells
    front = (corner_d > 1e-3)[..., None]
    lo = torch.where(front, corner_uv, centre_uv[..., None, :]).amin(dim=-2)
    hi = torch.where(front, corner_uv, centre_uv[..., None, :]).amax(dim=-2)
    lo = torch.stack([lo[..., 0].clamp(0, iw), lo[..., 1].clamp(0, ih)], dim=-1)
    hi = torch.stack([hi[..., 0].clamp(0, iw), hi[..., 1].clamp(0, ih)], dim=-1)
    w_cells, h_cells = (hi[..., 0] - lo[..., 0]) / sx, (hi[..., 1] - lo[..., 1]) / sy
    radius = gaussian_radius(h_cells, w_cells, cfg.min_overlap).floor().clamp(min=cfg.min_radius)
    sigma = (2 * radius + 1) / 6

    dx = torch.arange(fw, dtype=boxes.dtype, device=boxes.device) - col[..., None, None]  # (B, N, M, 1, fw)
    dy = torch.arange(fh, dtype=boxes.dtype, device=boxes.device)[:, None] - row[..., None, None]  # (B, N, M, fh, 1)
    r = radius[..., None, None]
    window = (dx.abs() <= r) & (dy.abs() <= r)
    gauss = torch.exp(-(dx**2 + dy**2) / (2 * sigma[..., None, None] ** 2)) * window * valid[..., None, None]
    onehot = F.one_hot(labels.clamp(min=0), num_classes).to(boxes.dtype)  # (B, M, K)
    if boxes.shape[1]:
        heat = (gauss[:, :, :, None] * onehot[:, None, :, :, None, None]).amax(dim=2)  # (B, N, K, fh, fw)
    else:
        heat = boxes.new_zeros(boxes.shape[0], ego2img.shape[1], num_classes, fh, fw)
    log_depth = centre_d.clamp(min=cfg.min_depth).log()
    return PerspectiveTargets(heat, cell_index, log_depth, valid)


def perspective_loss(heatmap: Tensor, log_depth: Tensor, targets: Targets, ego2img: Tensor,
                     image_hw: tuple[int, int], cfg: PerspectiveLossConfig = PerspectiveLossConfig()) -> dict[str, Tensor]:
    """heatmap (B, N, K, h, w) logits and log_depth (B, N, 1, h, w) from ``PerspectiveHead``.

    Returns ``persp_heatmap``, ``persp_depth`` and their weighted sum ``perspective`` (before ``cfg.weight``)."""
    b, n, k, fh, fw = heatmap.shape
    t = build_perspective_targets(targets, ego2img, image_hw, (fh, fw), k, cfg)
    hm = gaussian_focal_loss(heatmap, t.heatmap)
    pred = torch.gather(log_depth.flatten(2), 2, t.cell_index)  # (B, N, h*w) at (B, N, M) -> (B, N, M)
    valid = t.valid.to(pred.dtype)
    depth = ((pred - t.log_depth).abs() * valid).sum() / valid.sum().clamp(min=1.0)
    total = cfg.heatmap_weight * hm + cfg.depth_weight * depth
    return {"persp_heatmap": hm, "persp_depth": depth, "perspective": total}
