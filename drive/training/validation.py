"""Validation metrics, all computed in this one place (``drive.metrics`` does the arithmetic).

``ValidationMetrics.update(batch, outputs)`` keeps per-sample arrays on the CPU;
``compute()`` returns a flat dict of floats:

* ``det_mAP``, ``det_NDS`` (+ TP errors): the nuScenes devkit's ``DetectionEval`` on the val split
  (``drive.metrics.detection``), when ``detection_eval`` is on and every sample of the split was
  predicted (a shortened validation, e.g. ``trainer.limit_val_batches``, skips it). Always also the
  cheap proxy ``det_recall_2m`` / ``det_precision_2m``: same-class centre matches within 2 m
  (the devkit's matching rule) for predictions with score >= ``score_threshold``.
* ``map_iou``: pooled drivable IoU (``drive.metrics.map``).
* ``minADE``, ``minFDE``, ``MR``: motion of predictions matched to GT (``drive.metrics.motion``).
* ``plan_l2_<h>s_<convention>``, ``plan_l2_avg_<convention>``: L2 at 1 / 2 / 3 s of the final plan
  (after the feasibility layer) in both conventions, ``per_step`` (UniAD) and ``averaged``
  (ST-P3 / VAD) (``drive.metrics.planning``); ``plan_raw_l2_avg_*`` for the planning head's own output.
"""
from __future__ import annotations

import logging
import os
from typing import Optional

import numpy as np

from drive.metrics.detection import boxes_to_nusc, evaluate_detection, sample_tokens_of_split, write_results
from drive.metrics.map import drivable_iou_counts, iou_from_counts
from drive.metrics.motion import concat_matched, gather_matched_motion, match_predictions_to_gt, min_ade_fde
from drive.metrics.planning import plan_l2
from drive.models.model import ModelOutputs
from drive.types import Batch

log = logging.getLogger(__name__)


class ValidationMetrics:
    """Accumulates one validation pass; see the module doc for the keys of ``compute``.

    root / version / split: the data the val loader reads (for the devkit ground truth).
    out_dir: where the devkit writes its result and summary files (``<out_dir>/detection``).
    """

    def __init__(self, root: str, version: str, split: Optional[str], out_dir: Optional[str] = None,
                 detection_eval: bool = True, score_threshold: float = 0.3, match_distance: float = 2.0,
                 motion_score_threshold: float = 0.0, map_threshold: float = 0.5):
        self.root, self.version, self.split = root, version, split
        self.out_dir, self.detection_eval = out_dir, bool(detection_eval)
        self.score_threshold, self.match_distance = float(score_threshold), float(match_distance)
        self.motion_score_threshold, self.map_threshold = float(motion_score_threshold), float(map_threshold)
        self._nusc = None
        self.reset()

    def reset(self) -> None:
        self.plans, self.raw_plans, self.gt_plans, self.plan_masks = [], [], [], []
        self.iou_counts = np.zeros(2)
        self.motion_parts: list[dict] = []
        self.det_results: dict[str, list] = {}
        self.det_counts = np.zeros(3)  # matched predictions, predictions, GT boxes

    def __len__(self) -> int:
        return len(self.plans)

    def update(self, batch: Batch, out: ModelOutputs) -> None:
        t = batch.targets
        if t is None:
            raise ValueError("validation needs targets (data.with_targets=true)")
        o = out.to("cpu")
        t = t.to("cpu")
        self.plans.append(o.plan_refined.detach().double().numpy())
        self.raw_plans.append(o.plan.detach().double().numpy())
        self.gt_plans.append(t.ego_future.double().numpy())
        self.plan_masks.append(t.ego_future_mask.numpy())
        self.iou_counts += drivable_iou_counts(o.map_logits.detach(), t.drivable, t.map_valid, self.map_threshold)
        for b, meta in enumerate(batch.meta):
            self.motion_parts.append(gather_matched_motion(
                o.boxes[b], o.scores[b], o.labels[b], o.motion_trajs[b], o.motion_mode_logits[b], t.boxes[b],
                t.labels[b], t.mask[b], t.future[b], t.future_mask[b], self.match_distance, self.motion_score_threshold))
            self.det_results[meta.sample_token] = boxes_to_nusc(
                o.boxes[b], o.scores[b], o.labels[b], o.attrs[b], meta.global_T_ego, meta.sample_token)
            keep = (o.scores[b] >= self.score_threshold).numpy()
            match = match_predictions_to_gt(o.boxes[b][keep], o.scores[b][keep], o.labels[b][keep], t.boxes[b],
                                            t.labels[b], t.mask[b], self.match_distance)
            self.det_counts += (float((match >= 0).sum()), float(keep.sum()), float(t.mask[b].sum()))

    # ------------------------------------------------------------------ compute

    def compute(self, rank: int = 0) -> dict[str, float]:
        if not self.plans:
            return {}
        out: dict[str, float] = {}
        plans = plan_l2(np.concatenate(self.plans), np.concatenate(self.gt_plans), np.concatenate(self.plan_masks))
        raw = plan_l2(np.concatenate(self.raw_plans), np.concatenate(self.gt_plans), np.concatenate(self.plan_masks))
        out.update({f"plan_{k}": v for k, v in plans.items() if k.startswith("l2_")})
        out.update({f"plan_raw_{k}": v for k, v in raw.items() if k.startswith("l2_avg")})
        out["map_iou"] = iou_from_counts(*self.iou_counts)
        motion = min_ade_fde(**concat_matched(self.motion_parts))
        out.update({k: motion[k] for k in ("minADE", "minFDE", "MR", "num_agents")})
        matched, n_pred, n_gt = self.det_counts
        out["det_recall_2m"] = matched / n_gt if n_gt else float("nan")
        out["det_precision_2m"] = matched / n_pred if n_pred else float("nan")
        if self.detection_eval:
            out.update(self._devkit(rank))
        return out

    def _devkit(self, rank: int) -> dict[str, float]:
        """mAP / NDS from the devkit, or {} when the pass did not cover the whole split."""
        if self.split is None or self.out_dir is None:
            return {}
        from drive.data.nusc import open_nuscenes

        if self._nusc is None:
            self._nusc = open_nuscenes(self.root, self.version)
        wanted = sample_tokens_of_split(self._nusc, self.split)
        missing = [tok for tok in wanted if tok not in self.det_results]
        if missing:
            log.info("devkit detection eval skipped: %d of %d %s samples were not predicted", len(missing),
                     len(wanted), self.split)
            return {}
        out_dir = os.path.join(self.out_dir, "detection" if rank == 0 else f"detection_rank{rank}")
        path = write_results(os.path.join(out_dir, "results.json"), self.det_results)
        m = evaluate_detection(self._nusc, path, self.split, out_dir)
        keys = ("mAP", "NDS", "mATE", "mASE", "mAOE", "mAVE", "mAAE", "flip_rate", "moving_speed_ratio")
        return {f"det_{k}": float(m[k]) for k in keys if k in m}

    def __getstate__(self) -> dict:  # never pickle the devkit tables
        state = dict(self.__dict__)
        state["_nusc"] = None
        return state
