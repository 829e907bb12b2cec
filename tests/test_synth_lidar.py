"""Lidar ray caster of the synthetic world: box hits on the surface, occlusion, ground, frames, ego filter."""
import numpy as np
import pytest

from drive.data.synth.lidar import EGO_BOX_CENTER, EGO_BOX_HALF, cast_lidar


def pose(yaw: float, t) -> np.ndarray:
    c, s = np.cos(yaw), np.sin(yaw)
    T = np.eye(4)
    T[:3, :3] = [[c, -s, 0.0], [s, c, 0.0], [0.0, 0.0, 1.0]]
    T[:3, 3] = t
    return T


EGO = pose(0.0, [0.0, 0.0, 0.0])
LIDAR_MOUNT = pose(-np.pi / 2, [0.94, 0.0, 1.84])  # nuScenes: lidar x points to the ego's right
GLOBAL_T_LIDAR = EGO @ LIDAR_MOUNT


def to_global(points_lidar, global_T_lidar=GLOBAL_T_LIDAR):
    return points_lidar[:, :3] @ global_T_lidar[:3, :3].T + global_T_lidar[:3, 3]


def test_box_ahead_is_hit_on_its_surface_in_the_lidar_frame():
    box = np.array([[12.0, 0.0, 1.0, 2.0, 2.0, 2.0, 0.0]])  # near face at global x = 11
    scan = cast_lidar(GLOBAL_T_LIDAR, box, np.random.default_rng(0))
    assert scan.hits.shape == (1,) and scan.hits[0] > 20
    p = to_global(scan.points)
    on_box = np.all(np.abs(p - box[0, :3]) <= box[0, 3:6] / 2 + 0.08, axis=1)
    assert on_box.sum() == scan.hits[0]
    assert np.all(np.abs(p[on_box, 0] - 11.0) < 0.08)  # every return lies on the near face (noise ~1.5 cm)
    # lidar frame: y forward, x to the right, so the box is at lidar y = 11 - 0.94 and |x| <= 1
    q = scan.points[on_box]
    assert np.all(np.abs(q[:, 1] - 10.06) < 0.08) and np.all(np.abs(q[:, 0]) <= 1.08)
    assert np.all(q[:, 2] < 2.0 - 1.84 + 0.08) and np.all(q[:, 2] > -1.84 - 0.08)
    assert scan.points.dtype == np.float32 and scan.points.shape[1] == 5
    assert np.all((scan.points[:, 3] >= 0) & (scan.points[:, 3] <= 255))
    assert set(np.unique(scan.points[:, 4]).astype(int)) <= set(range(32))


def test_noise_free_returns_are_exactly_on_a_yawed_box():
    box = np.array([[-6.0, 7.0, 1.2, 4.5, 1.9, 2.4, 0.7]])
    scan = cast_lidar(GLOBAL_T_LIDAR, box, np.random.default_rng(1), range_noise=0.0)
    p = to_global(scan.points) - box[0, :3]
    c, s = np.cos(0.7), np.sin(0.7)
    local = np.abs(np.stack([c * p[:, 0] + s * p[:, 1], -s * p[:, 0] + c * p[:, 1], p[:, 2]], 1))
    inside = np.all(local <= box[0, 3:6] / 2 + 1e-4, axis=1)  # float32 points
    assert inside.sum() == scan.hits[0] > 0
    gap = np.min(box[0, 3:6] / 2 - local[inside], axis=1)  # distance to the nearest face
    assert np.all(np.abs(gap) < 1e-4)


def test_hidden_box_gets_no_hits_and_occluders_are_not_counted():
    near = [10.0, 0.0, 1.5, 1.0, 6.0, 3.0, 0.0]
    hidden = [20.0, 0.0, 0.75, 2.0, 2.0, 1.5, 0.0]  # fully in the shadow of ``near``
    scan = cast_lidar(GLOBAL_T_LIDAR, np.array([near, hidden]), np.random.default_rng(0))
    assert scan.hits[0] > 0 and scan.hits[1] == 0
    alone = cast_lidar(GLOBAL_T_LIDAR, np.array([hidden]), np.random.default_rng(0))
    assert alone.hits[0] > 0
    # the same wall as an unannotated occluder blocks the rays but is not counted
    occluded = cast_lidar(GLOBAL_T_LIDAR, np.array([hidden]), np.random.default_rng(0), occluders=np.array([near]))
    assert occluded.hits.tolist() == [0]
    assert np.array_equal(occluded.points[:, :3], scan.points[:, :3])  # same rays, same geometry


def test_ground_returns_and_ranges():
    scan = cast_lidar(GLOBAL_T_LIDAR, np.zeros((0, 7)), np.random.default_rng(0), max_range=50.0)
    assert scan.hits.shape == (0,)
    z = scan.points[:, 2]
    assert np.all(np.abs(z + 1.84) < 0.05)
    r = np.linalg.norm(scan.points[:, :3], axis=1)
    assert r.max() < 50.1 and r.min() > 1.84 / np.sin(np.deg2rad(30.67)) - 0.1
    # only the beams below the horizon hit the ground: 23 of 32 rings for (-30.67, 10.67) degrees
    rings = np.unique(scan.points[:, 4])
    assert rings.min() == 0 and len(rings) == np.sum(np.linspace(-30.67, 10.67, 32) < -np.rad2deg(np.arcsin(1.84 / 50)))


@pytest.mark.parametrize("ego_yaw", [0.0, 2.0])
def test_ego_footprint_is_dropped(ego_yaw):
    ego = pose(ego_yaw, [30.0, -4.0, 0.0])
    low_mount = pose(-np.pi / 2, [0.94, 0.0, 0.5])  # low enough for ground returns under the car
    g_T_l = ego @ low_mount
    kept = cast_lidar(g_T_l, np.zeros((0, 7)), np.random.default_rng(0), ego_global_T=ego)
    raw = cast_lidar(g_T_l, np.zeros((0, 7)), np.random.default_rng(0))

    def in_ego(points):
        p_ego = to_global(points, low_mount)
        return np.all(np.abs(p_ego[:, :2] - EGO_BOX_CENTER[:2]) <= EGO_BOX_HALF[:2], axis=1)
    assert in_ego(raw.points).sum() > 100
    assert in_ego(kept.points).sum() == 0
    assert len(kept.points) == len(raw.points) - in_ego(raw.points).sum()


def test_hits_match_per_box_returns_in_a_busy_scene():
    rng = np.random.default_rng(5)
    boxes = []
    while len(boxes) < 90:  # cars and cones that do not overlap each other nor the ego
        lwh = (4.5, 1.9, 1.6) if len(boxes) % 2 else (0.41, 0.46, 1.06)
        b = np.array([*rng.uniform(-30, 30, 2), lwh[2] / 2, *lwh, rng.uniform(-3, 3)])
        radius = np.linalg.norm(b[3:5]) / 2
        if np.linalg.norm(b[:2]) > 5 and all(np.linalg.norm(b[:2] - o[:2]) > radius + np.linalg.norm(o[3:5]) / 2
                                              for o in boxes):
            boxes.append(b)
    boxes = np.array(boxes)
    scan = cast_lidar(GLOBAL_T_LIDAR, boxes, rng)  # with range noise: returns still lie inside their box
    p = to_global(scan.points.astype(float))
    counted = np.zeros(len(boxes), int)
    for i, b in enumerate(boxes):  # what the devkit's points_in_box counts (wlh_factor 1)
        d = p - b[:3]
        c, s = np.cos(b[6]), np.sin(b[6])
        local = np.stack([c * d[:, 0] + s * d[:, 1], -s * d[:, 0] + c * d[:, 1], d[:, 2]], 1)
        counted[i] = np.sum(np.all(np.abs(local) <= b[3:6] / 2, axis=1))
    assert np.array_equal(counted, scan.hits) and scan.hits.sum() > 300 and np.sum(scan.hits == 0) > 0
