"""Offline evaluation: run a model over a split in temporal order and score everything in one place.

``evaluate(options)`` (what ``drive-eval`` calls):

1. open the root (devkit), check the split, load the model (``checkpoint.load_model``) behind a backend
   (``backends``: torch / onnx / the ground-truth oracle), and the ego-status model if given;
2. run every keyframe of the split scene by scene in temporal order, carrying the previous BEV (a frame
   whose ``prev_token`` is not the frame just run, i.e. a scene start, gets zeros and ``has_prev = 0``);
3. score detection (devkit ``DetectionEval``), tracking (``drive.metrics.tracker`` + devkit
   ``TrackingEval``), motion, planning (both conventions, beside the camera-free baselines, per driving
   situation) and the drivable map, then write the report.

Outputs go to a hidden work directory inside ``out_dir`` and are moved into ``out_dir`` only after every
metric succeeded (``metrics.json`` last): a failed run leaves no partial results behind.
``results_path`` instead scores an existing detection submission (detection + tracking only).
"""
from __future__ import annotations

import json
import logging
import math
import os
import shutil
import tempfile
import time
from dataclasses import dataclass, field, replace
from typing import Optional

import numpy as np
import torch
from torch.utils.data import DataLoader

from drive.data.dataset import NuScenesDrivingDataset, collate
from drive.data.nusc import open_nuscenes, scenes_of_split
from drive.metrics.detection import evaluate_detection, write_results
from drive.metrics.tracker import samples_of_split, track_detections
from drive.metrics.tracking import evaluate_tracking
from drive.models.build import ModelConfig, build_model

from . import baselines
from .accumulate import EvalAccumulator
from .backends import GroundTruthBackend, OnnxBackend, TorchBackend
from .checkpoint import load_model, sha256_of
from .errors import EvalError
from .situations import SituationLabeller

log = logging.getLogger(__name__)

BACKENDS = ("torch", "onnx", "gt")


@dataclass
class EvalOptions:
    root: str
    version: str
    split: str
    out_dir: str
    train_split: Optional[str] = None  # fits the ego-status MLP; None: no MLP row
    backend: str = "torch"
    ckpt_path: Optional[str] = None
    ego_ckpt_path: Optional[str] = None
    onnx_path: Optional[str] = None
    results_path: Optional[str] = None
    random_init: bool = False  # backend=torch without a checkpoint: random weights (timing runs only)
    model_config: ModelConfig = field(default_factory=ModelConfig)  # used when no checkpoint gives one
    max_objects: int = 200
    cache_dir: Optional[str] = None
    cache_images: bool = True
    map_resolution: float = 0.25
    num_workers: int = 0
    threads: Optional[int] = None
    seed: int = 0
    motion_score_threshold: float = 0.0
    match_distance: float = 2.0
    plan_change_threshold: float = 0.1
    map_threshold: float = 0.5
    ego_mlp_steps: int = 3000
    num_cases: int = 2
    draw_score_threshold: float = 0.3
    render_curves: bool = True
    gif_frames: int = 0  # > 0: animate the BEV of the first scene's first frames (figures/scene.gif)
    temporal: bool = True  # False: every frame runs as a scene start (prev_bev = 0, has_prev = 0), an ablation
    report: bool = True
    resolved_config: dict = field(default_factory=dict)


def _clean(x):
    """JSON-safe copy: NaN / inf -> None, numpy scalars -> floats."""
    if isinstance(x, dict):
        return {str(k): _clean(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_clean(v) for v in x]
    if isinstance(x, (np.floating, float)):
        return float(x) if math.isfinite(float(x)) else None
    if isinstance(x, np.integer):
        return int(x)
    return x


def _write_json(path: str, payload: dict) -> None:
    with open(path, "w") as f:
        json.dump(_clean(payload), f, indent=1, allow_nan=False)


def _publish(work: str, out_dir: str, last: str = "metrics.json") -> None:
    """Move every entry of ``work`` into ``out_dir`` (replacing older ones), ``last`` at the very end."""
    names = sorted(os.listdir(work), key=lambda n: (n == last, n))
    for name in names:
        dest = os.path.join(out_dir, name)
        if os.path.isdir(dest) and not os.path.islink(dest):
            shutil.rmtree(dest)
        elif os.path.lexists(dest):
            os.remove(dest)
        os.replace(os.path.join(work, name), dest)


def evaluate(opts: EvalOptions) -> dict:
    """Run the whole evaluation; returns the metrics dict also written to ``<out_dir>/metrics.json``."""
    if opts.backend not in BACKENDS:
        raise EvalError(f"backend must be one of {', '.join(BACKENDS)}, got {opts.backend!r}")
    for ckpt in (opts.ckpt_path, opts.ego_ckpt_path):  # the user's own arguments first, before any data I/O
        if ckpt and not os.path.isfile(os.path.expanduser(str(ckpt))):
            raise EvalError(f"checkpoint not found: {os.path.abspath(os.path.expanduser(str(ckpt)))}")
    out_dir = os.path.abspath(opts.out_dir)
    os.makedirs(out_dir, exist_ok=True)
    work = tempfile.mkdtemp(prefix=".eval_partial_", dir=out_dir)
    try:
        metrics = _evaluate(opts, work)
        _publish(work, out_dir)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    log.info("evaluation written to %s", out_dir)
    return metrics


def _check_split(nusc, split: str) -> list[str]:
    if not split:
        raise EvalError("no split given (split=NAME or data.val_split)")
    return scenes_of_split(nusc, split)  # DataError for an unknown name or a split without scenes here


def _devkit(nusc, opts: EvalOptions, work: str, det_results: dict, samples: list) -> dict:
    """results_nusc.json + DetectionEval, results_track.json + TrackingEval; bad submissions -> EvalError.

    The devkit cannot load a submission without a single box (it infers the box type from the first one):
    then the scores are the ones an empty submission earns by definition (mAP = NDS = 0, AMOTA = 0) and
    ``empty`` says so.
    """
    det_path = write_results(os.path.join(work, "results_nusc.json"), det_results)
    tracks = track_detections(det_results, samples)
    track_path = write_results(os.path.join(work, "results_track.json"), tracks)
    try:
        if any(det_results.values()):
            detection = evaluate_detection(nusc, det_path, opts.split, os.path.join(work, "detection"))
        else:
            log.warning("no detections at all: mAP = NDS = 0 without running the devkit")
            detection = {"mAP": 0.0, "NDS": 0.0, "empty": True}
        if any(tracks.values()):
            tracking = evaluate_tracking(nusc, track_path, opts.split, os.path.join(work, "tracking"))
        else:
            log.warning("no tracks at all: AMOTA = 0 without running the devkit")
            tracking = {"amota": 0.0, "empty": True}
    except ValueError as e:
        raise EvalError(str(e)) from e
    return {"detection": detection, "tracking": tracking}


def _evaluate(opts: EvalOptions, work: str) -> dict:
    t_start = time.time()
    if opts.threads:
        torch.set_num_threads(int(opts.threads))
    nusc = open_nuscenes(opts.root, opts.version)
    _check_split(nusc, opts.split)
    if opts.results_path:
        return _evaluate_submission(nusc, opts, work, t_start)

    backend, model_cfg, sources = _backends(opts)
    ego_backend = sources.pop("_ego_backend", None)
    ds = NuScenesDrivingDataset(
        opts.root, opts.version, opts.split, image_size=model_cfg.image_hw, image_crop_top=model_cfg.image_crop_top,
        bev_range=model_cfg.bev_range,
        map_size=model_cfg.map.map_size, max_objects=opts.max_objects, augment={"enabled": False},
        with_targets=True, cache_dir=opts.cache_dir, cache_images=opts.cache_images,
        map_resolution=opts.map_resolution, nusc=nusc)
    if len(ds) == 0:
        raise EvalError(f"split {opts.split!r} has no keyframes in {opts.root}/{opts.version}")
    log.info("%s: %d keyframes indexed (%.1f s since start)", opts.split, len(ds), time.time() - t_start)
    t0 = time.time()
    baseline_plans, baseline_notes = _baselines(nusc, opts, ds, model_cfg)
    log.info("camera-free baselines ready in %.1f s", time.time() - t0)

    acc = EvalAccumulator(model_cfg.bev_range, opts.motion_score_threshold, opts.match_distance,
                          opts.plan_change_threshold, opts.map_threshold, opts.num_cases, opts.gif_frames)
    labeller = SituationLabeller(opts.root, opts.version)
    loader = DataLoader(ds, batch_size=1, shuffle=False, num_workers=opts.num_workers, collate_fn=collate)
    streams = [BevStream(backend, opts.temporal)] + ([BevStream(ego_backend, opts.temporal)]
                                                     if ego_backend is not None else [])
    t_loop = time.time()
    infer_s = 0.0
    for i, batch in enumerate(loader):
        if i == 0 and isinstance(backend, OnnxBackend):
            backend.check_features(batch)
        t0 = time.time()
        outs = [s(batch) for s in streams]
        infer_s += time.time() - t0
        plans = {name: p[i] for name, p in baseline_plans.items()}
        if len(outs) > 1:
            plans["model_ego_status"] = outs[1].plan_refined[0].double().numpy()
        acc.add(i, batch, outs[0], plans, labeller(batch.meta[0].sample_token, batch.targets))
    loop_s = time.time() - t_loop
    log.info("ran %d keyframes of %s in %.1f s (%.3f s/frame inference)", len(ds), opts.split, loop_s,
             infer_s / len(ds))

    metrics = _devkit(nusc, opts, work, acc.det_results, acc.samples)
    metrics["motion"] = acc.motion()
    metrics["planning"] = acc.planning()
    metrics["planning"]["situation_source"] = labeller.source
    metrics["planning"]["situation_label_counts"] = dict(labeller.sources)
    metrics["planning"]["baseline_notes"] = baseline_notes
    metrics["planning"]["l2_curves"] = acc.l2_curves()
    metrics["map"] = acc.map()
    metrics["run"] = {
        "split": opts.split, "root": os.path.abspath(opts.root), "version": opts.version, "backend": backend.name,
        "samples": len(ds), "scenes": len({s[1] for s in acc.samples}),
        "temporal_link_rate": streams[0].linked / max(len(ds), 1),
        "inference_s_per_frame": infer_s / len(ds), "loop_s": loop_s,
        "model_config": _model_summary(model_cfg), **sources,
    }
    if opts.report:
        from .report import write_report

        write_report(work, metrics, acc, ds, opts)
    metrics["run"]["total_s"] = time.time() - t_start
    metrics["config"] = opts.resolved_config
    _write_json(os.path.join(work, "metrics.json"), metrics)
    return _clean(metrics)


def _evaluate_submission(nusc, opts: EvalOptions, work: str, t_start: float) -> dict:
    path = os.path.abspath(opts.results_path)
    if not os.path.isfile(path):
        raise EvalError(f"results file not found: {path}")
    try:
        with open(path) as f:
            submission = json.load(f)
    except ValueError as e:
        raise EvalError(f"results file {path} is not JSON: {e}") from e
    if not isinstance(submission, dict) or not isinstance(submission.get("results"), dict):
        raise EvalError(f"{path} is not a nuScenes submission (needs a 'results' dict)")
    samples = samples_of_split(nusc, opts.split)
    missing = [s[0] for s in samples if s[0] not in submission["results"]]
    if missing:
        raise EvalError(f"{path} misses {len(missing)} of the {len(samples)} samples of split {opts.split!r} "
                        f"(e.g. {missing[0]})")
    results = {s[0]: submission["results"][s[0]] for s in samples}
    metrics = _devkit(nusc, opts, work, results, samples)
    metrics["run"] = {"split": opts.split, "root": os.path.abspath(opts.root), "version": opts.version,
                      "backend": "submission", "samples": len(samples), "results_path": path,
                      "results_sha256": sha256_of(path)}
    if opts.report:
        from .report import write_report

        write_report(work, metrics, None, None, opts)
    metrics["run"]["total_s"] = time.time() - t_start
    metrics["config"] = opts.resolved_config
    _write_json(os.path.join(work, "metrics.json"), metrics)
    return _clean(metrics)


# ---------------------------------------------------------------------- models and baselines

class BevStream:
    """Runs a backend frame by frame, feeding each frame the BEV of the frame before it in the same scene."""

    def __init__(self, backend, temporal: bool = True):
        self.backend, self.bev, self.token, self.linked, self.temporal = backend, None, "", 0, temporal

    def __call__(self, batch):
        meta, f = batch.meta[0], batch.features
        linked = (self.temporal and self.bev is not None and meta.prev_token != ""
                  and meta.prev_token == self.token)
        prev_bev = self.bev if linked else torch.zeros(1, *self.backend.bev_shape)
        has_prev = f.has_prev * float(linked)
        out = self.backend(batch, prev_bev, has_prev)
        self.bev, self.token = out.bev.detach().to("cpu", torch.float32), meta.sample_token
        self.linked += int(linked)
        return out


def _model_summary(cfg: ModelConfig) -> dict:
    return {"image_hw": list(cfg.image_hw), "image_crop_top": cfg.image_crop_top, "bev_size": cfg.bev_size, "bev_range": cfg.bev_range,
            "embed_dim": cfg.embed_dim, "view_transform": cfg.view_transform, "map_size": cfg.map.map_size,
            "use_ego_status": cfg.planning.use_ego_status}


def _backends(opts: EvalOptions):
    """(main backend, its ModelConfig, provenance dict incl. the optional '_ego_backend')."""
    sources: dict = {}
    model_cfg = opts.model_config
    if opts.ckpt_path:
        model, model_cfg, meta = load_model(opts.ckpt_path)
        sources["checkpoint"] = meta.summary()
    elif opts.backend == "torch" and opts.random_init:
        model = random_model(model_cfg, opts.seed)
        sources["checkpoint"] = {"random_init": True, "seed": opts.seed}
        log.warning("random_init=true: evaluating a RANDOMLY INITIALISED model (timing only, not a result)")
    elif opts.backend == "torch":
        raise EvalError("ckpt_path is required with backend=torch (or pass random_init=true for a timing run)")
    if opts.backend == "torch":
        backend = TorchBackend(model)
    elif opts.backend == "onnx":
        if not opts.onnx_path:
            raise EvalError("backend=onnx needs onnx_path=FILE")
        backend = OnnxBackend(opts.onnx_path, opts.threads)
        sources["onnx"] = {"path": backend.path, "sha256": sha256_of(backend.path)}
        if not opts.ckpt_path:  # the graph records its preprocessing; a checkpoint's config must agree with it
            model_cfg = replace(model_cfg, image_crop_top=backend.image_crop_top)
        elif abs(backend.image_crop_top - model_cfg.image_crop_top) > 1e-9:
            raise EvalError(f"{backend.path}: exported with image_crop_top {backend.image_crop_top}, the checkpoint "
                            f"says {model_cfg.image_crop_top}")
        if tuple(backend.bev_shape) != (model_cfg.embed_dim, model_cfg.bev_size, model_cfg.bev_size):
            raise EvalError(f"{backend.path}: prev_bev shape {backend.bev_shape} does not match the model config "
                            f"(C, S, S) = ({model_cfg.embed_dim}, {model_cfg.bev_size}, {model_cfg.bev_size})")
    else:
        backend = GroundTruthBackend(model_cfg.motion.num_modes)
    if opts.ego_ckpt_path:
        ego, ego_cfg, ego_meta = load_model(opts.ego_ckpt_path)
        for what, a, b in (("image_hw", tuple(ego_cfg.image_hw), tuple(model_cfg.image_hw)),
                           ("image_crop_top", ego_cfg.image_crop_top, model_cfg.image_crop_top),
                           ("bev_range", ego_cfg.bev_range, model_cfg.bev_range),
                           ("map.map_size", ego_cfg.map.map_size, model_cfg.map.map_size)):
            if a != b:
                raise EvalError(f"ego_ckpt_path {ego_meta.path}: model.{what} {a} differs from the main model's {b}; "
                                f"both must read the same data")
        if not ego_cfg.planning.use_ego_status:
            log.warning("ego_ckpt_path %s was trained with planning.use_ego_status=false", ego_meta.path)
        sources["ego_checkpoint"] = {**ego_meta.summary(), "use_ego_status": ego_cfg.planning.use_ego_status}
        sources["_ego_backend"] = TorchBackend(ego, name="torch_ego_status")
    return backend, model_cfg, sources


def random_model(cfg: ModelConfig, seed: int = 0):
    """A randomly initialised model (timing runs without a trained checkpoint)."""
    torch.manual_seed(seed)
    return build_model(cfg).eval()


def _baselines(nusc, opts: EvalOptions, ds: NuScenesDrivingDataset, model_cfg: ModelConfig):
    """Plans ``(N, 6, 2)`` of the camera-free baselines over ``ds`` (in its order) and notes for the report."""
    arr = baselines.ego_arrays(ds)
    plans = {"constant_velocity": baselines.constant_velocity(arr.past, arr.past_mask, arr.status),
             "straight_line": baselines.straight_line(arr.status)}
    notes = []
    if not opts.train_split:
        notes.append("no train split configured: the ego-status MLP row is missing")
        return plans, notes
    train = NuScenesDrivingDataset(opts.root, opts.version, opts.train_split, image_size=model_cfg.image_hw,
                                   bev_range=model_cfg.bev_range, map_size=model_cfg.map.map_size,
                                   with_targets=False, augment={"enabled": False}, nusc=nusc,
                                   cache_dir=opts.cache_dir)
    train_arr = baselines.ego_arrays(train)
    if len(train) == 0 or not train_arr.future_mask.any():
        notes.append(f"train split {opts.train_split!r} has no usable keyframes: the ego-status MLP row is missing")
        return plans, notes
    if opts.train_split == opts.split:
        notes.append(f"the ego-status MLP was fit on the evaluated split {opts.split!r} itself (not held out)")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # a tiny MLP: extra threads only add synchronisation (8x slower on 2 busy cores)
    try:
        mlp = baselines.fit_ego_mlp(train_arr, steps=opts.ego_mlp_steps, seed=opts.seed)
        plans["ego_mlp"] = baselines.predict_ego_mlp(mlp, arr)
    finally:
        torch.set_num_threads(threads)
    notes.append(f"ego-status MLP fit on {opts.train_split!r} ({len(train)} keyframes, {opts.ego_mlp_steps} steps)")
    return plans, notes
