"""Typed records shared by the labelling loop's steps (fleet, triggers, teacher, review queue, label store).

Every box here is a nuScenes ``sample_annotation``-style box in the GLOBAL frame: ``translation`` (x, y, z)
metres, ``size`` (w, l, h), ``rotation`` (w, x, y, z) quaternion about +z, ``velocity`` (vx, vy) m/s, one of
the 10 detection classes. The same dict shape as a detection submission record (``drive.metrics.detection``),
so the devkit scores pseudo-labels exactly as it scores a model.

Provenance travels with every annotation row written by the loop (an extra ``provenance`` key on the
``sample_annotation`` row; the devkit keeps unknown keys and ignores them):

* ``source``: ``human`` (the base world's labels and every box a reviewer produced) or ``auto`` (teacher);
* ``round``: the loop round that produced it (0 = the initial human-labelled data set);
* ``strategy``: which selection strategy's store it belongs to;
* ``teacher``: sha256 of the teacher checkpoint (auto labels), ``reviewer``: who labelled it (human);
* ``confidence``: the teacher's per-box confidence (1.0 for human labels).
"""
from __future__ import annotations

import hashlib
from dataclasses import asdict, dataclass, field
from typing import Any, Mapping

from drive.types import CLASSES

# A representative nuScenes category of each detection class (the loop writes full-tree category names).
DETECTION_TO_CATEGORY: dict[str, str] = {
    "car": "vehicle.car",
    "truck": "vehicle.truck",
    "construction_vehicle": "vehicle.construction",
    "bus": "vehicle.bus.rigid",
    "trailer": "vehicle.trailer",
    "barrier": "movable_object.barrier",
    "motorcycle": "vehicle.motorcycle",
    "bicycle": "vehicle.bicycle",
    "pedestrian": "human.pedestrian.adult",
    "traffic_cone": "movable_object.trafficcone",
}
assert set(DETECTION_TO_CATEGORY) == set(CLASSES)

SOURCES = ("human", "auto")


def stable_token(*parts: Any) -> str:
    """A deterministic 32-hex token from its parts (idempotent writes: the same inputs, the same token)."""
    return hashlib.md5("/".join(map(str, parts)).encode()).hexdigest()


@dataclass
class LabelBox:
    """One 3D box of one keyframe, global frame, nuScenes conventions (see the module doc)."""

    sample_token: str
    translation: list[float]
    size: list[float]  # w, l, h
    rotation: list[float]  # w, x, y, z
    velocity: list[float]  # vx, vy (global)
    detection_name: str
    attribute_name: str = ""
    score: float = 1.0  # detection confidence (teacher / edge) or 1.0 (human)
    track_id: str = ""  # clip-level track / instance key ("" = none)
    num_lidar_pts: int = -1  # -1: not counted

    def __post_init__(self) -> None:
        if self.detection_name not in CLASSES:
            raise ValueError(f"detection_name {self.detection_name!r} is not one of the 10 detection classes")
        if len(self.translation) != 3 or len(self.size) != 3 or len(self.rotation) != 4 or len(self.velocity) != 2:
            raise ValueError(f"box of sample {self.sample_token}: translation/size/rotation/velocity need 3/3/4/2 values")

    def to_result(self) -> dict:
        """A nuScenes detection-submission record (``detection_score`` = score)."""
        return {"sample_token": self.sample_token, "translation": [float(v) for v in self.translation],
                "size": [float(v) for v in self.size], "rotation": [float(v) for v in self.rotation],
                "velocity": [float(v) for v in self.velocity], "detection_name": self.detection_name,
                "detection_score": float(self.score), "attribute_name": self.attribute_name}

    @classmethod
    def from_result(cls, rec: Mapping, track_id: str = "") -> "LabelBox":
        return cls(sample_token=rec["sample_token"], translation=list(rec["translation"]), size=list(rec["size"]),
                   rotation=list(rec["rotation"]), velocity=list(rec.get("velocity", [0.0, 0.0]))[:2],
                   detection_name=rec["detection_name"], attribute_name=rec.get("attribute_name", ""),
                   score=float(rec.get("detection_score", 1.0)), track_id=str(rec.get("tracking_id", track_id)))

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: Mapping) -> "LabelBox":
        return cls(**{k: d[k] for k in cls.__dataclass_fields__ if k in d})


@dataclass
class Provenance:
    source: str  # "human" | "auto"
    round: int
    strategy: str = ""
    teacher: str = ""  # sha256 of the teacher checkpoint (auto labels)
    reviewer: str = ""  # human labels: who labelled
    confidence: float = 1.0

    def __post_init__(self) -> None:
        if self.source not in SOURCES:
            raise ValueError(f"provenance source must be one of {SOURCES}, got {self.source!r}")

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: Mapping) -> "Provenance":
        return cls(**{k: d[k] for k in cls.__dataclass_fields__ if k in d})


@dataclass
class FrameLabels:
    """The labels one step produced for one keyframe."""

    sample_token: str
    boxes: list[LabelBox] = field(default_factory=list)
    provenance: Provenance = field(default_factory=lambda: Provenance("auto", 0))
