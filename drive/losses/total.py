"""Weighted sum of the per-head losses, from one typed config.

``total_loss`` returns a flat dict of named scalars (every component plus ``loss``, the value
to back-propagate). Motion uses the model's ``query_trajs`` when the system passed the GT boxes
as ``query_boxes`` (teacher forcing); otherwise decoded agents are matched to GT by distance.
``check_loss_config`` verifies that the loss grids agree with the model's, at build time.
"""
from __future__ import annotations

from dataclasses import dataclass, field

from torch import Tensor

from drive.losses.detection import DetectionLossConfig, detection_loss
from drive.losses.distill import DistillLossConfig
from drive.losses.map import MapLossConfig, map_loss
from drive.losses.motion import MotionLossConfig, match_decoded_agents, motion_loss
from drive.losses.perspective import PerspectiveLossConfig
from drive.losses.planning import PlanningLossConfig, planning_loss
from drive.models.model import DrivingModel, ModelOutputs
from drive.types import Targets


@dataclass
class LossConfig:
    bev_range: float = 51.2
    map_range: float = 51.2
    detection_weight: float = 1.0
    map_weight: float = 1.0
    motion_weight: float = 0.5
    planning_weight: float = 0.25  # at 1.0 the plan loss starves detection in a CPU budget (BENCHMARKS.md)
    detection: DetectionLossConfig = field(default_factory=DetectionLossConfig)
    map: MapLossConfig = field(default_factory=MapLossConfig)
    motion: MotionLossConfig = field(default_factory=MotionLossConfig)
    planning: PlanningLossConfig = field(default_factory=PlanningLossConfig)
    # training-only image-view auxiliary (its head lives in the DrivingSystem; weight 0 = off)
    perspective: PerspectiveLossConfig = field(default_factory=PerspectiveLossConfig)
    # training-only distillation from an offboard teacher's maps (adapter in the DrivingSystem; weight 0 = off)
    distill: DistillLossConfig = field(default_factory=DistillLossConfig)


def check_loss_config(cfg: LossConfig, model: DrivingModel) -> None:
    """Raise if the loss geometry disagrees with the model's BEV / map grids."""
    if abs(cfg.bev_range - model.view_transform.bev_range) > 1e-6:
        raise ValueError(f"loss bev_range {cfg.bev_range} != model {model.view_transform.bev_range}")
    if cfg.perspective.weight < 0:
        raise ValueError(f"loss perspective.weight must be >= 0, got {cfg.perspective.weight}")
    d = cfg.distill
    if min(d.weight, d.feature_weight, d.heatmap_weight, d.background_weight) < 0:
        raise ValueError("loss distill: weight, feature_weight, heatmap_weight and background_weight must be >= 0, "
                         f"got {d.weight}, {d.feature_weight}, {d.heatmap_weight}, {d.background_weight}")
    if abs(cfg.map_range - model.map_head.map_range) > 1e-6:
        raise ValueError(f"loss map_range {cfg.map_range} != model map head {model.map_head.map_range}")


def total_loss(outputs: ModelOutputs, targets: Targets, cfg: LossConfig = LossConfig()) -> dict[str, Tensor]:
    losses: dict[str, Tensor] = {}
    losses.update(detection_loss(outputs.det_heatmap, outputs.det_regression, outputs.det_attributes, targets,
                                 cfg.bev_range, cfg.detection))
    losses.update(map_loss(outputs.map_logits, targets.drivable, targets.map_valid, cfg.map))
    if outputs.query_trajs is not None:
        losses.update(motion_loss(outputs.query_trajs, outputs.query_mode_logits, targets, cfg.motion))
    else:
        trajs, logits, matched = match_decoded_agents(outputs.motion_trajs, outputs.motion_mode_logits, outputs.boxes,
                                                      targets.boxes, targets.mask, cfg.motion.match_radius)
        losses.update(motion_loss(trajs, logits, targets, cfg.motion, valid_BM=matched))
    losses.update(planning_loss(outputs.plan, targets, cfg.map_range, cfg.planning, outputs.plan_refined))
    losses["loss"] = (cfg.detection_weight * losses["detection"] + cfg.map_weight * losses["map"]
                      + cfg.motion_weight * losses["motion"] + cfg.planning_weight * losses["planning"])
    return losses
