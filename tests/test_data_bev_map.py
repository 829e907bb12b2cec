"""Drivable-area raster: exact against the fixture's road map; placeholders give map_valid = 0."""
import logging
import math
import os

import numpy as np
from fixtures.realformat import ROAD_X_MIN, ROAD_Y_MAX, VERSION, build_realformat_root, ego_pose_at

from drive.data.bev_map import DrivableMap, bev_cell_to_ego
from drive.data.dataset import NuScenesDrivingDataset


def test_raster_matches_road_geometry(road_root):
    ds = NuScenesDrivingDataset(road_root.root, VERSION, None, image_size=(45, 80), bev_range=20.0, map_size=80,
                                cache_images=False)
    for k in (0, 3):
        t = ds[k][1]
        assert float(t.map_valid) == 1.0
        ex, ey, eyaw = ego_pose_at(0.5 * k)
        S = 80
        rows, cols = np.mgrid[:S, :S]
        C = bev_cell_to_ego(20.0, S)
        x, y = C[0, 0] * cols + C[0, 2], C[1, 1] * rows + C[1, 2]
        gx = ex + math.cos(eyaw) * x - math.sin(eyaw) * y
        gy = ey + math.sin(eyaw) * x + math.cos(eyaw) * y
        expected = (gx > ROAD_X_MIN) & (gy < ROAD_Y_MAX)
        margin = np.minimum(np.abs(gx - ROAD_X_MIN), np.abs(gy - ROAD_Y_MAX)) > 0.6  # away from the edges
        np.testing.assert_array_equal(t.drivable.numpy()[margin] > 0.5, expected[margin])
        assert 0.05 < expected.mean() < 0.95
    cached = os.listdir(os.path.join(road_root.root, ".drive_cache", "maps"))
    assert len(cached) == 1 and cached[0].endswith("0.25m.npy")


def test_placeholder_maps_are_invalid_with_one_warning(realformat_root, tmp_path, caplog):
    with caplog.at_level(logging.WARNING):
        ds = NuScenesDrivingDataset(realformat_root.root, VERSION, None, image_size=(45, 80), cache_images=False)
        ts = [ds[k][1] for k in range(4)]
    assert all(float(t.map_valid) == 0 and float(t.drivable.sum()) == 0 for t in ts)
    assert sum("does not cover" in r.getMessage() for r in caplog.records) == 1
    zeros = build_realformat_root(tmp_path / "zeros", map_mode="zeros")
    maps = DrivableMap(cache_dir=None)
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        r, ok = maps.rasterize(os.path.join(zeros.root, "maps", os.listdir(os.path.join(zeros.root, "maps"))[0]),
                               np.eye(4), 51.2, 50)
        maps.rasterize("", np.eye(4), 51.2, 50)
    assert ok == 0.0 and r.shape == (50, 50) and not r.any()
    assert any("placeholder" in r.getMessage() for r in caplog.records)


def test_map_pickles_without_arrays(road_root):
    import pickle

    maps = DrivableMap(cache_dir=None)
    f = os.path.join(road_root.root, "maps", os.listdir(os.path.join(road_root.root, "maps"))[0])
    maps.prepare(f)
    assert maps._masks and pickle.loads(pickle.dumps(maps))._masks == {}
