"""Shared constants, tensor-name legend and typed containers that cross module boundaries.

Legend of suffixes and names (one place, used everywhere):

* Frames. ``ego``: the ego frame of the *current keyframe* (x forward, y left, z up, metres,
  origin at the rear axle projected to the ground, nuScenes ``ego_pose`` convention).
  ``cam``: OpenCV camera frame (x right, y down, z forward). ``global``: the nuScenes world
  frame. Global and sensor frames stop at the data layer; everything inside the model is ``ego``.
* Transforms. ``a_T_b`` is a 4x4 homogeneous matrix taking points in frame ``b`` to frame ``a``
  (``p_a = a_T_b @ p_b``). ``ego2img`` (the ``lidar2img`` of BEVFormer, but from the ego frame)
  is ``img_aug @ K4 @ cam_T_ego``: a homogeneous point in ego -> (u*d, v*d, d, 1) in pixels of the
  *resized / augmented* image fed to the network.
* Shapes in names. ``_BNCHW``: batch, camera, channel, height, width. ``_BQC``: batch, queries,
  channels. ``_BCYX``: a BEV map (row index = y, column index = x, see BEV grid below).
* Boxes. ``(x, y, z, l, w, h, yaw, vx, vy)``: centre in ego frame, length along heading, width,
  height (nuScenes ``size`` is ``(w, l, h)``: convert once in the data layer), yaw around +z from
  the ego x axis, velocity in the ego frame (m/s).
* BEV grid. A square grid of ``size`` x ``size`` cells covering ``[-range, range]`` metres in x
  and y. Cell ``(r, c)`` has its centre at ``x = -range + (c + 0.5) * res``,
  ``y = -range + (r + 0.5) * res`` with ``res = 2 * range / size``. Row = y, column = x.
* Time. Keyframes at 2 Hz. Past: 4 steps (t-2.0 ... t-0.5 s, oldest first). Future: 6 steps
  (t+0.5 ... t+3.0 s).
"""
from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Optional

import torch

CAMERAS: tuple[str, ...] = (
    "CAM_FRONT",
    "CAM_FRONT_RIGHT",
    "CAM_FRONT_LEFT",
    "CAM_BACK",
    "CAM_BACK_LEFT",
    "CAM_BACK_RIGHT",
)
LIDAR = "LIDAR_TOP"
RADARS: tuple[str, ...] = (
    "RADAR_FRONT",
    "RADAR_FRONT_LEFT",
    "RADAR_FRONT_RIGHT",
    "RADAR_BACK_LEFT",
    "RADAR_BACK_RIGHT",
)

# The 10 nuScenes detection classes, in the devkit's order.
CLASSES: tuple[str, ...] = (
    "car",
    "truck",
    "construction_vehicle",
    "bus",
    "trailer",
    "barrier",
    "motorcycle",
    "bicycle",
    "pedestrian",
    "traffic_cone",
)
ATTRIBUTES: tuple[str, ...] = (
    "cycle.with_rider",
    "cycle.without_rider",
    "pedestrian.moving",
    "pedestrian.sitting_lying_down",
    "pedestrian.standing",
    "vehicle.moving",
    "vehicle.parked",
    "vehicle.stopped",
)
# Driving command, in VAD / UniAD order.
COMMANDS: tuple[str, ...] = ("right", "left", "straight")

PAST_STEPS = 4
FUTURE_STEPS = 6
KEYFRAME_HZ = 2.0
IMAGE_MEAN = (0.485, 0.456, 0.406)  # RGB, images scaled to [0, 1] first
IMAGE_STD = (0.229, 0.224, 0.225)


@dataclass
class TensorContainer:
    """Base for typed tensor containers: ``.to(device)`` and field iteration."""

    def to(self, device: torch.device | str) -> "TensorContainer":
        kwargs = {}
        for f in fields(self):
            v = getattr(self, f.name)
            kwargs[f.name] = v.to(device) if isinstance(v, torch.Tensor) else v
        return type(self)(**kwargs)


@dataclass
class Features(TensorContainer):
    """Model inputs for one keyframe (leading batch dim B after collation). Never reads annotations."""

    images: torch.Tensor  # (B, N, 3, H, W) float32, normalised with IMAGE_MEAN / IMAGE_STD
    intrinsics: torch.Tensor  # (B, N, 3, 3) of the resized / augmented image
    ego_T_cam: torch.Tensor  # (B, N, 4, 4)
    ego2img: torch.Tensor  # (B, N, 4, 4) = img_aug @ K4 @ cam_T_ego
    ego_status: torch.Tensor  # (B, 3): speed m/s, longitudinal acceleration m/s^2, yaw rate rad/s (past poses only)
    command: torch.Tensor  # (B,) int64 index into COMMANDS
    prev_T_cur: torch.Tensor  # (B, 4, 4): current ego frame -> previous keyframe's ego frame
    has_prev: torch.Tensor  # (B,) float32, 1 if the previous keyframe of the scene exists


@dataclass
class Targets(TensorContainer):
    """Training / evaluation targets for one keyframe, all in the current ego frame."""

    boxes: torch.Tensor  # (B, M, 9) x y z l w h yaw vx vy; padded rows are zero
    labels: torch.Tensor  # (B, M) int64 index into CLASSES, -1 for padding
    attributes: torch.Tensor  # (B, M) int64 index into ATTRIBUTES, -1 for none / padding
    instance_ids: torch.Tensor  # (B, M) int64, stable id of the instance across the data set, -1 padding
    num_pts: torch.Tensor  # (B, M) int64 lidar + radar points (devkit filters boxes with 0)
    mask: torch.Tensor  # (B, M) bool, True for a real box
    past: torch.Tensor  # (B, M, 4, 2) agent past xy, oldest first
    past_mask: torch.Tensor  # (B, M, 4) bool
    future: torch.Tensor  # (B, M, 6, 2) agent future xy
    future_yaw: torch.Tensor  # (B, M, 6)
    future_mask: torch.Tensor  # (B, M, 6) bool
    ego_past: torch.Tensor  # (B, 4, 2)
    ego_past_mask: torch.Tensor  # (B, 4) bool
    ego_future: torch.Tensor  # (B, 6, 2) the plan target
    ego_future_yaw: torch.Tensor  # (B, 6)
    ego_future_mask: torch.Tensor  # (B, 6) bool
    drivable: torch.Tensor  # (B, S, S) float32 {0,1} on the map BEV grid (row = y, col = x)
    map_valid: torch.Tensor  # (B,) float32, 0 when the map mask is a placeholder / missing


@dataclass
class SampleMeta:
    """Non-tensor bookkeeping of one keyframe (lists after collation)."""

    sample_token: str
    scene_token: str
    prev_token: str  # '' for the first keyframe of a scene
    timestamp: int  # microseconds
    global_T_ego: list  # 4x4 nested list, to write results back in the global frame


@dataclass
class Batch:
    features: Features
    targets: Optional[Targets]
    meta: list  # list[SampleMeta]

    def to(self, device: torch.device | str) -> "Batch":
        return Batch(
            self.features.to(device),
            None if self.targets is None else self.targets.to(device),
            self.meta,
        )
