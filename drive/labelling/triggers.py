"""Edge triggers: cheap signals the car computes from its own model's outputs to choose which clips to upload.

Uploading is the scarce resource (bytes per round), so the car ranks its clips by how much the cloud could
learn from them. Every signal is a by-product of what the edge stack already runs (detections, the
tracker, the planner and its feasibility layer); nothing here needs labels or a second model:

* ``uncertainty``: sum of the binary entropies (bits) of the detection scores inside the ambiguous band
  ``TriggerConfig.ambiguous_band``: two boxes at 0.5 are maximally ambiguous (2 bits); confident boxes (0.99)
  and confident rejections (0.01) add nothing.
* ``flicker``: tracking events of objects well inside the BEV (``|x|, |y| <= flicker_range`` in the ego frame,
  where the cameras should see them): a track born after the clip's first frame, a track dying (last seen)
  before the clip's last frame, and every frame of a track shorter than ``min_track_frames`` that touches
  neither clip end. A car detected in one frame only scores 3 there (born, dies, short); a steady track 0.
* ``disagreement``: ``ModelOutputs.plan_change``, metres the feasibility layer had to move the planner's
  trajectory: the planner proposed something the physics / collision check disagreed with.
* ``rare``: the highest score of a detection of a rare class (``rare_classes``) at or above ``rare_min_score``.
* ``novelty``: how far the frame's BEV features lie from those of the data the model was trained on, in units
  of a typical training frame (``drive.labelling.novelty``; needs ``ClipMiner.reference``). Unlike the four
  above it does not depend on the model detecting the unusual thing.

Each raw signal is normalised to [0, 1): counts and metres saturate as ``x / (x + scale)`` (``scale`` is the raw
value that counts as 0.5); ``rare`` is a score already. The frame score is the weight-normalised sum
``sum_k w_k n_k / sum_k w_k`` (in [0, 1]); the clip score aggregates the frame scores (mean of the top-k frames
by default: a clip with a few striking moments beats one that is mildly odd throughout).

``drive.labelling.miner.ClipMiner`` runs the edge model over clips and calls ``clip_report``; ``select_clips``
spends an upload budget on the reports; ``signal_summary`` condenses them for the round report.
"""
from __future__ import annotations

import logging
import math
from dataclasses import asdict, dataclass, field
from typing import Mapping, Optional, Sequence

import numpy as np

from drive.metrics.tracker import TrackerConfig, track_detections
from drive.types import CLASSES

from .errors import LabellingError

log = logging.getLogger(__name__)

SIGNALS: tuple[str, ...] = ("uncertainty", "flicker", "disagreement", "rare", "novelty")
AGGREGATES: tuple[str, ...] = ("topk_mean", "mean", "max")
STRATEGIES: tuple[str, ...] = ("triggers", "random")


@dataclass
class TriggerConfig:
    """Weights, thresholds and normalisation of the trigger signals (see the module doc)."""

    # Novelty alone by default: on three probe fleets the four output-counting signals each ranked long-tail clips
    # below ordinary ones (AUC 0.31-0.47, together 0.30-0.38) and novelty above (0.59-0.79); BENCHMARKS.md
    # 2026-12-07, triggers rows 15:50-16:08.
    weights: dict = field(default_factory=lambda: {"uncertainty": 0.0, "flicker": 0.0, "disagreement": 0.0,
                                                   "rare": 0.0, "novelty": 1.0})
    rare_classes: tuple = ("bus", "trailer", "construction_vehicle", "motorcycle", "bicycle")
    score_threshold: float = 0.1  # detections kept (report, uncertainty, rare) from this score
    ambiguous_band: tuple = (0.2, 0.8)  # detection scores counted as ambiguous (inclusive)
    track_threshold: float = 0.3  # detections fed to the tracker from this score
    rare_min_score: float = 0.3
    flicker_range: float = 30.0  # metres, |x| and |y| in the ego frame
    min_track_frames: int = 3
    uncertainty_scale: float = 2.0  # bits that normalise to 0.5
    flicker_scale: float = 2.0  # events that normalise to 0.5
    disagreement_scale: float = 1.0  # metres of plan_change that normalise to 0.5
    novelty_scale: float = 1.0  # novelty that normalises to 0.5 (1.0: a typical held-out training frame)
    novelty_shrinkage: float = 0.05  # of the reference's covariance (``novelty.fit_reference``)
    novelty_warmup: int = 2  # a clip's first frames score no novelty (the reference records it; see novelty.py)
    aggregate: str = "topk_mean"
    top_k: int = 3
    max_boxes: int = 500  # per frame in the report (highest scores first)

    def __post_init__(self) -> None:
        self.weights = {str(k): float(v) for k, v in dict(self.weights).items()}
        unknown = sorted(set(self.weights) - set(SIGNALS))
        if unknown:
            raise LabellingError(f"TriggerConfig.weights: unknown signal {unknown[0]!r} "
                                 f"(signals: {', '.join(SIGNALS)})")
        if any(v < 0 or not math.isfinite(v) for v in self.weights.values()):
            raise LabellingError(f"TriggerConfig.weights must be finite and >= 0, got {self.weights}")
        if sum(self.weights.values()) <= 0:
            raise LabellingError("TriggerConfig.weights: at least one signal needs a positive weight")
        self.rare_classes = tuple(self.rare_classes)
        bad = [c for c in self.rare_classes if c not in CLASSES]
        if bad:
            raise LabellingError(f"TriggerConfig.rare_classes: {bad[0]!r} is not a detection class "
                                 f"({', '.join(CLASSES)})")
        self.ambiguous_band = tuple(float(v) for v in self.ambiguous_band)
        lo, hi = self.ambiguous_band if len(self.ambiguous_band) == 2 else (1.0, 0.0)
        if not 0.0 <= lo < hi <= 1.0:
            raise LabellingError(f"TriggerConfig.ambiguous_band must be (low, high) with 0 <= low < high <= 1, "
                                 f"got {self.ambiguous_band}")
        for name in ("uncertainty_scale", "flicker_scale", "disagreement_scale", "novelty_scale", "flicker_range"):
            if not getattr(self, name) > 0:
                raise LabellingError(f"TriggerConfig.{name} must be > 0, got {getattr(self, name)}")
        if int(self.novelty_warmup) < 0:
            raise LabellingError(f"TriggerConfig.novelty_warmup must be >= 0, got {self.novelty_warmup}")
        if not 0.0 < float(self.novelty_shrinkage) < 1.0:
            raise LabellingError(f"TriggerConfig.novelty_shrinkage must be in (0, 1), got {self.novelty_shrinkage}")
        if self.aggregate not in AGGREGATES:
            raise LabellingError(f"TriggerConfig.aggregate must be one of {', '.join(AGGREGATES)}, "
                                 f"got {self.aggregate!r}")
        if int(self.top_k) < 1 or int(self.min_track_frames) < 1:
            raise LabellingError(f"TriggerConfig.top_k and min_track_frames must be >= 1, got {self.top_k}, "
                                 f"{self.min_track_frames}")

    @classmethod
    def from_dict(cls, d: Optional[Mapping]) -> "TriggerConfig":
        d = dict(d or {})
        unknown = sorted(set(d) - set(cls.__dataclass_fields__))
        if unknown:
            raise LabellingError(f"TriggerConfig: unknown field {unknown[0]!r}")
        return cls(**d)

    def to_dict(self) -> dict:
        d = asdict(self)
        d["rare_classes"], d["ambiguous_band"] = list(self.rare_classes), list(self.ambiguous_band)
        return d


# ---------------------------------------------------------------------------------------------- signals

def binary_entropy(p) -> np.ndarray:
    """H(p) in bits, elementwise (0 at p = 0 or 1, 1 at p = 0.5)."""
    p = np.clip(np.asarray(p, np.float64), 0.0, 1.0)
    with np.errstate(divide="ignore", invalid="ignore"):
        h = -(p * np.log2(p) + (1.0 - p) * np.log2(1.0 - p))
    return np.nan_to_num(h, nan=0.0)


def uncertainty_signal(scores: Sequence[float], band: Sequence[float] = (0.2, 0.8)) -> float:
    """Sum of binary entropies of the scores inside ``band`` (inclusive), bits."""
    s = np.asarray(list(scores), np.float64)
    s = s[(s >= band[0]) & (s <= band[1])]
    return float(binary_entropy(s).sum())


def rare_signal(detections: Sequence[Mapping], rare_classes: Sequence[str], min_score: float = 0.0) -> float:
    """Highest ``detection_score`` of a rare-class detection at or above ``min_score`` (0 if none)."""
    scores = [float(d["detection_score"]) for d in detections
              if d["detection_name"] in rare_classes and float(d["detection_score"]) >= min_score]
    return max(scores, default=0.0)


def _inside(translation: Sequence[float], global_T_ego, half_range: float) -> bool:
    ego_T_global = np.linalg.inv(np.asarray(global_T_ego, np.float64).reshape(4, 4))
    p = ego_T_global @ np.array([*map(float, translation[:3]), 1.0])
    return abs(p[0]) <= half_range and abs(p[1]) <= half_range


def flicker_events(tracks_by_frame: Sequence[Sequence[Mapping]], global_T_ego: Sequence, half_range: float,
                   min_track_frames: int) -> list[dict]:
    """Per frame ``{"births", "deaths", "short"}`` counts of tracks inside the range (see the module doc).

    tracks_by_frame: the tracker's emitted records (``tracking_id``, global ``translation``) of each frame of
    ONE clip in temporal order; global_T_ego: each frame's 4x4 ego pose.
    """
    n = len(tracks_by_frame)
    if len(global_T_ego) != n:
        raise LabellingError(f"flicker_events: {n} frames of tracks but {len(global_T_ego)} poses")
    events = [{"births": 0, "deaths": 0, "short": 0} for _ in range(n)]
    seen: dict[str, dict[int, Sequence[float]]] = {}
    for t, recs in enumerate(tracks_by_frame):
        for r in recs:
            seen.setdefault(str(r["tracking_id"]), {})[t] = r["translation"]
    for frames in seen.values():
        ts = sorted(frames)
        present = set(ts)
        short = len(ts) < min_track_frames and ts[0] > 0 and ts[-1] < n - 1
        for t in ts:
            if not _inside(frames[t], global_T_ego[t], half_range):
                continue
            if t > 0 and t - 1 not in present:
                events[t]["births"] += 1
            if t < n - 1 and t + 1 not in present:
                events[t]["deaths"] += 1
            if short:
                events[t]["short"] += 1
    return events


def normalise(signals: Mapping[str, float], cfg: TriggerConfig) -> dict[str, float]:
    """Raw signals -> [0, 1): ``x / (x + scale)`` for counts, metres and novelty, ``rare`` as it is."""
    def sat(x: float, scale: float) -> float:
        x = max(float(x), 0.0)
        return x / (x + scale)

    return {"uncertainty": sat(signals["uncertainty"], cfg.uncertainty_scale),
            "flicker": sat(signals["flicker"], cfg.flicker_scale),
            "disagreement": sat(signals["disagreement"], cfg.disagreement_scale),
            "rare": min(max(float(signals["rare"]), 0.0), 1.0),
            "novelty": sat(float(signals.get("novelty", 0.0)), cfg.novelty_scale)}


def frame_score(normalised: Mapping[str, float], cfg: TriggerConfig) -> float:
    """Weight-normalised sum of the normalised signals, in [0, 1]."""
    total = sum(cfg.weights.get(k, 0.0) for k in SIGNALS)
    return float(sum(cfg.weights.get(k, 0.0) * normalised[k] for k in SIGNALS) / total)


def clip_score(frame_scores: Sequence[float], cfg: TriggerConfig) -> float:
    """Aggregate of the frame scores (``cfg.aggregate``); 0 for a clip without frames."""
    s = np.sort(np.asarray(list(frame_scores), np.float64))[::-1]
    if s.size == 0:
        return 0.0
    if cfg.aggregate == "max":
        return float(s[0])
    if cfg.aggregate == "mean":
        return float(s.mean())
    return float(s[: int(cfg.top_k)].mean())


@dataclass
class FrameObservation:
    """What the edge stack produced for one keyframe: decoded detections and the feasibility correction."""

    sample_token: str
    timestamp: int  # microseconds
    global_T_ego: list  # 4x4
    detections: list  # nuScenes detection records (global frame), any score
    plan_change: float = 0.0  # metres
    novelty: float = 0.0  # ``novelty.frame_novelty`` of the frame's BEV (0 without a reference)


def clip_report(scene_token: str, frames: Sequence[FrameObservation], cfg: TriggerConfig,
                seconds: float = 0.0) -> dict:
    """Track the clip's detections and score every frame: the JSON-able report ``ClipMiner`` returns.

    ``{scene_token, frames: [{sample_token, timestamp, signals, normalised, counts, score}], detections:
    {sample_token: [records]}, clip_score, seconds}``; frames must be in temporal order.
    """
    times = [int(f.timestamp) for f in frames]
    if any(b <= a for a, b in zip(times, times[1:])):
        raise LabellingError(f"clip {scene_token}: frames are not in increasing timestamp order")
    if len({f.sample_token for f in frames}) != len(frames):
        raise LabellingError(f"clip {scene_token}: a sample_token appears twice among its frames")
    kept = {f.sample_token: sorted((d for d in f.detections if float(d["detection_score"]) >= cfg.score_threshold),
                                   key=lambda d: -float(d["detection_score"]))[: cfg.max_boxes] for f in frames}
    tracks = track_detections(kept, [(f.sample_token, scene_token, int(f.timestamp)) for f in frames],
                              TrackerConfig(score_threshold=cfg.track_threshold))
    events = flicker_events([tracks[f.sample_token] for f in frames], [f.global_T_ego for f in frames],
                            cfg.flicker_range, int(cfg.min_track_frames))
    out_frames = []
    for f, ev in zip(frames, events):
        dets = kept[f.sample_token]
        signals = {"uncertainty": uncertainty_signal([d["detection_score"] for d in dets], cfg.ambiguous_band),
                   "flicker": float(ev["births"] + ev["deaths"] + ev["short"]),
                   "disagreement": max(float(f.plan_change), 0.0),
                   "rare": rare_signal(dets, cfg.rare_classes, cfg.rare_min_score),
                   "novelty": max(float(f.novelty), 0.0)}
        norm = normalise(signals, cfg)
        out_frames.append({"sample_token": f.sample_token, "timestamp": int(f.timestamp), "signals": signals,
                           "normalised": norm, "counts": {"detections": len(dets),
                                                          "tracks": len(tracks[f.sample_token]), **ev},
                           "score": frame_score(norm, cfg)})
    return {"scene_token": scene_token, "frames": out_frames,
            "detections": {tok: [_plain(d) for d in dets] for tok, dets in kept.items()},
            "clip_score": clip_score([fr["score"] for fr in out_frames], cfg), "seconds": float(seconds)}


def _plain(d: Mapping) -> dict:
    return {k: ([float(x) for x in v] if isinstance(v, (list, tuple, np.ndarray)) else
                float(v) if isinstance(v, (float, np.floating)) else v) for k, v in d.items()}


# ---------------------------------------------------------------------------------------------- selection

def select_clips(reports: Sequence[Mapping], bytes_by_clip: Mapping[str, int], budget_bytes: Optional[int] = None,
                 budget_clips: Optional[int] = None, strategy: str = "triggers", seed: int = 0) -> list[str]:
    """Scene tokens to upload, in selection order.

    Clips are visited by descending ``clip_score`` (ties by token; ``strategy="triggers"``) or in a seeded
    random order (``"random"``, independent of the order of ``reports``); a clip is taken when it still fits
    both budgets (a clip too big for the bytes left is skipped, smaller later ones may still fit).
    """
    if strategy not in STRATEGIES:
        raise LabellingError(f"strategy must be one of {', '.join(STRATEGIES)}, got {strategy!r}")
    if budget_bytes is None and budget_clips is None:
        raise LabellingError("select_clips needs an upload budget: budget_bytes and/or budget_clips")
    for name, value in (("budget_bytes", budget_bytes), ("budget_clips", budget_clips)):
        if value is not None and int(value) < 0:
            raise LabellingError(f"{name} must be >= 0, got {value}")
    scores: dict[str, float] = {}
    for r in reports:
        tok = r.get("scene_token")
        if not tok:
            raise LabellingError("a trigger report has no 'scene_token'")
        if tok in scores:
            raise LabellingError(f"clip {tok} has two trigger reports")
        scores[tok] = float(r.get("clip_score", 0.0))
    if budget_bytes is not None:
        missing = [t for t in scores if t not in bytes_by_clip]
        if missing:
            raise LabellingError(f"bytes_by_clip has no size for clip {missing[0]} ({len(missing)} missing)")
    tokens = sorted(scores)
    if strategy == "triggers":
        order = sorted(tokens, key=lambda t: (-scores[t], t))
    else:
        order = [tokens[i] for i in np.random.default_rng(int(seed)).permutation(len(tokens))]
    chosen, spent = [], 0
    for tok in order:
        if budget_clips is not None and len(chosen) >= int(budget_clips):
            break
        size = int(bytes_by_clip[tok]) if budget_bytes is not None else 0
        if budget_bytes is not None and spent + size > int(budget_bytes):
            continue
        chosen.append(tok)
        spent += size
    return chosen


def signal_summary(reports: Sequence[Mapping]) -> dict:
    """Per signal over every frame: mean, max and the fraction of frames where it fired (> 0); clip scores."""
    frames = [fr for r in reports for fr in r.get("frames", [])]
    out: dict = {"clips": len(reports), "frames": len(frames)}
    for k in SIGNALS:
        v = np.array([float(fr["signals"].get(k, 0.0)) for fr in frames], np.float64)
        out[k] = {"mean": float(v.mean()) if v.size else 0.0, "max": float(v.max()) if v.size else 0.0,
                  "fired": float((v > 0).mean()) if v.size else 0.0}
    cs = np.array([float(r.get("clip_score", 0.0)) for r in reports], np.float64)
    out["clip_score"] = {"mean": float(cs.mean()) if cs.size else 0.0, "max": float(cs.max()) if cs.size else 0.0,
                         "min": float(cs.min()) if cs.size else 0.0}
    out["top_clips"] = [r["scene_token"] for r in sorted(reports, key=lambda r: (-float(r.get("clip_score", 0.0)),
                                                                                 r["scene_token"]))[:5]]
    out["seconds"] = float(sum(float(r.get("seconds", 0.0)) for r in reports))
    return out
