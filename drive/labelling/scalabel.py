"""Conversions between the loop's boxes and the Scalabel labelling-tool format (used by the review queue's
export / import): frame lookup, box3d <-> LabelBox with per-field validation, atomic JSON writes.

Boxes stay in the nuScenes global frame; ``box3d.orientation`` is intrinsic XYZ Euler angles (0, 0, yaw) and
``dimension`` is (h, w, l), as Scalabel's own nuScenes converter writes them.
"""
from __future__ import annotations

import json
import math
import os
import tempfile
from typing import Any, Sequence

from pyquaternion import Quaternion

from drive.types import CLASSES

from .errors import LabellingError
from .records import LabelBox

EXPORT_CAMERA = "CAM_FRONT"


class FrameIndex:
    """Scene name, index in the scene, camera image and timestamp of keyframes, via the devkit tables."""

    def __init__(self, nusc: Any):
        self.nusc = nusc
        self._index_of: dict[str, int] = {}

    def locate(self, sample_token: str) -> tuple[str, int, str, int]:
        try:
            sample = self.nusc.get("sample", sample_token)
        except KeyError as e:
            raise LabellingError(f"export_scalabel: sample token {sample_token!r} is not in the data set "
                                 f"{getattr(self.nusc, 'dataroot', '?')}") from e
        scene = self.nusc.get("scene", sample["scene_token"])
        if sample_token not in self._index_of:
            tok, k = scene["first_sample_token"], 0
            while tok:
                self._index_of[tok] = k
                tok, k = self.nusc.get("sample", tok)["next"], k + 1
        cam = sample["data"].get(EXPORT_CAMERA)
        if cam is None:
            raise LabellingError(f"export_scalabel: sample {sample_token!r} has no {EXPORT_CAMERA} image "
                                 f"(sample.data.{EXPORT_CAMERA})")
        url = self.nusc.get("sample_data", cam)["filename"]
        return scene["name"], self._index_of.get(sample_token, -1), url, int(sample["timestamp"]) // 1000


def _euler_xyz_of_quaternion(q_wxyz: Sequence[float]) -> list[float]:
    """Intrinsic X-Y-Z Euler angles (a, b, c) with R = Rx(a) Ry(b) Rz(c) (Scalabel's ``orientation``)."""
    R = Quaternion(*[float(v) for v in q_wxyz]).normalised.rotation_matrix
    b = math.asin(max(-1.0, min(1.0, R[0, 2])))
    a = math.atan2(-R[1, 2], R[2, 2])
    c = math.atan2(-R[0, 1], R[0, 0])
    return [a, b, c]


def _quaternion_of_euler_xyz(angles: Sequence[float]) -> list[float]:
    a, b, c = (float(v) for v in angles)
    q = (Quaternion(axis=[1, 0, 0], angle=a) * Quaternion(axis=[0, 1, 0], angle=b)
         * Quaternion(axis=[0, 0, 1], angle=c))
    return [float(v) for v in q.elements]


def label_of_box(box: LabelBox, label_id: str) -> dict:
    w, l, h = (float(v) for v in box.size)
    return {
        "id": label_id, "category": box.detection_name,
        "box3d": {"alpha": 0.0, "location": [float(v) for v in box.translation], "dimension": [h, w, l],
                  "orientation": _euler_xyz_of_quaternion(box.rotation)},
        "attributes": {"score": float(box.score), "source": "auto", "track_id": box.track_id,
                       "attribute_name": box.attribute_name, "vx": float(box.velocity[0]),
                       "vy": float(box.velocity[1]), "num_lidar_pts": int(box.num_lidar_pts)},
    }


def _floats(value: Any, n: int, where: str, positive: bool = False) -> list[float]:
    if not isinstance(value, (list, tuple)) or len(value) != n:
        raise LabellingError(f"{where}: expected a list of {n} numbers, got {value!r}")
    out = []
    for v in value:
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
            raise LabellingError(f"{where}: expected finite numbers, got {value!r}")
        if positive and v <= 0:
            raise LabellingError(f"{where}: expected positive numbers, got {value!r}")
        out.append(float(v))
    return out


def box_of_label(lab: Any, sample_token: str, where: str) -> LabelBox:
    if not isinstance(lab, dict):
        raise LabellingError(f"{where}: a label must be an object")
    cat = lab.get("category")
    if cat not in CLASSES:
        raise LabellingError(f"{where}.category: {cat!r} is not one of the detection classes {', '.join(CLASSES)}")
    box3d = lab.get("box3d")
    if not isinstance(box3d, dict):
        raise LabellingError(f"{where}.box3d: missing or not an object")
    loc = _floats(box3d.get("location"), 3, f"{where}.box3d.location")
    h, w, l = _floats(box3d.get("dimension"), 3, f"{where}.box3d.dimension", positive=True)
    rot = _quaternion_of_euler_xyz(_floats(box3d.get("orientation"), 3, f"{where}.box3d.orientation"))
    attrs = lab.get("attributes") or {}
    if not isinstance(attrs, dict):
        raise LabellingError(f"{where}.attributes: must be an object")
    vel = []
    for k in ("vx", "vy"):
        v = attrs.get(k, 0.0)
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
            raise LabellingError(f"{where}.attributes.{k}: expected a finite number, got {v!r}")
        vel.append(float(v))
    pts = attrs.get("num_lidar_pts", -1)
    if isinstance(pts, bool) or not isinstance(pts, int):
        raise LabellingError(f"{where}.attributes.num_lidar_pts: expected an integer, got {pts!r}")
    track_id, attribute_name = attrs.get("track_id", ""), attrs.get("attribute_name", "")
    if not isinstance(track_id, str) or not isinstance(attribute_name, str):
        raise LabellingError(f"{where}.attributes: track_id and attribute_name must be strings")
    return LabelBox(sample_token=sample_token, translation=loc, size=[w, l, h], rotation=rot, velocity=vel,
                    detection_name=cat, attribute_name=attribute_name, score=1.0, track_id=track_id,
                    num_lidar_pts=pts)


def atomic_write_json(path: str, doc: Any) -> None:
    """Write JSON to a temp file in the target folder, fsync, then ``os.replace`` (readers never see half a file)."""
    path = os.path.abspath(os.path.expanduser(str(path)))
    folder = os.path.dirname(path)
    try:
        os.makedirs(folder, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=os.path.basename(path) + ".", suffix=".tmp", dir=folder)
    except OSError as e:
        raise LabellingError(f"cannot write {path}: {e}") from e
    try:
        with os.fdopen(fd, "w") as f:
            json.dump(doc, f, indent=1, default=float)  # numpy scalars as numbers
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as e:
        if os.path.exists(tmp):
            os.unlink(tmp)
        if isinstance(e, OSError):
            raise LabellingError(f"cannot write {path}: {e}") from e
        raise
