"""Features and targets on the hand-written fixture, checked against independent hand math."""
import json
import math
import os

import numpy as np
import pytest
import torch
from fixtures.realformat import (CAMERA_CALIB, IMAGE_H, IMAGE_W, KEYFRAME_DT, OMEGA, VERSION, V, ego_pose_at,
                                 expected_ego_xy)

from drive.data.dataset import NuScenesDrivingDataset
from drive.data.geometry import box_corners, project_points
from drive.types import ATTRIBUTES, CLASSES, COMMANDS

R = V / OMEGA  # radius of the ego's arc


@pytest.fixture(scope="module")
def ds(realformat_root):
    return NuScenesDrivingDataset(realformat_root.root, VERSION, "mini_train", image_size=(45, 80),
                                  cache_images=False)


def _rows(targets):
    m = targets.mask.numpy()
    return {CLASSES[int(lbl)]: i for i, lbl in enumerate(targets.labels.numpy()) if m[i]}


def test_box_lands_at_expected_ego_pose(ds, realformat_root):
    for k in (0, 2):
        _, t, meta = ds[k]
        assert meta.sample_token == realformat_root.sample_tokens[k]
        i = _rows(t)["car"]
        a = realformat_root.annotations[("car_a", k)]
        ex, ey = expected_ego_xy(a["translation"][0], a["translation"][1], k)
        yaw = a["yaw"] - ego_pose_at(k * KEYFRAME_DT)[2]
        np.testing.assert_allclose(t.boxes[i, :7].numpy(), [ex, ey, 0.8, 4.5, 1.9, 1.6, yaw], atol=1e-4)
    _, t, _ = ds[0]
    assert t.boxes[_rows(t)["car"], 7:9].numpy() == pytest.approx([8.0, 0.0], abs=1e-4)  # 4 m per 0.5 s along kf0 x


def test_labels_attributes_points_and_dropping(ds, realformat_root):
    _, t0, _ = ds[0]
    _, t1, _ = ds[1]
    # kf0: car + barrier; truck (80 m) out of range, bicycle rack / police car are not detection classes.
    assert sorted(_rows(t0)) == ["barrier", "car"] and int(t0.mask.sum()) == 2
    assert sorted(_rows(t1)) == ["barrier", "car", "pedestrian"]
    car, barrier, ped = _rows(t1)["car"], _rows(t1)["barrier"], _rows(t1)["pedestrian"]
    assert int(t1.attributes[car]) == ATTRIBUTES.index("vehicle.moving") and int(t1.attributes[barrier]) == -1
    assert int(t1.num_pts[car]) == 123 and int(t1.num_pts[ped]) == 0  # zero-point boxes are kept
    assert int(t1.labels[~t1.mask].max()) == -1 and float(t1.boxes[~t1.mask].abs().sum()) == 0
    assert int(t0.instance_ids[_rows(t0)["car"]]) == int(t1.instance_ids[car]) >= 0


def test_margin_and_max_objects(realformat_root):
    wide = NuScenesDrivingDataset(realformat_root.root, VERSION, None, image_size=(45, 80), box_margin=30.0,
                                  cache_images=False)
    assert "truck" in _rows(wide[0][1])
    one = NuScenesDrivingDataset(realformat_root.root, VERSION, None, image_size=(45, 80), max_objects=1,
                                 cache_images=False)
    t = one[0][1]
    assert t.boxes.shape == (1, 9) and list(_rows(t)) == ["barrier"]  # the nearest one (10.0 m vs 10.1 m)


def test_agent_past_future_masks_at_scene_ends(ds):
    _, t0, _ = ds[0]
    _, t1, _ = ds[1]
    _, t3, _ = ds[3]
    car0, car3, ped1 = _rows(t0)["car"], _rows(t3)["car"], _rows(t1)["pedestrian"]
    assert t0.past_mask[car0].tolist() == [False] * 4
    assert t0.future_mask[car0].tolist() == [True, True, True, False, False, False]
    np.testing.assert_allclose(t0.future[car0, :3].numpy(), [[14, 1.5], [18, 1.5], [22, 1.5]], atol=1e-4)
    np.testing.assert_allclose(t0.future_yaw[car0, :3].numpy(), [math.radians(5)] * 3, atol=1e-5)
    assert t3.past_mask[car3].tolist() == [False, True, True, True] and not t3.future_mask[car3].any()
    assert t1.past_mask[ped1].tolist() == [False] * 4  # the pedestrian appears at kf1
    assert t1.future_mask[ped1].tolist() == [True, True, False, False, False, False]


def test_ego_plan_targets(ds):
    _, t0, _ = ds[0]
    ts = np.array([0.5, 1.0, 1.5])
    np.testing.assert_allclose(t0.ego_future[:3].numpy(), np.stack([R * np.sin(OMEGA * ts),
                                                                    R * (1 - np.cos(OMEGA * ts))], 1), atol=1e-4)
    np.testing.assert_allclose(t0.ego_future_yaw[:3].numpy(), OMEGA * ts, atol=1e-5)
    assert t0.ego_future_mask.tolist() == [True, True, True, False, False, False]
    assert not t0.ego_past_mask.any()
    _, t3, _ = ds[3]
    tp = -np.array([1.5, 1.0, 0.5])
    assert t3.ego_past_mask.tolist() == [False, True, True, True] and not t3.ego_future_mask.any()
    np.testing.assert_allclose(t3.ego_past[1:].numpy(), np.stack([R * np.sin(OMEGA * tp),
                                                                  R * (1 - np.cos(OMEGA * tp))], 1), atol=1e-4)


def test_ego_status_command_and_temporal_link(ds):
    f0, f1, f2, f3 = (ds[k][0] for k in range(4))
    assert f0.ego_status.tolist() == [0, 0, 0] and float(f0.has_prev) == 0
    assert torch.equal(f0.prev_T_cur, torch.eye(4))
    chord_speed = 2 * R * math.sin(OMEGA * KEYFRAME_DT / 2) / KEYFRAME_DT
    np.testing.assert_allclose(f1.ego_status.numpy(), [chord_speed, 0.0, OMEGA], atol=1e-4)
    np.testing.assert_allclose(f2.ego_status.numpy(), [chord_speed, 0.0, OMEGA], atol=1e-4)  # constant speed
    # kf0: 2.18 m to the left after 1.5 s -> left; kf1: 0.99 m after 1 s -> straight; kf3: no future -> straight
    assert [COMMANDS[int(f.command)] for f in (f0, f1, f3)] == ["left", "straight", "straight"]
    a = OMEGA * KEYFRAME_DT
    expected = np.array([[math.cos(a), -math.sin(a), 0, R * math.sin(a)],
                         [math.sin(a), math.cos(a), 0, R * (1 - math.cos(a))], [0, 0, 1, 0], [0, 0, 0, 1]])
    np.testing.assert_allclose(f1.prev_T_cur.numpy(), expected, atol=1e-5)
    assert float(f1.has_prev) == 1


def _hand_pixel(g, channel, t_kf, image_hw):
    """Global point -> pixel of the resized image, from the fixture's calibration, by hand."""
    (tx, ty, tz), yaw_deg, fx, cx, cy, dt = CAMERA_CALIB[channel]
    ex, ey, eyaw = ego_pose_at(t_kf + dt)  # the camera's own ego pose at its exposure time
    dx, dy = g[0] - ex, g[1] - ey
    p_ego = np.array([math.cos(eyaw) * dx + math.sin(eyaw) * dy, -math.sin(eyaw) * dx + math.cos(eyaw) * dy, g[2]])
    c, s = math.cos(math.radians(yaw_deg)), math.sin(math.radians(yaw_deg))
    q = p_ego - [tx, ty, tz]
    fwd, left = c * q[0] + s * q[1], -s * q[0] + c * q[1]  # in the camera's yawed frame
    x_cam, y_cam, z_cam = -left, -q[2], fwd
    u, v = fx * 0.1 * x_cam / z_cam + cx * 0.1, fx * 0.1 * y_cam / z_cam + cy * 0.1
    H, W = image_hw
    return np.array([(u + 0.5) * W / IMAGE_W - 0.5, (v + 0.5) * H / IMAGE_H - 0.5])


def test_projection_through_ego2img_matches_hand_geometry(ds, realformat_root):
    f, t, _ = ds[0]
    n = 0  # CAM_FRONT
    car = _rows(t)["car"]
    a = realformat_root.annotations[("car_a", 0)]
    uv, d = project_points(f.ego2img[n].double().numpy(), t.boxes[car, :3].double().numpy())
    np.testing.assert_allclose(uv, _hand_pixel(a["translation"], "CAM_FRONT", 0.0, ds.image_size), atol=2e-3)
    corners = box_corners(t.boxes[car:car + 1].numpy())[0]
    uvc, dc = project_points(f.ego2img[n].numpy(), corners)
    H, W = ds.image_size
    assert (dc > 0).all() and ((uvc >= 0) & (uvc < [W, H])).all()  # the whole car is in the front image
    # intrinsics and ego_T_cam are consistent with ego2img
    K4 = torch.eye(4)
    K4[:3, :3] = f.intrinsics[n]
    torch.testing.assert_close(K4 @ torch.linalg.inv(f.ego_T_cam[n]), f.ego2img[n], atol=1e-3, rtol=1e-5)


def test_features_never_read_annotations(realformat_root, fresh_realformat_root):
    root = fresh_realformat_root.root
    for table in ("sample_annotation", "instance"):
        with open(os.path.join(root, VERSION, f"{table}.json"), "w") as fh:
            json.dump([], fh)
    kw = dict(version=VERSION, split=None, image_size=(45, 80), cache_images=False)
    a = NuScenesDrivingDataset(realformat_root.root, **kw)[1][0]
    b = NuScenesDrivingDataset(root, **kw)[1][0]
    for name in vars(a):
        torch.testing.assert_close(getattr(a, name), getattr(b, name))
    no_targets = NuScenesDrivingDataset(root, with_targets=False, **kw)
    assert no_targets[0][1] is None
