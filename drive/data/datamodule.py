"""``DrivingDataModule``: train / val DataLoaders over a nuScenes-format root.

Hydra wiring (lead): ``_target_: drive.data.datamodule.DrivingDataModule`` with ``root``,
``version``, ``train_split``, ``val_split`` and any other ``DataConfig`` field as keyword arguments
(``augment`` may be a mapping of ``AugmentConfig`` fields).
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields, replace
from typing import Any, Iterator, Optional

import lightning as L
import torch
from torch.utils.data import DataLoader, Sampler

from drive.types import Batch

from .augment import AugmentConfig
from .dataset import NuScenesDrivingDataset, collate
from .nusc import open_nuscenes
from .targets import AnnotationTable


@dataclass
class DataConfig:
    root: str = "data/nuscenes"
    version: str = "v1.0-mini"
    train_split: Optional[str] = "mini_train"
    val_split: Optional[str] = "mini_val"
    image_size: tuple[int, int] = (256, 704)  # (H, W) network input
    image_crop_top: float = 0.0  # fraction of the resized image cut from the top (the model's preprocessing)
    bev_range: float = 51.2
    map_size: int = 200
    max_objects: int = 200
    box_margin: float = 0.0
    augment: AugmentConfig = field(default_factory=lambda: AugmentConfig(enabled=True))  # train only
    with_targets: bool = True
    skip_bad_samples: bool = False
    cache_dir: Optional[str] = None  # default <root>/.drive_cache
    cache_images: bool = True
    map_resolution: float = 0.25
    batch_size: int = 2
    val_batch_size: Optional[int] = None  # default batch_size
    num_workers: int = 2
    persistent_workers: bool = True
    pin_memory: bool = False
    drop_last: bool = False


class EpochSampler(Sampler):
    """Yields ``(index, epoch)`` so each item's augmentation depends on (seed, epoch, index) only,
    whatever worker loads it; shuffles with a generator seeded by ``(seed, epoch)`` when given a seed.
    Lightning calls ``set_epoch`` at every epoch start."""

    def __init__(self, n: int, shuffle: bool, seed: Optional[int] = None):
        self.n, self.shuffle, self.seed, self.epoch = n, shuffle, seed, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return self.n

    def __iter__(self) -> Iterator[tuple[int, int]]:
        if self.shuffle:
            g = torch.Generator()
            g.manual_seed(int(torch.empty((), dtype=torch.int64).random_().item()) if self.seed is None
                          else self.seed * 100_003 + self.epoch)
            order = torch.randperm(self.n, generator=g).tolist()
        else:
            order = range(self.n)
        return iter([(i, self.epoch) for i in order])


def _as_config(config: Optional[DataConfig], overrides: dict) -> DataConfig:
    cfg = config or DataConfig()
    known = {f.name for f in fields(DataConfig)}
    unknown = set(overrides) - known
    if unknown:
        raise TypeError(f"unknown data option(s): {', '.join(sorted(unknown))}")
    if "augment" in overrides and not isinstance(overrides["augment"], AugmentConfig):
        overrides["augment"] = replace(cfg.augment, **dict(overrides["augment"] or {}))
    if "image_size" in overrides:
        overrides["image_size"] = tuple(int(v) for v in overrides["image_size"])
    return replace(cfg, **overrides)


class DrivingDataModule(L.LightningDataModule):
    """Train / val loaders of ``NuScenesDrivingDataset``; the devkit is opened once for both splits."""

    def __init__(self, config: Optional[DataConfig] = None, **overrides: Any):
        super().__init__()
        self.config = _as_config(config, dict(overrides))
        self.train_set: Optional[NuScenesDrivingDataset] = None
        self.val_set: Optional[NuScenesDrivingDataset] = None
        self.train_scene_names: list[str] = []  # scene name of every train item (set by ``setup``)

    def _dataset(self, split: Optional[str], train: bool, nusc, table) -> NuScenesDrivingDataset:
        c = self.config
        return NuScenesDrivingDataset(
            root=c.root, version=c.version, split=split, image_size=c.image_size, image_crop_top=c.image_crop_top,
            bev_range=c.bev_range,
            map_size=c.map_size, max_objects=c.max_objects, box_margin=c.box_margin,
            augment=c.augment if train else replace(c.augment, enabled=False), with_targets=c.with_targets,
            skip_bad_samples=c.skip_bad_samples, cache_dir=c.cache_dir, cache_images=c.cache_images,
            map_resolution=c.map_resolution, nusc=nusc, annotation_table=table)

    def setup(self, stage: Optional[str] = None) -> None:
        want_train = stage in (None, "fit") and self.train_set is None
        want_val = self.val_set is None and self.config.val_split is not None
        if not (want_train or want_val):
            return
        nusc = open_nuscenes(self.config.root, self.config.version)
        table = AnnotationTable.from_nusc(nusc) if self.config.with_targets else None
        if want_train:
            self.train_set = self._dataset(self.config.train_split, True, nusc, table)
            self.train_scene_names = [nusc.get("scene", self.train_set.record(i).scene_token)["name"]
                                      for i in range(len(self.train_set))]
        if want_val:
            self.val_set = self._dataset(self.config.val_split, False, nusc, table)

    def _loader(self, ds: NuScenesDrivingDataset, train: bool) -> DataLoader:
        c = self.config
        return DataLoader(
            ds, batch_size=c.batch_size if train else (c.val_batch_size or c.batch_size),
            sampler=EpochSampler(len(ds), shuffle=train, seed=c.augment.seed), num_workers=c.num_workers,
            persistent_workers=c.persistent_workers and c.num_workers > 0, pin_memory=c.pin_memory,
            collate_fn=collate, drop_last=c.drop_last and train)

    def train_dataloader(self) -> DataLoader:
        if self.train_set is None:
            self.setup("fit")
        return self._loader(self.train_set, train=True)

    def val_dataloader(self) -> DataLoader | list:
        if self.config.val_split is None:
            return []  # Lightning: no validation
        if self.val_set is None:
            self.setup("validate")
        return self._loader(self.val_set, train=False)

    def transfer_batch_to_device(self, batch: Batch, device: torch.device, dataloader_idx: int) -> Batch:
        return batch.to(device)

    def hparams_dict(self) -> dict:
        """The resolved config as a plain dict (to save next to checkpoints)."""
        return asdict(self.config)
