"""Metrics shared by validation (``drive/training``) and offline evaluation (``drive/evaluation``).

Pure functions: numpy arrays or torch tensors in, plain floats / dicts / arrays out. Aggregators take the arrays
of a whole data set (concatenate per-batch arrays first); detection and tracking scores come from the
nuScenes devkit.

* ``planning``: L2 / collision / off-road at 1, 2, 3 s in the ``per_step`` (UniAD) and ``averaged``
  (ST-P3 / VAD) conventions.
* ``motion``: minADE / minFDE / MR per class group, prediction-to-GT matching, constant-velocity baseline.
* ``map``: pooled drivable-area IoU.
* ``detection``: nuScenes submission records, atomic result writer, devkit ``DetectionEval`` (mAP, NDS).
* ``tracker`` / ``tracking``: CenterPoint-style tracker on detections, devkit ``TrackingEval`` (AMOTA).
"""
from .detection import boxes_to_nusc, evaluate_detection, write_results
from .map import drivable_iou, drivable_iou_counts, iou_from_counts
from .motion import constant_velocity_future, gather_matched_motion, match_predictions_to_gt, min_ade_fde
from .planning import (agents_future_boxes, collision_rates, initial_speed_agreement, offroad_rates, plan_collisions,
                       plan_l2, plan_offroad, planning_metrics)
from .tracker import Tracker, TrackerConfig, track_detections
from .tracking import evaluate_tracking

__all__ = [
    "agents_future_boxes", "boxes_to_nusc", "collision_rates", "constant_velocity_future", "drivable_iou",
    "drivable_iou_counts", "evaluate_detection", "evaluate_tracking", "gather_matched_motion", "initial_speed_agreement",
    "iou_from_counts", "match_predictions_to_gt", "min_ade_fde", "offroad_rates", "plan_collisions", "plan_l2", "plan_offroad",
    "planning_metrics", "track_detections", "Tracker", "TrackerConfig", "write_results",
]
