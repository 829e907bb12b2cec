"""The sensor rig: six cameras and a spinning lidar mounted like nuScenes' Renault Zoe."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from pyquaternion import Quaternion

# channel: (translation in ego, yaw deg, fx at 1600x900, cx, cy) — close to the nuScenes calibration.
CAMERA_RIG: dict[str, tuple[tuple[float, float, float], float, float, float, float]] = {
    "CAM_FRONT": ((1.70, 0.016, 1.51), 0.0, 1266.4, 816.3, 491.5),
    "CAM_FRONT_RIGHT": ((1.55, -0.49, 1.49), -55.0, 1260.8, 807.97, 495.3),
    "CAM_FRONT_LEFT": ((1.52, 0.49, 1.51), 55.0, 1272.6, 826.6, 479.8),
    "CAM_BACK": ((0.03, 0.0, 1.57), 180.0, 809.2, 829.2, 481.8),
    "CAM_BACK_LEFT": ((1.04, 0.48, 1.56), 110.0, 1256.7, 817.8, 451.9),
    "CAM_BACK_RIGHT": ((1.05, -0.48, 1.56), -110.0, 1259.5, 807.3, 501.2),
}
LIDAR_TRANSLATION = (0.985793, 0.0, 1.84019)
LIDAR_YAW_DEG = -90.0


@dataclass
class Sensor:
    channel: str
    modality: str
    translation: np.ndarray  # ego frame
    rotation: Quaternion  # ego_R_sensor
    intrinsic: np.ndarray | None  # 3x3 for cameras

    @property
    def ego_T_sensor(self) -> np.ndarray:
        T = np.eye(4)
        T[:3, :3] = self.rotation.rotation_matrix
        T[:3, 3] = self.translation
        return T


def camera_rotation(yaw_deg: float) -> Quaternion:
    """ego_R_cam for an OpenCV camera (x right, y down, z forward) looking along ``yaw`` with no pitch."""
    y = np.radians(yaw_deg)
    z_cam = np.array([np.cos(y), np.sin(y), 0.0])
    x_cam = np.array([np.sin(y), -np.cos(y), 0.0])
    y_cam = np.array([0.0, 0.0, -1.0])
    return Quaternion(matrix=np.stack([x_cam, y_cam, z_cam], axis=1))


def build_rig(width: int, height: int) -> list[Sensor]:
    """The six cameras (intrinsics scaled from 1600x900 to ``width`` x ``height``) and LIDAR_TOP."""
    sx, sy = width / 1600.0, height / 900.0
    sensors = []
    for ch, (t, yaw, f, cx, cy) in CAMERA_RIG.items():
        K = np.array([[f * sx, 0, cx * sx], [0, f * sy, cy * sy], [0, 0, 1.0]])
        sensors.append(Sensor(ch, "camera", np.array(t), camera_rotation(yaw), K))
    lidar_rot = Quaternion(axis=[0, 0, 1], angle=np.radians(LIDAR_YAW_DEG))
    sensors.append(Sensor("LIDAR_TOP", "lidar", np.array(LIDAR_TRANSLATION), lidar_rot, None))
    return sensors


def pose_matrix(xy: np.ndarray, yaw: float, z: float = 0.0) -> np.ndarray:
    T = np.eye(4)
    c, s = np.cos(yaw), np.sin(yaw)
    T[:2, :2] = [[c, -s], [s, c]]
    T[:3, 3] = [xy[0], xy[1], z]
    return T
