"""Rigid-transform helpers of the data layer: poses -> 4x4, frame changes, yaws, box corners.

All matrices follow the ``a_T_b`` legend of ``drive/types.py``. Quaternions are nuScenes
``(w, x, y, z)`` lists and go through pyquaternion / the devkit's ``transform_matrix``.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np
from nuscenes.utils.geometry_utils import transform_matrix
from pyquaternion import Quaternion


def pose_to_matrix(translation: Sequence[float], rotation: Sequence[float]) -> np.ndarray:
    """``a_T_b`` from a nuScenes record (``translation`` / ``rotation`` of frame b expressed in a)."""
    return transform_matrix(np.asarray(translation, dtype=np.float64), Quaternion(rotation), inverse=False)


def invert(a_T_b: np.ndarray) -> np.ndarray:
    """Inverse of rigid transform(s) ``(..., 4, 4)``."""
    R = a_T_b[..., :3, :3]
    t = a_T_b[..., :3, 3:]
    out = np.zeros_like(a_T_b)
    Rt = np.swapaxes(R, -1, -2)
    out[..., :3, :3] = Rt
    out[..., :3, 3:] = -Rt @ t
    out[..., 3, 3] = 1.0
    return out


def transform_points(a_T_b: np.ndarray, points_b: np.ndarray) -> np.ndarray:
    """Apply a 4x4 transform to points ``(..., 3)``."""
    p = np.asarray(points_b, dtype=np.float64)
    return p @ a_T_b[:3, :3].T + a_T_b[:3, 3]


def rotate_vectors(a_T_b: np.ndarray, vectors_b: np.ndarray) -> np.ndarray:
    """Apply only the rotation of a 4x4 transform to vectors ``(..., 3)``."""
    return np.asarray(vectors_b, dtype=np.float64) @ a_T_b[:3, :3].T


def wrap_angle(a):
    """Angles to ``[-pi, pi)``."""
    return (np.asarray(a) + np.pi) % (2.0 * np.pi) - np.pi


def heading_vector(rotation: Sequence[float]) -> np.ndarray:
    """The x axis (heading) of a nuScenes rotation quaternion, as a 3-vector in the parent frame."""
    return Quaternion(rotation).rotation_matrix[:, 0]


def yaw_of_vectors(vectors: np.ndarray) -> np.ndarray:
    """Yaw around +z of heading vectors ``(..., 3)`` (or ``(..., 2)``) from the x axis."""
    v = np.asarray(vectors)
    return np.arctan2(v[..., 1], v[..., 0])


def yaw_of_matrix(a_T_b: np.ndarray) -> np.ndarray:
    """Yaw of frame b's x axis in frame a (works on stacks ``(..., 4, 4)``)."""
    return np.arctan2(a_T_b[..., 1, 0], a_T_b[..., 0, 0])


def rot_z(theta: float) -> np.ndarray:
    """4x4 rotation by ``theta`` around +z."""
    c, s = np.cos(theta), np.sin(theta)
    T = np.eye(4)
    T[:2, :2] = [[c, -s], [s, c]]
    return T


def flip_y() -> np.ndarray:
    """4x4 mirror ``y -> -y`` (its own inverse)."""
    return np.diag([1.0, -1.0, 1.0, 1.0])


def intrinsics_4x4(K: np.ndarray) -> np.ndarray:
    """Pad a 3x3 intrinsic matrix to the 4x4 used by ``ego2img``."""
    K4 = np.eye(4)
    K4[:3, :3] = K
    return K4


def box_corners(boxes: np.ndarray) -> np.ndarray:
    """Corners ``(M, 8, 3)`` of boxes ``(M, >=7)`` = x y z l w h yaw (ego frame).

    Corner order follows the devkit ``Box.corners``: first four face forward (+l/2), then the
    rear four; within a face: left-top, right-top, right-bottom, left-bottom.
    """
    b = np.asarray(boxes, dtype=np.float64).reshape(-1, boxes.shape[-1])
    length, width, height, yaw = b[:, 3:4], b[:, 4:5], b[:, 5:6], b[:, 6]
    x = length / 2 * np.array([1, 1, 1, 1, -1, -1, -1, -1])
    y = width / 2 * np.array([1, -1, -1, 1, 1, -1, -1, 1])
    z = height / 2 * np.array([1, 1, -1, -1, 1, 1, -1, -1])
    c, s = np.cos(yaw)[:, None], np.sin(yaw)[:, None]
    xr = c * x - s * y + b[:, 0:1]
    yr = s * x + c * y + b[:, 1:2]
    zr = z + b[:, 2:3]
    return np.stack([xr, yr, zr], axis=-1)


def project_points(ego2img: np.ndarray, points_ego: np.ndarray, eps: float = 1e-6):
    """Project ego points ``(..., 3)`` through a 4x4 ``ego2img``: returns ``(uv (..., 2), depth (...))``."""
    p = np.asarray(points_ego, dtype=np.float64)
    ph = np.concatenate([p, np.ones(p.shape[:-1] + (1,))], axis=-1) @ np.asarray(ego2img, np.float64).T
    d = ph[..., 2]
    uv = ph[..., :2] / np.where(np.abs(d) < eps, eps, d)[..., None]
    return uv, d
