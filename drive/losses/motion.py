"""Motion loss: winner-takes-all regression on the mode closest to the GT future (min ADE) plus
cross-entropy of the mode logits towards that winner. Only GT agents with a valid future count.

Predictions must be aligned with the GT agents (B, M): either the model's ``query_trajs`` for
``query_boxes = targets.boxes`` (teacher forcing), or decoded agents matched to GT with
``match_decoded_agents``. GT futures are ego-frame positions; predictions are offsets from the
agent's current centre, so targets are ``future - boxes[..., :2]``.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch
import torch.nn.functional as F
from torch import Tensor

from drive.types import Targets


@dataclass
class MotionLossConfig:
    regression_weight: float = 1.0
    classification_weight: float = 0.5
    match_radius: float = 2.0  # for decoded agents only


def match_decoded_agents(trajs_BKMT2: Tensor, logits_BKM: Tensor, boxes_BK9: Tensor, gt_boxes_BM9: Tensor,
                         gt_mask_BM: Tensor, radius: float) -> tuple[Tensor, Tensor, Tensor]:
    """For each GT agent the nearest decoded agent within ``radius`` m: aligned (B, M, ...) trajs,
    logits and a ``matched`` mask. Offsets stay relative to the *decoded* centre, so they are
    re-based to the GT centre here."""
    d = torch.cdist(gt_boxes_BM9[..., :2], boxes_BK9[..., :2])  # (B, M, K)
    dist, idx = d.min(dim=-1) if d.shape[-1] else (d.new_full(d.shape[:2], float("inf")), d.new_zeros(d.shape[:2], dtype=torch.long))
    b, m = idx.shape
    _, _, nm, t, _ = trajs_BKMT2.shape
    trajs = torch.gather(trajs_BKMT2, 1, idx[..., None, None, None].expand(b, m, nm, t, 2))
    shift = torch.gather(boxes_BK9[..., :2], 1, idx[..., None].expand(b, m, 2)) - gt_boxes_BM9[..., :2]
    logits = torch.gather(logits_BKM, 1, idx[..., None].expand(b, m, nm))
    return trajs + shift[:, :, None, None, :], logits, gt_mask_BM & (dist <= radius)


def motion_loss(trajs_BMKT2: Tensor, mode_logits_BMK: Tensor, targets: Targets,
                cfg: MotionLossConfig = MotionLossConfig(), valid_BM: Optional[Tensor] = None) -> dict[str, Tensor]:
    """Returns ``motion_reg``, ``motion_cls``, their weighted sum ``motion`` and ``motion_min_ade`` (monitor)."""
    if trajs_BMKT2.shape[:2] != targets.mask.shape:
        raise ValueError(f"motion predictions {tuple(trajs_BMKT2.shape[:2])} not aligned with GT agents {tuple(targets.mask.shape)}")
    gt = targets.future - targets.boxes[..., None, :2]  # (B, M, T, 2)
    step_mask = targets.future_mask.to(gt.dtype)  # (B, M, T)
    agent_valid = targets.mask & targets.future_mask.any(dim=-1)
    if valid_BM is not None:
        agent_valid = agent_valid & valid_BM
    agent_w = agent_valid.to(gt.dtype)
    n_agents = agent_w.sum().clamp(min=1.0)
    n_steps = step_mask.sum(-1).clamp(min=1.0)  # (B, M)

    err = (trajs_BMKT2 - gt[:, :, None]).norm(dim=-1)  # (B, M, K, T)
    ade = (err * step_mask[:, :, None]).sum(-1) / n_steps[..., None]  # (B, M, K)
    min_ade, winner = ade.min(dim=-1)
    best = torch.gather(trajs_BMKT2, 2, winner[:, :, None, None, None].expand(*winner.shape, 1, *trajs_BMKT2.shape[3:]))[:, :, 0]
    reg = F.smooth_l1_loss(best, gt, reduction="none").sum(-1)  # (B, M, T)
    reg = ((reg * step_mask).sum(-1) / n_steps * agent_w).sum() / n_agents
    ce = F.cross_entropy(mode_logits_BMK.reshape(-1, mode_logits_BMK.shape[-1]), winner.reshape(-1), reduction="none")
    cls = (ce.view_as(agent_w) * agent_w).sum() / n_agents
    min_ade = ((min_ade * agent_w).sum() / n_agents).detach()
    total = cfg.regression_weight * reg + cfg.classification_weight * cls
    return {"motion_reg": reg, "motion_cls": cls, "motion": total, "motion_min_ade": min_ade}
