"""Temporal training data: each training item carries its previous keyframes (BEVFormer's queue).

Choice (documented in the README): a *history queue* rather than streaming scenes through the
batch. Training item ``i`` is ``(history, current)`` where ``history`` holds the ``history_frames``
keyframes that precede ``i`` in its scene (oldest first, ``None`` before the scene start). The
system computes their BEV without gradient, in eval mode, chaining each into the next, and feeds
the last one to the current frame as ``prev_bev`` (BEVFormer's ``obtain_history_bev`` with
``queue_length = history_frames + 1``). Items stay independent, so the sampler can shuffle and a
mid-epoch resume needs nothing but the sampler position (no carried BEV state to checkpoint).
A frame whose predecessor is missing (scene start) gets ``prev_bev = 0`` and ``has_prev = 0``.

Augmentation: the history frames share the current item's scene augmentation ``ego' = A ego``
(drawn for the current index: the dataset's ``anchor``), as BEVDet4D does, so a mirrored or
rotated current frame never meets a previous BEV of the other handedness or rotation; image-side
augmentation stays per frame. The link between two frames is recomputed from the augmented poses in
``SampleMeta.global_T_ego`` (``global_T_ego A^-1``): ``prev_T_cur = inv(G_prev') @ G_cur' =
A inv(G_prev) G_cur inv(A)``, the map from the current augmented frame into the frame the previous
BEV was computed in.

``ResumableSampler`` shards by DDP rank itself (``use_distributed_sampler=False`` in the trainer)
and can skip the first ``n`` items of one epoch: ``TemporalDataModule`` counts the batches the
training loop consumed and saves ``(epoch, consumed)`` in the checkpoint, so a run resumed from a
mid-epoch ``last.ckpt`` continues with exactly the batches an uninterrupted run would see.
"""
from __future__ import annotations

import copy
import math
from dataclasses import dataclass, replace
from typing import Iterator, Mapping, Optional, Sequence

import lightning as L
import numpy as np
import torch
import torch.distributed as dist
from torch.utils.data import DataLoader, Dataset, Sampler, SequentialSampler

from drive.data.datamodule import DrivingDataModule
from drive.data.dataset import Item, NuScenesDrivingDataset, collate
from drive.types import Batch, Features, SampleMeta


def _world() -> tuple[int, int]:
    if dist.is_available() and dist.is_initialized():
        return dist.get_world_size(), dist.get_rank()
    return 1, 0


class ResumableSampler(Sampler):
    """``(index, epoch)`` pairs like ``EpochSampler`` (same seeded order), sharded by rank, resumable.

    Order: ``randperm`` seeded by ``seed * 100_003 + epoch`` (shuffle) or ``0..n-1``; padded by
    wrapping to a multiple of the world size; rank ``r`` takes ``order[r::world]``.
    ``resume(epoch, skip)``: the next iteration over ``epoch`` starts after its first ``skip`` items.
    ``repeats`` (one count >= 1 per item): item ``i`` appears ``repeats[i]`` times per epoch (oversampling);
    copy ``c > 0`` is keyed with epoch ``epoch + c * REPEAT_EPOCH_STRIDE`` so it draws its own augmentation.
    """

    REPEAT_EPOCH_STRIDE = 1_000_003

    def __init__(self, n: int, shuffle: bool, seed: int, repeats: Optional[Sequence[int]] = None):
        if seed is None:
            raise ValueError("ResumableSampler needs a seed (set data.augment.seed) for a reproducible order")
        n = int(n)
        reps = np.ones(n, np.int64) if repeats is None else np.asarray(repeats, np.int64).reshape(-1)
        if len(reps) != n or (n and reps.min() < 1):
            raise ValueError(f"repeats must hold one count >= 1 per item ({n} items), got {len(reps)} counts "
                             f"with minimum {reps.min() if len(reps) else None}")
        # (item, copy) of every slot of an epoch; without repeats the slots are 0..n-1, copy 0
        self._items = np.repeat(np.arange(n), reps)
        self._copies = np.concatenate([np.arange(r) for r in reps]) if n else np.zeros(0, np.int64)
        self.n, self.shuffle, self.seed, self.epoch = len(self._items), bool(shuffle), int(seed), 0
        self._resume: Optional[tuple[int, int]] = None

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def resume(self, epoch: int, skip: int) -> None:
        self._resume = (int(epoch), int(skip))

    def _order(self) -> list[int]:
        if self.shuffle:
            g = torch.Generator()
            g.manual_seed(self.seed * 100_003 + self.epoch)
            order = torch.randperm(self.n, generator=g).tolist()
        else:
            order = list(range(self.n))
        world, rank = _world()
        total = math.ceil(self.n / world) * world
        order = (order * (total // max(self.n, 1) + 1))[:total] if self.n else []
        return order[rank::world]

    def __len__(self) -> int:
        return math.ceil(self.n / _world()[0])

    def __iter__(self) -> Iterator[tuple[int, int]]:
        mine = self._order()
        if self._resume is not None and self._resume[0] == self.epoch:
            mine = mine[self._resume[1]:]
        self._resume = None
        stride = self.REPEAT_EPOCH_STRIDE
        return iter([(int(self._items[j]), self.epoch + int(self._copies[j]) * stride) for j in mine])


class HistoryDataset(Dataset):
    """Item ``(index, epoch)`` -> ``(history, current)``; ``history`` lists ``history_frames`` entries,
    oldest first, each the dataset item of a preceding keyframe of the same scene or ``None``.

    History frames are loaded from a view of the data set without targets (they only feed the BEV).
    """

    def __init__(self, base: NuScenesDrivingDataset, history_frames: int = 1):
        if history_frames < 0:
            raise ValueError(f"history_frames must be >= 0, got {history_frames}")
        self.base, self.history_frames = base, int(history_frames)
        self.features_only = copy.copy(base)  # shares the record buffer; documented switch
        self.features_only.with_targets = False
        index_of = {}
        prev_tokens = []
        for i in range(len(base)):
            rec = base.record(i)
            index_of[rec.sample_token] = i
            prev_tokens.append(rec.prev_token)
        self.prev_index = np.array([index_of.get(t, -1) if t else -1 for t in prev_tokens], np.int64)

    def __len__(self) -> int:
        return len(self.base)

    def history_indices(self, index: int) -> list[int]:
        """Indices of the preceding keyframes, oldest first, -1 where the scene has none."""
        out, j = [], index
        for _ in range(self.history_frames):
            j = int(self.prev_index[j]) if j >= 0 else -1
            out.append(j)
        return out[::-1]

    def __getitem__(self, key: tuple[int, int]) -> tuple[list[Optional[Item]], Item]:
        index, epoch = (int(key[0]), int(key[1])) if isinstance(key, (tuple, list)) else (int(key), self.base.epoch)
        current = self.base[(index, epoch)]
        history = [self.features_only[(j, epoch, index)] if j >= 0 else None for j in self.history_indices(index)]
        return history, current


def relative_pose(prev_meta: SampleMeta, cur_meta: SampleMeta) -> np.ndarray:
    """``prev_T_cur`` between two (augmented) ego frames from their ``global_T_ego``."""
    return np.linalg.inv(np.asarray(prev_meta.global_T_ego, np.float64)) @ np.asarray(cur_meta.global_T_ego, np.float64)


@dataclass
class HistoryFrame:
    """One slot of the history queue, batched: placeholders (copies of the current frame) where ``valid`` is 0."""

    features: Features  # (B, ...); its prev_T_cur links it to the previous slot
    valid: torch.Tensor  # (B,) float32

    def to(self, device) -> "HistoryFrame":
        return HistoryFrame(self.features.to(device), self.valid.to(device))


@dataclass
class TemporalBatch:
    """``history`` (oldest first) + the current ``Batch``; ``current.features.prev_T_cur`` links to ``history[-1]``."""

    history: list  # list[HistoryFrame]
    current: Batch

    def to(self, device) -> "TemporalBatch":
        return TemporalBatch([h.to(device) for h in self.history], self.current.to(device))

    def __len__(self) -> int:
        return self.current.features.images.shape[0]


def collate_history(items: list[tuple[list[Optional[Item]], Item]]) -> TemporalBatch:
    """Batch ``HistoryDataset`` items; recompute every link ``prev_T_cur`` from the augmented poses."""
    k = len(items[0][0])
    frames = []
    for slot in range(k):
        feats, valid = [], []
        for history, current in items:
            it = history[slot]
            if it is None:
                feats.append(replace(current[0], has_prev=torch.zeros(()), prev_T_cur=torch.eye(4)))
                valid.append(0.0)
                continue
            prev = history[slot - 1] if slot > 0 else None
            f = it[0]
            if prev is not None:
                f = replace(f, prev_T_cur=torch.as_tensor(relative_pose(prev[2], it[2]), dtype=torch.float32))
            else:  # the oldest slot (or a scene start): no BEV before it
                f = replace(f, has_prev=torch.zeros(()), prev_T_cur=torch.eye(4))
            feats.append(f)
            valid.append(1.0)
        frames.append(HistoryFrame(Features(**{n: torch.stack([getattr(x, n) for x in feats])
                                                for n in Features.__dataclass_fields__}),
                                   torch.tensor(valid, dtype=torch.float32)))
    current_items = []
    for history, (f, t, m) in items:
        last = history[-1] if k else None
        if last is not None:
            f = replace(f, prev_T_cur=torch.as_tensor(relative_pose(last[2], m), dtype=torch.float32))
        current_items.append((f, t, m))
    return TemporalBatch(frames, collate(current_items))


class TemporalDataModule(L.LightningDataModule):
    """Wraps a ``DrivingDataModule``: training items with their history queue and a resumable,
    rank-sharded sampler; validation in temporal order, one frame per batch (the system carries
    the previous BEV from step to step)."""

    def __init__(self, data: DrivingDataModule, history_frames: int = 1,
                 repeat_scenes: Optional[Mapping[str, int]] = None):
        super().__init__()
        if not isinstance(data, DrivingDataModule):
            raise TypeError(f"TemporalDataModule wraps a DrivingDataModule, got {type(data).__name__}")
        if data.config.augment.seed is None:
            raise ValueError("data.augment.seed must be set: training order and augmentation are seeded")
        self.data, self.history_frames = data, int(history_frames)
        self.repeat_scenes = {str(k): int(v) for k, v in (repeat_scenes or {}).items()}
        bad = {k: v for k, v in self.repeat_scenes.items() if v < 1}
        if bad:
            raise ValueError(f"temporal.repeat_scenes: repeat counts must be >= 1, got {bad}")
        self.train_set: Optional[HistoryDataset] = None
        self._epoch, self._consumed = -1, 0
        self._resume: Optional[tuple[int, int]] = None

    @property
    def config(self):
        return self.data.config

    @property
    def val_set(self) -> Optional[NuScenesDrivingDataset]:
        return self.data.val_set

    def prepare_data(self) -> None:
        self.data.prepare_data()

    def setup(self, stage: Optional[str] = None) -> None:
        self.data.setup(stage)
        if self.data.train_set is not None and self.train_set is None:
            self.train_set = HistoryDataset(self.data.train_set, self.history_frames)

    def repeats(self) -> Optional[np.ndarray]:
        """Per train item: how often it appears per epoch (``repeat_scenes``: scene-name prefix -> count; the
        largest matching count wins, unmatched scenes appear once). ``None`` without ``repeat_scenes``."""
        if not self.repeat_scenes:
            return None
        names = self.data.train_scene_names
        if len(names) != len(self.train_set):
            raise RuntimeError("temporal.repeat_scenes needs the scene name of every train item (DrivingDataModule.setup)")
        return np.array([max([v for k, v in self.repeat_scenes.items() if n.startswith(k)], default=1) for n in names])

    def train_dataloader(self) -> DataLoader:
        if self.train_set is None:
            self.setup("fit")
        c = self.config
        sampler = ResumableSampler(len(self.train_set), shuffle=True, seed=c.augment.seed, repeats=self.repeats())
        if self._resume is not None:
            # Lightning creates the first iterator before it calls set_epoch (and, on resume, before it restores
            # the loops), and workers prefetch indices right then: set the resumed epoch here.
            epoch, consumed = self._resume
            sampler.set_epoch(epoch)
            sampler.resume(epoch, consumed * c.batch_size)
            self._resume = None
        return DataLoader(self.train_set, batch_size=c.batch_size, sampler=sampler, num_workers=c.num_workers,
                          persistent_workers=c.persistent_workers and c.num_workers > 0, pin_memory=c.pin_memory,
                          collate_fn=collate_history, drop_last=c.drop_last)

    def val_dataloader(self) -> DataLoader | list:
        if self.config.val_split is None:
            return []
        if self.data.val_set is None:
            self.data.setup("validate")
        c = self.config
        # Batch size 1 in temporal order: each frame receives the BEV of the frame before it.
        return DataLoader(self.data.val_set, batch_size=1, sampler=SequentialSampler(self.data.val_set),
                          num_workers=c.num_workers, persistent_workers=c.persistent_workers and c.num_workers > 0,
                          pin_memory=c.pin_memory, collate_fn=collate)

    def transfer_batch_to_device(self, batch, device: torch.device, dataloader_idx: int):
        return batch.to(device)

    # ------------------------------------------------------------------ resume bookkeeping

    def on_before_batch_transfer(self, batch, dataloader_idx: int):
        """Count the training batches the loop has actually taken (not those prefetched)."""
        trainer = self.trainer
        if trainer is not None and trainer.training:
            if trainer.current_epoch != self._epoch:
                self._epoch, self._consumed = trainer.current_epoch, 0
            self._consumed += 1
        return batch

    def state_dict(self) -> dict:
        """Where the training stream stands: the next batch is batch ``consumed_batches`` of ``epoch``
        (``epoch_done``: the epoch was complete, the next batch is the first of ``epoch + 1``)."""
        trainer = self.trainer
        per_epoch = trainer.num_training_batches if trainer is not None else float("inf")
        done = self._epoch >= 0 and per_epoch not in (0, float("inf")) and self._consumed >= per_epoch
        return {"epoch": int(self._epoch), "consumed_batches": int(self._consumed), "epoch_done": bool(done)}

    def load_state_dict(self, state_dict: dict) -> None:
        self._epoch, self._consumed = int(state_dict["epoch"]), int(state_dict["consumed_batches"])
        if state_dict.get("epoch_done", False):
            self._resume = (self._epoch + 1, 0)
        elif self._epoch >= 0:
            self._resume = (self._epoch, self._consumed)
