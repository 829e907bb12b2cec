"""Per-keyframe bookkeeping of an evaluation pass and the data-set metrics computed from it.

``EvalAccumulator.add`` is called once per keyframe, in temporal order, with the model outputs, the
targets and the plans of the camera-free baselines; it keeps only small per-sample arrays (plans, per-step
collision / off-road flags, matched motion pairs, drivable-IoU counts, submission records) and the outputs
of the best / worst planning cases for the report. The arithmetic is ``drive.metrics``'.

Planning methods (rows of every planning table, in this order when present):
``plan`` (planning head), ``plan_refined`` (after the feasibility layer), ``model_ego_status`` (the
ego-status checkpoint's refined plan), ``ego_mlp``, ``constant_velocity``, ``straight_line`` and
``gt_future`` (the GT ego future scored against itself: L2 = 0 by construction, its collision / off-road
rates are the floor set by label noise and the box approximations).
"""
from __future__ import annotations

import heapq
from dataclasses import dataclass, replace
import numpy as np
import torch

from drive.metrics.detection import boxes_to_nusc
from drive.metrics.map import drivable_iou_counts, iou_from_counts
from drive.metrics.motion import (concat_matched, constant_velocity_future, gather_matched_motion,
                                  match_predictions_to_gt, min_ade_fde)
from drive.metrics.planning import (agents_future_boxes, collision_rates, initial_speed_agreement, offroad_rates,
                                    plan_collisions, plan_l2, plan_l2_errors, plan_offroad)
from drive.models.model import ModelOutputs
from drive.types import Batch, FUTURE_STEPS

METHOD_ORDER = ("plan", "plan_refined", "model_ego_status", "ego_mlp", "constant_velocity", "straight_line",
                "gt_future")
METHOD_LABELS = {
    "plan": "model: planning head",
    "plan_refined": "model: after feasibility layer",
    "model_ego_status": "model with ego status (refined)",
    "ego_mlp": "ego-status MLP (no camera)",
    "constant_velocity": "constant velocity",
    "straight_line": "straight line",
    "gt_future": "GT future (floor)",
}
MOTION_K = 6
_HEAVY = ("bev", "det_heatmap", "det_regression", "det_attributes")


@dataclass
class Case:
    """One keyframe kept for the report (its outputs without the dense maps that are not drawn)."""

    index: int
    sample_token: str
    l2: float  # mean L2 of plan_refined over the valid GT waypoints
    outputs: ModelOutputs


def _slim(out: ModelOutputs) -> ModelOutputs:
    return replace(out, **{k: torch.zeros(0) for k in _HEAVY})


class EvalAccumulator:
    def __init__(self, bev_range: float, motion_score_threshold: float = 0.0, match_distance: float = 2.0,
                 plan_change_threshold: float = 0.1, map_threshold: float = 0.5, num_cases: int = 2,
                 gif_frames: int = 0):
        self.bev_range = float(bev_range)
        self.motion_score_threshold, self.match_distance = float(motion_score_threshold), float(match_distance)
        self.plan_change_threshold, self.map_threshold = float(plan_change_threshold), float(map_threshold)
        self.num_cases = int(num_cases)
        self.det_results: dict[str, list] = {}
        self.samples: list[tuple[str, str, int]] = []  # (token, scene, timestamp) in evaluation order
        self.motion_parts: list[dict] = []
        self.cv_parts: list[dict] = []
        self.iou_counts = np.zeros(2)
        self.map_valid: list[float] = []
        self.plans: dict[str, list[np.ndarray]] = {}
        self.collisions: dict[str, list[np.ndarray]] = {}
        self.offroad: dict[str, list[np.ndarray]] = {}
        self.gt: list[np.ndarray] = []
        self.gt_mask: list[np.ndarray] = []
        self.plan_change: list[float] = []
        self.situations: list[str] = []
        self.gif_frames = int(gif_frames)  # keep the first scene's first frames for an animation (0: off)
        self.scene_frames: list[Case] = []
        self._best: list = []  # max-heap by -l2 of the num_cases lowest
        self._worst: list = []  # min-heap by l2 of the num_cases highest

    def __len__(self) -> int:
        return len(self.samples)

    # ------------------------------------------------------------------ per keyframe

    def add(self, index: int, batch: Batch, out: ModelOutputs, plans: dict[str, np.ndarray], situation: str) -> None:
        """One keyframe (batch size 1). plans: extra ``(6, 2)`` plans by method name (baselines, ego model)."""
        t, meta, o = batch.targets, batch.meta[0], out.to("cpu")
        self.samples.append((meta.sample_token, meta.scene_token, int(meta.timestamp)))
        self.det_results[meta.sample_token] = boxes_to_nusc(o.boxes[0], o.scores[0], o.labels[0], o.attrs[0],
                                                            meta.global_T_ego, meta.sample_token)
        self._add_motion(o, t)
        self.iou_counts += drivable_iou_counts(o.map_logits.float(), t.drivable, t.map_valid, self.map_threshold)
        gt, gt_mask = t.ego_future[0].double().numpy(), t.ego_future_mask[0].numpy().astype(bool)
        self.gt.append(gt)
        self.gt_mask.append(gt_mask)
        self.map_valid.append(float(t.map_valid[0]))
        self.plan_change.append(float(o.plan_change[0]))
        self.situations.append(situation)
        all_plans = {"plan": o.plan[0].double().numpy(), "plan_refined": o.plan_refined[0].double().numpy(),
                     **{k: np.asarray(v, np.float64) for k, v in plans.items()}, "gt_future": gt}
        agents, agents_mask = agents_future_boxes(t.boxes, t.future, t.future_yaw, t.future_mask, t.mask)
        drivable, map_valid = t.drivable.numpy(), t.map_valid.numpy()
        for name, plan in all_plans.items():
            p = plan.reshape(1, FUTURE_STEPS, 2)
            self.plans.setdefault(name, []).append(p[0])
            self.collisions.setdefault(name, []).append(plan_collisions(p, None, agents, agents_mask)[0])
            self.offroad.setdefault(name, []).append(plan_offroad(p, drivable, self.bev_range, map_valid)[0])
        err = plan_l2_errors(all_plans["plan_refined"][None], gt[None])[0]
        l2 = float(err[gt_mask].mean()) if gt_mask.any() else float("nan")
        if gt_mask.any():
            self._keep_case(Case(index, meta.sample_token, l2, o))
        if len(self.scene_frames) < self.gif_frames and meta.scene_token == self.samples[0][1]:
            self.scene_frames.append(Case(index, meta.sample_token, l2, _slim(o)))

    def _add_motion(self, o: ModelOutputs, t) -> None:
        args = (t.boxes[0], t.labels[0], t.mask[0], t.future[0], t.future_mask[0])
        self.motion_parts.append(gather_matched_motion(
            o.boxes[0], o.scores[0], o.labels[0], o.motion_trajs[0], o.motion_mode_logits[0], *args,
            self.match_distance, self.motion_score_threshold))
        # constant-velocity baseline on the SAME matched agents, from each detection's own box and velocity
        scores = o.scores[0].double().numpy()
        keep = np.nonzero(scores >= self.motion_score_threshold)[0]
        boxes = o.boxes[0].double().numpy()[keep]
        match = match_predictions_to_gt(boxes, scores[keep], o.labels[0].numpy()[keep], t.boxes[0], t.labels[0],
                                        t.mask[0], self.match_distance)
        gi = match[match >= 0]
        self.cv_parts.append(dict(pred=constant_velocity_future(boxes[match >= 0])[:, None], probs=None,
                                  gt=t.future[0].double().numpy()[gi], mask=t.future_mask[0].numpy().astype(bool)[gi],
                                  labels=t.labels[0].numpy().astype(np.int64)[gi]))

    def _keep_case(self, case: Case) -> None:
        if self.num_cases <= 0:
            return
        case = replace(case, outputs=_slim(case.outputs))
        key = (case.l2, case.index)
        for heap, k in ((self._best, (-key[0], -key[1])), (self._worst, key)):
            item = (k, case.index, case)
            if len(heap) < self.num_cases:
                heapq.heappush(heap, item)
            elif item[0] > heap[0][0]:
                heapq.heapreplace(heap, item)

    # ------------------------------------------------------------------ data-set metrics

    def cases(self) -> dict[str, list[Case]]:
        best = sorted((c for _, _, c in self._best), key=lambda c: c.l2)
        worst = sorted((c for _, _, c in self._worst), key=lambda c: -c.l2)
        return {"best": best, "worst": worst}

    def methods(self) -> list[str]:
        return [m for m in METHOD_ORDER if m in self.plans] + [m for m in self.plans if m not in METHOD_ORDER]

    def _planning_of(self, select: np.ndarray) -> dict[str, dict[str, float]]:
        gt, mask = np.stack(self.gt)[select], np.stack(self.gt_mask)[select]
        map_valid = np.asarray(self.map_valid)[select]
        out = {}
        for name in self.methods():
            plans = np.stack(self.plans[name])[select]
            m = plan_l2(plans, gt, mask)
            m.update(initial_speed_agreement(plans, gt, mask))
            m.update(collision_rates(np.stack(self.collisions[name])[select], mask))
            m.update(offroad_rates(np.stack(self.offroad[name])[select], map_valid, mask))
            out[name] = m
        return out

    def planning(self) -> dict:
        """``methods`` -> metrics dict each, ``plan_change`` stats, ``by_situation`` (count + methods)."""
        n = len(self)
        everything = np.ones(n, bool)
        change = np.asarray(self.plan_change)
        situations = np.asarray(self.situations)
        by_sit = {}
        for s in sorted(set(self.situations)):
            sel = situations == s
            by_sit[s] = {"count": int(sel.sum()), "methods": self._planning_of(sel)}
        return {
            "methods": self._planning_of(everything),
            "plan_change_rate": float((change > self.plan_change_threshold).mean()),
            "plan_change_mean_m": float(change.mean()),
            "plan_change_threshold_m": self.plan_change_threshold,
            "map_valid_samples": int((np.asarray(self.map_valid) > 0).sum()),
            "samples": n,
            "by_situation": by_sit,
        }

    def l2_curves(self) -> dict[str, dict[str, list[float]]]:
        """Per method and convention, the L2 at every waypoint (0.5 ... 3 s): ``per_step`` = error at the
        waypoint, ``averaged`` = mean error of the waypoints up to it (same sample rules as ``plan_l2``)."""
        gt, mask = np.stack(self.gt), np.stack(self.gt_mask)
        out = {}
        for name in self.methods():
            err = plan_l2_errors(np.stack(self.plans[name]), gt)
            per, avg = [], []
            for k in range(FUTURE_STEPS):
                ok = mask[:, k]
                per.append(float(err[ok, k].mean()) if ok.any() else float("nan"))
                ok = mask[:, : k + 1].all(axis=1)
                avg.append(float(err[ok, : k + 1].mean(axis=1).mean()) if ok.any() else float("nan"))
            out[name] = {"per_step": per, "averaged": avg}
        return out

    def motion(self) -> dict[str, dict[str, float]]:
        model = min_ade_fde(**concat_matched(self.motion_parts), k=MOTION_K)
        cv = concat_matched([{k: v for k, v in p.items() if k != "probs"} for p in self.cv_parts])
        return {"model": model, "constant_velocity": min_ade_fde(probs=None, **cv)}

    def map(self) -> dict[str, float]:
        return {"drivable_iou": iou_from_counts(*self.iou_counts), "intersection_cells": float(self.iou_counts[0]),
                "union_cells": float(self.iou_counts[1]),
                "valid_samples": float((np.asarray(self.map_valid) > 0).sum())}
