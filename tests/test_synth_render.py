"""Camera renderer of the synthetic world: exact projection, z-buffer, clipping, horizon, map lookup, meshes."""
import numpy as np
import pytest

from drive.data.synth.meshes import object_mesh
from drive.data.synth.render import (
    GRASS, LANE_WHITE, ROAD, GroundMap, Lighting, RenderObject, render_camera,
)

W, H = 320, 180
K = np.array([[250.0, 0.0, 159.5], [0.0, 250.0, 89.5], [0.0, 0.0, 1.0]])
LIGHT = Lighting(np.array([0.3, 0.2, 0.93]) / np.linalg.norm([0.3, 0.2, 0.93]), 0.45, 0.6, (0.3, 0.5, 0.9),
                 (0.8, 0.85, 0.9), 1.0, 0.0, (1.0, 1.0, 1.0))
EMPTY = GroundMap(np.full((10, 10), GRASS, np.uint8), 0.1)


def camera_pose(x=0.0, y=0.0, height=1.5, yaw=0.0) -> np.ndarray:
    """global_T_cam of a level camera looking along global heading ``yaw`` (OpenCV camera axes)."""
    fwd = np.array([np.cos(yaw), np.sin(yaw), 0.0])
    right = np.array([np.sin(yaw), -np.cos(yaw), 0.0])
    T = np.eye(4)
    T[:3, :3] = np.stack([right, [0.0, 0.0, -1.0], fwd], 1)
    T[:3, 3] = [x, y, height]
    return T


def box(center, lwh, yaw=0.0, oid=0, category="scenery.building"):
    """A building mesh is exactly its box."""
    return RenderObject(category, np.array(center, float), yaw, np.array(lwh, float), np.array([0.6, 0.5, 0.4]), oid)


def render(objects, pose=None, ground=EMPTY, lighting=LIGHT):
    return render_camera(ground, objects, K, camera_pose() if pose is None else pose, W, H, lighting,
                         np.random.default_rng(0))


def corners(center, lwh, yaw):
    s = np.array([[sx, sy, sz] for sx in (-1, 1) for sy in (-1, 1) for sz in (-1, 1)]) * np.array(lwh) / 2
    c, si = np.cos(yaw), np.sin(yaw)
    return s @ np.array([[c, -si, 0], [si, c, 0], [0, 0, 1]]).T + center


def project(points_global, pose):
    cam = (points_global - pose[:3, 3]) @ pose[:3, :3]
    uvw = cam @ K.T
    return uvw[:, :2] / uvw[:, 2:]


def ray_box_distance(origin, direction, center, lwh, yaw):
    """Independent slab test in the box frame: distance along ``direction`` to the box surface."""
    c, s = np.cos(yaw), np.sin(yaw)
    R = np.array([[c, s, 0], [-s, c, 0], [0, 0, 1]])
    o, d = R @ (origin - center), R @ direction
    t1, t2 = (-np.array(lwh) / 2 - o) / d, (np.array(lwh) / 2 - o) / d
    return np.max(np.minimum(t1, t2))


@pytest.mark.parametrize("yaw", [0.0, 0.4])
def test_single_box_projection_and_depth(yaw):
    center, lwh = np.array([10.0, 0.8, 1.0]), (2.0, 3.0, 2.0)
    res = render([box(center, lwh, yaw, oid=7)])
    vs, us = np.nonzero(res.object_id == 7)
    uv = project(corners(center, lwh, yaw), camera_pose())
    assert abs(us.min() - uv[:, 0].min()) <= 1.5 and abs(us.max() - uv[:, 0].max()) <= 1.5
    assert abs(vs.min() - uv[:, 1].min()) <= 1.5 and abs(vs.max() - uv[:, 1].max()) <= 1.5
    assert set(np.unique(res.object_id)) == {-1, 7}
    # depth (camera z) at the pixel of the box centre equals the distance to the near face along that ray
    u, v = np.rint(project(center[None], camera_pose())[0]).astype(int)
    ray_cam = np.linalg.inv(K) @ [u, v, 1.0]
    ray = camera_pose()[:3, :3] @ ray_cam
    t = ray_box_distance(camera_pose()[:3, 3], ray, center, lwh, yaw)  # ray_cam has z = 1, so t is camera z
    assert res.depth[v, u] == pytest.approx(t, abs=0.01)
    if yaw == 0.0:
        assert res.depth[v, u] == pytest.approx(9.0, abs=0.01)
    assert res.visible_pixels[7] == res.covered_pixels[7] == len(us)


def test_occlusion_and_swap():
    near, far = box([8.0, 0.0, 1.0], (1.0, 1.5, 2.0), oid=1), box([16.0, 0.6, 1.5], (2.0, 4.0, 3.0), oid=2)
    res = render([near, far])
    assert res.visible_pixels[2] < res.covered_pixels[2]
    assert res.visible_pixels[1] == res.covered_pixels[1] > 0
    u, v = np.rint(project(np.array([[8.0, 0.0, 1.0]]), camera_pose())[0]).astype(int)
    assert res.object_id[v, u] == 1
    assert res.depth[v, u] == pytest.approx(7.5, abs=0.01)
    # swap the depths: the formerly near box is now hidden behind the big one
    near.center, far.center = np.array([16.0, 0.0, 1.0]), np.array([8.0, 0.6, 1.5])
    res2 = render([near, far])
    assert res2.object_id[v, u] == 2
    assert res2.visible_pixels[1] == 0 < res2.covered_pixels[1]
    assert sum(res2.visible_pixels.values()) == np.count_nonzero(res2.object_id >= 0)


def test_near_plane_clipping_beside_and_behind_camera():
    # a 40 m long wall 3 m to the camera's left, from 20 m behind to 20 m ahead
    res = render([box([0.0, 3.0, 2.0], (40.0, 0.5, 4.0), oid=3)])
    vs, us = np.nonzero(res.object_id == 3)
    assert len(us) > 0 and us.max() < K[0, 2]
    assert res.covered_pixels[3] == res.visible_pixels[3] == len(us)
    assert np.all(res.depth[vs, us] > 0.09)
    # the same wall entirely behind the camera and a box enclosing the camera never draw
    res = render([box([-15.0, 3.0, 2.0], (20.0, 0.5, 4.0), oid=4), box([0.0, 0.0, 1.5], (2.0, 2.0, 4.0), oid=5)])
    assert res.covered_pixels[4] == 0
    assert np.all(res.object_id != 4)
    # a yawed long truck crossing the image plane next to the camera (every category must survive clipping)
    for cat in ("vehicle.truck", "vehicle.bus.bendy", "human.pedestrian.adult", "vehicle.bicycle"):
        obj = RenderObject(cat, np.array([1.0, 2.5, 1.6]), 0.3, np.array([12.0, 2.5, 3.2]), np.array([0.5, 0.5, 0.5]),
                           9, with_rider=True)
        res = render([obj])
        us = np.nonzero(res.object_id == 9)[1]
        assert res.covered_pixels[9] == len(us) and (len(us) == 0 or us.max() < W / 2 + 40)


def test_horizon_sky_and_ground_depth():
    res = render([])
    cy, fy = K[1, 2], K[1, 1]
    sky_rows = np.arange(H)[np.arange(H) < cy - 1]
    assert np.all(np.isinf(res.depth[sky_rows]))
    for v in range(int(cy) + 5, H):
        assert np.allclose(res.depth[v], fy * 1.5 / (v - cy), rtol=1e-4)
    assert np.all(res.object_id == -1)
    # sky is brighter and bluer than the grass below
    assert res.image[: int(cy) - 5, :, 2].mean() > res.image[int(cy) + 20:, :, 2].mean() + 50


def test_ground_map_lookup_uses_mapmask_convention():
    res_m = 0.1
    classes = np.full((400, 400), ROAD, np.uint8)  # 40 m x 40 m map
    x, y = 12.0, 3.0  # white patch in view; with a flipped y it would be at y = 37 m, out of view
    col, row = int(round(x / res_m)), int(round(400 - y / res_m))
    classes[row - 5:row + 6, col - 5:col + 6] = LANE_WHITE
    pose = camera_pose(x=5.0, y=5.0, yaw=np.arctan2(y - 5.0, x - 5.0) + 0.2)
    res = render([], pose=pose, ground=GroundMap(classes, res_m))
    u, v = np.rint(project(np.array([[x, y, 0.0]]), pose)[0]).astype(int)
    assert 0 <= u < W and 0 <= v < H
    brightness = res.image.astype(float).mean(2)
    assert brightness[v - 1:v + 2, u - 1:u + 2].mean() > brightness[v + 8:v + 12, :].mean() + 60
    # outside the map everything is grass (green dominates)
    far = render([], pose=camera_pose(x=-100.0, y=-100.0), ground=GroundMap(classes, res_m))
    g = far.image[int(K[1, 2]) + 20:].astype(float)
    assert g[..., 1].mean() > g[..., 0].mean() + 10


CATEGORIES = {
    "vehicle.car": (4.6, 1.95, 1.73), "vehicle.truck": (6.9, 2.5, 2.85), "vehicle.bus.rigid": (11.0, 2.9, 3.5),
    "vehicle.bus.bendy": (18.0, 2.9, 3.4), "vehicle.trailer": (12.0, 2.9, 3.9), "vehicle.construction": (6.4, 2.8, 3.2),
    "vehicle.motorcycle": (2.1, 0.77, 1.47), "vehicle.bicycle": (1.7, 0.6, 1.6),
    "human.pedestrian.adult": (0.73, 0.67, 1.77),
    "human.pedestrian.child": (0.5, 0.5, 1.2), "human.pedestrian.construction_worker": (0.72, 0.7, 1.8),
    "human.pedestrian.police_officer": (0.7, 0.7, 1.8), "movable_object.trafficcone": (0.41, 0.41, 1.07),
    "movable_object.barrier": (0.5, 2.5, 0.98), "scenery.building": (20.0, 15.0, 12.0), "scenery.tree": (4.0, 4.0, 7.0),
    "scenery.pole": (0.3, 0.3, 8.0),
}


def test_meshes_stay_inside_their_boxes():
    rng = np.random.default_rng(0)
    for cat, lwh in CATEGORIES.items():
        for variant in range(6):
            for phase in np.linspace(0, 2 * np.pi, 5):
                size = np.array(lwh) * rng.uniform(0.75, 1.25, 3)
                mesh = object_mesh(cat, size, rng.uniform(0, 1, 3), variant, bool(variant % 2), phase)
                assert mesh.overflow < 1e-9, (cat, variant, phase)
                assert np.allclose(np.linalg.norm(mesh.normals, axis=1), 1.0)


def test_every_category_renders_inside_its_projected_box():
    pose = camera_pose()
    objects, boxes = [], {}
    for i, (cat, lwh) in enumerate(CATEGORIES.items()):
        if cat.startswith("scenery.building"):
            continue
        center = np.array([14.0 + 1.5 * i, -5.0 + 0.6 * i, lwh[2] / 2])
        objects = [RenderObject(cat, center, 0.7, np.array(lwh), np.array([0.2, 0.4, 0.8]), i, with_rider=True)]
        res = render(objects, pose)
        vs, us = np.nonzero(res.object_id == i)
        uv = project(corners(center, lwh, 0.7), pose)
        assert len(us) > 0, cat
        assert us.min() >= uv[:, 0].min() - 1.5 and us.max() <= uv[:, 0].max() + 1.5, cat
        assert vs.min() >= uv[:, 1].min() - 1.5 and vs.max() <= uv[:, 1].max() + 1.5, cat
        boxes[cat] = res.visible_pixels[i]
    assert res.image.dtype == np.uint8 and res.image.shape == (H, W, 3)


def test_lighting_exposure_and_noise():
    dusk = Lighting(LIGHT.sun_dir, 0.3, 0.2, (0.2, 0.2, 0.4), (0.6, 0.4, 0.3), 0.5, 3.0, (1.0, 0.9, 0.8))
    objs = [box([10.0, 0.0, 1.0], (2.0, 2.0, 2.0))]
    day, night = render(objs), render(objs, lighting=dusk)
    assert night.image.mean() < day.image.mean() - 30
    a = render_camera(EMPTY, objs, K, camera_pose(), W, H, dusk, np.random.default_rng(1)).image
    b = render_camera(EMPTY, objs, K, camera_pose(), W, H, dusk, np.random.default_rng(2)).image
    assert np.any(a != b) and np.abs(a.astype(int) - b.astype(int)).mean() < 6


def test_busy_scene_buffers_are_consistent():
    rng = np.random.default_rng(4)
    cats = list(CATEGORIES)
    objects = []
    for i in range(60):
        cat = cats[i % len(cats)]
        lwh = np.array(CATEGORIES[cat]) * rng.uniform(0.8, 1.2, 3)
        xy = rng.uniform(-30, 30, 2)
        objects.append(RenderObject(cat, np.array([*xy, lwh[2] / 2]), rng.uniform(-3, 3), lwh, rng.uniform(0, 1, 3),
                                    1000 + i, int(rng.integers(10)), bool(i % 2), rng.uniform(0, 6)))
    res = render(objects, camera_pose(yaw=0.3))
    ids = res.object_id[res.object_id >= 0]
    assert set(np.unique(ids)) <= {o.object_id for o in objects}
    assert sum(res.visible_pixels.values()) == len(ids) > 1000
    for o in objects:
        assert res.visible_pixels[o.object_id] <= res.covered_pixels[o.object_id]
        assert res.visible_pixels[o.object_id] == np.count_nonzero(res.object_id == o.object_id)
    assert np.all(res.depth[res.object_id >= 0] >= 0.1 - 1e-4) and np.all(np.isfinite(res.depth[res.object_id >= 0]))
