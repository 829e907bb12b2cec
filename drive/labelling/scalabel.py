"""Conversions between the loop's boxes and the Scalabel labelling-tool format (used by the review queue's
export / import): frame lookup, box3d <-> LabelBox with per-field validation, atomic JSON writes.

A file is ``{"frames": [...], "config": {...}, "metadata": {...}}`` (the BDD100K / Scalabel tool's JSON), one
frame per queued keyframe (its CAM_FRONT image as ``url``), pre-labels as editable labels.

Box convention of the Scalabel files (also written into the file's top-level ``metadata``): ``box3d`` is in the
nuScenes GLOBAL frame (the frame of ``sample_annotation``; no sensor extrinsics apply), ``location`` = box centre
(x, y, z) m, ``dimension`` = (height, width, length) m in Scalabel's order (nuScenes ``size`` is (w, l, h)),
``orientation`` = intrinsic X-Y-Z Euler angles (rad) of the box rotation (for nuScenes boxes (0, 0, yaw)),
``alpha`` unused (0). Velocity, nuScenes attribute and track id travel in the label's ``attributes``.
This is Scalabel's own nuScenes converter's convention.
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
from .records import LabelBox, stable_token

EXPORT_CAMERA = "CAM_FRONT"
SCALABEL_FORMAT = "drive-review-queue/scalabel"
SCALABEL_FORMAT_VERSION = 1


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


def scalabel_frame(frame_index: FrameIndex, sample_token: str, pre_labels: Sequence[LabelBox],
                   attributes: dict) -> dict:
    """One Scalabel frame of a keyframe, its ``pre_labels`` as labels (a box's track id as the label id unless
    it repeats, else a stable id)."""
    scene_name, idx, url, ts = frame_index.locate(sample_token)
    labels = []
    used_ids: set[str] = set()
    for j, box in enumerate(pre_labels):
        if box.sample_token != sample_token:
            raise LabellingError(f"export_scalabel: pre_labels[{sample_token!r}][{j}] has sample_token "
                                 f"{box.sample_token!r}")
        lid = box.track_id if box.track_id and box.track_id not in used_ids else \
            stable_token("prelabel", sample_token, j)
        used_ids.add(lid)
        labels.append(label_of_box(box, lid))
    return {"name": sample_token, "videoName": scene_name, "frameIndex": idx, "url": url, "timestamp": ts,
            "attributes": attributes, "labels": labels}


def scalabel_document(frames: list[dict], nusc: Any, metadata: dict) -> dict:
    """The file: ``frames``, the class list, and ``metadata`` plus the format, data set and box convention."""
    return {
        "frames": frames,
        "config": {"categories": [{"name": c} for c in CLASSES]},
        "metadata": {
            "format": SCALABEL_FORMAT, "format_version": SCALABEL_FORMAT_VERSION,
            "strategy": metadata["strategy"], "round": metadata["round"], "queue": metadata["queue"],
            "data_root": getattr(nusc, "dataroot", ""), "version": getattr(nusc, "version", ""),
            "camera": EXPORT_CAMERA, "exported_at": metadata["exported_at"],
            "box3d_frame": "global",
            "box3d_convention": "nuScenes global frame (no extrinsics apply); location = centre (x, y, z) m; "
                                "dimension = (height, width, length) m; orientation = intrinsic XYZ Euler "
                                "angles (rad), (0, 0, yaw) for nuScenes boxes; alpha unused (0); velocity "
                                "(vx, vy) m/s, nuScenes attribute and track id in the label attributes",
        },
    }


def read_scalabel(path: str, known: set[str], known_as: str) -> dict[str, list[LabelBox]]:
    """The boxes per frame of a (possibly edited) Scalabel file, every frame and label validated; frame names
    must be sample tokens of ``known`` (described as ``known_as`` in errors), each at most once. Any problem is
    one ``LabellingError`` naming the file, frame and field."""
    try:
        with open(path) as f:
            doc = json.load(f)
    except OSError as e:
        raise LabellingError(f"cannot read Scalabel file {path}: {e}") from e
    except ValueError as e:
        raise LabellingError(f"Scalabel file {path} is not valid JSON: {e}") from e
    frames = doc.get("frames") if isinstance(doc, dict) else doc
    if not isinstance(frames, list):
        raise LabellingError(f"Scalabel file {path}: expected a list of frames or an object with a 'frames' list")
    out: dict[str, list[LabelBox]] = {}
    for i, frame in enumerate(frames):
        where = f"Scalabel file {path}: frames[{i}]"
        if not isinstance(frame, dict):
            raise LabellingError(f"{where}: a frame must be an object")
        name = frame.get("name")
        if not isinstance(name, str) or not name:
            raise LabellingError(f"{where}.name: missing or not a string")
        where = f"Scalabel file {path}: frame {name!r} (frames[{i}])"
        if name not in known:
            raise LabellingError(f"{where}.name: unknown sample token, not in {known_as}")
        if name in out:
            raise LabellingError(f"{where}.name: the frame appears twice")
        labels = frame.get("labels")
        if labels is None:
            labels = []
        if not isinstance(labels, list):
            raise LabellingError(f"{where}.labels: must be a list")
        out[name] = [box_of_label(lab, name, f"{where}.labels[{j}]") for j, lab in enumerate(labels)]
    return out
