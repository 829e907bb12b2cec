"""Training / evaluation targets of one keyframe. The only builders that read annotations.

Boxes come from ``sample_annotation`` (nuScenes ``size`` is (w, l, h), converted to (l, w, h) here),
labels from the devkit's ``category_to_detection_name`` (categories mapping to None are dropped),
velocities from the devkit's ``box_velocity`` (nan -> 0), agent past / future from the instance's
annotations at neighbouring keyframes, the ego plan target from the keyframe ego poses.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import numpy as np
import torch
from nuscenes import NuScenes
from nuscenes.eval.detection.utils import category_to_detection_name

from drive.types import ATTRIBUTES, CLASSES, FUTURE_STEPS, PAST_STEPS, Targets

from .geometry import invert, rotate_vectors, transform_points, yaw_of_matrix, yaw_of_vectors
from .records import AnnotationRecord, EgoTrack, EgoTrajectory

DEFAULT_MAX_OBJECTS = 200


def headings_of_quaternions(q_wxyz: np.ndarray) -> np.ndarray:
    """x axis (A, 3) of the rotation matrices of unit quaternions (A, 4) (w, x, y, z)."""
    q = q_wxyz / np.linalg.norm(q_wxyz, axis=1, keepdims=True)
    w, x, y, z = q.T
    return np.stack([1 - 2 * (y * y + z * z), 2 * (x * y + z * w), 2 * (x * z - y * w)], axis=1)


@dataclass
class AnnotationTable:
    """The ``sample_annotation`` table as arrays (global frame), built once per data set index."""

    tokens: list
    sample_tokens: list
    center: np.ndarray  # (A, 3)
    size_lwh: np.ndarray  # (A, 3)
    heading: np.ndarray  # (A, 3) box x axis
    label: np.ndarray  # (A,) into CLASSES, -1: category not a detection class
    attribute: np.ndarray  # (A,)
    instance_id: np.ndarray  # (A,)
    num_pts: np.ndarray  # (A,)
    prev: np.ndarray  # (A,) row of the instance's previous annotation, -1 none
    next: np.ndarray  # (A,)
    rows_of_sample: dict  # sample token -> rows with a detection label

    @classmethod
    def from_nusc(cls, nusc: NuScenes) -> "AnnotationTable":
        anns = nusc.sample_annotation
        row = {a["token"]: i for i, a in enumerate(anns)}
        label_of_cat: dict[str, int] = {}
        for c in nusc.category:
            det = category_to_detection_name(c["name"])
            label_of_cat[c["name"]] = CLASSES.index(det) if det in CLASSES else -1
        attr_of_token = {a["token"]: (ATTRIBUTES.index(a["name"]) if a["name"] in ATTRIBUTES else -1)
                         for a in nusc.attribute}
        label = np.array([label_of_cat[a["category_name"]] for a in anns], np.int64)
        attribute = np.array([next((attr_of_token[t] for t in a["attribute_tokens"] if attr_of_token.get(t, -1) >= 0),
                                   -1) for a in anns], np.int64)
        rows_of_sample: dict[str, list] = {}
        for i, a in enumerate(anns):
            if label[i] >= 0:
                rows_of_sample.setdefault(a["sample_token"], []).append(i)
        wlh = np.array([a["size"] for a in anns], np.float64).reshape(-1, 3)
        return cls(
            tokens=[a["token"] for a in anns],
            sample_tokens=[a["sample_token"] for a in anns],
            center=np.array([a["translation"] for a in anns], np.float64).reshape(-1, 3),
            size_lwh=wlh[:, [1, 0, 2]],
            heading=headings_of_quaternions(np.array([a["rotation"] for a in anns], np.float64).reshape(-1, 4)),
            label=label,
            attribute=attribute,
            instance_id=np.array([nusc.getind("instance", a["instance_token"]) for a in anns], np.int64),
            num_pts=np.array([int(a.get("num_lidar_pts", 0)) + int(a.get("num_radar_pts", 0)) for a in anns],
                             np.int64),
            prev=np.array([row.get(a["prev"], -1) for a in anns], np.int64),
            next=np.array([row.get(a["next"], -1) for a in anns], np.int64),
            rows_of_sample={k: np.array(v, np.int64) for k, v in rows_of_sample.items()},
        )


def read_annotations(nusc: NuScenes, table: AnnotationTable, sample_token: str, track: EgoTrack,
                     max_distance: Optional[float] = None) -> AnnotationRecord:
    """Detection-class boxes of a keyframe, with agent past / future, in its ego frame (unpadded).

    Past / future slots are filled from the instance's annotation chain (``prev`` / ``next``) at the
    keyframes of ``track``; an instance missing at a keyframe (or the scene ending) leaves its slot
    masked. ``max_distance`` drops boxes farther than that from the ego (xy) early.
    """
    rows = table.rows_of_sample.get(sample_token, np.zeros(0, np.int64))
    if len(rows) == 0:
        return AnnotationRecord.empty()
    ego_T_global = invert(track.current)
    center = transform_points(ego_T_global, table.center[rows])
    if max_distance is not None:
        near = np.hypot(center[:, 0], center[:, 1]) <= max_distance
        rows, center = rows[near], center[near]
        if len(rows) == 0:
            return AnnotationRecord.empty()
    yaw = yaw_of_vectors(rotate_vectors(ego_T_global, table.heading[rows]))
    vel = np.stack([nusc.box_velocity(table.tokens[r]) for r in rows])
    vel = rotate_vectors(ego_T_global, np.nan_to_num(vel, nan=0.0))
    boxes = np.concatenate([center, table.size_lwh[rows], yaw[:, None], vel[:, :2]], axis=1)

    # Agent past / future: (box index, track slot, annotation row) of every chained annotation in the window.
    slot_of_sample = {tok: k for k, tok in enumerate(track.sample_tokens) if tok}
    hits = []
    for m, r in enumerate(rows):
        for link in (table.prev, table.next):
            a = link[r]
            while a >= 0:
                k = slot_of_sample.get(table.sample_tokens[a])
                if k is None:
                    break
                hits.append((m, k, a))
                a = link[a]
    M, P, F, now = len(rows), PAST_STEPS, FUTURE_STEPS, EgoTrack.NOW
    xy = np.zeros((M, P + 1 + F, 2))
    yaws = np.zeros((M, P + 1 + F))
    ok = np.zeros((M, P + 1 + F), bool)
    if hits:
        m_i, k_i, a_i = map(np.array, zip(*hits))
        xy[m_i, k_i] = transform_points(ego_T_global, table.center[a_i])[:, :2]
        yaws[m_i, k_i] = yaw_of_vectors(rotate_vectors(ego_T_global, table.heading[a_i]))
        ok[m_i, k_i] = True
    f32 = lambda a: a.astype(np.float32)  # noqa: E731
    return AnnotationRecord(
        boxes=f32(boxes), labels=table.label[rows].copy(), attributes=table.attribute[rows].copy(),
        instance_ids=table.instance_id[rows].copy(), num_pts=table.num_pts[rows].copy(),
        past=f32(xy[:, :now]), past_mask=ok[:, :now].copy(),
        future=f32(xy[:, now + 1:]), future_yaw=f32(yaws[:, now + 1:]), future_mask=ok[:, now + 1:].copy(),
    )


def ego_trajectory(track: EgoTrack) -> EgoTrajectory:
    """Ego past / future keyframe positions (and future yaw) in the current ego frame; masked past the scene ends."""
    now = EgoTrack.NOW
    cur_T_k = invert(track.current) @ track.global_T_ego  # (P+1+F, 4, 4)
    xy = np.where(track.valid[:, None], cur_T_k[:, :2, 3], 0.0)
    yaw = np.where(track.valid, yaw_of_matrix(cur_T_k), 0.0)
    return EgoTrajectory(
        past=xy[:now].astype(np.float32), past_mask=track.valid[:now].copy(),
        future=xy[now + 1:].astype(np.float32), future_yaw=yaw[now + 1:].astype(np.float32),
        future_mask=track.valid[now + 1:].copy(),
    )


def in_bev_range(boxes: np.ndarray, bev_range: float, margin: float = 0.0) -> np.ndarray:
    """Boxes whose centre lies in ``|x|, |y| <= bev_range + margin``."""
    lim = bev_range + margin
    return (np.abs(boxes[:, 0]) <= lim) & (np.abs(boxes[:, 1]) <= lim)


def build_targets(ann: AnnotationRecord, ego: EgoTrajectory, drivable: np.ndarray, map_valid: float,
                  bev_range: float, max_objects: int = DEFAULT_MAX_OBJECTS, margin: float = 0.0) -> Targets:
    """Targets of one keyframe (no batch dim): drop boxes outside the BEV range, keep at most
    ``max_objects`` (the nearest ones) and pad to ``max_objects`` rows with ``mask`` False."""
    ann = ann.select(in_bev_range(ann.boxes, bev_range, margin))
    if len(ann) > max_objects:
        dist = np.hypot(ann.boxes[:, 0], ann.boxes[:, 1])
        ann = ann.select(np.sort(np.argsort(dist, kind="stable")[:max_objects]))
    M, n = max_objects, len(ann)

    def pad(a: np.ndarray, fill, dtype) -> torch.Tensor:
        out = np.full((M,) + a.shape[1:], fill, dtype=dtype)
        out[:n] = a
        return torch.from_numpy(out)

    return Targets(
        boxes=pad(ann.boxes, 0, np.float32),
        labels=pad(ann.labels, -1, np.int64),
        attributes=pad(ann.attributes, -1, np.int64),
        instance_ids=pad(ann.instance_ids, -1, np.int64),
        num_pts=pad(ann.num_pts, 0, np.int64),
        mask=pad(np.ones(n, bool), False, bool),
        past=pad(ann.past, 0, np.float32),
        past_mask=pad(ann.past_mask, False, bool),
        future=pad(ann.future, 0, np.float32),
        future_yaw=pad(ann.future_yaw, 0, np.float32),
        future_mask=pad(ann.future_mask, False, bool),
        ego_past=torch.from_numpy(ego.past.astype(np.float32)),
        ego_past_mask=torch.from_numpy(ego.past_mask.astype(bool)),
        ego_future=torch.from_numpy(ego.future.astype(np.float32)),
        ego_future_yaw=torch.from_numpy(ego.future_yaw.astype(np.float32)),
        ego_future_mask=torch.from_numpy(ego.future_mask.astype(bool)),
        drivable=torch.from_numpy(np.ascontiguousarray(drivable, dtype=np.float32)),
        map_valid=torch.tensor(float(map_valid), dtype=torch.float32),
    )
