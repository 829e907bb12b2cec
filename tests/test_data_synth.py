"""The data path on the synthetic world: batches agree with the world's own geometry."""
from __future__ import annotations

import numpy as np
import torch

from drive.data.dataset import NuScenesDrivingDataset, collate
from drive.types import CLASSES


def _dataset(root, **kw):
    return NuScenesDrivingDataset(root, "v1.0-mini", "mini_val", image_size=(128, 224), map_size=100, **kw)


def test_batches_from_the_synthetic_world(synth_world):
    ds = _dataset(synth_world)
    assert len(ds) == 16  # two val scenes x 8 keyframes
    batch = collate([ds[i] for i in range(4)])
    f, t = batch.features, batch.targets
    assert f.images.shape == (4, 6, 3, 128, 224) and torch.isfinite(f.images).all()
    assert f.has_prev.tolist() == [0.0, 1.0, 1.0, 1.0]
    assert t.mask.sum() > 20 and t.map_valid.eq(1).all()
    # The ego stands on the road: the BEV cell under the rear axle is drivable.
    S = t.drivable.shape[-1]
    assert t.drivable[:, S // 2, S // 2].eq(1).all()
    # Vehicles stand on drivable cells too (their centres, in the ego frame, index the raster).
    res = 2 * 51.2 / S
    on = []
    for b in range(4):
        for box, lab, m in zip(t.boxes[b], t.labels[b], t.mask[b]):
            if m and CLASSES[int(lab)] in ("car", "bus", "truck") and abs(box[0]) < 50 and abs(box[1]) < 50:
                c, r = int((box[0] + 51.2) / res), int((box[1] + 51.2) / res)
                on.append(float(t.drivable[b, r, c]))
    assert len(on) > 10 and np.mean(on) > 0.9
    # Ego future is in the ego frame: the first waypoint lies ahead at about speed * 0.5 s.
    speed = f.ego_status[:, 0]
    x1 = t.ego_future[:, 0, 0]
    moving = speed > 2
    assert moving.any()
    assert torch.allclose(x1[moving], speed[moving] * 0.5, rtol=0.35, atol=0.5)


def test_box_centres_project_into_the_camera_that_sees_them(synth_world):
    ds = _dataset(synth_world)
    feats, targets, _ = ds[5]
    hits = 0
    for box, m in zip(targets.boxes, targets.mask):
        if not m or box[0] < 5 or abs(box[1]) > 0.3 * box[0]:  # well inside CAM_FRONT's view
            continue
        p = feats.ego2img[0] @ torch.tensor([box[0], box[1], box[2], 1.0])
        u, v = p[0] / p[2], p[1] / p[2]
        assert 0 <= u < 224 and 0 <= v < 128
        hits += 1
    assert hits > 0
