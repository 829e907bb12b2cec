"""Shared helpers for the model / loss tests: tiny models, example inputs, synthetic targets."""
from __future__ import annotations

from dataclasses import replace

import torch

from drive.models import build_model, tiny_config
from drive.models.build import ModelConfig
from drive.models.example_inputs import example_inputs
from drive.models.model import DrivingModel
from drive.types import Targets


def tiny_model(seed: int = 0, **overrides) -> tuple[DrivingModel, ModelConfig]:
    torch.manual_seed(seed)
    cfg = tiny_config(**overrides)
    return build_model(cfg), cfg


def tiny_view_transform(name: str) -> dict:
    """``tiny_config`` overrides of a view transform named ``bevformer``, ``bilinear``, ``bevformer+conv_fusion``
    or ``<kind>+temporal_regression`` (the detection head's two-frame box branch)."""
    kind, _, option = name.partition("+")
    overrides: dict = {"view_transform": kind}
    if option == "conv_fusion":
        overrides["bevformer"] = replace(tiny_config().bevformer, conv_fusion=True)
    elif option == "temporal_regression":
        overrides["detection"] = replace(tiny_config().detection, temporal_regression=True)
    elif option:
        raise ValueError(f"unknown option {option!r}")
    return overrides


def tiny_inputs(model: DrivingModel, cfg: ModelConfig, batch: int = 2, seed: int = 0) -> tuple[torch.Tensor, ...]:
    return example_inputs(batch, cfg.image_hw, model.bev_shape, cfg.num_cameras, seed)


def empty_targets(batch: int, num_boxes: int, map_size: int) -> Targets:
    """All-padding targets (mask False everywhere) with a straight ego future."""
    b, m = batch, num_boxes
    ego_future = torch.stack([torch.arange(1, 7, dtype=torch.float32) * 2.0, torch.zeros(6)], -1).expand(b, 6, 2).clone()
    return Targets(
        boxes=torch.zeros(b, m, 9), labels=torch.full((b, m), -1), attributes=torch.full((b, m), -1),
        instance_ids=torch.full((b, m), -1), num_pts=torch.zeros(b, m, dtype=torch.long),
        mask=torch.zeros(b, m, dtype=torch.bool), past=torch.zeros(b, m, 4, 2), past_mask=torch.zeros(b, m, 4, dtype=torch.bool),
        future=torch.zeros(b, m, 6, 2), future_yaw=torch.zeros(b, m, 6), future_mask=torch.zeros(b, m, 6, dtype=torch.bool),
        ego_past=torch.zeros(b, 4, 2), ego_past_mask=torch.ones(b, 4, dtype=torch.bool), ego_future=ego_future,
        ego_future_yaw=torch.zeros(b, 6), ego_future_mask=torch.ones(b, 6, dtype=torch.bool),
        drivable=torch.zeros(b, map_size, map_size), map_valid=torch.ones(b),
    )


def synthetic_targets(batch: int, num_boxes: int, map_size: int, bev_range: float, seed: int = 0) -> Targets:
    """A few cars moving at constant velocity, one padding row, a road band along x."""
    g = torch.Generator().manual_seed(seed)
    t = empty_targets(batch, num_boxes, map_size)
    real = num_boxes - 1
    xy = (torch.rand(batch, real, 2, generator=g) - 0.5) * 1.4 * bev_range
    vel = torch.randn(batch, real, 2, generator=g) * 2.0
    t.boxes[:, :real, :2] = xy
    t.boxes[:, :real, 2] = 0.9
    t.boxes[:, :real, 3:6] = torch.tensor([4.5, 1.9, 1.7])
    t.boxes[:, :real, 6] = torch.atan2(vel[..., 1], vel[..., 0])
    t.boxes[:, :real, 7:9] = vel
    t.labels[:, :real] = torch.randint(0, 10, (batch, real), generator=g)
    t.attributes[:, :real] = torch.where(t.labels[:, :real] == 0, 5, -1)
    t.num_pts[:, :real] = 5
    t.mask[:, :real] = True
    steps = torch.arange(1, 7, dtype=torch.float32).view(1, 1, 6, 1) * 0.5
    t.future[:, :real] = xy[:, :, None] + steps * vel[:, :, None]
    t.future_mask[:, :real] = True
    t.future_mask[:, 0, 4:] = False  # one agent leaves the scene early
    res = 2 * bev_range / map_size
    ys = -bev_range + (torch.arange(map_size) + 0.5) * res
    t.drivable[:] = (ys.abs() < 6.0).float()[:, None].expand(map_size, map_size)
    return t
