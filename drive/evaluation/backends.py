"""Where the model outputs come from, behind one interface: PyTorch, onnxruntime, or the ground truth.

A ``Backend`` maps one keyframe (a ``Batch`` of size 1) plus the previous BEV to ``ModelOutputs``:

* ``TorchBackend``: a ``DrivingModel`` in eval mode (``torch.no_grad``).
* ``OnnxBackend``: an exported graph (``torch.onnx.export(FlatOutputs(model), ...)``): inputs
  ``INPUT_NAMES``, outputs ``ModelOutputs.export_names()`` in order, ``bev`` included so it is looped
  back as ``prev_bev``. Names and static input shapes are checked when the session is opened.
* ``GroundTruthBackend``: an oracle that returns the targets in the ``ModelOutputs`` layout (GT boxes with
  points as score-1 detections, GT futures as mode 0, the GT ego future as the plan, the GT drivable
  raster as map logits). Scoring it checks the evaluation pipeline end to end: NDS = 1, AMOTA = 1,
  L2 = 0, collision = 0 (up to label noise); it reads targets, so it is never a result.

Only the ground-truth backend reads ``batch.targets``; the others read ``batch.features`` only.
"""
from __future__ import annotations

import os
from typing import Optional, Protocol

import numpy as np
import torch
from torch import Tensor

from drive.models.model import INPUT_NAMES, DrivingModel, ModelOutputs
from drive.types import Batch, FUTURE_STEPS

from .errors import EvalError


class Backend(Protocol):
    name: str

    @property
    def bev_shape(self) -> tuple[int, ...]:
        """(C, S, S) of the BEV carried from frame to frame."""

    def __call__(self, batch: Batch, prev_bev: Tensor, has_prev: Tensor) -> ModelOutputs:
        """Outputs of one frame (batch size 1); ``prev_bev`` zeros and ``has_prev`` 0 at a scene start."""


def model_inputs(batch: Batch, prev_bev: Tensor, has_prev: Tensor) -> tuple[Tensor, ...]:
    """The 7 graph inputs in ``INPUT_NAMES`` order."""
    f = batch.features
    return (f.images, f.ego2img, f.ego_status, f.command, prev_bev, f.prev_T_cur, has_prev)


class TorchBackend:
    def __init__(self, model: DrivingModel, name: str = "torch"):
        self.model, self.name = model.eval(), name

    @property
    def bev_shape(self) -> tuple[int, ...]:
        return tuple(self.model.bev_shape)

    @torch.no_grad()
    def __call__(self, batch: Batch, prev_bev: Tensor, has_prev: Tensor) -> ModelOutputs:
        return self.model(*model_inputs(batch, prev_bev, has_prev))


_ORT_TYPES = {"tensor(float)": np.float32, "tensor(int64)": np.int64}


class OnnxBackend:
    """onnxruntime session of an exported ``FlatOutputs(model)`` graph (CPU provider)."""

    def __init__(self, path: str, threads: Optional[int] = None, name: str = "onnx"):
        import onnxruntime as ort

        self.path, self.name = os.path.abspath(os.path.expanduser(str(path))), name
        if not os.path.isfile(self.path):
            raise EvalError(f"ONNX file not found: {self.path}")
        options = ort.SessionOptions()
        options.log_severity_level = 3
        if threads:
            options.intra_op_num_threads = int(threads)
        try:
            self.session = ort.InferenceSession(self.path, options, providers=["CPUExecutionProvider"])
        except Exception as e:
            raise EvalError(f"cannot open ONNX model {self.path}: {str(e).splitlines()[0]}") from e
        inputs = [i.name for i in self.session.get_inputs()]
        outputs = [o.name for o in self.session.get_outputs()]
        if inputs != list(INPUT_NAMES):
            raise EvalError(f"{self.path}: graph inputs {inputs} != {list(INPUT_NAMES)}")
        if outputs != list(ModelOutputs.export_names()):
            first = next((f"{i}: {a!r} != {b!r}" for i, (a, b) in enumerate(zip(outputs, ModelOutputs.export_names()))
                          if a != b), f"{len(outputs)} outputs != {len(ModelOutputs.export_names())}")
            raise EvalError(f"{self.path}: graph outputs are not ModelOutputs.export_names() (first difference "
                            f"{first})")
        self.input_shapes = {i.name: i.shape for i in self.session.get_inputs()}
        # the preprocessing recorded at export (drive.deploy.export.CROP_KEY); older graphs: no crop
        crop = self.session.get_modelmeta().custom_metadata_map.get("drive.image_crop_top", "0.0")
        try:
            self.image_crop_top = float(crop)
        except ValueError as e:
            raise EvalError(f"{self.path}: metadata drive.image_crop_top={crop!r} is not a number") from e
        self.input_types = {i.name: _ORT_TYPES.get(i.type, np.float32) for i in self.session.get_inputs()}
        shape = self.input_shapes["prev_bev"]
        if not all(isinstance(d, int) for d in shape[1:]):
            raise EvalError(f"{self.path}: prev_bev must have a static (C, S, S) shape, got {shape}")
        self._bev_shape = tuple(int(d) for d in shape[1:])

    @property
    def bev_shape(self) -> tuple[int, ...]:
        return self._bev_shape

    def check_features(self, batch: Batch) -> None:
        """Static input dims of the graph must match the data (e.g. an export for another image size)."""
        for name, x in zip(INPUT_NAMES, model_inputs(batch, torch.zeros(1, *self.bev_shape), torch.zeros(1))):
            want = self.input_shapes[name]
            if len(want) != x.dim() or any(isinstance(w, int) and w != g for w, g in zip(want, x.shape)):
                raise EvalError(f"{self.path}: input {name!r} expects shape {want}, the data gives {tuple(x.shape)} "
                                f"(exported for another config?)")

    def __call__(self, batch: Batch, prev_bev: Tensor, has_prev: Tensor) -> ModelOutputs:
        feeds = {name: x.detach().cpu().numpy().astype(self.input_types[name], copy=False)
                 for name, x in zip(INPUT_NAMES, model_inputs(batch, prev_bev, has_prev))}
        results = self.session.run(None, feeds)
        names = ModelOutputs.export_names()
        return ModelOutputs(**{n: torch.from_numpy(np.asarray(r)) for n, r in zip(names, results)})


class GroundTruthBackend:
    """The oracle of the module doc. ``num_modes`` motion modes (mode 0 = GT future, the others copies)."""

    def __init__(self, num_modes: int = 6, name: str = "ground_truth"):
        self.num_modes, self.name = int(num_modes), name

    @property
    def bev_shape(self) -> tuple[int, ...]:
        return (1, 1, 1)

    def __call__(self, batch: Batch, prev_bev: Tensor, has_prev: Tensor) -> ModelOutputs:
        t = batch.targets
        if t is None:
            raise EvalError("the ground-truth backend needs targets")
        real = t.mask & (t.num_pts > 0)  # the devkit drops GT boxes without lidar / radar points
        B, M = t.mask.shape
        scores = real.float()
        labels = torch.where(real, t.labels, torch.full_like(t.labels, -1))
        offsets = torch.where(t.future_mask[..., None], t.future - t.boxes[:, :, None, :2], torch.zeros_like(t.future))
        trajs = offsets[:, :, None].expand(B, M, self.num_modes, FUTURE_STEPS, 2).contiguous()
        mode_logits = torch.full((B, M, self.num_modes), -10.0)
        mode_logits[..., 0] = 10.0
        plan = t.ego_future.clone()
        zeros = torch.zeros(B, 1, 1, 1)
        return ModelOutputs(
            bev=prev_bev.new_zeros(B, *self.bev_shape), det_heatmap=zeros, det_regression=zeros, det_attributes=zeros,
            boxes=t.boxes.clone(), scores=scores, labels=labels, attrs=t.attributes.clone(),
            map_logits=(t.drivable * 2.0 - 1.0) * 20.0, motion_trajs=trajs, motion_mode_logits=mode_logits,
            plan=plan, plan_refined=plan.clone(), plan_change=torch.zeros(B))
