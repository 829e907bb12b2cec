"""The ego's driving situation of each keyframe, to break planning metrics down (no hiding behind easy frames).

Source 1, the synthetic world: ``<root>/<version>/drive_world.json`` records per sample token what the ego
was doing (``cruising``, ``following``, ``stopped``, ``stopping_for_pedestrian``, ``turning``,
``lane_change``), decided by the simulator.

Source 2, any other data (real nuScenes): derived from the ground truth of the keyframe, first rule that fits:

1. ``unknown``: no valid GT future waypoint (last keyframe of a scene);
2. ``turning``: |heading of the last valid GT future waypoint| > 15 deg (relative to now);
3. ``stopping``: the GT future ends slower than 1 m/s on average: the distance covered over the last second
   of the valid future (waypoint 4 -> 6 when all are valid; waypoint k-2 -> k when k is the last valid one)
   divided by its duration is < 1 m/s; also covers standing still;
4. ``following``: a GT vehicle (car, truck, bus, trailer, construction vehicle, motorcycle, bicycle) has its
   centre ahead in the ego lane, 0 < x < 30 m and |y| < 2 m;
5. ``cruising``: everything else.

Samples missing from ``drive_world.json`` fall back to the derived rule. Every sample gets exactly one
situation, so the per-situation counts add up to the number of evaluated samples.
"""
from __future__ import annotations

import json
import logging
import math
import os
from typing import Optional

import numpy as np

from drive.types import CLASSES

log = logging.getLogger(__name__)

WORLD_FILE = "drive_world.json"
TURN_YAW_DEG = 15.0
STOP_SPEED = 1.0  # m/s
FOLLOW_AHEAD_M = 30.0
FOLLOW_LATERAL_M = 2.0
DT = 0.5
FOLLOW_CLASSES = ("car", "truck", "bus", "trailer", "construction_vehicle", "motorcycle", "bicycle")
_FOLLOW_LABELS = np.array([CLASSES.index(c) for c in FOLLOW_CLASSES])


def world_situations(root: str, version: str) -> Optional[dict[str, str]]:
    """``{sample_token: situation}`` from the synthetic world's file, or None when the root has none."""
    path = os.path.join(root, version, WORLD_FILE)
    if not os.path.isfile(path):
        return None
    try:
        with open(path) as f:
            situations = json.load(f).get("situations") or {}
        return {tok: str(v["situation"]) for tok, v in situations.items()}
    except (ValueError, KeyError, TypeError, AttributeError) as e:
        log.warning("ignoring malformed %s (%s); situations are derived from the ground truth", path, e)
        return None


def derive_situation(ego_future: np.ndarray, ego_future_yaw: np.ndarray, ego_future_mask: np.ndarray,
                     boxes: np.ndarray, labels: np.ndarray, box_mask: np.ndarray) -> str:
    """The rule of the module doc for one keyframe (ego frame): future ``(6, 2)``, yaw ``(6,)``, mask ``(6,)``,
    GT boxes ``(M, 9)``, labels ``(M,)``, box mask ``(M,)``."""
    valid = np.nonzero(np.asarray(ego_future_mask, bool))[0]
    if len(valid) == 0:
        return "unknown"
    last = int(valid[-1])
    if abs(math.degrees(float(ego_future_yaw[last]))) > TURN_YAW_DEG:
        return "turning"
    # mean speed over the final second of the valid future: path[k] = waypoint k (path[0] = now)
    path = np.concatenate([np.zeros((1, 2)), np.asarray(ego_future, np.float64)[: last + 1]])
    end = last + 1
    start = max(end - 2, 0)
    speed = float(np.linalg.norm(path[end] - path[start])) / ((end - start) * DT)
    if speed < STOP_SPEED:
        return "stopping"
    b = np.asarray(boxes, np.float64)
    sel = np.asarray(box_mask, bool) & np.isin(np.asarray(labels), _FOLLOW_LABELS)
    ahead = (b[:, 0] > 0) & (b[:, 0] < FOLLOW_AHEAD_M) & (np.abs(b[:, 1]) < FOLLOW_LATERAL_M)
    return "following" if bool((sel & ahead).any()) else "cruising"


class SituationLabeller:
    """Labels keyframes from the world file when it knows them, else with ``derive_situation``."""

    def __init__(self, root: str, version: str):
        self.world = world_situations(root, version)
        self.sources = {"world": 0, "derived": 0}

    @property
    def source(self) -> str:
        return f"{WORLD_FILE} (simulator)" if self.world is not None else "derived from the GT trajectory"

    def __call__(self, sample_token: str, targets, index: int = 0) -> str:
        if self.world is not None and sample_token in self.world:
            self.sources["world"] += 1
            return self.world[sample_token]
        self.sources["derived"] += 1
        t = targets
        return derive_situation(t.ego_future[index].numpy(), t.ego_future_yaw[index].numpy(),
                                t.ego_future_mask[index].numpy(), t.boxes[index].numpy(), t.labels[index].numpy(),
                                t.mask[index].numpy())
