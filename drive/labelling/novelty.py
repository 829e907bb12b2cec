"""The novelty trigger: how far a frame's BEV features lie from those of the data the edge model was trained on.

The counting triggers (uncertainty, flicker, rare) read the model's *outputs*, so they fire only on what the
model already detects, and they are confounded with how busy a clip is: on three probe fleets every one of them
ranked long-tail clips *below* ordinary ones (BENCHMARKS.md, triggers rows of 2026-12-07 15:50-15:58: likely
because the long tail makes the ego stop and wait, so fewer tracks are born and die). Novelty reads the model's *features* instead,
the Mahalanobis out-of-distribution recipe (Lee et al., NeurIPS 2018) applied to the BEV map the car computes
anyway:

* a frame's descriptor is the mean and the standard deviation of each BEV channel over the map (2C numbers:
  what kind of scene it is and how much is going on where);
* ``fit_reference``: one Gaussian (mean, shrunk covariance) over the descriptors of reference frames: the
  base world the model was trained on, run through the same model (``fit_base_reference``);
* ``frame_novelty``: the squared Mahalanobis distance of a frame's descriptor, divided by the median distance
  of *held-out* reference frames (two folds by scene: fitted on one half, scored on the other), so 1.0 is a
  typical unseen frame of the training world whatever the model, its channel count or the shrinkage;
* ``warmup``: the first frames of a clip, whose temporal BEV has no or little history, are left out of the fit
  and score no novelty: on the loop's first fleet the mean novelty of frames 1, 2, 3 of a clip was 1.25, 0.80,
  0.79 against 0.6-0.65 from frame 5 on, so an unsettled BEV, not the scene, would decide. In the car clips are
  cut from continuous driving and every frame has history.

Per-cell distances (a Gaussian over the C-dim cell features, top 1 % of cells per frame) were tried first and
carried no signal on the probe fleets (AUC 0.46-0.54). In the car the descriptor is one pass over the BEV and a
(2C)^2 product (16 k multiply-adds at C = 64); the reference is a few hundred kB shipped beside the model
(``NoveltyReference.save`` / ``load``: an ``.npz`` without pickles).
"""
from __future__ import annotations

import os
import tempfile
from dataclasses import dataclass
from typing import Optional, Sequence

import numpy as np

from .errors import LabellingError

REFERENCE_KEYS = ("mean", "precision", "median", "shrinkage", "frames", "model_sha256", "warmup")


@dataclass
class NoveltyReference:
    """A Gaussian over BEV frame descriptors and the held-out median distance (the unit of novelty)."""

    mean: np.ndarray  # (2C,)
    precision: np.ndarray  # (2C, 2C), inverse of the shrunk covariance
    median: float  # median squared distance of held-out reference frames
    shrinkage: float
    frames: int
    model_sha256: str = ""
    warmup: int = 0  # frames at a clip's start that score no novelty (``frame_novelty_at``)

    @property
    def channels(self) -> int:
        """C, the BEV channels the reference was fitted on."""
        return int(self.mean.shape[0]) // 2

    def save(self, path: str) -> str:
        """Write atomically (temp file + rename); returns the path."""
        d = os.path.dirname(os.path.abspath(path))
        os.makedirs(d, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=".novelty-", suffix=".npz", dir=d)
        os.close(fd)
        try:
            np.savez(tmp, mean=self.mean.astype(np.float64), precision=self.precision.astype(np.float64),
                     median=np.float64(self.median), shrinkage=np.float64(self.shrinkage),
                     frames=np.int64(self.frames), model_sha256=np.str_(self.model_sha256),
                     warmup=np.int64(self.warmup))
            os.replace(tmp, path)
        finally:
            if os.path.exists(tmp):
                os.remove(tmp)
        return path

    @classmethod
    def load(cls, path: str) -> "NoveltyReference":
        try:
            with np.load(path, allow_pickle=False) as z:
                fields = {k: z[k] for k in REFERENCE_KEYS if k in z.files}
        except (OSError, ValueError) as e:
            raise LabellingError(f"novelty reference {path}: {e}") from e
        missing = [k for k in REFERENCE_KEYS if k not in fields]
        if missing:
            raise LabellingError(f"novelty reference {path}: field {missing[0]!r} missing")
        try:
            ref = cls(mean=fields["mean"], precision=fields["precision"], median=float(fields["median"]),
                      shrinkage=float(fields["shrinkage"]), frames=int(fields["frames"]),
                      model_sha256=str(fields["model_sha256"]), warmup=int(fields["warmup"]))
        except (TypeError, ValueError) as e:
            raise LabellingError(f"novelty reference {path}: {e}") from e
        n = ref.mean.shape
        if len(n) != 1 or n[0] % 2 or ref.precision.shape != (n[0], n[0]) or not ref.median > 0:
            raise LabellingError(f"novelty reference {path}: mean {ref.mean.shape}, precision {ref.precision.shape}, "
                                 f"median {ref.median} are inconsistent")
        return ref


def descriptor(bev) -> np.ndarray:
    """(C, S, S) or (1, C, S, S) BEV features -> (2C,): each channel's mean, then its standard deviation."""
    a = np.asarray(bev, np.float64)
    if a.ndim == 4 and a.shape[0] == 1:
        a = a[0]
    if a.ndim != 3:
        raise LabellingError(f"novelty: BEV features must be (C, S, S), got shape {tuple(np.shape(bev))}")
    x = a.reshape(a.shape[0], -1)
    return np.concatenate([x.mean(1), x.std(1)])


def mahalanobis2(x: np.ndarray, mean: np.ndarray, precision: np.ndarray) -> np.ndarray:
    """Squared Mahalanobis distance of each row of ``x`` ((N, D) or (D,))."""
    x = np.atleast_2d(np.asarray(x, np.float64))
    if x.shape[1] != mean.shape[0]:
        raise LabellingError(f"novelty: descriptor of {x.shape[1]} numbers, the reference {mean.shape[0]}")
    d = x - mean
    return np.einsum("nc,nc->n", d @ precision, d)


def gaussian(x: np.ndarray, shrinkage: float) -> tuple[np.ndarray, np.ndarray]:
    """(mean, precision) of the rows of ``x``; the covariance is ``(1 - a) S + a tr(S) / D I`` (keeps it
    invertible with fewer frames than numbers, or dead / collinear ReLU channels)."""
    mean = x.mean(0)
    cov = np.cov(x, rowvar=False).reshape(x.shape[1], x.shape[1])
    dim = cov.shape[0]
    cov = (1.0 - shrinkage) * cov + shrinkage * max(np.trace(cov) / dim, 1e-12) * np.eye(dim)
    return mean, np.linalg.pinv(cov, hermitian=True)


def frame_novelty(bev, ref: NoveltyReference) -> float:
    """Squared distance of one frame's descriptor in units of the held-out reference median (1.0: typical)."""
    return float(mahalanobis2(descriptor(bev), ref.mean, ref.precision)[0] / ref.median)


def frame_novelty_at(bev, position: int, ref: NoveltyReference) -> float:
    """``frame_novelty`` of the ``position``-th frame of a clip (0: its first); 0.0 inside the warm-up."""
    return frame_novelty(bev, ref) if int(position) >= ref.warmup else 0.0


def fit_reference(bevs: Sequence, groups: Optional[Sequence] = None, shrinkage: float = 0.05,
                  model_sha256: str = "", warmup: int = 0) -> NoveltyReference:
    """Fit the Gaussian to the descriptors of ``bevs`` ((C, S, S) each) and its unit on held-out frames.

    ``groups``: one label per frame (its scene); the unit is the median distance of each half of the groups
    under the Gaussian of the other half (frames of one scene are alike, so they must not be split across
    folds). Without groups the frames alternate between the folds. ``warmup`` is only recorded: pass frames
    from after each clip's warm-up.
    """
    if not 0.0 < shrinkage < 1.0:
        raise LabellingError(f"novelty shrinkage must be in (0, 1), got {shrinkage}")
    if len(bevs) < 4:
        raise LabellingError(f"novelty reference needs at least 4 frames, got {len(bevs)}")
    shapes = {np.shape(b)[-3] if np.ndim(b) >= 3 else None for b in bevs}
    if len(shapes) != 1:
        raise LabellingError(f"novelty reference: frames with different channel counts {sorted(map(str, shapes))}")
    x = np.stack([descriptor(b) for b in bevs])
    labels = list(groups) if groups is not None else list(range(len(bevs)))
    if len(labels) != len(bevs):
        raise LabellingError(f"novelty reference: {len(labels)} groups for {len(bevs)} frames")
    rank = {g: i for i, g in enumerate(sorted(set(map(str, labels))))}
    fold = np.array([rank[str(g)] % 2 for g in labels], bool)
    if fold.all() or not fold.any() or min(fold.sum(), (~fold).sum()) < 2:
        raise LabellingError("novelty reference: the held-out unit needs at least two groups of 2+ frames")
    held = np.concatenate([mahalanobis2(x[~f], *gaussian(x[f], shrinkage)) for f in (fold, ~fold)])
    median = float(np.median(held))
    if not median > 0:
        raise LabellingError("novelty reference: every reference frame has the same features")
    mean, precision = gaussian(x, shrinkage)
    return NoveltyReference(mean, precision, median, float(shrinkage), len(bevs), model_sha256, int(warmup))


def fit_base_reference(root: str, version: str, split: str, onnx_path: Optional[str] = None,
                       ckpt_path: Optional[str] = None, keyframes: int = 10, shrinkage: float = 0.05,
                       warmup: int = 2, threads: Optional[int] = 1) -> NoveltyReference:
    """The reference of an edge model (exported graph or checkpoint): fitted on the first ``keyframes`` keyframes
    of every scene of a labelled split (the data it was trained on), each run as a clip in the car runs, without
    each clip's first ``warmup`` frames."""
    from .miner import ClipMiner
    from .triggers import TriggerConfig

    if not 0 <= int(warmup) < int(keyframes):
        raise LabellingError(f"novelty reference: need 0 <= warmup < keyframes, got warmup {warmup}, "
                             f"keyframes {keyframes}")
    runner = ClipMiner(root=root, version=version, split=split, onnx_path=onnx_path, ckpt_path=ckpt_path,
                       config=TriggerConfig(weights={"uncertainty": 1.0}), threads=threads).build()
    if not runner.indices:
        raise LabellingError(f"novelty reference: split {split!r} of {root}/{version} has no scene")
    bevs, groups = [], []
    with runner.threads():
        for tok, idxs in sorted(runner.indices.items()):
            for position, (_, out) in enumerate(runner.run(idxs[: int(keyframes)], tok)):
                if position >= int(warmup):
                    bevs.append(out.bev.detach().cpu().numpy()[0].astype(np.float32))
                    groups.append(tok)
    return fit_reference(bevs, groups, shrinkage, runner.model_source.get("sha256", ""), int(warmup))
