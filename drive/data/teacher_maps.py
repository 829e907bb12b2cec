"""Teacher maps: what an offboard teacher saw on a keyframe, kept for distilling it into the edge model.

One ``.npz`` per keyframe, ``<dir>/<sample_token>.npz`` (no pickle), written whole or not at all:

    bev          (C, S, S) float16  the teacher's BEV features of the real world, averaged over its passes
    bev_mirror   (C, S, S) float16  the same of the y-mirrored world (the TTA passes), in the mirrored ego frame;
                                    absent when the teacher ran without mirrored passes
    heatmap      (K, S, S) float16  class probabilities (sigmoid of the detection heatmap logits), averaged over
                                    every pass, mirrored passes flipped back: the real world's ego frame
    global_T_ego (4, 4)    float64  the keyframe's ego pose, to re-align the maps with an augmented sample
    bev_range    ()        float64  the map covers ``[-range, range]`` m in x and y (row = y, col = x)
    passes       ()        int64    how many passes were averaged
    teacher      ()        str      sha256 of the teacher checkpoint (provenance)

A training sample carries only its (possibly augmented) pose; ``inv(global_T_ego_aug) @ global_T_ego`` gives
the augmentation ``A`` (``ego' = A ego``), see ``drive.losses.distill``.
"""
from __future__ import annotations

import os
import re
import zipfile
from dataclasses import dataclass
from typing import Optional

import numpy as np

from drive.data.errors import DataError
from drive.staging import staged_file

_TOKEN = re.compile(r"^[A-Za-z0-9_-]{1,128}$")  # nuScenes tokens are 32 hex digits; never a path


@dataclass
class TeacherMaps:
    bev: np.ndarray  # (C, S, S)
    heatmap: np.ndarray  # (K, S, S) probabilities
    global_T_ego: np.ndarray  # (4, 4)
    bev_range: float
    teacher: str = ""
    passes: int = 1
    bev_mirror: Optional[np.ndarray] = None  # (C, S, S) of the mirrored world, mirrored frame


def maps_path(directory: str, sample_token: str) -> str:
    """``<directory>/<sample_token>.npz``; a token that is not a plain token (``../x``, ``a/b``) is refused."""
    if not isinstance(sample_token, str) or not _TOKEN.match(sample_token):
        raise DataError(f"teacher maps: sample token {sample_token!r} is not a plain token", str(directory))
    return os.path.join(directory, f"{sample_token}.npz")


def write_teacher_maps(directory: str, sample_token: str, maps: TeacherMaps) -> str:
    """Write (or replace) a keyframe's maps atomically; returns the path."""
    _check(maps, f"teacher maps of {sample_token}")
    path = maps_path(directory, sample_token)
    arrays = {"bev": maps.bev.astype(np.float16), "heatmap": maps.heatmap.astype(np.float16),
              "global_T_ego": np.asarray(maps.global_T_ego, np.float64), "bev_range": np.float64(maps.bev_range),
              "passes": np.int64(maps.passes), "teacher": np.array(str(maps.teacher))}
    if maps.bev_mirror is not None:
        arrays["bev_mirror"] = maps.bev_mirror.astype(np.float16)
    with staged_file(path) as tmp:
        with open(tmp, "wb") as f:  # a file object: np.savez would append '.npz' to a name
            np.savez(f, **arrays)
    return path


def read_teacher_maps(path: str) -> TeacherMaps:
    """Read and check one maps file; any problem is a ``DataError`` naming the file and the field."""
    try:
        with np.load(path, allow_pickle=False) as z:
            missing = [k for k in ("bev", "heatmap", "global_T_ego", "bev_range") if k not in z.files]
            if missing:
                raise DataError(f"{path}: teacher maps without field(s) {missing}", path)
            maps = TeacherMaps(bev=z["bev"], heatmap=z["heatmap"], global_T_ego=z["global_T_ego"],
                               bev_range=float(z["bev_range"]),
                               teacher=str(z["teacher"]) if "teacher" in z.files else "",
                               passes=int(z["passes"]) if "passes" in z.files else 1,
                               bev_mirror=z["bev_mirror"] if "bev_mirror" in z.files else None)
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as e:
        raise DataError(f"{path}: unreadable teacher maps ({type(e).__name__}: {e})", path) from e
    _check(maps, path)
    return maps


def _check(m: TeacherMaps, where: str) -> None:
    if m.bev.ndim != 3 or m.bev.shape[1] != m.bev.shape[2]:
        raise DataError(f"{where}: field 'bev' must be (C, S, S), got {tuple(m.bev.shape)}", where)
    if m.heatmap.ndim != 3 or m.heatmap.shape[1:] != m.bev.shape[1:]:
        raise DataError(f"{where}: field 'heatmap' must be (K, S, S) on the bev grid {tuple(m.bev.shape[1:])}, "
                        f"got {tuple(m.heatmap.shape)}", where)
    if m.bev_mirror is not None and m.bev_mirror.shape != m.bev.shape:
        raise DataError(f"{where}: field 'bev_mirror' {tuple(m.bev_mirror.shape)} != 'bev' {tuple(m.bev.shape)}",
                        where)
    if np.asarray(m.global_T_ego).shape != (4, 4):
        raise DataError(f"{where}: field 'global_T_ego' must be 4x4", where)
    if not m.bev_range > 0:
        raise DataError(f"{where}: field 'bev_range' must be > 0, got {m.bev_range}", where)
    for name in ("bev", "heatmap", "bev_mirror"):
        a = getattr(m, name)
        if a is not None and not np.isfinite(np.asarray(a, np.float32)).all():
            raise DataError(f"{where}: field '{name}' has non-finite values", where)


class MapsAccumulator:
    """Averages a keyframe's maps over the teacher's passes.

    ``add(bev_CSS, heatmap_logits_KSS, mirrored)``: a mirrored pass's features go to ``bev_mirror`` as they are
    (mirrored frame); its class probabilities are flipped back along y (rows) and averaged with the others."""

    def __init__(self) -> None:
        self._sum: dict[str, np.ndarray] = {}
        self._n: dict[str, int] = {}

    def _add(self, key: str, a: np.ndarray) -> None:
        self._sum[key] = self._sum[key] + a if key in self._sum else a.astype(np.float32, copy=True)
        self._n[key] = self._n.get(key, 0) + 1

    def add(self, bev_CSS: np.ndarray, heatmap_logits_KSS: np.ndarray, mirrored: bool) -> None:
        prob = 1.0 / (1.0 + np.exp(-np.asarray(heatmap_logits_KSS, np.float32)))
        self._add("bev_mirror" if mirrored else "bev", np.asarray(bev_CSS, np.float32))
        self._add("heatmap", prob[:, ::-1, :] if mirrored else prob)  # row = y: the y-flip reverses rows

    @property
    def passes(self) -> int:
        return self._n.get("heatmap", 0)

    def result(self, global_T_ego: np.ndarray, bev_range: float, teacher: str) -> TeacherMaps:
        if "bev" not in self._sum:
            raise ValueError("teacher maps: no unmirrored pass was added")
        mean = {k: v / self._n[k] for k, v in self._sum.items()}
        return TeacherMaps(bev=mean["bev"], heatmap=mean["heatmap"], global_T_ego=np.asarray(global_T_ego),
                           bev_range=float(bev_range), teacher=teacher, passes=self.passes,
                           bev_mirror=mean.get("bev_mirror"))
