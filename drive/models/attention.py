"""Attention building blocks written with standard ops only (matmul, softmax, grid_sample).

Nothing here uses fused or custom kernels, so every block exports to plain ONNX.
"""
from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import Tensor, nn

from drive.models.geometry import bev_cell_centers


class MultiHeadAttention(nn.Module):
    """Dense multi-head attention: ``softmax(q k^T / sqrt(d) + key_bias) v``.

    ``key_bias_BK`` is an additive logit per key (e.g. ``log(score)`` to mute empty agent slots);
    it replaces boolean key-padding masks, which do not survive export well.
    """

    def __init__(self, embed_dim: int, num_heads: int, kv_dim: Optional[int] = None) -> None:
        super().__init__()
        if embed_dim % num_heads:
            raise ValueError(f"embed_dim {embed_dim} not divisible by num_heads {num_heads}")
        kv_dim = kv_dim or embed_dim
        self.num_heads = num_heads
        self.scale = (embed_dim // num_heads) ** -0.5
        self.q_proj = nn.Linear(embed_dim, embed_dim)
        self.k_proj = nn.Linear(kv_dim, embed_dim)
        self.v_proj = nn.Linear(kv_dim, embed_dim)
        self.out_proj = nn.Linear(embed_dim, embed_dim)

    def forward(self, query_BQC: Tensor, key_BKC: Tensor, value_BKC: Tensor, key_bias_BK: Optional[Tensor] = None) -> Tensor:
        h = self.num_heads
        q = rearrange(self.q_proj(query_BQC), "b q (h d) -> b h q d", h=h)
        k = rearrange(self.k_proj(key_BKC), "b k (h d) -> b h d k", h=h)
        v = rearrange(self.v_proj(value_BKC), "b k (h d) -> b h k d", h=h)
        logits = torch.matmul(q, k) * self.scale
        if key_bias_BK is not None:
            logits = logits + key_bias_BK[:, None, None, :]
        out = torch.matmul(logits.softmax(dim=-1), v)
        return self.out_proj(rearrange(out, "b h q d -> b q (h d)"))


class FFN(nn.Module):
    def __init__(self, embed_dim: int, hidden_dim: int) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Linear(embed_dim, hidden_dim), nn.ReLU(inplace=True), nn.Linear(hidden_dim, embed_dim))

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x)


class MLP(nn.Sequential):
    """Linear-ReLU stack; no activation after the last layer."""

    def __init__(self, in_dim: int, hidden_dim: int, out_dim: int, num_layers: int = 2) -> None:
        dims = [in_dim] + [hidden_dim] * (num_layers - 1) + [out_dim]
        layers: list[nn.Module] = []
        for i in range(num_layers):
            layers.append(nn.Linear(dims[i], dims[i + 1]))
            if i < num_layers - 1:
                layers.append(nn.ReLU(inplace=True))
        super().__init__(*layers)


def deformable_sample(value_GChw: Tensor, grid_GQP2: Tensor, weights_GQP: Tensor) -> Tensor:
    """The core of deformable attention without the custom op: bilinear sampling + weighted sum.

    ``G`` folds batch, camera / queue and head. ``grid`` is in normalised ``[-1, 1]`` coordinates
    (align_corners=False, zero padding outside). Returns (G, C, Q).
    """
    sampled_GCQP = F.grid_sample(value_GChw, grid_GQP2, mode="bilinear", padding_mode="zeros", align_corners=False)
    return (sampled_GCQP * weights_GQP[:, None]).sum(dim=-1)


def init_sampling_offsets(linear: nn.Linear, shape: tuple[int, ...], head_axis: int, point_axis: int) -> None:
    """BEVFormer-style init: zero weights, bias fans each head out in its own direction.

    ``shape`` is the layout of ``linear``'s output (last axis = 2 for ``(dx, dy)``); point ``p``
    of head ``h`` starts at ``(p + 1) * dir(2 pi h / heads)`` feature pixels from its reference.
    """
    nn.init.zeros_(linear.weight)
    num_heads, num_points = shape[head_axis], shape[point_axis]
    theta = torch.arange(num_heads, dtype=torch.float32) * (2.0 * torch.pi / num_heads)
    dirs = torch.stack([theta.cos(), theta.sin()], dim=-1)
    dirs = dirs / dirs.abs().max(dim=-1, keepdim=True).values
    view_h = [1] * len(shape)
    view_h[head_axis], view_h[-1] = num_heads, 2
    view_p = [1] * len(shape)
    view_p[point_axis] = num_points
    scale = torch.arange(1, num_points + 1, dtype=torch.float32)
    bias = dirs.view(view_h) * scale.view(view_p)
    with torch.no_grad():
        linear.bias.copy_(bias.expand(shape).reshape(-1))


class BEVPositionalEmbedding(nn.Module):
    """Learned embedding of BEV cell-centre coordinates: MLP on ``(x, y) / bev_range``."""

    def __init__(self, embed_dim: int, bev_size: int, bev_range: float) -> None:
        super().__init__()
        xy = bev_cell_centers(bev_size, bev_range).reshape(-1, 2) / bev_range
        self.register_buffer("xy_Q2", xy, persistent=False)
        self.mlp = MLP(2, embed_dim, embed_dim)

    def forward(self) -> Tensor:
        """(Q, C) with Q = bev_size**2 in ``row * size + col`` order."""
        return self.mlp(self.xy_Q2)
