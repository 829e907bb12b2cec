"""Planning baselines that see no camera: the traps every planner must be compared with.

* ``straight_line``: keep the current speed, straight ahead.
* ``constant_velocity``: extrapolate the last past displacement (the ego's velocity over the last 0.5 s
  in the current frame, so a turn in progress keeps its heading drift out).
* ``EgoStatusMLP``: "Is Ego Status All You Need?" (2023): an MLP from ego status (speed,
  acceleration, yaw rate) and the driving command to the 6 future waypoints, trained on the train split.

All read only what a planner may read at time t (past poses, ego status, command) and write plans
in the current ego frame, (N, 6, 2).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from drive.data.features import command_index, ego_status
from drive.data.targets import ego_trajectory
from drive.types import COMMANDS, FUTURE_STEPS

DT = 0.5


@dataclass
class EgoArrays:
    """Per keyframe: what the baselines may read, and the plan target."""

    status: np.ndarray  # (N, 3)
    command: np.ndarray  # (N,) int
    past: np.ndarray  # (N, 4, 2)
    past_mask: np.ndarray  # (N, 4)
    future: np.ndarray  # (N, 6, 2)
    future_mask: np.ndarray  # (N, 6)


def ego_arrays(dataset) -> EgoArrays:
    """Read the ego inputs and targets of every keyframe of a ``NuScenesDrivingDataset`` (no images)."""
    rows = []
    for i in range(len(dataset)):
        track = dataset.record(i).track
        traj = ego_trajectory(track)
        rows.append((ego_status(track), command_index(track), traj.past, traj.past_mask, traj.future,
                     traj.future_mask))
    cols = list(zip(*rows)) if rows else [[]] * 6
    return EgoArrays(*(np.asarray(c) for c in cols))


def straight_line(status: np.ndarray, steps: int = FUTURE_STEPS) -> np.ndarray:
    t = DT * np.arange(1, steps + 1)
    plan = np.zeros((len(status), steps, 2), np.float32)
    plan[:, :, 0] = status[:, :1] * t[None]
    return plan


def constant_velocity(past: np.ndarray, past_mask: np.ndarray, status: np.ndarray,
                      steps: int = FUTURE_STEPS) -> np.ndarray:
    """Repeat the last past displacement (now minus t-0.5 s); falls back to the straight line."""
    last = past[:, -1]  # position at t-0.5 s in the current frame
    v = -last / DT  # displacement over the last step, per second
    ok = past_mask[:, -1]
    t = DT * np.arange(1, steps + 1)
    plan = v[:, None, :] * t[None, :, None]
    return np.where(ok[:, None, None], plan, straight_line(status, steps)).astype(np.float32)


class EgoStatusMLP(nn.Module):
    def __init__(self, hidden: int = 128):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(3 + len(COMMANDS), hidden), nn.ReLU(), nn.Linear(hidden, hidden),
                                 nn.ReLU(), nn.Linear(hidden, FUTURE_STEPS * 2))

    def forward(self, status: torch.Tensor, command: torch.Tensor) -> torch.Tensor:
        x = torch.cat([status, nn.functional.one_hot(command, len(COMMANDS)).float()], -1)
        return self.net(x).view(-1, FUTURE_STEPS, 2).cumsum(1)


def fit_ego_mlp(train: EgoArrays, steps: int = 3000, lr: float = 3e-3, seed: int = 0) -> EgoStatusMLP:
    """Train the ego-status MLP with masked L1 on the plan target (full batch; seconds on a CPU)."""
    torch.manual_seed(seed)
    model = EgoStatusMLP()
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=1e-4)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, steps)
    status = torch.as_tensor(train.status, dtype=torch.float32)
    command = torch.as_tensor(train.command, dtype=torch.long)
    target = torch.as_tensor(train.future, dtype=torch.float32)
    mask = torch.as_tensor(train.future_mask, dtype=torch.float32)[..., None]
    for _ in range(steps):
        loss = ((model(status, command) - target).abs() * mask).sum() / mask.sum().clamp(min=1)
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
    return model.eval()


@torch.no_grad()
def predict_ego_mlp(model: EgoStatusMLP, arrays: EgoArrays) -> np.ndarray:
    return model(torch.as_tensor(arrays.status, dtype=torch.float32),
                 torch.as_tensor(arrays.command, dtype=torch.long)).numpy()
