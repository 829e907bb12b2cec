"""Augmentation keeps pixels, camera matrices and targets consistent."""
from dataclasses import replace

import cv2
import numpy as np
import pytest
import torch
from fixtures.realformat import VERSION

from drive.data.augment import (AugmentConfig, BevAug, mirrored_camera_order, resize_matrix, sample_image_aug,
                                warp_image)
from drive.data.dataset import NuScenesDrivingDataset
from drive.data.geometry import box_corners, project_points
from drive.types import CAMERAS, COMMANDS

HW = (45, 80)


def _ds(root, **aug):
    cfg = AugmentConfig(**aug) if aug else None
    return NuScenesDrivingDataset(root, VERSION, None, image_size=HW, augment=cfg, cache_images=False)


def _by_instance(t):
    m = t.mask.numpy()
    return {int(i): k for k, i in enumerate(t.instance_ids.numpy()) if m[k]}


def _check_consistency(f0, t0, f1, t1):
    """Augmented boxes through augmented matrices == img_aug (K1 K0^-1) applied to the plain projections."""
    ids0, ids1 = _by_instance(t0), _by_instance(t1)
    common = sorted(set(ids0) & set(ids1))
    assert common
    c0 = box_corners(t0.boxes.double().numpy()[[ids0[i] for i in common]]).reshape(-1, 3)
    c1 = box_corners(t1.boxes.double().numpy()[[ids1[i] for i in common]])
    A = f1.ego_T_cam[0].double().numpy() @ np.linalg.inv(f0.ego_T_cam[0].double().numpy())
    if np.linalg.det(A[:3, :3]) < 0:  # a mirrored box lists its corners left <-> right
        c1 = c1[:, [1, 0, 3, 2, 5, 4, 7, 6]]
    c1 = c1.reshape(-1, 3)
    checked = 0
    mirrored = np.linalg.det(A[:3, :3]) < 0  # slot n then holds the mirror twin of plain camera twin[n]
    twin = mirrored_camera_order(list(CAMERAS)) if mirrored else list(range(6))
    for n in range(6):
        uv0, d0 = project_points(f0.ego2img[twin[n]].double().numpy(), c0)
        uv1, d1 = project_points(f1.ego2img[n].double().numpy(), c1)
        M = f1.intrinsics[n].double().numpy() @ np.linalg.inv(f0.intrinsics[twin[n]].double().numpy())
        expected = np.c_[uv0, np.ones(len(uv0))] @ M.T
        ok = d0 > 1.0
        np.testing.assert_allclose(d1, d0, atol=1e-3)
        np.testing.assert_allclose(uv1[ok], expected[ok, :2], atol=1e-3)
        checked += ok.sum()
    assert checked >= 8


@pytest.mark.parametrize("aug", [
    dict(enabled=True, image_scale=(0.8, 1.2), image_flip=1.0, bev_rotation_deg=0.0, bev_flip=0.0, seed=1),
    dict(enabled=True, image_scale=(1.0, 1.0), image_flip=0.0, bev_rotation_deg=30.0, bev_flip=1.0, seed=2),
    dict(enabled=True, seed=3),
])
def test_projections_consistent_under_augmentation(realformat_root, aug):
    plain, augd = _ds(realformat_root.root), _ds(realformat_root.root, **aug)
    for k in (0, 2):
        f0, t0, _ = plain[k]
        f1, t1, _ = augd[k]
        _check_consistency(f0, t0, f1, t1)


def test_image_warp_moves_pixels_like_the_matrix():
    img = np.zeros((45, 80, 3), np.uint8)
    img[10, 20] = 255
    rng = np.random.default_rng(0)
    cfg = AugmentConfig(enabled=True, image_scale=(1.0, 1.0), image_flip=1.0)
    M = sample_image_aug(rng, cfg, (45, 80))
    out = warp_image(img, M)
    r, c = np.unravel_index(out[..., 0].argmax(), out.shape[:2])
    np.testing.assert_allclose((M @ [20, 10, 1])[:2], [c, r], atol=0.51)
    # the resize matrix matches cv2.resize's pixel mapping (centre of a block stays at its centre)
    big = np.zeros((90, 160), np.uint8)
    big[40:44, 100:104] = 255
    small = cv2.resize(big, (80, 45), interpolation=cv2.INTER_AREA)
    ys, xs = np.nonzero(small > 100)
    np.testing.assert_allclose((resize_matrix((160, 90), (45, 80)) @ [101.5, 41.5, 1])[:2], [xs.mean(), ys.mean()])


def test_bev_flip_swaps_command_and_yaw_rate(realformat_root):
    plain = _ds(realformat_root.root)
    f0, t0, m0 = plain[0]
    flip = BevAug(rotation=0.3, flip=True)
    f1 = flip.features(f0)
    assert COMMANDS[int(f0.command)] == "left" and COMMANDS[int(f1.command)] == "right"
    f_1 = plain[1][0]
    assert float(flip.features(f_1).ego_status[2]) == pytest.approx(-float(f_1.ego_status[2]))
    assert int(BevAug(rotation=0.3).features(f0).command) == int(f0.command)
    # prev_T_cur conjugated: a static world point keeps its meaning across the augmented frames
    p_cur = torch.tensor([5.0, 2.0, 1.0, 1.0])
    A = torch.as_tensor(flip.matrix, dtype=torch.float32)
    f_1a = flip.features(f_1)
    torch.testing.assert_close(f_1a.prev_T_cur @ (A @ p_cur), A @ (f_1.prev_T_cur @ p_cur))


def test_deterministic_when_seeded(realformat_root):
    a = _ds(realformat_root.root, enabled=True, seed=7)
    b = _ds(realformat_root.root, enabled=True, seed=7)
    fa, ta, _ = a[(1, 3)]
    fb, tb, _ = b[(1, 3)]
    for name in vars(fa):
        torch.testing.assert_close(getattr(fa, name), getattr(fb, name))
    torch.testing.assert_close(ta.boxes, tb.boxes)
    fc = a[(1, 4)][0]  # another epoch, another draw
    assert not torch.equal(fa.intrinsics, fc.intrinsics)


def test_map_raster_follows_bev_augmentation(road_root):
    plain = _ds(road_root.root)
    rec = plain.record(1)
    raster0, ok = plain.maps.rasterize(rec.map_file, rec.global_T_ego, plain.bev_range, plain.map_size)
    assert ok == 1.0 and 0.05 < raster0.mean() < 0.95
    for bev in (BevAug(rotation=0.5), BevAug(rotation=-0.3, flip=True)):
        direct, _ = plain.maps.rasterize(rec.map_file, bev.global_T_ego(rec.global_T_ego), plain.bev_range,
                                         plain.map_size)
        warped = bev.raster(raster0, plain.bev_range)
        S = plain.map_size
        yy, xx = np.mgrid[:S, :S] - (S - 1) / 2
        inside = np.hypot(xx, yy) < 0.45 * S  # where the rotated window still has data
        assert (direct[inside] == warped[inside]).mean() > 0.98
        assert not np.array_equal(direct, raster0)
    # the dataset's augmented sample uses the augmented pose for the raster
    augd = _ds(road_root.root, enabled=True, seed=5, bev_rotation_deg=40.0)
    _, t, meta = augd[(1, 0)]
    direct, _ = plain.maps.rasterize(rec.map_file, np.array(meta.global_T_ego), plain.bev_range, plain.map_size)
    np.testing.assert_array_equal(t.drivable.numpy(), direct)


def test_validation_keeps_only_resize(realformat_root):
    ds = _ds(realformat_root.root, enabled=False, seed=1)
    f, _, _ = ds[0]
    plain = _ds(realformat_root.root)[0][0]
    torch.testing.assert_close(f.ego2img, plain.ego2img)
    assert replace(AugmentConfig(), enabled=False).enabled is False


def test_top_crop_matrix_and_pixels_agree():
    # a block in a 160x90 image, network input 30x80 with the top third cut: resized to 45x80, rows 15.. kept
    from drive.data.augment import crop_top_rows, resize_crop_matrix
    from drive.data.image_cache import ImageCache

    assert crop_top_rows((30, 80), 1 / 3) == 15
    big = np.zeros((90, 160, 3), np.uint8)
    big[60:64, 100:104] = 255
    M = resize_crop_matrix((160, 90), (30, 80), 1 / 3)
    np.testing.assert_allclose(M, np.array([[1, 0, 0], [0, 1, -15], [0, 0, 1]]) @ resize_matrix((160, 90), (45, 80)))
    small = cv2.resize(big, (80, 45), interpolation=cv2.INTER_AREA)[15:]
    ys, xs = np.nonzero(small[..., 0] > 100)
    np.testing.assert_allclose((M @ [101.5, 61.5, 1])[:2], [xs.mean(), ys.mean()])
    with pytest.raises(ValueError, match="image_crop_top"):
        ImageCache((30, 80), None, crop_top=1.0)


def test_top_crop_dataset_keeps_cameras_consistent(realformat_root, tmp_path):
    plain = NuScenesDrivingDataset(realformat_root.root, VERSION, None, image_size=HW, cache_dir=str(tmp_path))
    crop = NuScenesDrivingDataset(realformat_root.root, VERSION, None, image_size=(30, 80), image_crop_top=1 / 3,
                                  cache_dir=str(tmp_path))  # same cache dir: entries must not be mixed up
    f0, f1 = plain[0][0], crop[0][0]
    assert f1.images.shape[-2:] == (30, 80)
    # the cropped image is the bottom 30 rows of the 45 x 80 resize, and ego2img moves by the same 15 rows
    torch.testing.assert_close(f1.images, f0.images[..., 15:, :])
    p = torch.tensor([12.0, 3.0, 1.0, 1.0])
    a, b = f0.ego2img @ p, f1.ego2img @ p
    torch.testing.assert_close(b[:, 0] / b[:, 2], a[:, 0] / a[:, 2])
    torch.testing.assert_close(b[:, 1] / b[:, 2], a[:, 1] / a[:, 2] - 15.0)
    assert crop[0][0].images.shape[-2:] == (30, 80)  # served from its own cache entry


def test_scene_flip_mirrors_pixels_and_keeps_camera_slots(realformat_root):
    """A scene flip is a mirrored rig in a mirrored world: slot n shows the horizontally flipped image of its
    mirror twin, and each slot's camera stays on its side of the car (FRONT_LEFT still looks left)."""
    plain = _ds(realformat_root.root)
    flipped = _ds(realformat_root.root, enabled=True, image_scale=(1.0, 1.0), image_flip=0.0, bev_rotation_deg=0.0,
                  bev_flip=1.0, seed=4)
    f0, _, _ = plain[0]
    f1, _, _ = flipped[(0, 0)]
    twin = mirrored_camera_order(list(CAMERAS))
    assert twin != list(range(6))
    for n in range(6):
        torch.testing.assert_close(f1.images[n], torch.flip(f0.images[twin[n]], dims=[-1]))
        y0, y1 = float(f0.ego_T_cam[n, 1, 3]), float(f1.ego_T_cam[n, 1, 3])
        assert y0 * y1 >= 0 or abs(y0) < 0.05, CAMERAS[n]
