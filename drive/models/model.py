"""The composed driving model: images -> BEV -> detection, map, motion, planning, feasibility.

``DrivingModel`` receives its parts as constructor arguments and its ``forward`` is inference
only: tensors in, a typed ``ModelOutputs`` out, no ground truth, no branching on data. The
optional ``query_boxes`` / ``query_labels`` / ``query_mask`` let a training system ask the
motion head for extra agents (e.g. the ground-truth boxes, teacher forcing); they are not
used by export and do not change any other output. Likewise ``return_image_feats=True`` adds the
camera feature map (for a training-only auxiliary head, ``drive/models/heads/perspective.py``).
"""
from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Optional, Union

from torch import Tensor, nn

from drive.models.backbone import ResNetBackbone
from drive.models.feasibility import FeasibilityLayer
from drive.models.heads.detection import CenterPointHead
from drive.models.heads.map_seg import MapSegHead
from drive.models.heads.motion import MotionHead
from drive.models.heads.planning import PlanningHead
from drive.models.neck import FPN
from drive.models.temporal import mix_first_frame, warp_prev_bev
from drive.models.view_transform_bevformer import BEVFormerViewTransform
from drive.models.view_transform_lss import BilinearLiftViewTransform
from drive.types import TensorContainer

ViewTransform = Union[BEVFormerViewTransform, BilinearLiftViewTransform]


@dataclass
class ModelOutputs(TensorContainer):
    bev: Tensor  # (B, C, S, S) BEV map; feed back as next frame's prev_bev
    det_heatmap: Tensor  # (B, 10, S, S) class heatmap logits
    det_regression: Tensor  # (B, 10, S, S) offset(2) z log-size(3) sin cos vel(2), see heads/detection.py
    det_attributes: Tensor  # (B, 8, S, S) attribute logits
    boxes: Tensor  # (B, K, 9) x y z l w h yaw vx vy, ego frame
    scores: Tensor  # (B, K)
    labels: Tensor  # (B, K) int64 into CLASSES
    attrs: Tensor  # (B, K) int64 into ATTRIBUTES, -1 for none
    map_logits: Tensor  # (B, Sm, Sm) drivable logits, row = y, col = x
    motion_trajs: Tensor  # (B, K, M, T, 2) cumulative offsets from each box centre, ego frame
    motion_mode_logits: Tensor  # (B, K, M)
    plan: Tensor  # (B, T, 2) planning head output, ego frame, cumulative
    plan_refined: Tensor  # (B, T, 2) after the feasibility layer
    plan_change: Tensor  # (B,) max waypoint displacement by the feasibility layer, metres
    query_trajs: Optional[Tensor] = None  # (B, Q, M, T, 2) for query_boxes, if given
    query_mode_logits: Optional[Tensor] = None  # (B, Q, M)
    image_feats: Optional[Tensor] = None  # (B, N, C, h, w) finest camera features, if asked (training only)

    def to_tuple(self) -> tuple[Tensor, ...]:
        """The non-None outputs in field order (what the ONNX graph returns)."""
        return tuple(getattr(self, n) for n in self.names() if getattr(self, n) is not None)

    @classmethod
    def names(cls) -> tuple[str, ...]:
        return tuple(f.name for f in fields(cls))

    @classmethod
    def export_names(cls) -> tuple[str, ...]:
        return tuple(n for n in cls.names() if n not in TRAINING_ONLY)


TRAINING_ONLY = ("query_trajs", "query_mode_logits", "image_feats")  # never graph outputs
INPUT_NAMES = ("images", "ego2img", "ego_status", "command", "prev_bev", "prev_T_cur", "has_prev")


class DrivingModel(nn.Module):
    def __init__(self, backbone: ResNetBackbone, neck: FPN, view_transform: ViewTransform,
                 detection_head: CenterPointHead, map_head: MapSegHead, motion_head: MotionHead,
                 planning_head: PlanningHead, feasibility: FeasibilityLayer) -> None:
        super().__init__()
        self.backbone, self.neck, self.view_transform = backbone, neck, view_transform
        self.detection_head, self.map_head = detection_head, map_head
        self.motion_head, self.planning_head, self.feasibility = motion_head, planning_head, feasibility

    @property
    def bev_shape(self) -> tuple[int, int, int]:
        """(C, S, S) of the BEV map, i.e. of ``prev_bev``."""
        vt = self.view_transform
        return vt.embed_dim, vt.bev_size, vt.bev_size

    def encode_images(self, images_BN3HW: Tensor) -> list[Tensor]:
        """Backbone + FPN on every camera: list of (B, N, C, h, w), finest first."""
        b, n = images_BN3HW.shape[:2]
        feats = self.neck(self.backbone(images_BN3HW.flatten(0, 1)))
        return [f.view(b, n, *f.shape[1:]) for f in feats]

    def forward(self, images: Tensor, ego2img: Tensor, ego_status: Tensor, command: Tensor, prev_bev: Tensor,
                prev_T_cur: Tensor, has_prev: Tensor, query_boxes: Optional[Tensor] = None,
                query_labels: Optional[Tensor] = None, query_mask: Optional[Tensor] = None,
                return_image_feats: bool = False) -> ModelOutputs:
        """
        Args:
            images: (B, N, 3, H, W) normalised; ego2img: (B, N, 4, 4); ego_status: (B, 3);
            command: (B,) int64; prev_bev: (B, C, S, S), zeros on the first frame;
            prev_T_cur: (B, 4, 4); has_prev: (B,) float 0/1.
            query_boxes / query_labels / query_mask: optional (B, Q, 9) / (B, Q) / (B, Q) extra agents
            for the motion head (training); padded rows have mask 0.
            return_image_feats: also return the finest camera feature map (``image_feats``).
        """
        feats = self.encode_images(images)
        bev = self.view_transform(feats, ego2img, tuple(images.shape[-2:]), prev_bev, prev_T_cur, has_prev)
        aligned = None
        if self.detection_head.temporal_regression:  # fixed at construction, never a data branch
            warped = warp_prev_bev(prev_bev, prev_T_cur, self.view_transform.bev_range)
            aligned = mix_first_frame(warped, bev, has_prev)  # first frame: the current map, i.e. no motion
        det = self.detection_head(bev, aligned)
        map_logits = self.map_head(bev)
        motion = self.motion_head(bev, det.boxes, det.labels, det.scores)
        plan = self.planning_head(bev, command, ego_status, motion.agent_tokens, det.scores)
        refined, change = self.feasibility(plan, det.boxes[..., 0:2], motion.trajs, motion.mode_logits, det.scores)
        out = ModelOutputs(bev, det.heatmap, det.regression, det.attributes, det.boxes, det.scores, det.labels,
                           det.attrs, map_logits, motion.trajs, motion.mode_logits, plan, refined, change)
        if query_boxes is not None:  # structural switch (argument given or not), never a data branch
            mask = query_mask.to(bev.dtype) if query_mask is not None else query_boxes.new_ones(query_boxes.shape[:2])
            queried = self.motion_head(bev, query_boxes, query_labels, mask)
            out.query_trajs, out.query_mode_logits = queried.trajs, queried.mode_logits
        if return_image_feats:
            out.image_feats = feats[0]
        return out


class FlatOutputs(nn.Module):
    """Adapter for exporters: the 7 tensor inputs -> ``ModelOutputs.to_tuple()`` (export_names order)."""

    def __init__(self, model: DrivingModel) -> None:
        super().__init__()
        self.model = model

    def forward(self, images: Tensor, ego2img: Tensor, ego_status: Tensor, command: Tensor, prev_bev: Tensor,
                prev_T_cur: Tensor, has_prev: Tensor) -> tuple[Tensor, ...]:
        return self.model(images, ego2img, ego_status, command, prev_bev, prev_T_cur, has_prev).to_tuple()
