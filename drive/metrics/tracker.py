"""A tracking-by-detection baseline on nuScenes detection records (global frame), CenterPoint style.

Per scene, keyframes in time order. At each frame every detection is moved back by its own predicted velocity
times the time since each track was last seen (``det - v_det * dt``) and compared with the track's last
position (BEV centre distance). Pairs of different classes or farther than ``max_dist[class]`` (CenterPoint's
per-class gates, metres) are forbidden. Association is greedy by descending detection score (CenterPoint's
choice) or Hungarian (``scipy.optimize.linear_sum_assignment``).

Life cycle: an unmatched detection starts a track; the track is *confirmed* (emitted) at once when its score is
>= ``birth_score``, else after ``birth_hits`` matched frames; a tentative track that misses a frame dies; a
confirmed track survives ``max_misses`` missed frames (not emitted meanwhile) and dies after that. An emitted
box is the detection's own box, with ``tracking_score = detection_score``.

Only the 7 tracking classes are tracked; other detection classes are dropped.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Mapping, Optional, Sequence

import numpy as np

TRACKING_NAMES: tuple[str, ...] = ("bicycle", "bus", "car", "motorcycle", "pedestrian", "trailer", "truck")
# CenterPoint's NUSCENE_CLS_VELOCITY_ERROR: max centre distance (m) after back-projection over 0.5 s.
CENTERPOINT_MAX_DIST: dict[str, float] = {
    "car": 4.0, "truck": 4.0, "bus": 5.5, "trailer": 3.0, "pedestrian": 1.0, "motorcycle": 13.0, "bicycle": 3.0,
}


@dataclass
class TrackerConfig:
    max_dist: dict = field(default_factory=lambda: dict(CENTERPOINT_MAX_DIST))
    method: str = "greedy"  # or "hungarian"
    birth_score: float = 0.4  # confirm a new track at once from this detection score
    birth_hits: int = 2  # else after this many matched frames
    max_misses: int = 2  # frames a confirmed track may go unmatched before it dies
    score_threshold: float = 0.0  # detections below are ignored


@dataclass
class _Track:
    id: str
    name: str
    xy: np.ndarray  # last matched global xy
    t: float  # seconds, time of the last match
    hits: int = 1
    misses: int = 0
    confirmed: bool = False


class Tracker:
    """Stateful tracker of ONE scene; ``reset()`` (or a new instance) between scenes."""

    def __init__(self, config: Optional[TrackerConfig] = None, id_prefix: str = "") -> None:
        self.cfg = config or TrackerConfig()
        if self.cfg.method not in ("greedy", "hungarian"):
            raise ValueError(f"method must be 'greedy' or 'hungarian', got {self.cfg.method!r}")
        self.id_prefix = id_prefix
        self.reset()

    def reset(self) -> None:
        self.tracks: list[_Track] = []
        self._next_id = 0
        self._last_t: Optional[float] = None

    def _associate(self, cost: np.ndarray, det_scores: np.ndarray) -> list[tuple[int, int]]:
        """(detection, track) pairs from a cost matrix ``(D, T)`` with inf for forbidden pairs."""
        pairs = []
        if cost.size == 0:
            return pairs
        if self.cfg.method == "hungarian":
            from scipy.optimize import linear_sum_assignment

            finite = np.where(np.isfinite(cost), cost, 1e9)
            rows, cols = linear_sum_assignment(finite)
            return [(int(r), int(c)) for r, c in zip(rows, cols) if np.isfinite(cost[r, c])]
        taken = np.zeros(cost.shape[1], bool)
        for d in np.argsort(-det_scores, kind="stable"):
            c = np.where(taken, np.inf, cost[d])
            j = int(np.argmin(c))
            if np.isfinite(c[j]):
                pairs.append((int(d), j))
                taken[j] = True
        return pairs

    def update(self, detections: Sequence[Mapping], timestamp_us: int) -> list[dict]:
        """Track one keyframe. detections: nuScenes detection records (global frame, ``detection_name``,
        ``detection_score``, ``velocity``). Returns tracking records (without ``sample_token`` if absent)."""
        t = timestamp_us * 1e-6
        if self._last_t is not None and t <= self._last_t:
            raise ValueError("keyframes must be given in increasing time order within a scene")
        self._last_t = t
        dets = [d for d in detections
                if d["detection_name"] in TRACKING_NAMES and d["detection_score"] >= self.cfg.score_threshold]
        D, T = len(dets), len(self.tracks)
        scores = np.array([d["detection_score"] for d in dets], np.float64)
        cost = np.full((D, T), np.inf)
        if D and T:
            xy = np.array([d["translation"][:2] for d in dets], np.float64)
            vel = np.nan_to_num(np.array([d["velocity"][:2] for d in dets], np.float64))
            txy = np.stack([tr.xy for tr in self.tracks])
            dt = t - np.array([tr.t for tr in self.tracks])  # (T,)
            back = xy[:, None, :] - vel[:, None, :] * dt[None, :, None]  # (D, T, 2)
            dist = np.linalg.norm(back - txy[None], axis=-1)
            names = [d["detection_name"] for d in dets]
            gate = np.array([[self.cfg.max_dist.get(n, 0.0)] for n in names])
            same = np.array([[n == tr.name for tr in self.tracks] for n in names])
            cost = np.where(same & (dist <= gate), dist, np.inf)
        pairs = self._associate(cost, scores)
        matched_det = {d for d, _ in pairs}
        matched_trk = {k for _, k in pairs}
        out = []
        for d, k in pairs:
            tr = self.tracks[k]
            tr.xy, tr.t = np.asarray(dets[d]["translation"][:2], np.float64), t
            tr.hits, tr.misses = tr.hits + 1, 0
            tr.confirmed = tr.confirmed or tr.hits >= self.cfg.birth_hits or scores[d] >= self.cfg.birth_score
            if tr.confirmed:
                out.append(self._record(dets[d], tr))
        survivors = []
        for k, tr in enumerate(self.tracks):
            if k not in matched_trk:
                tr.misses += 1
                if not tr.confirmed or tr.misses > self.cfg.max_misses:
                    continue
            survivors.append(tr)
        for d, det in enumerate(dets):
            if d in matched_det:
                continue
            tr = _Track(id=f"{self.id_prefix}{self._next_id}", name=det["detection_name"],
                        xy=np.asarray(det["translation"][:2], np.float64), t=t)
            self._next_id += 1
            tr.confirmed = tr.hits >= self.cfg.birth_hits or scores[d] >= self.cfg.birth_score
            survivors.append(tr)
            if tr.confirmed:
                out.append(self._record(det, tr))
        self.tracks = survivors
        return out

    @staticmethod
    def _record(det: Mapping, tr: _Track) -> dict:
        rec = {
            "translation": [float(v) for v in det["translation"]],
            "size": [float(v) for v in det["size"]],
            "rotation": [float(v) for v in det["rotation"]],
            "velocity": [float(v) for v in det["velocity"][:2]],
            "tracking_id": tr.id,
            "tracking_name": tr.name,
            "tracking_score": float(det["detection_score"]),
        }
        if "sample_token" in det:
            rec = {"sample_token": det["sample_token"], **rec}
        return rec


def track_detections(detections_by_sample: Mapping[str, Sequence[Mapping]],
                     samples: Sequence[tuple[str, str, int]],
                     config: Optional[TrackerConfig] = None) -> dict[str, list[dict]]:
    """Track a whole data set. samples: ``(sample_token, scene_token, timestamp_us)`` of every keyframe to output
    (e.g. from ``SampleMeta`` or ``samples_of_split``), any order; each scene is tracked in time order with a
    fresh tracker. Track ids are unique over the data set. Samples without detections get an empty list."""
    by_scene: dict[str, list[tuple[int, str]]] = {}
    for tok, scene, ts in samples:
        by_scene.setdefault(scene, []).append((int(ts), tok))
    out: dict[str, list[dict]] = {}
    for s, scene in enumerate(sorted(by_scene)):
        tracker = Tracker(config, id_prefix=f"{s}-")
        for ts, tok in sorted(by_scene[scene]):
            recs = tracker.update(detections_by_sample.get(tok, []), ts)
            out[tok] = [{**r, "sample_token": tok} for r in recs]
    return out


def samples_of_split(nusc, split: str) -> list[tuple[str, str, int]]:
    """``(sample_token, scene_token, timestamp_us)`` of every keyframe of a split (built-in or custom name)."""
    from .detection import sample_tokens_of_split

    return [(t, nusc.get("sample", t)["scene_token"], int(nusc.get("sample", t)["timestamp"]))
            for t in sample_tokens_of_split(nusc, split)]
