"""Plausible model inputs without a data set: a nuScenes-like ring of six cameras and random images.

Used by tests, profiling and export scripts (exporters need example inputs). The rig follows
``drive.types.CAMERAS`` order with yaws 0, -55, 55, 180, 110, -110 degrees, nuScenes-like focal
lengths scaled to the image width (the back camera is wider), cameras 1.6 m above the ground.
"""
from __future__ import annotations

import math

import torch
from torch import Tensor

from drive.types import CAMERAS

CAMERA_YAWS_DEG = (0.0, -55.0, 55.0, 180.0, 110.0, -110.0)


def camera_rig(image_hw: tuple[int, int], yaws_deg: tuple[float, ...] = CAMERA_YAWS_DEG) -> tuple[Tensor, Tensor, Tensor]:
    """(N, 3, 3) intrinsics, (N, 4, 4) ego_T_cam and (N, 4, 4) ego2img for a ring of cameras."""
    h, w = image_hw
    intrinsics, ego_T_cams, ego2imgs = [], [], []
    for name, yaw_deg in zip(CAMERAS, yaws_deg):
        f = (809.0 if name == "CAM_BACK" else 1266.0) / 1600.0 * w
        k = torch.tensor([[f, 0.0, w / 2.0], [0.0, f, h / 2.0], [0.0, 0.0, 1.0]])
        yaw = math.radians(yaw_deg)
        c, s = math.cos(yaw), math.sin(yaw)
        ego_T_cam = torch.eye(4)
        # columns: camera x (right), y (down), z (forward) expressed in the ego frame
        ego_T_cam[:3, :3] = torch.tensor([[s, 0.0, c], [-c, 0.0, s], [0.0, -1.0, 0.0]])
        ego_T_cam[:3, 3] = torch.tensor([1.0 + 0.8 * c, 0.8 * s, 1.6])
        k4 = torch.eye(4)
        k4[:3, :3] = k
        intrinsics.append(k)
        ego_T_cams.append(ego_T_cam)
        ego2imgs.append(k4 @ torch.linalg.inv(ego_T_cam))
    return torch.stack(intrinsics), torch.stack(ego_T_cams), torch.stack(ego2imgs)


def example_inputs(batch: int, image_hw: tuple[int, int], bev_shape: tuple[int, int, int], num_cameras: int = 6,
                   seed: int = 0) -> tuple[Tensor, ...]:
    """The 7 ``DrivingModel.forward`` inputs: images, ego2img, ego_status, command, prev_bev, prev_T_cur, has_prev.

    The first sample is a first frame (``has_prev = 0``, zero ``prev_bev``); the others have a
    previous frame 2 m behind (``prev_T_cur`` = translation by +2 m in x).
    """
    g = torch.Generator().manual_seed(seed)
    h, w = image_hw
    images = torch.randn(batch, num_cameras, 3, h, w, generator=g)
    ego2img = camera_rig(image_hw)[2][:num_cameras].expand(batch, -1, -1, -1).contiguous()
    ego_status = torch.randn(batch, 3, generator=g)
    command = torch.arange(batch) % 3
    has_prev = (torch.arange(batch) > 0).float()
    prev_bev = torch.randn(batch, *bev_shape, generator=g) * has_prev.view(-1, 1, 1, 1)
    prev_T_cur = torch.eye(4).repeat(batch, 1, 1)
    prev_T_cur[:, 0, 3] = 2.0 * has_prev
    return images, ego2img, ego_status, command, prev_bev, prev_T_cur, has_prev
