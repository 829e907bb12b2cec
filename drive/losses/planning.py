"""Planning loss: L1 imitation of ``ego_future`` + VAD-style collision and off-road penalties.

* ``plan_l1``: mean over valid steps of ``|dx| + |dy|`` (metres): a 1 m offset costs 1.
* ``plan_collision``: for every step, ``sum_agents relu(margin - |plan_t - agent_t|)`` against the
  GT agent positions at the same future step (valid ``future_mask``), averaged over valid steps.
* ``plan_offroad``: ``1 - drivable`` sampled at each waypoint with ``grid_sample`` on the map
  raster (softened by a ``blur`` box filter so the gradient reaches a few cells off the edge),
  averaged over valid steps, weighted by ``map_valid``.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from drive.types import Targets


@dataclass
class PlanningLossConfig:
    l1_weight: float = 1.0
    collision_weight: float = 0.5
    offroad_weight: float = 0.5
    collision_margin: float = 2.0
    offroad_blur: int = 5  # odd box-filter size in map cells, 1 = none
    refined_weight: float = 0.0  # optional extra L1 on the feasibility layer's refined plan


def plan_l1(plan_BT2: Tensor, target_BT2: Tensor, mask_BT: Tensor) -> Tensor:
    m = mask_BT.to(plan_BT2.dtype)
    return ((plan_BT2 - target_BT2).abs().sum(-1) * m).sum() / m.sum().clamp(min=1.0)


def collision_penalty(plan_BT2: Tensor, targets: Targets, margin: float) -> Tensor:
    agents_valid = (targets.future_mask & targets.mask[..., None]).to(plan_BT2.dtype)  # (B, M, T)
    dist = (plan_BT2[:, None] - targets.future).norm(dim=-1)  # (B, M, T)
    pen = (F.relu(margin - dist) * agents_valid).sum(dim=1)  # (B, T)
    m = targets.ego_future_mask.to(plan_BT2.dtype)
    return (pen * m).sum() / m.sum().clamp(min=1.0)


def offroad_penalty(plan_BT2: Tensor, targets: Targets, map_range: float, blur: int) -> Tensor:
    drivable = targets.drivable[:, None]
    if blur > 1:
        drivable = F.avg_pool2d(drivable, blur, 1, blur // 2, count_include_pad=False)
    grid = (plan_BT2 / map_range)[:, None]  # (B, 1, T, 2), align_corners=False: x / range is exact
    on_road = F.grid_sample(drivable, grid, mode="bilinear", padding_mode="border", align_corners=False)[:, 0, 0]
    m = targets.ego_future_mask.to(plan_BT2.dtype) * targets.map_valid.to(plan_BT2.dtype)[:, None]
    return ((1 - on_road) * m).sum() / m.sum().clamp(min=1.0)


def planning_loss(plan_BT2: Tensor, targets: Targets, map_range: float, cfg: PlanningLossConfig = PlanningLossConfig(),
                  plan_refined_BT2: Tensor | None = None) -> dict[str, Tensor]:
    """Returns ``plan_l1``, ``plan_collision``, ``plan_offroad`` and the weighted sum ``planning``."""
    l1 = plan_l1(plan_BT2, targets.ego_future, targets.ego_future_mask)
    col = collision_penalty(plan_BT2, targets, cfg.collision_margin)
    off = offroad_penalty(plan_BT2, targets, map_range, cfg.offroad_blur)
    total = cfg.l1_weight * l1 + cfg.collision_weight * col + cfg.offroad_weight * off
    out = {"plan_l1": l1, "plan_collision": col, "plan_offroad": off}
    if plan_refined_BT2 is not None and cfg.refined_weight > 0:
        out["plan_refined_l1"] = plan_l1(plan_refined_BT2, targets.ego_future, targets.ego_future_mask)
        total = total + cfg.refined_weight * out["plan_refined_l1"]
    out["planning"] = total
    return out
