"""Geometry helpers: round trips and agreement with the devkit / pyquaternion."""
import numpy as np
import pytest
from nuscenes.utils.data_classes import Box
from nuscenes.utils.geometry_utils import view_points
from pyquaternion import Quaternion

from drive.data.geometry import (box_corners, heading_vector, invert, pose_to_matrix, project_points, rot_z,
                                 transform_points, wrap_angle, yaw_of_matrix, yaw_of_vectors)
from drive.data.targets import headings_of_quaternions


def _random_pose(rng):
    q = Quaternion(rng.normal(size=4)).normalised
    return rng.normal(size=3) * 10, list(q.elements)


def test_pose_inverse_round_trip():
    rng = np.random.default_rng(0)
    for _ in range(5):
        T = pose_to_matrix(*_random_pose(rng))
        np.testing.assert_allclose(T @ invert(T), np.eye(4), atol=1e-12)
        p = rng.normal(size=(7, 3))
        np.testing.assert_allclose(transform_points(invert(T), transform_points(T, p)), p, atol=1e-12)


def test_batched_inverse_and_yaw():
    Ts = np.stack([rot_z(a) for a in (-3.0, -0.5, 0.0, 1.0, 3.1)])
    Ts[:, :3, 3] = [1, 2, 3]
    np.testing.assert_allclose(Ts @ invert(Ts), np.broadcast_to(np.eye(4), Ts.shape), atol=1e-12)
    np.testing.assert_allclose(yaw_of_matrix(Ts), [-3.0, -0.5, 0.0, 1.0, 3.1], atol=1e-12)
    np.testing.assert_allclose(wrap_angle([np.pi + 0.1, -np.pi - 0.1]), [-np.pi + 0.1, np.pi - 0.1])


def test_vectorised_headings_match_pyquaternion():
    rng = np.random.default_rng(1)
    qs = np.array([Quaternion(rng.normal(size=4)).normalised.elements for _ in range(20)])
    expected = np.stack([heading_vector(q) for q in qs])
    np.testing.assert_allclose(headings_of_quaternions(qs), expected, atol=1e-12)
    yaw = 0.7
    assert yaw_of_vectors(heading_vector(Quaternion(axis=[0, 0, 1], angle=yaw).elements)) == pytest.approx(yaw)


def test_box_corners_match_devkit():
    box = np.array([[3.0, -2.0, 1.0, 4.5, 1.9, 1.6, 0.6, 0, 0]])
    dev = Box([3.0, -2.0, 1.0], [1.9, 4.5, 1.6], Quaternion(axis=[0, 0, 1], angle=0.6))
    np.testing.assert_allclose(box_corners(box)[0], dev.corners().T, atol=1e-12)


def test_projection_matches_devkit_view_points():
    K = np.array([[1266.4, 0, 816.3], [0, 1266.4, 491.5], [0, 0, 1]])
    rng = np.random.default_rng(2)
    cam_T_ego = pose_to_matrix(*_random_pose(rng))
    pts_ego = rng.normal(size=(10, 3)) * 5
    pts_cam = transform_points(cam_T_ego, pts_ego)
    K4 = np.eye(4)
    K4[:3, :3] = K
    uv, d = project_points(K4 @ cam_T_ego, pts_ego)
    ok = pts_cam[:, 2] > 0.5
    np.testing.assert_allclose(uv[ok], view_points(pts_cam.T, K, normalize=True)[:2].T[ok], rtol=1e-9, atol=1e-6)
    np.testing.assert_allclose(d, pts_cam[:, 2], atol=1e-9)
