"""Motion prediction for a fixed set of agents (the decoded top-K, or given query boxes).

Agent queries = BEV feature bilinearly sampled at the agent centre + an embedding of its box,
class and score. Each layer: agent self-attention (keys biased by ``log(score)`` so empty
top-K slots are muted) -> cross-attention to the whole BEV map -> FFN. Every agent then
decodes ``num_modes`` trajectories of ``future_steps`` cumulative ``(x, y)`` offsets from its
current centre (ego frame) plus mode logits, and an agent token for the planner.

The same weights serve both query sources: the model runs the decoded top-K (inference,
export) and, when the caller passes ``query_boxes`` (training), the ground-truth boxes as well,
so the winner-takes-all loss applies to every GT agent from the first step.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import Tensor, nn

from drive.models.attention import FFN, MLP, BEVPositionalEmbedding, MultiHeadAttention
from drive.types import CLASSES, FUTURE_STEPS

BOX_FEATURES = 11


@dataclass
class MotionOutputs:
    trajs: Tensor  # (B, A, M, T, 2) cumulative offsets from the agent centre, ego frame
    mode_logits: Tensor  # (B, A, M)
    agent_tokens: Tensor  # (B, A, C)


def box_features(boxes_BA9: Tensor, scores_BA: Tensor, bev_range: float) -> Tensor:
    """Normalised box descriptor (B, A, 11): x, y, z, log l w h, sin, cos yaw, vx, vy, score."""
    xy = boxes_BA9[..., 0:2] / bev_range
    z = boxes_BA9[..., 2:3] / 3.0
    log_size = boxes_BA9[..., 3:6].clamp(min=0.1).log()
    yaw = boxes_BA9[..., 6:7]
    vel = boxes_BA9[..., 7:9] / 10.0
    return torch.cat([xy, z, log_size, yaw.sin(), yaw.cos(), vel, scores_BA[..., None]], dim=-1)


def sample_bev(bev_BCYX: Tensor, xy_BA2: Tensor, bev_range: float) -> Tensor:
    """Bilinear BEV features at ego ``(x, y)`` points: (B, A, C)."""
    grid = (xy_BA2 / bev_range)[:, :, None, :]
    out = F.grid_sample(bev_BCYX, grid, mode="bilinear", padding_mode="border", align_corners=False)
    return rearrange(out[..., 0], "b c a -> b a c")


def score_bias(scores_BA: Tensor) -> Tensor:
    """Additive attention logit that mutes low-score (empty) agent slots."""
    return scores_BA.clamp(min=1e-4).log()


class BEVTokens(nn.Module):
    """BEV map -> key / value tokens (B, (S/stride)^2, C) with positional embedding."""

    def __init__(self, embed_dim: int, bev_size: int, bev_range: float, kv_stride: int) -> None:
        super().__init__()
        if bev_size % kv_stride:
            raise ValueError(f"bev_size {bev_size} not divisible by kv_stride {kv_stride}")
        self.kv_stride = kv_stride
        self.pos = BEVPositionalEmbedding(embed_dim, bev_size // kv_stride, bev_range)

    def forward(self, bev_BCYX: Tensor) -> tuple[Tensor, Tensor]:
        x = F.avg_pool2d(bev_BCYX, self.kv_stride) if self.kv_stride > 1 else bev_BCYX
        tokens = rearrange(x, "b c y x -> b (y x) c")
        return tokens, tokens + self.pos()


class AgentLayer(nn.Module):
    def __init__(self, embed_dim: int, num_heads: int) -> None:
        super().__init__()
        self.self_attn = MultiHeadAttention(embed_dim, num_heads)
        self.cross_attn = MultiHeadAttention(embed_dim, num_heads)
        self.ffn = FFN(embed_dim, 2 * embed_dim)
        self.norm1, self.norm2, self.norm3 = nn.LayerNorm(embed_dim), nn.LayerNorm(embed_dim), nn.LayerNorm(embed_dim)

    def forward(self, x: Tensor, pos: Tensor, bias_BA: Tensor, bev_val: Tensor, bev_key: Tensor) -> Tensor:
        q = x + pos
        x = self.norm1(x + self.self_attn(q, q, x, bias_BA))
        x = self.norm2(x + self.cross_attn(x + pos, bev_key, bev_val))
        return self.norm3(x + self.ffn(x))


class MotionHead(nn.Module):
    """Agents (B, A) + BEV -> ``MotionOutputs``.

    Args:
        embed_dim: C of the BEV map and agent queries.
        bev_size, bev_range: the BEV grid.
        num_modes, future_steps: trajectory hypotheses per agent and their length (0.5 s steps).
        num_layers, num_heads: agent transformer depth and heads.
        kv_stride: average-pool the BEV by this factor before cross-attention (cheaper on big grids).
    """

    def __init__(self, embed_dim: int = 64, bev_size: int = 50, bev_range: float = 51.2, num_modes: int = 6,
                 future_steps: int = FUTURE_STEPS, num_layers: int = 2, num_heads: int = 4, kv_stride: int = 1,
                 num_classes: int = len(CLASSES)) -> None:
        super().__init__()
        self.bev_range, self.num_modes, self.future_steps = bev_range, num_modes, future_steps
        self.bev_tokens = BEVTokens(embed_dim, bev_size, bev_range, kv_stride)
        self.box_embed = MLP(BOX_FEATURES, embed_dim, embed_dim)
        self.class_embed = nn.Embedding(num_classes, embed_dim)
        self.layers = nn.ModuleList(AgentLayer(embed_dim, num_heads) for _ in range(num_layers))
        self.mode_embed = nn.Parameter(torch.randn(num_modes, embed_dim) * 0.02)
        self.traj_decoder = MLP(embed_dim, embed_dim, future_steps * 2)
        self.mode_scorer = MLP(embed_dim, embed_dim, 1)
        self.traj_encoder = MLP(future_steps * 2, embed_dim, embed_dim)

    def forward(self, bev_BCYX: Tensor, boxes_BA9: Tensor, labels_BA: Tensor, scores_BA: Tensor) -> MotionOutputs:
        xy = boxes_BA9[..., 0:2]
        x = (sample_bev(bev_BCYX, xy, self.bev_range)
             + self.box_embed(box_features(boxes_BA9, scores_BA, self.bev_range))
             + self.class_embed(labels_BA.clamp(min=0)))
        pos = self.bev_tokens.pos.mlp(xy / self.bev_range)
        bev_val, bev_key = self.bev_tokens(bev_BCYX)
        bias = score_bias(scores_BA)
        for layer in self.layers:
            x = layer(x, pos, bias, bev_val, bev_key)
        modes = x[:, :, None, :] + self.mode_embed  # (B, A, M, C)
        deltas = self.traj_decoder(modes).view(*modes.shape[:3], self.future_steps, 2)
        trajs = deltas.cumsum(dim=3)
        logits = self.mode_scorer(modes)[..., 0]
        probs = logits.softmax(dim=-1)[..., None]
        tokens = x + (probs * self.traj_encoder(trajs.flatten(3))).sum(dim=2)
        return MotionOutputs(trajs, logits, tokens)
