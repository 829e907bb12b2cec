"""Plain per-keyframe records extracted from the devkit once, when a data set is indexed.

They hold numpy arrays and strings only, so a data set made of them pickles cheaply into
DataLoader workers without the ``NuScenes`` object. Everything is already in the ego frame of
the keyframe (the ``LIDAR_TOP`` ego pose, falling back to ``CAM_FRONT``), except ``EgoTrack``
which keeps the global keyframe poses needed for ego status, command and the ego plan target.
"""
from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Optional

import numpy as np

from drive.types import FUTURE_STEPS, PAST_STEPS


@dataclass
class CameraRecord:
    channel: str
    sample_data_token: str
    path: str  # absolute, checked to lie inside the root
    width: int  # of the recorded image
    height: int
    intrinsic: np.ndarray  # (3, 3) of the recorded image
    ego_T_cam: np.ndarray  # (4, 4) camera -> keyframe ego frame, ego motion to the exposure time included


@dataclass
class EgoTrack:
    """Keyframe ego poses of the scene at offsets ``-PAST_STEPS .. +FUTURE_STEPS`` (index ``PAST_STEPS`` = now)."""

    global_T_ego: np.ndarray  # (P+1+F, 4, 4) float64, identity where invalid
    timestamps: np.ndarray  # (P+1+F,) int64 microseconds, 0 where invalid
    valid: np.ndarray  # (P+1+F,) bool
    sample_tokens: list  # (P+1+F,) str, '' where invalid

    NOW = PAST_STEPS

    @property
    def current(self) -> np.ndarray:
        return self.global_T_ego[self.NOW]


@dataclass
class EgoTrajectory:
    """The ego's own past / future keyframe positions in the current ego frame (a target)."""

    past: np.ndarray  # (P, 2), oldest first
    past_mask: np.ndarray  # (P,) bool
    future: np.ndarray  # (F, 2)
    future_yaw: np.ndarray  # (F,)
    future_mask: np.ndarray  # (F,) bool


@dataclass
class AnnotationRecord:
    """Detection-class annotations of one keyframe in its ego frame, unpadded (M rows)."""

    boxes: np.ndarray  # (M, 9) x y z l w h yaw vx vy
    labels: np.ndarray  # (M,) int64 into CLASSES
    attributes: np.ndarray  # (M,) int64 into ATTRIBUTES, -1 none
    instance_ids: np.ndarray  # (M,) int64, row of the instance in instance.json
    num_pts: np.ndarray  # (M,) int64 lidar + radar points
    past: np.ndarray  # (M, P, 2)
    past_mask: np.ndarray  # (M, P) bool
    future: np.ndarray  # (M, F, 2)
    future_yaw: np.ndarray  # (M, F)
    future_mask: np.ndarray  # (M, F) bool

    def __len__(self) -> int:
        return int(self.boxes.shape[0])

    def select(self, keep: np.ndarray) -> "AnnotationRecord":
        """Rows ``keep`` (a bool mask or index array) of every field."""
        return replace(self, **{k: v[keep] for k, v in vars(self).items()})

    @classmethod
    def empty(cls) -> "AnnotationRecord":
        P, F = PAST_STEPS, FUTURE_STEPS
        return cls(
            boxes=np.zeros((0, 9), np.float32), labels=np.zeros(0, np.int64), attributes=np.zeros(0, np.int64),
            instance_ids=np.zeros(0, np.int64), num_pts=np.zeros(0, np.int64),
            past=np.zeros((0, P, 2), np.float32), past_mask=np.zeros((0, P), bool),
            future=np.zeros((0, F, 2), np.float32), future_yaw=np.zeros((0, F), np.float32),
            future_mask=np.zeros((0, F), bool),
        )


@dataclass
class SampleRecord:
    """Everything ``__getitem__`` needs about one keyframe."""

    sample_token: str
    scene_token: str
    prev_token: str
    timestamp: int
    cameras: list  # list[CameraRecord] in CAMERAS order
    track: EgoTrack
    map_file: str = ""  # absolute path of the log's map mask PNG ('' when the log has none)
    annotations: Optional[AnnotationRecord] = None

    @property
    def global_T_ego(self) -> np.ndarray:
        return self.track.current
