"""``NuScenesDrivingDataset``: the keyframes of a split as (Features, Targets, SampleMeta), plus ``collate``.

The devkit is opened once in ``__init__``; every keyframe is then reduced to a plain
``SampleRecord`` (ego frame, numpy arrays) and the ``NuScenes`` object is dropped, so the data set
pickles cheaply into DataLoader workers and ``__getitem__`` only decodes images (or reads them
from the on-disk cache), rasterises the map and pads. Records are stored serialised in one
buffer, so forked workers do not copy them page by page through reference counting.
"""
from __future__ import annotations

import logging
import os
import pickle
from dataclasses import fields, replace
from typing import Mapping, Optional, Sequence, Union

import numpy as np
import torch
from nuscenes import NuScenes
from torch.utils.data import Dataset

from drive.types import Batch, Features, SampleMeta, Targets

from .augment import AugmentConfig, BevAug, sample_image_aug, warp_image
from .bev_map import DrivableMap
from .errors import DataError
from .features import build_features, read_cameras, read_ego_track
from .image_cache import ImageCache
from .nusc import open_nuscenes, resolve_data_path, scenes_of_split
from .records import AnnotationRecord, SampleRecord
from .targets import DEFAULT_MAX_OBJECTS, AnnotationTable, build_targets, ego_trajectory, read_annotations

log = logging.getLogger(__name__)

Item = tuple[Features, Optional[Targets], SampleMeta]


def index_samples(nusc: NuScenes, scene_tokens: Sequence[str], with_targets: bool = True,
                  max_distance: Optional[float] = None,
                  table: Optional[AnnotationTable] = None) -> list[SampleRecord]:
    """One ``SampleRecord`` per keyframe of the scenes, scene by scene, in temporal order."""
    if with_targets and table is None:
        table = AnnotationTable.from_nusc(nusc)
    records, memo = [], {}
    for scene_token in scene_tokens:
        scene = nusc.get("scene", scene_token)
        map_rec = nusc.get("map", nusc.get("log", scene["log_token"])["map_token"])
        map_file = resolve_data_path(nusc.dataroot, map_rec["filename"]) if map_rec.get("filename") else ""
        token = scene["first_sample_token"]
        while token:
            try:
                sample = nusc.get("sample", token)
                track = read_ego_track(nusc, sample, memo)
                ann = read_annotations(nusc, table, token, track, max_distance) if with_targets else None
                cameras = read_cameras(nusc, sample, track.current)
            except KeyError as e:
                where = f"{nusc.dataroot}/{nusc.version}"
                raise DataError(f"inconsistent tables in {where}: token {e} not found while indexing sample "
                                f"{token} of scene {scene['name']}", where) from e
            records.append(SampleRecord(
                sample_token=token, scene_token=scene_token, prev_token=sample["prev"],
                timestamp=int(sample["timestamp"]), cameras=cameras, track=track, map_file=map_file,
                annotations=ann))
            token = sample["next"]
    return records


class NuScenesDrivingDataset(Dataset):
    """Keyframes of a nuScenes-format split as ``(Features, Targets | None, SampleMeta)`` without batch dim.

    Options:
      root, version, split: the data (``split=None``: every scene; names via ``scenes_of_split``).
      image_size: network input ``(H, W)``; every image is resized to it (``img_aug`` folds it in).
      image_crop_top: fraction of the resized image's rows cut from the top (0: none; see ``ImageCache``).
      bev_range, map_size: BEV square ``[-range, range]`` m and the drivable raster's cells per side.
      max_objects, box_margin: padding size; boxes with ``|x|`` or ``|y| > bev_range + box_margin`` dropped.
      augment: ``AugmentConfig`` (or a mapping of its fields); ``enabled`` for training. The image side is
        drawn per keyframe from ``(seed, epoch, index)``, the scene side (``BevAug``) from
        ``(seed, epoch, anchor)``: a key ``(index, epoch, anchor)`` lets a temporal queue share one scene
        augmentation (the current frame's index as every history frame's anchor, as BEVDet4D does), so
        the frames' BEV maps stay in one handedness and one rotation.
      with_targets: False -> targets are None and annotations are never read.
      skip_bad_samples: False -> a missing / corrupt image raises ``DataError`` naming the file;
        True -> the failure is logged (once per sample) and the nearest good keyframe is returned instead.
      cache_dir: where decoded images (``<H>x<W>/<sd_token>.npy``) and downsampled maps go
        (default ``<root>/.drive_cache``); cache_images=False decodes every time.
      map_resolution: m/px of the in-memory downsampled map masks.
      nusc: an already opened ``NuScenes`` for this root / version (shared between splits).
    """

    def __init__(
        self,
        root: str,
        version: str = "v1.0-mini",
        split: Optional[str] = "mini_train",
        image_size: Sequence[int] = (256, 704),
        image_crop_top: float = 0.0,
        bev_range: float = 51.2,
        map_size: int = 200,
        max_objects: int = DEFAULT_MAX_OBJECTS,
        box_margin: float = 0.0,
        augment: Union[AugmentConfig, Mapping, None] = None,
        with_targets: bool = True,
        skip_bad_samples: bool = False,
        cache_dir: Optional[str] = None,
        cache_images: bool = True,
        map_resolution: float = 0.25,
        nusc: Optional[NuScenes] = None,
        annotation_table: Optional[AnnotationTable] = None,
    ):
        self.root = os.path.abspath(os.path.expanduser(str(root)))
        self.version, self.split = version, split
        self.image_size = (int(image_size[0]), int(image_size[1]))
        self.bev_range, self.map_size = float(bev_range), int(map_size)
        self.max_objects, self.box_margin = int(max_objects), float(box_margin)
        aug = augment if isinstance(augment, AugmentConfig) else AugmentConfig(**dict(augment or {}))
        self.augment = replace(aug, image_scale=tuple(aug.image_scale))
        self.with_targets, self.skip_bad_samples = bool(with_targets), bool(skip_bad_samples)
        self.cache_dir = os.path.abspath(cache_dir) if cache_dir else os.path.join(self.root, ".drive_cache")
        self.epoch = 0

        if nusc is None:
            nusc = open_nuscenes(self.root, version)
        # Farther boxes can never enter the BEV square, whatever the rotation augmentation.
        max_distance = np.sqrt(2.0) * (self.bev_range + self.box_margin) + 1.0
        records = index_samples(nusc, scenes_of_split(nusc, split), self.with_targets, max_distance, annotation_table)
        blobs = [pickle.dumps(r, protocol=pickle.HIGHEST_PROTOCOL) for r in records]
        self._offsets = np.cumsum([0] + [len(b) for b in blobs]).astype(np.int64)
        self._buffer = np.frombuffer(b"".join(blobs), dtype=np.uint8)

        self.images = ImageCache(self.image_size, self.cache_dir if cache_images else None, image_crop_top)
        self.maps = DrivableMap(map_resolution, self.cache_dir)
        if self.with_targets:
            for map_file in sorted({r.map_file for r in records}):
                self.maps.prepare(map_file)
        self._reported_bad: set[int] = set()

    def __len__(self) -> int:
        return len(self._offsets) - 1

    def record(self, index: int) -> SampleRecord:
        lo, hi = self._offsets[index], self._offsets[index + 1]
        return pickle.loads(self._buffer[lo:hi].tobytes())

    def set_epoch(self, epoch: int) -> None:
        """Epoch used for the augmentation seed when items are asked for by plain index."""
        self.epoch = int(epoch)

    def _rng(self, index: int, epoch: int, stream: int) -> np.random.Generator:
        if self.augment.seed is None:
            return np.random.default_rng()
        return np.random.default_rng([int(self.augment.seed), int(epoch), int(index), stream])

    def __getitem__(self, key: Union[int, tuple[int, ...]]) -> Item:
        """``index``, ``(index, epoch)`` or ``(index, epoch, anchor)`` (see ``augment`` in the class doc)."""
        if isinstance(key, (tuple, list)):
            index, epoch = int(key[0]), int(key[1])
            anchor = int(key[2]) if len(key) > 2 else None
        else:
            index, epoch, anchor = int(key), self.epoch, None
        if index < 0:
            index += len(self)
        if not self.skip_bad_samples:
            return self.load(index, epoch, anchor)
        n = len(self)
        for k in range(2 * n):
            j = index + (k + 1) // 2 * (1 if k % 2 else -1)  # index, index+1, index-1, index+2, ...
            if not 0 <= j < n:
                continue
            try:
                return self.load(j, epoch, anchor)
            except DataError as e:
                if j not in self._reported_bad:
                    self._reported_bad.add(j)
                    log.warning("skipping bad sample %d (%s): %s", j, self.record(j).sample_token, e)
        raise DataError(f"no readable sample in {self.root} ({self.version}, split {self.split})", self.root)

    def load(self, index: int, epoch: int = 0, anchor: Optional[int] = None) -> Item:
        """The item at ``index`` (scene augmentation drawn for ``anchor``, default ``index``); a bad image
        raises ``DataError``."""
        rec = self.record(index)
        aug = self.augment if self.augment.enabled else None
        rng = self._rng(index, epoch, 0) if aug else None
        bev = BevAug.sample(self._rng(index if anchor is None else anchor, epoch, 1), aug) if aug else None
        images, img_aug = [], []
        for cam in rec.cameras:
            img, resize = self.images.load(cam)
            if rng is not None:
                M = sample_image_aug(rng, aug, self.image_size)
                img, resize = warp_image(img, M), M @ resize
            images.append(img)
            img_aug.append(resize)
        features = build_features(rec.cameras, rec.track, np.stack(images), np.stack(img_aug))
        global_T_ego = rec.global_T_ego
        if bev is not None:
            features = bev.features(features)
            global_T_ego = bev.global_T_ego(global_T_ego)

        targets = None
        if self.with_targets:
            ann = rec.annotations if rec.annotations is not None else AnnotationRecord.empty()
            ego = ego_trajectory(rec.track)
            if bev is not None:
                ann, ego = bev.annotations(ann), bev.trajectory(ego)
            # Rasterising with the augmented pose equals warping the raster by A (one resampling instead of two).
            drivable, valid = self.maps.rasterize(rec.map_file, global_T_ego, self.bev_range, self.map_size)
            targets = build_targets(ann, ego, drivable, valid, self.bev_range, self.max_objects, self.box_margin)

        meta = SampleMeta(sample_token=rec.sample_token, scene_token=rec.scene_token, prev_token=rec.prev_token,
                          timestamp=rec.timestamp, global_T_ego=global_T_ego.tolist())
        return features, targets, meta


def _stack(items: list, cls):
    return cls(**{f.name: torch.stack([getattr(x, f.name) for x in items]) for f in fields(cls)})


def collate(items: list[Item]) -> Batch:
    """Stack a list of dataset items into a ``Batch`` (leading batch dim); targets None if any item has none."""
    feats = _stack([it[0] for it in items], Features)
    targets = None if any(it[1] is None for it in items) else _stack([it[1] for it in items], Targets)
    return Batch(feats, targets, [it[2] for it in items])
