"""Temporal fusion with the previous frame's BEV, aligned to the current ego frame by ego motion.

The first frame of a scene takes the same path as every other frame (no Python branch on
``prev_bev is None``): the caller passes a zero ``prev_bev`` and ``has_prev = 0``, and the previous
map is replaced by the current queries through a multiplicative flag,
``prev = has_prev * warped + (1 - has_prev) * current``, as BEVFormer does by stacking the
current queries twice. With ``has_prev = 0`` the output does not depend on ``prev_bev`` at all.

``TemporalSelfAttention`` is BEVFormer's deformable self-attention over the two value maps
``[aligned prev, current]``. ``TemporalConvFusion`` is the cheap alternative (concat + conv, as
BEVDet4D) used by the bilinear-lifting view transform, and optionally after the BEVFormer encoder,
where its 3 x 3 window sees an object's displacement between the frames directly.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import Tensor, nn

from drive.models.attention import deformable_sample, init_sampling_offsets
from drive.models.geometry import bev_cell_centers, ego_motion_grid


def warp_prev_bev(prev_bev_BCYX: Tensor, prev_T_cur_B44: Tensor, bev_range: float) -> Tensor:
    """Resample the previous BEV map onto the current grid (zeros where it was not seen)."""
    grid = ego_motion_grid(prev_T_cur_B44, prev_bev_BCYX.shape[-1], bev_range)
    return F.grid_sample(prev_bev_BCYX, grid, mode="bilinear", padding_mode="zeros", align_corners=False)


def mix_first_frame(aligned_prev: Tensor, current: Tensor, has_prev_B: Tensor) -> Tensor:
    """``has_prev * aligned_prev + (1 - has_prev) * current`` with ``has_prev`` broadcast from (B,)."""
    flag = has_prev_B.to(current.dtype).reshape(-1, *([1] * (current.dim() - 1)))
    return flag * aligned_prev + (1.0 - flag) * current


class TemporalSelfAttention(nn.Module):
    """BEVFormer temporal self-attention with grid_sample instead of the custom CUDA op.

    Each BEV query samples ``num_points`` locations around its own cell in both the aligned
    previous map and the current query map; offsets and weights come from
    ``concat(prev, query + pos)``; the two results are averaged.
    """

    num_queue = 2

    def __init__(self, embed_dim: int, bev_size: int, bev_range: float, num_heads: int = 4, num_points: int = 4) -> None:
        super().__init__()
        self.embed_dim, self.bev_size, self.num_heads, self.num_points = embed_dim, bev_size, num_heads, num_points
        shape = (self.num_queue, num_heads, num_points, 2)
        self.sampling_offsets = nn.Linear(2 * embed_dim, self.num_queue * num_heads * num_points * 2)
        init_sampling_offsets(self.sampling_offsets, shape, head_axis=1, point_axis=2)
        self.attention_weights = nn.Linear(2 * embed_dim, self.num_queue * num_heads * num_points)
        nn.init.zeros_(self.attention_weights.weight)
        nn.init.zeros_(self.attention_weights.bias)
        self.value_proj = nn.Linear(embed_dim, embed_dim)
        self.output_proj = nn.Linear(embed_dim, embed_dim)
        ref = bev_cell_centers(bev_size, bev_range).reshape(-1, 2) / bev_range
        self.register_buffer("ref_Q2", ref, persistent=False)

    def forward(self, query_BQC: Tensor, pos_QC: Tensor, prev_BQC: Tensor) -> Tensor:
        b, q, c = query_BQC.shape
        s, h, p, nq = self.bev_size, self.num_heads, self.num_points, self.num_queue
        qp = torch.cat([prev_BQC, query_BQC + pos_QC], dim=-1)
        off = self.sampling_offsets(qp).view(b, q, nq, h, p, 2)
        w = self.attention_weights(qp).view(b, q, nq, h, p).softmax(dim=-1)
        grid = self.ref_Q2.view(1, q, 1, 1, 1, 2) + off * (2.0 / s)
        grid = rearrange(grid, "b q n h p t -> (b n h) q p t")
        w = rearrange(w, "b q n h p -> (b n h) q p")
        value = self.value_proj(torch.stack([prev_BQC, query_BQC], dim=1))
        value = rearrange(value, "b n (y x) (h d) -> (b n h) d y x", y=s, x=s, h=h)
        out = deformable_sample(value, grid, w)
        out = rearrange(out, "(b n h) d q -> b n q (h d)", b=b, n=nq, h=h).mean(dim=1)
        return self.output_proj(out)


class TemporalConvFusion(nn.Module):
    """Cheap fusion: ``conv(concat(current, aligned prev))`` with a residual to the current map."""

    def __init__(self, embed_dim: int, bev_range: float) -> None:
        super().__init__()
        self.bev_range = bev_range
        self.fuse = nn.Sequential(
            nn.Conv2d(2 * embed_dim, embed_dim, 3, 1, 1, bias=False),
            nn.BatchNorm2d(embed_dim),
            nn.ReLU(inplace=True),
            nn.Conv2d(embed_dim, embed_dim, 1),
        )

    def forward(self, bev_BCYX: Tensor, prev_bev_BCYX: Tensor, prev_T_cur_B44: Tensor, has_prev_B: Tensor) -> Tensor:
        return self.fuse_aligned(bev_BCYX, warp_prev_bev(prev_bev_BCYX, prev_T_cur_B44, self.bev_range), has_prev_B)

    def fuse_aligned(self, bev_BCYX: Tensor, aligned_prev_BCYX: Tensor, has_prev_B: Tensor) -> Tensor:
        """The fusion on a previous map already warped onto the current grid."""
        prev = mix_first_frame(aligned_prev_BCYX, bev_BCYX, has_prev_B)
        return bev_BCYX + self.fuse(torch.cat([bev_BCYX, prev], dim=1))
