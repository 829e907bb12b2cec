"""The trigger miner: the edge model, as the car runs it, over fleet clips in temporal order.

``ClipMiner`` is the picklable spec the execution engine (``drive.labelling.engine``) ships to workers: its
``build()`` loads the edge model once (ONNX via ``OnnxBackend`` or a checkpoint via ``load_model``) and returns a
``MinerRunner``, a callable ``{"scene_token": ...} -> report`` (``triggers.clip_report`` of the clip's decoded
detections, feasibility corrections and, with a reference, BEV novelty). ``MinerRunner.run`` is the bare frame
loop, also used to fit the novelty reference (``drive.labelling.novelty.fit_base_reference``).
"""
from __future__ import annotations

import os
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Mapping, Optional, Sequence

from drive.hashing import sha256_file

from .errors import LabellingError
from .triggers import FrameObservation, TriggerConfig, clip_report


@dataclass
class ClipMiner:
    """Picklable spec of the edge trigger miner: exactly one of ``onnx_path`` (the exported edge model, as it
    runs in the car) or ``ckpt_path`` (a ``drive-train`` checkpoint, run by PyTorch).

    The network input size comes from the checkpoint's model config or the ONNX graph's ``images`` input.
    ``threads``: intra-op threads of torch / onnxruntime in the worker (1 keeps Ray actors to their CPU).
    ``reference``: the ``novelty.NoveltyReference`` (.npz) fitted with the same model, needed when the novelty
    signal has a weight.
    """

    root: str
    version: str
    onnx_path: Optional[str] = None
    ckpt_path: Optional[str] = None
    config: TriggerConfig = field(default_factory=TriggerConfig)
    threads: Optional[int] = 1
    cache_dir: Optional[str] = None
    reference: Optional[str] = None
    split: Optional[str] = None  # mine only this split's scenes (None: every scene of the version)

    def check(self) -> TriggerConfig:
        """Cheap argument checks (no model, no tables): one model source, files and root exist, a valid config,
        a novelty reference when the novelty signal has a weight, readable and fitted with this model file."""
        if bool(self.onnx_path) == bool(self.ckpt_path):
            raise LabellingError("ClipMiner needs exactly one of onnx_path (edge model) or ckpt_path (checkpoint), "
                                 f"got onnx_path={self.onnx_path!r}, ckpt_path={self.ckpt_path!r}")
        what, path = ("onnx_path", self.onnx_path) if self.onnx_path else ("ckpt_path", self.ckpt_path)
        if not os.path.isfile(os.path.expanduser(str(path))):
            raise LabellingError(f"ClipMiner {what} not found: {os.path.abspath(os.path.expanduser(str(path)))}")
        if not os.path.isdir(os.path.join(os.path.expanduser(str(self.root)), str(self.version))):
            raise LabellingError(f"ClipMiner: no {self.version} tables under root {os.path.abspath(str(self.root))}")
        cfg = self.config if isinstance(self.config, TriggerConfig) else TriggerConfig.from_dict(self.config)
        if self.reference and not os.path.isfile(str(self.reference)):
            raise LabellingError(f"ClipMiner reference not found: {os.path.abspath(str(self.reference))}")
        if cfg.weights.get("novelty", 0.0) > 0 and not self.reference:
            raise LabellingError("the novelty trigger has a weight but ClipMiner has no reference: fit one with "
                                 "drive.labelling.novelty (the loop's reference step) or set weights.novelty=0")
        if self.reference:
            self.load_reference(sha256_file(os.path.expanduser(str(path))))
        return cfg

    def load_reference(self, model_sha256: str):
        """The novelty reference, refused if unreadable or fitted with another model than ``model_sha256``."""
        from .novelty import NoveltyReference

        ref = NoveltyReference.load(str(self.reference))
        if ref.model_sha256 and ref.model_sha256 != model_sha256:
            raise LabellingError(f"novelty reference {self.reference} was fitted with model {ref.model_sha256[:12]}, "
                                 f"this miner runs {model_sha256[:12]}: features of another model")
        return ref

    def build(self) -> "MinerRunner":
        return MinerRunner(self, self.check())


class MinerRunner:
    """The built miner: the model behind a backend and every scene's keyframes indexed once."""

    def __init__(self, spec: ClipMiner, cfg: TriggerConfig):
        from drive.data.dataset import NuScenesDrivingDataset
        from drive.data.errors import DataError
        from drive.evaluation.backends import OnnxBackend, TorchBackend
        from drive.evaluation.checkpoint import load_model
        from drive.evaluation.errors import EvalError

        self.spec, self.cfg = spec, cfg
        try:
            if spec.onnx_path:
                self.backend = OnnxBackend(spec.onnx_path, spec.threads, name="edge_onnx")
                shape = self.backend.input_shapes["images"]
                if not all(isinstance(d, int) for d in shape[-2:]):
                    raise LabellingError(f"{self.backend.path}: input 'images' needs a static (H, W), got {shape}")
                image_hw = (int(shape[-2]), int(shape[-1]))
                crop = self.backend.image_crop_top
                self.model_source = {"onnx": self.backend.path, "sha256": sha256_file(self.backend.path)}
            else:
                model, model_cfg, meta = load_model(spec.ckpt_path)
                self.backend = TorchBackend(model, name="edge_torch")
                image_hw, crop = tuple(model_cfg.image_hw), model_cfg.image_crop_top
                self.model_source = {"checkpoint": meta.path, "sha256": meta.sha256}
            self.dataset = NuScenesDrivingDataset(spec.root, spec.version, split=spec.split, image_size=image_hw,
                                                  image_crop_top=crop,
                                                  with_targets=False, augment={"enabled": False},
                                                  cache_dir=spec.cache_dir)
        except (EvalError, DataError) as e:
            raise LabellingError(f"ClipMiner: {e}") from e
        self.reference = None
        if spec.reference:
            self.reference = spec.load_reference(self.model_source["sha256"])
            if self.reference.channels != int(self.backend.bev_shape[0]):
                raise LabellingError(f"novelty reference {spec.reference} has {self.reference.channels} channels, "
                                     f"the model's BEV {self.backend.bev_shape[0]}")
        self.indices: dict[str, list[int]] = {}
        for i in range(len(self.dataset)):
            self.indices.setdefault(self.dataset.record(i).scene_token, []).append(i)
        self._checked = False

    @contextmanager
    def threads(self):
        """torch's intra-op threads set to ``spec.threads`` while inside, restored after (the engine may run the
        miner inside the caller's process)."""
        import torch

        before = torch.get_num_threads()
        if self.spec.threads:
            torch.set_num_threads(int(self.spec.threads))
        try:
            yield
        finally:
            torch.set_num_threads(before)

    def run(self, indices: Sequence[int], what: str):
        """Yield ``(meta, outputs)`` of the edge model over dataset items in temporal order, carrying the BEV
        (``runner.BevStream``); ``what`` names the clip in errors."""
        from drive.data.dataset import collate
        from drive.data.errors import DataError
        from drive.evaluation.backends import OnnxBackend
        from drive.evaluation.errors import EvalError
        from drive.evaluation.runner import BevStream

        stream = BevStream(self.backend)
        for i in indices:
            try:
                batch = collate([self.dataset.load(i)])
                if not self._checked and isinstance(self.backend, OnnxBackend):
                    self.backend.check_features(batch)
                    self._checked = True
            except (DataError, EvalError) as e:
                raise LabellingError(f"clip {what}: {e}") from e
            yield batch.meta[0], stream(batch)

    def observe(self, scene_token: str) -> list[FrameObservation]:
        """Run the edge model over one clip (its keyframes first to last) and decode what the triggers read."""
        from drive.metrics.detection import boxes_to_nusc

        from .novelty import frame_novelty_at

        if scene_token not in self.indices:
            raise LabellingError(f"clip {scene_token}: no such scene in {self.dataset.root}/{self.spec.version}")
        frames = []
        for position, (meta, out) in enumerate(self.run(self.indices[scene_token], scene_token)):
            dets = boxes_to_nusc(out.boxes[0], out.scores[0], out.labels[0], out.attrs[0], meta.global_T_ego,
                                 meta.sample_token, score_threshold=self.cfg.score_threshold,
                                 max_boxes=self.cfg.max_boxes)
            bev = out.bev.detach().cpu().numpy()
            novelty = frame_novelty_at(bev, position, self.reference) if self.reference else 0.0
            frames.append(FrameObservation(meta.sample_token, int(meta.timestamp), meta.global_T_ego, dets,
                                           float(out.plan_change.reshape(-1)[0]), novelty))
        return frames

    def __call__(self, job: Mapping) -> dict:
        scene_token = job.get("scene_token") if isinstance(job, Mapping) else None
        if not scene_token:
            raise LabellingError(f"trigger job {job!r} has no 'scene_token'")
        t0 = time.time()
        with self.threads():
            frames = self.observe(str(scene_token))
        report = clip_report(str(scene_token), frames, self.cfg, seconds=0.0)
        report["seconds"] = time.time() - t0
        report["model"] = dict(self.model_source)
        return report
