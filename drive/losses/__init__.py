"""Per-head losses (one file each) and their weighted combination ``total_loss``."""
from drive.losses.detection import DetectionLossConfig, detection_loss
from drive.losses.distill import DistillLossConfig, distill_loss
from drive.losses.map import MapLossConfig, map_loss
from drive.losses.motion import MotionLossConfig, motion_loss
from drive.losses.perspective import PerspectiveLossConfig, perspective_loss
from drive.losses.planning import PlanningLossConfig, planning_loss
from drive.losses.total import LossConfig, check_loss_config, total_loss

__all__ = ["DetectionLossConfig", "detection_loss", "MapLossConfig", "map_loss", "MotionLossConfig", "motion_loss",
           "PerspectiveLossConfig", "perspective_loss", "DistillLossConfig", "distill_loss",
           "PlanningLossConfig", "planning_loss", "LossConfig", "check_loss_config", "total_loss"]
