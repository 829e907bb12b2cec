"""Data set plumbing: collate, workers, image cache, bad images, DataModule, inspect."""
import json
import logging
import os
import pickle
import re

import numpy as np
import pytest
import torch
from fixtures.realformat import SCENE_NAME, VERSION
from torch.utils.data import DataLoader

import drive.data.image_cache as image_cache
from drive.data.datamodule import DrivingDataModule
from drive.data.dataset import NuScenesDrivingDataset, collate
from drive.data.errors import DataError
from drive.data.inspect import inspect_root
from drive.types import Batch

HW = (45, 80)


def test_collate_shapes(realformat_root, tmp_path):
    ds = NuScenesDrivingDataset(realformat_root.root, VERSION, "mini_train", image_size=HW, max_objects=16,
                                map_size=32, cache_dir=str(tmp_path))
    b = collate([ds[0], ds[1], ds[2]])
    assert isinstance(b, Batch) and len(b.meta) == 3
    f, t = b.features, b.targets
    assert f.images.shape == (3, 6, 3, *HW) and f.images.dtype == torch.float32
    assert f.intrinsics.shape == (3, 6, 3, 3) and f.ego2img.shape == (3, 6, 4, 4)
    assert f.ego_status.shape == (3, 3) and f.command.shape == (3,) and f.command.dtype == torch.int64
    assert f.prev_T_cur.shape == (3, 4, 4) and f.has_prev.tolist() == [0, 1, 1]
    assert t.boxes.shape == (3, 16, 9) and t.mask.dtype == torch.bool and t.past.shape == (3, 16, 4, 2)
    assert t.future.shape == (3, 16, 6, 2) and t.ego_future.shape == (3, 6, 2) and t.drivable.shape == (3, 32, 32)
    assert t.map_valid.shape == (3,)
    assert b.to("cpu").features.images.shape == f.images.shape
    assert collate([ds[0]]).features.images.abs().mean() > 0.1  # normalised, not all zeros


def test_dataloader_with_two_workers(realformat_root, tmp_path):
    ds = NuScenesDrivingDataset(realformat_root.root, VERSION, None, image_size=HW, cache_dir=str(tmp_path))
    assert len(pickle.dumps(ds)) < 200_000
    loader = DataLoader(ds, batch_size=2, num_workers=2, collate_fn=collate)
    batches = list(loader)
    assert [len(b.meta) for b in batches] == [2, 2]
    assert [m.sample_token for b in batches for m in b.meta] == realformat_root.sample_tokens  # temporal order


def test_image_cache_hit_returns_identical_arrays(realformat_root, tmp_path, monkeypatch):
    ds = NuScenesDrivingDataset(realformat_root.root, VERSION, None, image_size=HW, cache_dir=str(tmp_path))
    first = ds[1][0].images
    token = realformat_root.camera_sd_tokens[(1, "CAM_FRONT")]
    entry = tmp_path / f"{HW[0]}x{HW[1]}" / f"{token}.npy"
    assert entry.is_file() and np.load(entry).shape == (*HW, 3)
    assert not any(p.suffix == ".tmp" for p in entry.parent.iterdir())

    def no_decode(path):
        raise AssertionError(f"decoded {path} despite the cache")

    monkeypatch.setattr(image_cache, "decode_image", no_decode)
    torch.testing.assert_close(ds[1][0].images, first, rtol=0, atol=0)
    other = NuScenesDrivingDataset(realformat_root.root, VERSION, None, image_size=(40, 80), cache_dir=str(tmp_path))
    with pytest.raises(AssertionError, match="despite the cache"):  # another size is another key
        other[1]


def test_missing_and_corrupt_images_raise_naming_the_file(fresh_realformat_root):
    info = fresh_realformat_root
    missing, corrupt = info.camera_files[(1, "CAM_BACK")], info.camera_files[(2, "CAM_FRONT_LEFT")]
    os.remove(missing)
    with open(corrupt, "r+b") as fh:  # keep the JPEG header, drop the rest
        fh.truncate(300)
    ds = NuScenesDrivingDataset(info.root, VERSION, None, image_size=HW)
    with pytest.raises(DataError, match="missing image file") as e:
        ds[1]
    assert e.value.where == missing and str(e.value).count("\n") == 0
    with pytest.raises(DataError, match="corrupt image file") as e:
        ds[2]
    assert e.value.where == corrupt
    with open(corrupt, "wb") as fh:
        fh.write(b"not a jpeg at all")
    with pytest.raises(DataError, match=re.escape(os.path.basename(corrupt))):
        ds[2]


def test_skip_bad_samples_logs_and_continues(fresh_realformat_root, caplog):
    info = fresh_realformat_root
    os.remove(info.camera_files[(1, "CAM_BACK")])
    ds = NuScenesDrivingDataset(info.root, VERSION, None, image_size=HW, skip_bad_samples=True)
    with caplog.at_level(logging.WARNING):
        _, _, meta = ds[1]
        ds[1]
    assert meta.sample_token == info.sample_tokens[2]  # the next good keyframe
    assert sum("skipping bad sample 1" in r.getMessage() for r in caplog.records) == 1
    assert len(list(DataLoader(ds, batch_size=4, collate_fn=collate))[0].meta) == 4


def test_datamodule_loaders(fresh_realformat_root):
    root = fresh_realformat_root.root
    with open(os.path.join(root, VERSION, "splits.json"), "w") as fh:
        json.dump({"train": [SCENE_NAME], "val": [SCENE_NAME]}, fh)  # custom names shadow nothing: devkit first
    dm = DrivingDataModule(root=root, version=VERSION, train_split="mini_train", val_split="mini_train",
                           image_size=[45, 80], batch_size=2, num_workers=0, augment={"seed": 0, "enabled": True},
                           map_size=32)
    dm.setup("fit")
    train = list(dm.train_dataloader())
    val = list(dm.val_dataloader())
    assert len(train) == 2 and len(val) == 2
    assert [m.sample_token for b in val for m in b.meta] == fresh_realformat_root.sample_tokens  # no shuffle
    assert dm.train_set.augment.enabled and not dm.val_set.augment.enabled
    assert dm.hparams_dict()["image_size"] == (45, 80)
    with pytest.raises(TypeError, match="unknown data option"):
        DrivingDataModule(root=root, nonsense=1)


def test_inspect_root_summary_and_picture(realformat_root, tmp_path, capsys):
    out = tmp_path / "inspect.png"
    s = inspect_root(realformat_root.root, VERSION, sample_token=realformat_root.sample_tokens[1], out_png=str(out),
                     image_size=HW)
    assert out.is_file() and out.stat().st_size > 10_000
    assert s["scenes"] == 1 and s["samples"] == 4 and s["pictured_sample"] == realformat_root.sample_tokens[1]
    assert s["boxes_per_class"]["car"] == 4 and s["boxes_per_class"]["pedestrian"] == 3
    assert s["categories"]["static_object.bicycle_rack"] == 4
    assert s["commands"] == {"right": 0, "left": 1, "straight": 3} and s["map_valid_fraction"] == 0.0
    assert s["ego_speed"]["max"] == pytest.approx(5.0, abs=0.05)
    assert "4 keyframes" in capsys.readouterr().out
    with pytest.raises(DataError, match="not a keyframe"):
        inspect_root(realformat_root.root, VERSION, sample_token="nope", out_png=str(out))


def test_datamodule_in_a_lightning_trainer(realformat_root, tmp_path):
    import lightning as L

    seen_epochs = []

    class Tiny(L.LightningModule):
        def __init__(self):
            super().__init__()
            self.head = torch.nn.Linear(3, 2)

        def training_step(self, batch, _):
            assert isinstance(batch, Batch) and batch.targets is not None
            seen_epochs.append(self.current_epoch)
            pred = self.head(batch.features.ego_status)
            return torch.nn.functional.mse_loss(pred, batch.targets.ego_future[:, 0])

        def validation_step(self, batch, _):
            self.log("val", self.head(batch.features.ego_status).sum(), batch_size=len(batch.meta))

        def configure_optimizers(self):
            return torch.optim.SGD(self.parameters(), lr=0.01)

    dm = DrivingDataModule(root=realformat_root.root, version=VERSION, train_split="mini_train", val_split="mini_train",
                           image_size=HW, map_size=16, batch_size=2, num_workers=0,
                           cache_dir=str(tmp_path), augment={"seed": 0})
    trainer = L.Trainer(max_epochs=2, accelerator="cpu", logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False, default_root_dir=str(tmp_path),
                        limit_val_batches=1)
    trainer.fit(Tiny(), datamodule=dm)
    assert seen_epochs == [0, 0, 1, 1]
