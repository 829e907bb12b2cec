"""Planning head: one ego query attends to agent tokens and the BEV map, outputs waypoints.

The ego query is a learned embedding plus a command embedding (one plan conditioned on the
command, not one plan per command). Ego status (speed, acceleration, yaw rate) enters only
when ``use_ego_status`` is True; it is off by default because an ego-status shortcut alone
already matches full stacks on open-loop L2 ("Is Ego Status All You Need?"), so ablations
must be able to switch it. With it on, the status embedding is also handed straight to the waypoint
decoder (a skip past the attention layers, as in AD-MLP), so the head can at least learn the
ego-status MLP baseline and the BEV / agent context only has to refine it.
Waypoints are cumulative ``(x, y)`` in the current ego frame.
"""
from __future__ import annotations

import torch
from torch import Tensor, nn

from drive.models.attention import FFN, MLP, MultiHeadAttention
from drive.models.heads.motion import BEVTokens, score_bias
from drive.types import COMMANDS, FUTURE_STEPS


class PlanningLayer(nn.Module):
    def __init__(self, embed_dim: int, num_heads: int) -> None:
        super().__init__()
        self.agent_attn = MultiHeadAttention(embed_dim, num_heads)
        self.map_attn = MultiHeadAttention(embed_dim, num_heads)
        self.ffn = FFN(embed_dim, 2 * embed_dim)
        self.norm1, self.norm2, self.norm3 = nn.LayerNorm(embed_dim), nn.LayerNorm(embed_dim), nn.LayerNorm(embed_dim)

    def forward(self, ego: Tensor, agents: Tensor, agent_bias: Tensor, bev_val: Tensor, bev_key: Tensor) -> Tensor:
        ego = self.norm1(ego + self.agent_attn(ego, agents, agents, agent_bias))
        ego = self.norm2(ego + self.map_attn(ego, bev_key, bev_val))
        return self.norm3(ego + self.ffn(ego))


class PlanningHead(nn.Module):
    """(BEV, command, [ego status], agent tokens) -> plan (B, future_steps, 2)."""

    def __init__(self, embed_dim: int = 64, bev_size: int = 50, bev_range: float = 51.2,
                 future_steps: int = FUTURE_STEPS, num_layers: int = 1, num_heads: int = 4, kv_stride: int = 1,
                 use_ego_status: bool = False, ego_status_dim: int = 3, num_commands: int = len(COMMANDS)) -> None:
        super().__init__()
        self.bev_range, self.future_steps, self.use_ego_status = bev_range, future_steps, use_ego_status
        self.ego_query = nn.Parameter(torch.randn(1, 1, embed_dim) * 0.02)
        self.command_embed = nn.Embedding(num_commands, embed_dim)
        self.ego_status_embed = MLP(ego_status_dim, embed_dim, embed_dim) if use_ego_status else None
        self.bev_tokens = BEVTokens(embed_dim, bev_size, bev_range, kv_stride)
        self.layers = nn.ModuleList(PlanningLayer(embed_dim, num_heads) for _ in range(num_layers))
        self.decoder = MLP(embed_dim * (2 if use_ego_status else 1), embed_dim, future_steps * 2)

    def forward(self, bev_BCYX: Tensor, command_B: Tensor, ego_status_B3: Tensor, agent_tokens_BAC: Tensor,
                agent_scores_BA: Tensor) -> Tensor:
        ego = self.ego_query + self.command_embed(command_B)[:, None, :]
        status = None
        if self.ego_status_embed is not None:  # a config switch, fixed at construction
            status = self.ego_status_embed(ego_status_B3)
            ego = ego + status[:, None, :]
        bev_val, bev_key = self.bev_tokens(bev_BCYX)
        bias = score_bias(agent_scores_BA)
        for layer in self.layers:
            ego = layer(ego, agent_tokens_BAC, bias, bev_val, bev_key)
        features = ego[:, 0] if status is None else torch.cat([ego[:, 0], status], dim=-1)
        deltas = self.decoder(features).view(-1, self.future_steps, 2)
        return deltas.cumsum(dim=1)
