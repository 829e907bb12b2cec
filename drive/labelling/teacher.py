"""The offboard teacher: an uploaded clip without annotations in, per-box pseudo-labels with confidence out.

A car must decide from the past alone, at once, in one pass. A labeller in the cloud need not, and that is
where auto-labels beat the edge model (Waymo's offboard auto-labelling, Qi et al. 2021). The teacher runs the
(large) model over the WHOLE clip several times and lets every box be seen by all of them:

1. ``forward``: in time order, the previous keyframe's BEV as ``prev_bev`` (exactly as on the car);
2. ``backward``: in reverse time order, the NEXT keyframe's BEV as ``prev_bev``, with
   ``prev_T_cur = inv(global_T_next) @ global_T_cur`` so the temporal warp is right (``has_prev`` = 1 except
   at the last keyframe); ego status and command stay those of the real (forward) drive;
3. test-time augmentation, ``*_mirror``: each of the above on a y-mirrored world, built exactly as the
   training augmentation builds one (``drive.data.augment.BevAug(flip=True).features``): every image
   flipped horizontally and moved to its mirror twin's camera slot, camera matrices mirrored with it (a BEV
   query at (x, -y) samples the flipped image where (x, y) projects), ``prev_T_cur`` conjugated by the
   mirror, 'left' / 'right' commands swapped, yaw rate negated. Output boxes are mirrored back
   (``mirror_boxes``: y, yaw and vy negated; an involution). A mirrored stream carries its own (mirrored) BEV.

The passes are fused per keyframe and refined as tracks over the clip (``drive.labelling.fusion``). The
velocities of time-reversed passes are not used by default (``backward_velocity``): a model that reads motion
off the BEV change would see it reversed. Optionally every final box gets the number of ``LIDAR_TOP``
keyframe points inside it (devkit ``points_in_box``, -1 when the lidar file is absent, a real nuScenes quirk);
``lidar_gate`` (off by default) then also drops tracks none of whose counted boxes contains a point. The
sensor is used for labelling only, never by the model.

Each keyframe also gets a review score in [0, 1] for the human queue: the mean of (a) the share of its final
boxes whose confidence falls in ``review_band`` and (b) the mean share of passes that missed each fused box;
the reason names the bigger of the two.

With ``maps_dir`` the teacher also keeps, per keyframe, what the edge model can be distilled from
(``drive.data.teacher_maps``): its BEV features averaged over the forward and backward passes (and, apart, over
the mirrored ones), and its class probabilities averaged over all passes.

The oracle ``GroundTruthBackend`` works too: pass ``targets`` (sample token -> unbatched ``Targets``); only
that backend reads them, mirrored along with the world in the mirrored passes.
"""
from __future__ import annotations

import logging
import os
import time
from dataclasses import asdict, dataclass, field, replace
from typing import Any, Callable, Mapping, Optional, Sequence, Union

import numpy as np
import torch
from pyquaternion import Quaternion

from drive.data.augment import BevAug
from drive.data.dataset import collate, index_samples
from drive.data.errors import DataError
from drive.data.features import build_features
from drive.data.geometry import invert, pose_to_matrix
from drive.data.image_cache import ImageCache
from drive.data.nusc import open_nuscenes, resolve_data_path
from drive.data.teacher_maps import MapsAccumulator, write_teacher_maps
from drive.evaluation.backends import TorchBackend
from drive.evaluation.errors import EvalError
from drive.metrics.detection import attribute_for, boxes_to_global
from drive.models.build import ModelConfig
from drive.types import CLASSES, LIDAR, Batch, Features, SampleMeta, Targets

from .errors import LabellingError
from .fusion import Detections, RefinedBox, associate, fuse_passes, refine_tracks
from .records import FrameLabels, LabelBox, Provenance, stable_token

log = logging.getLogger(__name__)

VEHICLES = ("car", "truck", "construction_vehicle", "bus", "trailer")
BACKWARD_VELOCITY = ("ignore", "negate", "keep")


@dataclass
class TeacherConfig:
    tta_mirror: bool = True  # add the y-mirrored passes
    bidirectional: bool = True  # add the backward-in-time passes
    track_refine: bool = True  # associate over the clip and refine per track
    fuse_distance: Union[float, dict] = 1.0  # m, centre distance for fusing a class's boxes across passes
    min_box_score: float = 0.1  # raw detections below are dropped before fusion
    min_track_len: int = 2  # tracks with fewer observed frames AND a mean score < min_track_score are dropped
    min_track_score: float = 0.3
    smoothing_window: int = 5  # keyframes of the centred local linear fit
    max_gap: int = 2  # missing keyframes a track may bridge (filled by the fit)
    track_blend: float = 0.5  # box confidence = blend * track mean + (1 - blend) * own
    moving_speed: float = 1.0  # m/s: vehicles faster are 'vehicle.moving', a slower 'moving' one 'stopped'
    backward_velocity: str = "ignore"  # velocities of time-reversed passes: ignore | negate | keep
    min_label_score: float = 0.0  # final boxes below are not written
    lidar_count: bool = True  # num_lidar_pts of every final box from the LIDAR_TOP keyframe sweep
    lidar_gate: bool = False  # drop tracks none of whose counted boxes holds a lidar point
    review_band: tuple = (0.3, 0.6)  # confidences counted as "unsure"

    def __post_init__(self) -> None:
        if self.backward_velocity not in BACKWARD_VELOCITY:
            raise LabellingError(f"teacher.backward_velocity must be one of {BACKWARD_VELOCITY}, "
                                 f"got {self.backward_velocity!r}")
        lo, hi = (float(v) for v in self.review_band)
        if not 0.0 <= lo <= hi <= 1.0:
            raise LabellingError(f"teacher.review_band must be 0 <= lo <= hi <= 1, got {self.review_band}")
        self.review_band = (lo, hi)
        if self.smoothing_window < 1 or self.max_gap < 0 or not 0.0 <= self.track_blend <= 1.0:
            raise LabellingError("teacher: smoothing_window >= 1, max_gap >= 0 and 0 <= track_blend <= 1 needed, "
                                 f"got {self.smoothing_window}, {self.max_gap}, {self.track_blend}")

    def passes(self) -> list[tuple[str, bool, bool]]:
        """(name, reversed in time, mirrored) of every pass, in run order."""
        out = [("forward", False, False)] + ([("forward_mirror", False, True)] if self.tta_mirror else [])
        if self.bidirectional:
            out += [("backward", True, False)] + ([("backward_mirror", True, True)] if self.tta_mirror else [])
        return out


@dataclass
class ClipLabels:
    """The teacher's labels of one clip (scene): boxes per keyframe (global frame), review, statistics."""

    scene_token: str
    samples: list  # keyframe tokens in time order
    boxes: dict  # sample token -> list[LabelBox] (score = confidence, track_id set)
    review: dict  # sample token -> (score in [0, 1], reason)
    stats: dict = field(default_factory=dict)
    teacher_sha256: str = ""
    seconds: float = 0.0

    def to_dict(self) -> dict:
        return {"scene_token": self.scene_token, "samples": list(self.samples), "teacher_sha256": self.teacher_sha256,
                "boxes": {k: [b.to_dict() for b in v] for k, v in self.boxes.items()},
                "review": {k: {"score": float(s), "reason": r} for k, (s, r) in self.review.items()},
                "stats": self.stats, "seconds": float(self.seconds)}

    @classmethod
    def from_dict(cls, d: Mapping) -> "ClipLabels":
        return cls(scene_token=d["scene_token"], samples=list(d["samples"]),
                   boxes={k: [LabelBox.from_dict(b) for b in v] for k, v in d["boxes"].items()},
                   review={k: (float(v["score"]), v["reason"]) for k, v in d["review"].items()},
                   stats=dict(d.get("stats", {})), teacher_sha256=d.get("teacher_sha256", ""),
                   seconds=float(d.get("seconds", 0.0)))

    def frame_labels(self, round: int, strategy: str = "") -> list[FrameLabels]:
        """One ``FrameLabels`` per keyframe with ``auto`` provenance (confidence = the frame's mean box score)."""
        out = []
        for tok in self.samples:
            boxes = self.boxes.get(tok, [])
            conf = float(np.mean([b.score for b in boxes])) if boxes else 1.0
            out.append(FrameLabels(tok, boxes, Provenance("auto", int(round), strategy, self.teacher_sha256,
                                                          confidence=conf)))
        return out


# ------------------------------------------------------------------------------------------ geometry of the passes

def mirror_boxes(boxes_K9: np.ndarray) -> np.ndarray:
    """Ego-frame boxes ``(x, y, z, l, w, h, yaw, vx, vy)`` of the y-mirrored world (y, yaw, vy negated)."""
    b = np.array(boxes_K9, np.float64, copy=True).reshape(-1, 9)
    b[:, 1], b[:, 6], b[:, 8] = -b[:, 1], -b[:, 6], -b[:, 8]
    return b


def mirror_features(f: Features) -> Features:
    """Unbatched features of the y-mirrored world, with the training augmentation's conventions."""
    return BevAug(rotation=0.0, flip=True).features(f)


def mirror_targets(t: Targets) -> Targets:
    """Unbatched targets of the y-mirrored world (for the oracle backend only)."""
    def neg_y(x: torch.Tensor) -> torch.Tensor:
        return x * torch.tensor([1.0, -1.0], dtype=x.dtype)

    boxes = t.boxes * torch.tensor([1, -1, 1, 1, 1, 1, -1, 1, -1], dtype=t.boxes.dtype)
    return replace(t, boxes=boxes, past=neg_y(t.past), future=neg_y(t.future), future_yaw=-t.future_yaw,
                   ego_past=neg_y(t.ego_past), ego_future=neg_y(t.ego_future), ego_future_yaw=-t.ego_future_yaw,
                   drivable=torch.flip(t.drivable, dims=[-2]))


def backward_prev_T_cur(global_T_cur: np.ndarray, global_T_next: np.ndarray) -> np.ndarray:
    """The backward pass's ``prev_T_cur``: current ego frame -> the NEXT keyframe's ego frame."""
    return invert(np.asarray(global_T_next, np.float64)) @ np.asarray(global_T_cur, np.float64)



# ------------------------------------------------------------------------------------------ the teacher

class _Stream:
    """One pass: a backend fed the BEV it produced on the keyframe it saw just before (in its own order)."""

    def __init__(self, backend):
        self.backend, self.bev = backend, None

    def __call__(self, batch: Batch, linked: bool):
        linked = linked and self.bev is not None
        prev = self.bev if linked else torch.zeros(1, *self.backend.bev_shape)
        out = self.backend(batch, prev, batch.features.has_prev * float(linked))
        self.bev = out.bev.detach().to("cpu", torch.float32)
        return out


class OffboardTeacher:
    """``source``: a ``drive-train`` checkpoint path (its sha256 kept as ``teacher_sha256``) or any ``Backend``.

    image_hw: network input size for a ``Backend`` source (a checkpoint gives its own); targets: sample token ->
    unbatched ``Targets``, only for the oracle backend; cache_dir: decoded-image cache (default
    ``<root>/.drive_cache``, as the data set's).
    """

    def __init__(self, source: Any, config: Optional[TeacherConfig] = None, image_hw: Optional[Sequence[int]] = None,
                 targets: Optional[Mapping[str, Targets]] = None, cache_dir: Optional[str] = None,
                 teacher_sha256: str = ""):
        self.config = config or TeacherConfig()
        self.teacher_sha256 = teacher_sha256
        if isinstance(source, (str, os.PathLike)):
            from drive.evaluation.checkpoint import load_model

            try:
                model, cfg, meta = load_model(str(source))
            except EvalError as e:
                raise LabellingError(f"teacher checkpoint: {e}") from e
            self.backend, self.image_hw, self.teacher_sha256 = TorchBackend(model, "teacher"), cfg.image_hw, meta.sha256
            self.image_crop_top, self.bev_range = cfg.image_crop_top, float(cfg.bev_range)
        else:
            if not callable(source) or not hasattr(source, "bev_shape"):
                raise LabellingError("teacher source must be a checkpoint path or a Backend, "
                                     f"got {type(source).__name__}")
            self.backend, self.image_hw = source, tuple(image_hw or ModelConfig().image_hw)
            self.image_crop_top = float(getattr(source, "image_crop_top", 0.0))
            self.bev_range = float(getattr(source, "bev_range", ModelConfig().bev_range))
        self.image_hw = (int(self.image_hw[0]), int(self.image_hw[1]))
        self.targets, self.cache_dir = targets, cache_dir
        self._nusc: dict = {}

    def _open(self, root: str, version: str, scene_token: str):
        key = (os.path.abspath(os.path.expanduser(str(root))), version)
        for attempt in range(2):  # a cached table set may predate the clip: reopen once
            if key not in self._nusc or attempt:
                try:
                    self._nusc[key] = open_nuscenes(key[0], version)
                except DataError as e:
                    raise LabellingError(f"cannot open {key[0]}/{version}: {e}") from e
            try:
                self._nusc[key].get("scene", scene_token)
                return self._nusc[key]
            except KeyError:
                continue
        raise LabellingError(f"scene {scene_token!r} is not in {key[0]}/{version} (scene.json)")

    def label_clip(self, root: str, version: str, scene_token: str, maps_dir: Optional[str] = None) -> ClipLabels:
        """Label one clip; with ``maps_dir`` also write every keyframe's teacher maps there (for distillation)."""
        t_start = time.time()
        cfg = self.config
        nusc = self._open(root, version, scene_token)
        try:
            records = index_samples(nusc, [scene_token], with_targets=False)
        except DataError as e:
            raise LabellingError(f"clip {scene_token}: {e}") from e
        if not records:
            raise LabellingError(f"scene {scene_token} of {nusc.dataroot}/{version} has no keyframes")
        images = ImageCache(self.image_hw, self.cache_dir or os.path.join(nusc.dataroot, ".drive_cache"),
                            self.image_crop_top)
        passes = cfg.passes()
        raw: list[list[Detections]] = [[] for _ in records]
        maps = [MapsAccumulator() for _ in records] if maps_dir else None
        seconds = {name: 0.0 for name, _, _ in passes}
        for direction in (False, True):
            group = [(p, name, mirror) for p, (name, rev, mirror) in enumerate(passes) if rev == direction]
            if not group:
                continue
            streams = {p: _Stream(self.backend) for p, _, _ in group}
            order = range(len(records) - 1, -1, -1) if direction else range(len(records))
            for n, i in enumerate(order):
                base = self._features(records, i, images, backward=direction)
                for p, name, mirror in group:
                    t0 = time.time()
                    batch = self._batch(records[i], base, mirror)
                    out = streams[p](batch, linked=n > 0)
                    seconds[name] += time.time() - t0
                    raw[i].append(self._detections(out, records[i].global_T_ego, p, mirror, direction))
                    if maps is not None:
                        maps[i].add(out.bev[0].float().numpy(), out.det_heatmap[0].float().numpy(), mirror)
        merged = [Detections.concat(r) for r in raw]
        fused = [fuse_passes(m, len(passes), cfg.fuse_distance) for m in merged]
        times = [r.timestamp * 1e-6 for r in records]
        stats: dict = {"passes": [name for name, _, _ in passes], "frames": len(records),
                       "raw_boxes": {name: int(sum(int((m.source == p).sum()) for m in merged))
                                     for p, (name, _, _) in enumerate(passes)},
                       "fused_boxes": int(sum(len(f) for f in fused)), "pass_seconds": seconds}
        if cfg.track_refine:
            tracks = associate(fused, times, cfg.max_gap)
            boxes, tstats = refine_tracks(fused, times, tracks, cfg.smoothing_window, cfg.min_track_len,
                                          cfg.min_track_score, cfg.track_blend)
            stats.update(tstats)
        else:
            boxes = [RefinedBox(f, -1, d.center[j], d.size[j], float(d.yaw[j]), d.velocity[j], float(d.score[j]),
                                float(d.score[j]), int(d.label[j]), d.attr[j], False, int(d.source[j]))
                     for f, d in enumerate(fused) for j in range(len(d))]
        counts = self._lidar_counts(nusc, records, boxes, stats) if cfg.lidar_count else [-1] * len(boxes)
        if cfg.lidar_count and cfg.lidar_gate and cfg.track_refine:
            empty = {b.track for b, c in zip(boxes, counts) if c >= 0}
            empty -= {b.track for b, c in zip(boxes, counts) if c > 0}
            keep = [k for k, b in enumerate(boxes) if b.track not in empty]
            boxes, counts = [boxes[k] for k in keep], [counts[k] for k in keep]
            stats["tracks_lidar_gated"] = len(empty)
        labels = {r.sample_token: [] for r in records}
        for b, c in zip(boxes, counts):
            if b.score >= cfg.min_label_score:
                labels[records[b.frame].sample_token].append(self._label_box(records[b.frame].sample_token, b, c,
                                                                             scene_token))
        stats["labels"] = int(sum(len(v) for v in labels.values()))
        if maps is not None:
            for rec, acc in zip(records, maps):
                write_teacher_maps(maps_dir, rec.sample_token, acc.result(rec.global_T_ego, self.bev_range,
                                                                          self.teacher_sha256))
            stats["maps_written"] = len(maps)
        review = {r.sample_token: self._review(labels[r.sample_token], fused[i], len(passes))
                  for i, r in enumerate(records)}
        return ClipLabels(scene_token, [r.sample_token for r in records], labels, review, stats, self.teacher_sha256,
                          time.time() - t_start)

    # -------------------------------------------------------------------------------- per keyframe

    def _features(self, records, i: int, images: ImageCache, backward: bool) -> Features:
        rec = records[i]
        try:
            loaded = [images.load(cam) for cam in rec.cameras]
        except DataError as e:
            raise LabellingError(f"clip {rec.scene_token}, sample {rec.sample_token}: {e}") from e
        f = build_features(rec.cameras, rec.track, np.stack([a for a, _ in loaded]), np.stack([b for _, b in loaded]))
        if backward:
            has_next = i + 1 < len(records)
            p_T_c = backward_prev_T_cur(rec.global_T_ego, records[i + 1].global_T_ego) if has_next else np.eye(4)
            f = replace(f, prev_T_cur=torch.as_tensor(p_T_c, dtype=torch.float32),
                        has_prev=torch.tensor(float(has_next)))
        return f

    def _batch(self, rec, f: Features, mirror: bool) -> Batch:
        t = self.targets.get(rec.sample_token) if self.targets is not None else None
        if mirror:
            f, t = mirror_features(f), (mirror_targets(t) if t is not None else None)
        meta = SampleMeta(rec.sample_token, rec.scene_token, rec.prev_token, rec.timestamp, rec.global_T_ego.tolist())
        return collate([(f, t, meta)])

    def _detections(self, out, global_T_ego: np.ndarray, p: int, mirror: bool, backward: bool) -> Detections:
        scores = out.scores[0].double().numpy()
        labels = out.labels[0].long().numpy()
        keep = (scores >= self.config.min_box_score) & (labels >= 0) & (labels < len(CLASSES))
        boxes = out.boxes[0].double().numpy().reshape(-1, 9)[keep]
        boxes = mirror_boxes(boxes) if mirror else boxes
        attrs = out.attrs[0].long().numpy()[keep]
        centre, yaw, vel = boxes_to_global(boxes, global_T_ego)
        vel_weight = np.ones(len(boxes))
        if backward and self.config.backward_velocity == "negate":
            vel = -vel
        elif backward and self.config.backward_velocity == "ignore":
            vel_weight[:] = 0.0
        lab = labels[keep]
        return Detections(centre, boxes[:, [4, 3, 5]], yaw, vel, scores[keep], lab,
                          [attribute_for(CLASSES[c], int(a)) for c, a in zip(lab, attrs)],
                          np.full(len(boxes), p), vel_weight)

    def _label_box(self, sample_token: str, b: RefinedBox, count: int, scene_token: str) -> LabelBox:
        name = CLASSES[b.label]
        attr = b.attr
        if name in VEHICLES:
            speed = float(np.hypot(*b.velocity[:2]))
            if speed > self.config.moving_speed:
                attr = "vehicle.moving"
            elif attr == "vehicle.moving":
                attr = "vehicle.stopped"
        return LabelBox(sample_token=sample_token, translation=[float(v) for v in b.center],
                        size=[float(max(v, 1e-3)) for v in b.size],
                        rotation=[float(v) for v in Quaternion(axis=[0.0, 0.0, 1.0], angle=float(b.yaw)).elements],
                        velocity=[float(v) for v in b.velocity[:2]], detection_name=name, attribute_name=attr,
                        score=float(np.clip(b.score, 0.0, 1.0)),
                        track_id=stable_token(scene_token, "track", b.track) if b.track >= 0 else "",
                        num_lidar_pts=int(count))

    def _review(self, boxes: list[LabelBox], fused: Detections, num_passes: int) -> tuple[float, str]:
        lo, hi = self.config.review_band
        unsure = sum(lo <= b.score <= hi for b in boxes)
        partial = int((fused.source < num_passes).sum())
        unsure_share = unsure / len(boxes) if boxes else 0.0
        disagreement = float(np.mean(1.0 - fused.source / num_passes)) if len(fused) else 0.0
        score = 0.5 * (unsure_share + disagreement)
        if score <= 0.0:
            return 0.0, "confident" if boxes else "no boxes"
        if unsure_share >= disagreement:
            return score, f"{unsure} of {len(boxes)} boxes unsure (confidence in [{lo:g}, {hi:g}])"
        return score, f"{partial} of {len(fused)} boxes seen by only some of the {num_passes} passes"

    def _lidar_counts(self, nusc, records, boxes: list[RefinedBox], stats: dict) -> list[int]:
        """LIDAR_TOP keyframe points (global frame) inside each box; -1 where the sweep file is absent."""
        from nuscenes.utils.data_classes import Box, LidarPointCloud
        from nuscenes.utils.geometry_utils import points_in_box

        points: dict[int, Optional[np.ndarray]] = {}
        for f, rec in enumerate(records):
            sample = nusc.get("sample", rec.sample_token)
            pts = None
            if LIDAR in sample["data"]:
                sd = nusc.get("sample_data", sample["data"][LIDAR])
                path = resolve_data_path(nusc.dataroot, sd["filename"])
                if os.path.isfile(path):
                    cs = nusc.get("calibrated_sensor", sd["calibrated_sensor_token"])
                    pose = nusc.get("ego_pose", sd["ego_pose_token"])
                    T = pose_to_matrix(pose["translation"], pose["rotation"]) @ pose_to_matrix(cs["translation"],
                                                                                               cs["rotation"])
                    xyz = LidarPointCloud.from_file(path).points[:3].astype(np.float64)
                    pts = T[:3, :3] @ xyz + T[:3, 3:4]
            points[f] = pts
        stats["lidar_missing_frames"] = sum(p is None for p in points.values())
        out = []
        for b in boxes:
            pts = points[b.frame]
            if pts is None:
                out.append(-1)
                continue
            box = Box(list(b.center), list(b.size), Quaternion(axis=[0.0, 0.0, 1.0], angle=float(b.yaw)))
            out.append(int(points_in_box(box, pts).sum()))
        return out


# ------------------------------------------------------------------------------------------ for the engine

@dataclass
class TeacherSpec:
    """Everything a worker needs to build the teacher (picklable); ``build()`` loads the model once."""

    ckpt_path: str
    root: str
    version: str
    config: TeacherConfig = field(default_factory=TeacherConfig)
    threads: Optional[int] = 1
    maps_dir: Optional[str] = None  # also write every keyframe's teacher maps here (drive.data.teacher_maps)

    def build(self) -> Callable[[Mapping], dict]:
        """``job({"scene_token": ...}) -> ClipLabels.to_dict()`` (JSON-able), with ``teacher_sha256``."""
        if self.threads:
            torch.set_num_threads(int(self.threads))
        config = self.config if isinstance(self.config, TeacherConfig) else TeacherConfig(**dict(self.config))
        teacher = OffboardTeacher(self.ckpt_path, config)
        root, version, maps_dir = self.root, self.version, self.maps_dir

        def job(row: Mapping) -> dict:
            if "scene_token" not in row:
                raise LabellingError(f"teacher job row has no 'scene_token' (keys {sorted(row)})")
            return teacher.label_clip(root, version, str(row["scene_token"]), maps_dir).to_dict()

        job.teacher_sha256 = teacher.teacher_sha256  # type: ignore[attr-defined]
        return job

    def to_dict(self) -> dict:
        return asdict(self)
