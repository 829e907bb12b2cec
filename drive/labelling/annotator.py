"""A simulated annotator: stands in for a person resolving review-queue frames, from the world's hidden truth.

The loop's benchmark compares strategies at equal LABELLING COST, so the stand-in must label the way a person
would and cost what a person would:

* it draws the truth boxes of the keyframe that a person could see: a detection class (the devkit's
  ``category_to_detection_name`` is not None) and at least one lidar or radar point, exactly the boxes the
  devkit's detection evaluation keeps. Boxes are in the GLOBAL frame (``drive.labelling.records``),
  ``track_id`` = the instance token, ``num_lidar_pts`` and the nuScenes attribute from the truth, velocity from
  the devkit's ``box_velocity`` (nan -> 0), score 1.0;
* optional label noise (``LabelNoise``): position jitter, size jitter, heading jitter, missed boxes and class
  confusions, drawn from a generator seeded by ``(seed, sample token)``, so the same frame always gets the
  same labels (a resumed round relabels identically) whatever order frames are labelled in;
* the cost of a frame is ``cost_per_frame + boxes * cost_per_box`` (boxes actually drawn, after misses).

``resolve`` works a ``ReviewQueue`` best-first within a budget; ``label_frames`` labels a list of frames in
order within a budget (the "humans label everything" strategy).
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Iterable

import numpy as np
from nuscenes.eval.detection.utils import category_to_detection_name
from pyquaternion import Quaternion

from drive.data.errors import DataError
from drive.data.nusc import open_nuscenes
from drive.types import CLASSES

from .errors import LabellingError
from .queue import ReviewQueue
from .records import FrameLabels, LabelBox, Provenance, stable_token

_EPS = 1e-9  # budget comparisons: a frame that costs exactly the remaining budget fits


@dataclass(frozen=True)
class LabelNoise:
    """How a (simulated) person errs. All zero: labels equal the truth exactly.

    ``position_sigma``: metres, independent Gaussian on each of x, y, z of the centre.
    ``size_sigma``: relative, each of w, l, h is multiplied by ``exp(N(0, size_sigma))`` (0.05 ~ 5 %).
    ``yaw_sigma``: radians, Gaussian rotation about the global +z axis.
    ``miss_prob``: probability that a visible box is not drawn at all.
    ``class_flip_prob``: probability that a box gets one of the other 9 detection classes (uniformly).
    """

    position_sigma: float = 0.0
    size_sigma: float = 0.0
    yaw_sigma: float = 0.0
    miss_prob: float = 0.0
    class_flip_prob: float = 0.0

    def __post_init__(self) -> None:
        for name in ("position_sigma", "size_sigma", "yaw_sigma", "miss_prob", "class_flip_prob"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) or v < 0:
                raise LabellingError(f"LabelNoise.{name}: must be a finite number >= 0, got {v!r}")
            if name.endswith("_prob") and v > 1:
                raise LabellingError(f"LabelNoise.{name}: a probability must be <= 1, got {v!r}")


@dataclass
class ReviewResult:
    """What one labelling pass produced and spent."""

    labels: dict[str, FrameLabels] = field(default_factory=dict)  # sample token -> human labels
    frames: int = 0
    boxes: int = 0
    cost: float = 0.0
    remaining: float = 0.0  # budget left
    budget_exhausted: bool = False  # stopped because the next frame did not fit (not because frames ran out)


class SimulatedAnnotator:
    """Labels keyframes of the truth data set at ``truth_root`` / ``truth_version`` like a person would.

    ``nusc``: an already opened devkit ``NuScenes`` of that root (saves re-reading the tables).
    """

    def __init__(self, truth_root: str, truth_version: str, cost_per_box: float = 1.0, cost_per_frame: float = 0.5,
                 noise: LabelNoise = LabelNoise(), seed: int = 0, reviewer: str = "sim-annotator", *,
                 nusc: Any = None):
        for name, v in (("cost_per_box", cost_per_box), ("cost_per_frame", cost_per_frame)):
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) or v < 0:
                raise LabellingError(f"SimulatedAnnotator.{name}: must be a finite number >= 0, got {v!r}")
        if not isinstance(noise, LabelNoise):
            raise LabellingError(f"SimulatedAnnotator.noise: expected a LabelNoise, got {type(noise).__name__}")
        if not isinstance(reviewer, str) or not reviewer:
            raise LabellingError(f"SimulatedAnnotator.reviewer: must be a non-empty string, got {reviewer!r}")
        self.truth_root, self.truth_version = truth_root, truth_version
        self.cost_per_box, self.cost_per_frame = float(cost_per_box), float(cost_per_frame)
        self.noise, self.seed, self.reviewer = noise, int(seed), reviewer
        if nusc is None:
            try:
                nusc = open_nuscenes(truth_root, truth_version)
            except DataError as e:
                raise LabellingError(f"simulated annotator truth data set: {e}") from e
        self.nusc = nusc
        self._det_of_category = {c["name"]: category_to_detection_name(c["name"]) for c in nusc.category}
        self._attr_name = {a["token"]: a["name"] for a in nusc.attribute}

    # ------------------------------------------------------------------ one frame
    def truth_boxes(self, sample_token: str) -> list[LabelBox]:
        """The visible detection-class truth boxes of a keyframe, noise-free (global frame)."""
        try:
            sample = self.nusc.get("sample", sample_token)
        except KeyError as e:
            raise LabellingError(f"simulated annotator: sample token {sample_token!r} is not in the truth data set "
                                 f"{self.truth_root} ({self.truth_version})") from e
        boxes = []
        for ann_token in sample["anns"]:
            a = self.nusc.get("sample_annotation", ann_token)
            det = self._det_of_category.get(a["category_name"])
            if det is None:
                continue
            if int(a.get("num_lidar_pts", 0)) + int(a.get("num_radar_pts", 0)) < 1:
                continue
            vel = np.nan_to_num(np.asarray(self.nusc.box_velocity(ann_token), np.float64), nan=0.0)
            attr = next((self._attr_name[t] for t in a["attribute_tokens"] if t in self._attr_name), "")
            boxes.append(LabelBox(
                sample_token=sample_token, translation=list(a["translation"]), size=list(a["size"]),
                rotation=list(a["rotation"]), velocity=[float(vel[0]), float(vel[1])], detection_name=det,
                attribute_name=attr, score=1.0, track_id=a["instance_token"],
                num_lidar_pts=int(a.get("num_lidar_pts", 0))))
        return boxes

    def frame_cost(self, n_boxes: int) -> float:
        return self.cost_per_frame + n_boxes * self.cost_per_box

    def label(self, sample_token: str) -> tuple[list[LabelBox], float]:
        """The boxes a person would draw on this keyframe (truth + noise, deterministic) and their cost."""
        boxes = self._apply_noise(sample_token, self.truth_boxes(sample_token))
        return boxes, self.frame_cost(len(boxes))

    def _apply_noise(self, sample_token: str, boxes: list[LabelBox]) -> list[LabelBox]:
        n, nz = len(boxes), self.noise
        rng = np.random.default_rng(int(stable_token("sim-annotator", self.seed, sample_token), 16))
        # Every draw is made whatever the noise settings, so turning one kind of noise on does not change
        # the others' draws (and zero noise leaves the truth values bit-exact: nothing is applied).
        u_miss, u_flip = rng.random(n), rng.random(n)
        flip_to = rng.integers(0, len(CLASSES) - 1, n)
        d_pos, d_size, d_yaw = rng.standard_normal((n, 3)), rng.standard_normal((n, 3)), rng.standard_normal(n)
        out = []
        for i, b in enumerate(boxes):
            if u_miss[i] < nz.miss_prob:
                continue
            if nz.position_sigma > 0:
                b.translation = [float(v + nz.position_sigma * d) for v, d in zip(b.translation, d_pos[i])]
            if nz.size_sigma > 0:
                b.size = [float(v * math.exp(nz.size_sigma * d)) for v, d in zip(b.size, d_size[i])]
            if nz.yaw_sigma > 0:
                q = Quaternion(axis=[0.0, 0.0, 1.0], angle=float(nz.yaw_sigma * d_yaw[i])) * Quaternion(b.rotation)
                b.rotation = [float(v) for v in q.elements]
            if u_flip[i] < nz.class_flip_prob:
                others = [c for c in CLASSES if c != b.detection_name]
                b.detection_name = others[int(flip_to[i])]
                b.attribute_name = ""  # the truth attribute may not fit the new class
            out.append(b)
        return out

    # ------------------------------------------------------------------ many frames, within a budget
    def _provenance(self, round: int, strategy: str) -> Provenance:
        return Provenance("human", int(round), strategy, reviewer=self.reviewer, confidence=1.0)

    @staticmethod
    def _check_budget(budget: float) -> float:
        if isinstance(budget, bool) or not isinstance(budget, (int, float)) or math.isnan(budget) or budget < 0:
            raise LabellingError(f"labelling budget must be a number >= 0, got {budget!r}")
        return float(budget)

    def resolve(self, queue: ReviewQueue, strategy: str, round: int, budget: float) -> ReviewResult:
        """Work the queue of ``strategy`` / ``round`` best first: claim a frame, label it, and if its cost fits the
        remaining budget mark it done (boxes, cost); the first frame that does not fit goes back to pending and
        resolving stops. Frames in review by someone else are left alone."""
        remaining = self._check_budget(budget)
        result = ReviewResult(remaining=remaining)
        while True:
            claimed = queue.claim(strategy, round, self.reviewer, limit=1)
            if not claimed:
                break
            item = claimed[0]
            try:
                boxes, cost = self.label(item.sample_token)
            except BaseException:
                queue.release(item.id, self.reviewer, note="released: labelling failed")
                raise
            if cost > result.remaining + _EPS:
                queue.release(item.id, self.reviewer, note=f"released: cost {cost:g} > remaining budget "
                                                           f"{result.remaining:g}")
                result.budget_exhausted = True
                break
            queue.complete(item.id, self.reviewer, len(boxes), cost)
            self._add(result, item.sample_token, boxes, cost, round, strategy)
        return result

    def label_frames(self, sample_tokens: Iterable[str], budget: float, round: int, strategy: str) -> ReviewResult:
        """Label frames in the given order until the next one does not fit the budget (no queue). A token given
        twice is labelled once."""
        remaining = self._check_budget(budget)
        result = ReviewResult(remaining=remaining)
        for token in sample_tokens:
            if token in result.labels:
                continue
            boxes, cost = self.label(token)
            if cost > result.remaining + _EPS:
                result.budget_exhausted = True
                break
            self._add(result, token, boxes, cost, round, strategy)
        return result

    def label_whole_clips(self, scene_tokens: Iterable[str], budget: float) -> dict:
        """Humans only: label every keyframe of each scene, in the given order, while a whole clip fits the
        budget (a half-labelled clip would teach the model that its unlabelled frames are empty roads). Returns
        frames, boxes, cost, budget, the clips labelled, the labels (box dicts by sample token), reviewer."""
        budget = self._check_budget(budget)
        labels, clips, cost, boxes = {}, [], 0.0, 0
        for scene in scene_tokens:
            try:
                tok = self.nusc.get("scene", scene)["first_sample_token"]
            except KeyError as e:
                raise LabellingError(f"simulated annotator: scene token {scene!r} is not in the truth data set "
                                     f"{self.truth_root} ({self.truth_version})") from e
            frames = {}
            while tok:
                frames[tok] = self.label(tok)
                tok = self.nusc.get("sample", tok)["next"]
            clip_cost = sum(c for _, c in frames.values())
            if cost + clip_cost > budget + _EPS:
                break
            cost += clip_cost
            clips.append(scene)
            for t, (bs, _) in frames.items():
                labels[t] = [b.to_dict() for b in bs]
                boxes += len(bs)
        return {"frames": len(labels), "boxes": boxes, "cost": cost, "budget": budget, "clips": clips,
                "labels": labels, "reviewer": self.reviewer}

    def replay(self, queue: ReviewQueue, strategy: str, round: int) -> ReviewResult:
        """The labels of the items this reviewer already completed in the queue (labelling is deterministic), so a
        round killed after the queue was updated but before the labels were stored gets them back without
        paying twice. ``cost`` = the recorded cost; ``remaining`` = 0."""
        result = ReviewResult()
        for item in queue.items(strategy, round, "done"):
            if item.reviewer != self.reviewer:
                continue
            boxes, cost = self.label(item.sample_token)
            self._add(result, item.sample_token, boxes, float(item.cost if item.cost is not None else cost),
                      round, strategy)
        result.remaining = 0.0
        return result

    def _add(self, result: ReviewResult, token: str, boxes: list[LabelBox], cost: float, round: int,
             strategy: str) -> None:
        result.labels[token] = FrameLabels(token, boxes, self._provenance(round, strategy))
        result.frames += 1
        result.boxes += len(boxes)
        result.cost += cost
        result.remaining = max(0.0, result.remaining - cost)
