"""The offboard teacher's maths: fuse the boxes of several inference passes, then refine them as tracks.

Both steps work on ``Detections`` (the boxes of one keyframe as arrays, GLOBAL frame, nuScenes ``size``
order ``w, l, h``) so they can be tested on hand-made boxes without a model or a data set.

``fuse_passes``: every pass (forward, backward, mirrored ...) saw the same keyframe. Per class, boxes are
clustered greedily by descending score: the best unclustered box seeds a cluster, which then takes the
nearest unclustered box of every OTHER pass within ``fuse_distance`` (centre distance, metres), so a cluster
holds at most one box per pass. The fused box is the score-weighted mean of the members' centres, sizes and
velocities and their weighted circular mean yaw (member headings first aligned modulo 180 degrees to the
seed's, so a pass that flipped a heading does not average it to a right angle). Its confidence is the sum of
the member scores divided by the number of passes: a box one of four passes saw at 0.8 gets 0.2.
Velocities of time-reversed passes can be excluded (``vel_weight`` 0 for their members).

``associate`` + ``refine_tracks``: the fused boxes of the whole clip become tracks (greedy, per class,
constant-velocity prediction, a track may miss ``max_gap`` frames), and each track is refined as a whole:

* one size (score-weighted median of each dimension);
* positions smoothed with a score-weighted local linear fit in time over a centred window of
  ``window`` keyframes (a straight line through few points: robust, exact on constant velocity);
* headings made consistent (each aligned modulo 180 degrees to the previous one, then the whole track
  turned by 180 degrees if most score disagrees), unwrapped, smoothed by the same fit and wrapped back;
* velocities from the smoothed positions' finite differences (``np.gradient`` over timestamps, m/s);
* frames missing inside a track (at most ``max_gap`` in a row) filled from the same fit;
* tracks shorter than ``min_len`` observed frames AND with a mean score below ``min_score`` dropped;
* per box confidence ``blend * track mean score + (1 - blend) * the box's own`` (a filled box's own score
  is the mean of the two observations around the gap).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Mapping, Optional, Sequence, Union

import numpy as np

from drive.types import CLASSES

# Association gates (metres between a track's constant-velocity prediction and a box's centre, for one keyframe
# step; sqrt(steps) times that over a gap). After the prediction the residual is position noise plus velocity
# error times 0.5 s, not the object's motion, so these are much tighter than a tracker's raw-distance gates.
ASSOCIATION_GATE: dict[str, float] = {
    "car": 2.0, "truck": 2.5, "bus": 3.0, "trailer": 2.5, "construction_vehicle": 2.5, "pedestrian": 1.0,
    "motorcycle": 2.0, "bicycle": 1.5, "barrier": 1.0, "traffic_cone": 0.8,
}


def wrap(a):
    """Angles to ``[-pi, pi)``."""
    return (np.asarray(a, np.float64) + np.pi) % (2.0 * np.pi) - np.pi


@dataclass
class Detections:
    """N boxes of one keyframe, global frame. ``source``: pass index (raw) or members seen (fused)."""

    center: np.ndarray  # (N, 3)
    size: np.ndarray  # (N, 3) w, l, h
    yaw: np.ndarray  # (N,)
    velocity: np.ndarray  # (N, 2)
    score: np.ndarray  # (N,)
    label: np.ndarray  # (N,) int64 into CLASSES
    attr: list = field(default_factory=list)  # (N,) attribute names ('' none)
    source: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))  # (N,)
    vel_weight: np.ndarray = field(default_factory=lambda: np.zeros(0))  # (N,) 0: velocity not usable

    def __post_init__(self) -> None:
        n = len(self.score)
        self.center = np.asarray(self.center, np.float64).reshape(n, 3)
        self.size = np.asarray(self.size, np.float64).reshape(n, 3)
        self.yaw = np.asarray(self.yaw, np.float64).reshape(n)
        self.velocity = np.asarray(self.velocity, np.float64).reshape(n, 2)
        self.score = np.asarray(self.score, np.float64).reshape(n)
        self.label = np.asarray(self.label, np.int64).reshape(n)
        self.attr = list(self.attr) if len(self.attr) == n else [""] * n
        self.source = np.asarray(self.source, np.int64).reshape(-1) if len(self.source) == n else np.zeros(n, np.int64)
        self.vel_weight = np.asarray(self.vel_weight, np.float64) if len(self.vel_weight) == n else np.ones(n)

    def __len__(self) -> int:
        return len(self.score)

    @classmethod
    def empty(cls) -> "Detections":
        return cls(np.zeros((0, 3)), np.zeros((0, 3)), np.zeros(0), np.zeros((0, 2)), np.zeros(0), np.zeros(0))

    @classmethod
    def concat(cls, parts: Sequence["Detections"]) -> "Detections":
        parts = [p for p in parts if len(p)]
        if not parts:
            return cls.empty()
        cat = lambda name: np.concatenate([getattr(p, name) for p in parts])  # noqa: E731
        return cls(cat("center"), cat("size"), cat("yaw"), cat("velocity"), cat("score"), cat("label"),
                   [a for p in parts for a in p.attr], cat("source"), cat("vel_weight"))

    def select(self, idx) -> "Detections":
        idx = np.asarray(idx, np.int64).reshape(-1)
        return Detections(self.center[idx], self.size[idx], self.yaw[idx], self.velocity[idx], self.score[idx],
                          self.label[idx], [self.attr[i] for i in idx], self.source[idx], self.vel_weight[idx])


def circular_mean(angles: np.ndarray, weights: np.ndarray) -> float:
    return float(np.arctan2(np.sum(weights * np.sin(angles)), np.sum(weights * np.cos(angles))))


def align_axial(yaw: np.ndarray, reference: float) -> np.ndarray:
    """``yaw`` turned by 180 degrees where it is more than 90 degrees away from ``reference``."""
    yaw = np.asarray(yaw, np.float64)
    return np.where(np.abs(wrap(yaw - reference)) > np.pi / 2, wrap(yaw + np.pi), yaw)


def fuse_distance_of(fuse_distance: Union[float, Mapping[str, float]], name: str) -> float:
    if isinstance(fuse_distance, Mapping):
        return float(fuse_distance.get(name, fuse_distance.get("default", 1.0)))
    return float(fuse_distance)


def fuse_passes(dets: Detections, num_passes: int,
                fuse_distance: Union[float, Mapping[str, float]] = 1.0) -> Detections:
    """Fuse the boxes of ``num_passes`` passes of one keyframe (``dets.source`` = pass index); see the module doc.

    The result's ``source`` is the number of passes that saw each fused box; ``vel_weight`` 0 where no member
    had a usable velocity (the members' plain mean is used then).
    """
    if num_passes < 1:
        raise ValueError(f"num_passes must be >= 1, got {num_passes}")
    if len(dets) == 0:
        return Detections.empty()
    if dets.source.max() >= num_passes or dets.source.min() < 0:
        raise ValueError(f"pass indices must lie in [0, {num_passes}), got {sorted(set(dets.source.tolist()))}")
    clusters: list[np.ndarray] = []
    for label in np.unique(dets.label):
        idx = np.nonzero(dets.label == label)[0]
        idx = idx[np.argsort(-dets.score[idx], kind="stable")]
        radius = fuse_distance_of(fuse_distance, CLASSES[int(label)])
        free = np.ones(len(idx), bool)
        xy = dets.center[idx, :2]
        for a in range(len(idx)):
            if not free[a]:
                continue
            free[a] = False
            members = [a]
            d = np.linalg.norm(xy - xy[a], axis=1)
            for p in range(num_passes):
                if p == dets.source[idx[a]]:
                    continue
                cand = np.nonzero(free & (dets.source[idx] == p) & (d <= radius))[0]
                if len(cand):
                    b = cand[np.argmin(d[cand])]
                    free[b] = False
                    members.append(b)
            clusters.append(idx[members])
    out = [_fuse_cluster(dets, m, num_passes) for m in clusters]
    fused = Detections.concat(out)
    order = np.argsort(-fused.score, kind="stable")
    return fused.select(order)


def _fuse_cluster(dets: Detections, members: np.ndarray, num_passes: int) -> Detections:
    w = dets.score[members]
    w = w if w.sum() > 0 else np.ones(len(members))
    seed = int(members[0])  # the highest score: clusters are seeded in descending score order
    yaw = circular_mean(align_axial(dets.yaw[members], dets.yaw[seed]), w)
    vw = w * dets.vel_weight[members]
    if vw.sum() > 0:
        vel, vel_ok = (vw[:, None] * dets.velocity[members]).sum(0) / vw.sum(), 1.0
    else:
        vel, vel_ok = (w[:, None] * dets.velocity[members]).sum(0) / w.sum(), 0.0
    return Detections(
        center=(w[:, None] * dets.center[members]).sum(0) / w.sum(),
        size=(w[:, None] * dets.size[members]).sum(0) / w.sum(),
        yaw=[yaw], velocity=vel, score=[dets.score[members].sum() / num_passes], label=[dets.label[seed]],
        attr=[dets.attr[seed]], source=[len(members)], vel_weight=[vel_ok])


# ------------------------------------------------------------------------------------------ tracks

@dataclass
class Track:
    """One object over the clip: ``obs`` = (frame index, box index) of its fused boxes in time order."""

    label: int
    obs: list = field(default_factory=list)


def associate(frames: Sequence[Detections], timestamps_s: Sequence[float], max_gap: int = 2,
              gates: Optional[Mapping[str, float]] = None) -> list[Track]:
    """Greedy association of every fused box of the clip into tracks (per class, in time order).

    A track's position at a new frame is predicted with constant velocity (the mean of its last box's velocity
    and, from two observations on, the finite difference of its last two centres; the latter alone when the
    box's velocity is marked unusable, ``vel_weight`` 0); then (box, track) pairs of
    one class are taken greedily by ascending distance, within ``ASSOCIATION_GATE[class] * sqrt(steps)``. A
    track missing more than ``max_gap`` frames in a row is closed; every box not taken starts a track, so
    every box belongs to exactly one track.
    """
    gates = dict(ASSOCIATION_GATE if gates is None else gates)
    t = np.asarray(timestamps_s, np.float64)
    tracks: list[Track] = []
    open_: list[int] = []
    for f, dets in enumerate(frames):
        open_ = [k for k in open_ if f - tracks[k].obs[-1][0] <= max_gap + 1]
        pairs = []
        for j, k in enumerate(open_):
            tr = tracks[k]
            lf, li = tr.obs[-1]
            last = frames[lf].center[li, :2]
            vel = frames[lf].velocity[li]
            if len(tr.obs) >= 2:
                pf, pi = tr.obs[-2]
                diff = (last - frames[pf].center[pi, :2]) / max(t[lf] - t[pf], 1e-3)
                vel = 0.5 * (vel + diff) if frames[lf].vel_weight[li] > 0 else diff
            pred = last + vel * (t[f] - t[lf])
            for i in np.nonzero(dets.label == tr.label)[0]:
                d = float(np.linalg.norm(dets.center[i, :2] - pred))
                if d <= gates.get(CLASSES[tr.label], 2.0) * np.sqrt(f - lf):
                    pairs.append((d, -float(dets.score[i]), int(i), k))
        box_taken, track_taken = set(), set()
        for _, _, i, k in sorted(pairs):
            if i not in box_taken and k not in track_taken:
                box_taken.add(i)
                track_taken.add(k)
                tracks[k].obs.append((f, i))
        for i in range(len(dets)):
            if i not in box_taken:
                tracks.append(Track(int(dets.label[i]), [(f, i)]))
                open_.append(len(tracks) - 1)
    return tracks


def weighted_median(values: np.ndarray, weights: np.ndarray) -> float:
    order = np.argsort(values, kind="stable")
    v, w = np.asarray(values, np.float64)[order], np.asarray(weights, np.float64)[order]
    if w.sum() <= 0:
        w = np.ones_like(w)
    cum = np.cumsum(w)
    return float(v[np.searchsorted(cum, 0.5 * cum[-1])])


def local_linear(t_obs: np.ndarray, y_obs: np.ndarray, w_obs: np.ndarray, f_obs: np.ndarray, t_out: np.ndarray,
                 f_out: np.ndarray, half: int) -> np.ndarray:
    """Value at each output time of a weighted straight-line fit through the observations whose frame index
    lies within ``half`` frames of the output frame (``y_obs`` may be ``(n,)`` or ``(n, d)``)."""
    y = np.asarray(y_obs, np.float64)
    flat = y.reshape(len(y), -1)
    out = np.zeros((len(t_out), flat.shape[1]))
    for k, (tt, ff) in enumerate(zip(t_out, f_out)):
        near = np.abs(f_obs - ff) <= half
        ts, ys, ws = t_obs[near] - tt, flat[near], np.maximum(w_obs[near], 1e-6)
        if len(ts) == 0:  # cannot happen for frames inside the track; keep the nearest observation
            out[k] = flat[np.argmin(np.abs(f_obs - ff))]
            continue
        if len(ts) == 1 or np.ptp(ts) < 1e-6:
            out[k] = (ws[:, None] * ys).sum(0) / ws.sum()
            continue
        A = np.stack([np.ones_like(ts), ts], axis=1) * np.sqrt(ws)[:, None]
        coef, *_ = np.linalg.lstsq(A, ys * np.sqrt(ws)[:, None], rcond=None)
        out[k] = coef[0]  # the line's value at t_out (ts are relative to it)
    return out.reshape((len(t_out),) + y.shape[1:])


def consistent_headings(yaw: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """Unwrapped headings: each turned by 180 degrees if it is > 90 degrees from the previous one, then the
    whole track turned by 180 degrees if most of the score disagrees with the raw headings."""
    yaw = np.asarray(yaw, np.float64)
    out = yaw.copy()
    for i in range(1, len(yaw)):
        step = wrap(align_axial(yaw[i], out[i - 1]) - out[i - 1])
        out[i] = out[i - 1] + step
    agree = np.sum(weights * np.cos(out - yaw))
    return out + np.pi if agree < 0 else out


@dataclass
class RefinedBox:
    """A box of a refined track (global frame) at clip frame ``frame``."""

    frame: int
    track: int
    center: np.ndarray
    size: np.ndarray
    yaw: float
    velocity: np.ndarray
    score: float  # blended confidence
    own_score: float
    label: int
    attr: str
    filled: bool  # True: interpolated over a gap, no fused box behind it
    source: int  # passes that saw it (0 when filled)


def refine_tracks(frames: Sequence[Detections], timestamps_s: Sequence[float], tracks: Sequence[Track],
                  window: int = 5, min_len: int = 2, min_score: float = 0.3,
                  blend: float = 0.5) -> tuple[list[RefinedBox], dict]:
    """Refine every track (see the module doc); returns the boxes and counts (tracks kept / dropped, filled)."""
    t_all = np.asarray(timestamps_s, np.float64)
    half = max(int(window) // 2, 0)
    out: list[RefinedBox] = []
    stats = {"tracks": 0, "tracks_dropped": 0, "boxes_filled": 0}
    for k, tr in enumerate(tracks):
        f_obs = np.array([f for f, _ in tr.obs])
        boxes = [frames[f].select([i]) for f, i in tr.obs]
        det = Detections.concat(boxes)
        mean_score = float(det.score.mean())
        if len(f_obs) < min_len and mean_score < min_score:
            stats["tracks_dropped"] += 1
            continue
        stats["tracks"] += 1
        w = det.score
        t_obs = t_all[f_obs]
        f_out = np.arange(f_obs[0], f_obs[-1] + 1)
        t_out = t_all[f_out]
        size = np.array([weighted_median(det.size[:, d], w) for d in range(3)])
        center = local_linear(t_obs, det.center, w, f_obs, t_out, f_out, half)
        yaw = wrap(local_linear(t_obs, consistent_headings(det.yaw, w), w, f_obs, t_out, f_out, half))
        if len(f_out) >= 2:
            vel = np.gradient(center[:, :2], t_out, axis=0)
        else:
            vel = det.velocity.copy()
        row = {f: j for j, f in enumerate(f_obs)}
        for j, f in enumerate(f_out):
            if f in row:
                i = row[f]
                own, attr, label_src, filled = float(det.score[i]), det.attr[i], int(det.source[i]), False
            else:
                before = max(i for i, ff in enumerate(f_obs) if ff < f)
                own = float(0.5 * (det.score[before] + det.score[before + 1]))
                attr, label_src, filled = det.attr[before], 0, True
                stats["boxes_filled"] += 1
            out.append(RefinedBox(frame=int(f), track=k, center=center[j], size=size, yaw=float(yaw[j]),
                                  velocity=vel[j], score=blend * mean_score + (1.0 - blend) * own, own_score=own,
                                  label=tr.label, attr=attr, filled=filled, source=label_src))
    return out, stats
