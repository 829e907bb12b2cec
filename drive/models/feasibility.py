"""Feasibility layer: a fixed-iteration, unrolled optimiser that refines the planned trajectory.

Cost of a trajectory ``X`` (T waypoints, ego frame, the ego starts at the origin heading +x):

* fidelity   ``1/2 |X - P|^2`` to the planning head's output ``P``;
* jerk       ``w_jerk/2 |D3 [0; X] / dt^3|^2`` (third differences, m/s^3);
* curvature  ``w_curvature/2 sum relu(|lat_i| - max_curvature * s_i^2)^2``: ``lat_i`` is the lateral
  offset of segment ``i`` (from waypoint ``i`` to ``i + 1``) across the direction of the segment
  before it (``+x`` for the first, the ego heading), ``s_i`` its length. On a circle of curvature
  ``k`` successive chords of length ``s`` turn by ``k s``, so ``|lat| <= k_max s^2`` (half of it
  for the first, tangent-based, segment) is the curvature limit written as an offset in metres:
  the term has a speed-independent scale and vanishes when the ego barely moves, where the
  curvature of near-coincident points is noise. Directions and lengths are held fixed within a
  step (a Gauss-Newton-style linearisation), which keeps every step well conditioned;
* collision  ``w_collision/2 sum_agents w_a relu(r - |X_t - A_t|)^2`` against every agent's most
  likely mode at the same step, ``w_a = score * (score >= score_threshold)``.

Gradients are written out by hand (no ``torch.autograd.grad`` inside ``forward``), so the loop
is plain tensor ops: exportable, and differentiable by autograd for training. Each step
preconditions the smooth terms with a constant (T, T) inverse Hessian (fidelity + jerk exactly,
plus the curvature term's Gauss-Newton part ``w_curvature * D1^T D1`` taken isotropically), the
collision term with its per-waypoint Gauss-Newton diagonal ``1 + w_collision * sum active w_a``,
and clips the update to ``max_step`` metres per waypoint, so every step is stable. The
penalties are soft: with the defaults a plan through an agent ends ~1.7 m from it (radius 2 m)
and a curvature excess is roughly halved in 15 iterations.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from drive.types import FUTURE_STEPS, KEYFRAME_HZ


def jerk_operator(num_steps: int, dt: float) -> Tensor:
    """(T-2, T) matrix J with ``J @ X = D3 [0; X] / dt^3`` (the origin is fixed at 0)."""
    n = num_steps + 1
    d3 = torch.zeros(n - 3, n, dtype=torch.float64)
    for i in range(n - 3):
        d3[i, i:i + 4] = torch.tensor([-1.0, 3.0, -3.0, 1.0], dtype=torch.float64)
    return d3[:, 1:] / dt**3


class FeasibilityLayer(nn.Module):
    """``forward(plan, agent_xy, agent_trajs, agent_mode_logits, agent_scores) -> (refined, change)``.

    ``change`` (B,) is the largest waypoint displacement in metres, so evaluation can report how
    often (``change > tol``) and how much the layer edits the plan.
    """

    def __init__(self, future_steps: int = FUTURE_STEPS, dt: float = 1.0 / KEYFRAME_HZ, iterations: int = 15,
                 step_size: float = 1.0, max_step: float = 1.0, w_jerk: float = 0.01, w_curvature: float = 20.0,
                 max_curvature: float = 0.2, w_collision: float = 10.0, safety_radius: float = 2.0,
                 score_threshold: float = 0.3, eps: float = 1e-3) -> None:
        super().__init__()
        self.iterations, self.step_size, self.max_step = iterations, step_size, max_step
        self.w_jerk, self.w_curvature, self.max_curvature = w_jerk, w_curvature, max_curvature
        self.w_collision, self.safety_radius, self.score_threshold = w_collision, safety_radius, score_threshold
        self.eps = eps
        j = jerk_operator(future_steps, dt)
        jtj = j.T @ j
        d1 = torch.eye(future_steps, dtype=torch.float64) - torch.diag(torch.ones(future_steps - 1, dtype=torch.float64), -1)
        # fidelity + jerk exactly, plus the Gauss-Newton curvature term (lateral first differences) isotropically
        hessian = torch.eye(future_steps, dtype=torch.float64) + w_jerk * jtj + w_curvature * d1.T @ d1
        self.register_buffer("jtj_TT", jtj.float(), persistent=False)
        self.register_buffer("precond_TT", torch.linalg.inv(hessian).float(), persistent=False)

    # --- cost terms and their hand-written gradients -------------------------------------
    def curvature_terms(self, x_BT2: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """Per segment (B, T): signed lateral offset, its limit, and the unit normal (B, T, 2).

        Directions and limits are detached: within a step they are constants.
        """
        pts = torch.cat([x_BT2.new_zeros(x_BT2.shape[0], 1, 2), x_BT2], dim=1)  # origin + waypoints
        seg = pts[:, 1:] - pts[:, :-1]  # segment i goes from point i to i + 1
        prev = torch.cat([seg.new_tensor([1.0, 0.0]).expand(seg.shape[0], 1, 2), seg[:, :-1]], dim=1)
        d = (prev / (prev.pow(2).sum(-1, keepdim=True) + self.eps**2).sqrt()).detach()
        normal = torch.stack([-d[..., 1], d[..., 0]], dim=-1)
        lateral = (normal * seg).sum(-1)
        first_half = torch.ones_like(lateral)
        first_half[:, 0] = 0.5
        limit = (self.max_curvature * seg.pow(2).sum(-1) * first_half).detach()
        return lateral, limit, normal

    def curvature_grad(self, x_BT2: Tensor) -> Tensor:
        lateral, limit, normal = self.curvature_terms(x_BT2)
        excess = F.relu(lateral.abs() - limit) * lateral.sign()
        g_seg = excess[..., None] * normal  # d cost / d segment; segment i = p_{i+1} - p_i, p_0 fixed
        return g_seg - F.pad(g_seg[:, 1:], (0, 0, 0, 1))

    def collision_grad(self, x_BT2: Tensor, agents_BAT2: Tensor, weight_BA: Tensor) -> tuple[Tensor, Tensor]:
        """Gradient of the collision term / w_collision (B, T, 2) and its Gauss-Newton diagonal (B, T)."""
        diff = x_BT2[:, None] - agents_BAT2
        dist = (diff.pow(2).sum(-1) + self.eps**2).sqrt()
        depth = F.relu(self.safety_radius - dist)
        push = depth * weight_BA[..., None]
        active = (depth > 0).to(x_BT2.dtype) * weight_BA[..., None]
        return -(push[..., None] * diff / dist[..., None]).sum(dim=1), active.sum(dim=1)

    def cost(self, x_BT2: Tensor, plan_BT2: Tensor, agents_BAT2: Tensor, weight_BA: Tensor) -> Tensor:
        """(B,) total cost; the gradient of this function is what ``forward`` descends (for tests)."""
        fid = 0.5 * (x_BT2 - plan_BT2).pow(2).sum((1, 2))
        jerk = 0.5 * self.w_jerk * torch.einsum("bsd,st,btd->b", x_BT2, self.jtj_TT, x_BT2)
        lateral, limit, _ = self.curvature_terms(x_BT2)
        curv = 0.5 * self.w_curvature * F.relu(lateral.abs() - limit).pow(2).sum(-1)
        dist = ((x_BT2[:, None] - agents_BAT2).pow(2).sum(-1) + self.eps**2).sqrt()
        coll = 0.5 * self.w_collision * (weight_BA[..., None] * F.relu(self.safety_radius - dist).pow(2)).sum((1, 2))
        return fid + jerk + curv + coll

    def smooth_gradient(self, x_BT2: Tensor, plan_BT2: Tensor) -> Tensor:
        """Gradient of fidelity + jerk + curvature."""
        g = x_BT2 - plan_BT2 + self.w_jerk * torch.matmul(self.jtj_TT, x_BT2)
        return g + self.w_curvature * self.curvature_grad(x_BT2)

    def gradient(self, x_BT2: Tensor, plan_BT2: Tensor, agents_BAT2: Tensor, weight_BA: Tensor) -> Tensor:
        """Full gradient of ``cost`` (for tests)."""
        return self.smooth_gradient(x_BT2, plan_BT2) + self.w_collision * self.collision_grad(x_BT2, agents_BAT2, weight_BA)[0]

    def step(self, x_BT2: Tensor, plan_BT2: Tensor, agents_BAT2: Tensor, weight_BA: Tensor) -> Tensor:
        """One update: smooth terms preconditioned by the constant inverse Hessian, collision by its
        per-waypoint Gauss-Newton diagonal, then clipped to ``max_step`` metres per waypoint."""
        g_col, active = self.collision_grad(x_BT2, agents_BAT2, weight_BA)
        step = torch.matmul(self.precond_TT, self.smooth_gradient(x_BT2, plan_BT2))
        step = step + self.w_collision * g_col / (1.0 + self.w_collision * active)[..., None]
        step = self.step_size * step
        norm = (step.pow(2).sum(-1, keepdim=True) + 1e-12).sqrt()
        return x_BT2 - step * (self.max_step / norm).clamp(max=1.0)

    @staticmethod
    def likely_agent_positions(agent_xy_BA2: Tensor, trajs_BAMT2: Tensor, mode_logits_BAM: Tensor) -> Tensor:
        """(B, A, T, 2) ego-frame positions of each agent's most likely mode."""
        b, a, m, t, _ = trajs_BAMT2.shape
        best = mode_logits_BAM.argmax(dim=-1)
        idx = best[:, :, None, None, None].expand(b, a, 1, t, 2)
        return torch.gather(trajs_BAMT2, 2, idx)[:, :, 0] + agent_xy_BA2[:, :, None, :]

    def forward(self, plan_BT2: Tensor, agent_xy_BA2: Tensor, agent_trajs_BAMT2: Tensor,
                agent_mode_logits_BAM: Tensor, agent_scores_BA: Tensor) -> tuple[Tensor, Tensor]:
        agents = self.likely_agent_positions(agent_xy_BA2, agent_trajs_BAMT2, agent_mode_logits_BAM)
        weight = agent_scores_BA * (agent_scores_BA >= self.score_threshold).to(agent_scores_BA.dtype)
        x = plan_BT2
        for _ in range(self.iterations):  # fixed count: unrolled at export
            x = self.step(x, plan_BT2, agents, weight)
        change = (x - plan_BT2).pow(2).sum(-1).add(1e-12).sqrt().amax(dim=-1)
        return x, change
