"""Fleet drives: what the cars upload each round, the hidden truth behind it, and the checks an upload must pass.

In this world the fleet is the synthetic world generator run with other seeds. A share ``longtail_frac`` of the
scenes (chosen by the seed) has the long tail turned up (jaywalkers, rare vehicle classes, stopped vehicles in lane,
cut-ins, dusk); the rest is ordinary driving with the base world's knobs, as most of a real fleet's miles are.
Which scenes are long-tail is hidden truth (``fleet.json``'s ``longtail_scenes``): the triggers must find them,
the round report counts how many they uploaded. One round's drives live in one root:

    <root>/samples/..., maps/...   sensor and map files; names start with the scene name (``fleet03-0001__...``)
    <root>/v1.0-mini/              the HIDDEN TRUTH: the full world with annotations. Only the simulated annotator
                                   and the pseudo-label scoring may read it
    <root>/v1.0-fleet/             what the car uploads: the same tables with ``sample_annotation`` and
                                   ``instance`` empty, and ``splits.json`` = {"fleet": every scene}
    <root>/fleet.json              the parameters it was made with; written last, so its presence marks the
                                   root complete (a root without it is a crash leftover and is rebuilt)

Scene names are ``fleet{round:02d}-{i:04d}``, so they never collide with the base world's (nuScenes mini) names
nor with another round's, and the label store can link every clip in beside the base world.

Uploads are checked before anything trusts them (``validate_clip``): a keyframe without all six cameras, an image
that is missing, empty, outside the root or not decodable, a dangling ego pose / calibration. The loop rejects such
a clip with the reasons and goes on with the rest of the round.
"""
from __future__ import annotations

import glob
import logging
import os
import shutil
import tempfile
from dataclasses import asdict, dataclass, field, fields

import cv2
import numpy as np

from drive.data.nusc import TABLES
from drive.data.synth.scenario import WorldKnobs
from drive.data.synth.world import VERSION as TRUTH_VERSION
from drive.data.synth.world import generate_world
from drive.types import CAMERAS, LIDAR

from .errors import LabellingError
from .tables import data_path, read_json, read_table, read_tables, write_json

log = logging.getLogger(__name__)

FLEET_VERSION = "v1.0-fleet"
FLEET_SPLIT = "fleet"
FLEET_SCENE_PREFIX = "fleet"  # every fleet scene name starts with it (the base world's never do)
LONGTAIL_SPLIT = "longtail_val"
FLEET_MARKER = "fleet.json"
LONGTAIL_MARKER = "longtail.json"
STRIPPED_TABLES = ("sample_annotation", "instance")  # what the car does not upload: labels

# World knob overrides that turn the long tail up (defaults in ``WorldKnobs``: 0.6 / 0.5 / 1.0 / 0.35 / 0.12 / 0.35).
LONGTAIL_KNOBS: dict = {
    "crossing_prob": 0.9,  # pedestrians crossing in front of the ego ...
    "jaywalk_frac": 0.8,  # ... mostly mid-block (jaywalkers)
    "rare_boost": 3.0,  # buses, trucks / trailers, motorcycles, construction vehicles
    "stopped_in_lane_prob": 0.7,  # broken-down vehicles in the ego lane
    "cut_in_prob": 0.6,
    "dusk_prob": 0.45,  # low sun, long shadows, orange cast
}


def longtail_knobs(overrides: dict | None = None) -> WorldKnobs:
    """``WorldKnobs`` with ``LONGTAIL_KNOBS`` and then ``overrides`` applied; an unknown knob is an error."""
    values = {**LONGTAIL_KNOBS, **dict(overrides or {})}
    known = {f.name for f in fields(WorldKnobs)}
    bad = sorted(set(values) - known)
    if bad:
        raise LabellingError(f"knobs: unknown world knob(s) {bad}; known: {sorted(known)}")
    try:
        return WorldKnobs(**{k: float(v) for k, v in values.items()})
    except (TypeError, ValueError) as e:
        raise LabellingError(f"knobs: {e}") from e


@dataclass
class FleetInfo:
    """One round's fleet drives (see the module doc)."""

    root: str
    round_index: int
    seed: int
    scene_names: list[str]
    samples: int
    width: int
    height: int
    keyframes: int
    knobs: dict = field(default_factory=dict)  # the long-tail scenes' knobs (the others: ``WorldKnobs()``)
    longtail_scenes: list[str] = field(default_factory=list)  # hidden truth: which scenes have the long tail up
    truth_version: str = TRUTH_VERSION
    fleet_version: str = FLEET_VERSION
    split: str = FLEET_SPLIT

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "FleetInfo":
        return cls(**{k: d[k] for k in (f.name for f in fields(cls)) if k in d})


@dataclass
class LongtailInfo:
    """The fixed long-tail validation world: full ground truth, split ``longtail_val`` = every scene."""

    root: str
    seed: int
    scene_names: list[str]
    samples: int
    annotations: int
    width: int
    height: int
    keyframes: int
    knobs: dict = field(default_factory=dict)
    version: str = TRUTH_VERSION
    split: str = LONGTAIL_SPLIT


@dataclass
class ClipInfo:
    """One uploaded drive (a scene): its keyframes in temporal order and its upload size."""

    scene_token: str
    scene_name: str
    sample_tokens: list[str]
    bytes: int  # keyframe camera images + keyframe LIDAR_TOP file, as found on disk


# ---------------------------------------------------------------------------------------------- generation


def _build_atomically(root: str, marker: str, params: dict, build) -> dict:
    """Reuse ``root`` if its marker records the same ``params``; otherwise build it in a temporary sibling with
    ``build(tmp_root) -> dict`` (extra marker fields), write the marker last and rename it into place."""
    root = os.path.abspath(os.path.expanduser(str(root)))
    marker_path = os.path.join(root, marker)
    if os.path.isfile(marker_path):
        try:
            old = read_json(marker_path, "marker")
        except LabellingError:
            old = None
        if isinstance(old, dict):
            diff = sorted(k for k in params if old.get(k) != params[k])
            if diff:
                raise LabellingError(f"{marker_path}: {root} was made with other parameters ({', '.join(diff)}: "
                                     f"{[old.get(k) for k in diff]} != {[params[k] for k in diff]}); remove it or "
                                     f"pick another root")
            return old
    parent, name = os.path.split(root)
    os.makedirs(parent, exist_ok=True)
    for stale in glob.glob(os.path.join(parent, f".{name}.build-*")):
        shutil.rmtree(stale, ignore_errors=True)
    tmp = tempfile.mkdtemp(prefix=f".{name}.build-", dir=parent)
    try:
        world = os.path.join(tmp, "world")
        extra = build(world)
        info = {**params, **extra, "root": root}
        write_json(os.path.join(world, marker), info)
        if os.path.lexists(root):
            log.warning("replacing incomplete %s (no %s)", root, marker)
            shutil.rmtree(root)
        os.replace(world, root)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return info


def longtail_mask(scenes: int, frac: float, seed: int) -> list[bool]:
    """Which of ``scenes`` scenes get the long-tail knobs: ``round(frac * scenes)`` of them (at least one when
    ``frac > 0``), drawn by ``seed``."""
    if not 0.0 <= frac <= 1.0:
        raise LabellingError(f"fleet longtail_frac must be in [0, 1], got {frac}")
    n = min(scenes, max(1 if frac > 0 else 0, int(round(frac * scenes))))
    chosen = set(np.random.default_rng([int(seed), 7919]).choice(scenes, size=n, replace=False).tolist())
    return [i in chosen for i in range(scenes)]


def generate_fleet(truth_root: str, round_index: int, scenes: int, seed: int, width: int = 400, height: int = 225,
                   keyframes: int = 8, knobs: dict | None = None, workers: int = 2,
                   longtail_frac: float = 1.0) -> FleetInfo:
    """New drives of round ``round_index`` in ``truth_root``: the hidden truth (``v1.0-mini``) and the unlabelled
    upload (``v1.0-fleet``, split ``fleet``); ``longtail_frac`` of the scenes with the long-tail knobs, the rest
    ordinary. Idempotent: a complete root with the same parameters is reused; a half-made one is replaced."""
    if scenes < 1 or keyframes < 1:
        raise LabellingError(f"generate_fleet: scenes and keyframes must be >= 1 (got {scenes}, {keyframes})")
    wk = longtail_knobs(knobs)
    mask = longtail_mask(scenes, float(longtail_frac), seed)
    params = {"round_index": int(round_index), "seed": int(seed), "scenes": int(scenes), "width": int(width),
              "height": int(height), "keyframes": int(keyframes), "knobs": asdict(wk),
              "longtail_frac": float(longtail_frac)}

    prefix = f"{FLEET_SCENE_PREFIX}{int(round_index):02d}"

    def build(world: str) -> dict:
        generate_world(world, scenes=scenes, seed=seed, width=width, height=height, workers=workers,
                       knobs=[wk if m else WorldKnobs() for m in mask], keyframes=keyframes,
                       scene_prefix=prefix, all_split="train")
        names = [s["name"] for s in read_table(world, TRUTH_VERSION, "scene")]
        splits = read_json(os.path.join(world, TRUTH_VERSION, "splits.json"), "splits file")
        write_json(os.path.join(world, TRUTH_VERSION, "splits.json"), {**splits, FLEET_SPLIT: names})
        _write_stripped(world, names)
        longtail = [f"{prefix}-{i:04d}" for i, m in enumerate(mask) if m]  # plan_world's scene names
        return {"scene_names": names, "samples": len(read_table(world, TRUTH_VERSION, "sample")),
                "longtail_scenes": longtail}

    info = _build_atomically(truth_root, FLEET_MARKER, params, build)
    return FleetInfo(root=info["root"], round_index=info["round_index"], seed=info["seed"],
                     scene_names=list(info["scene_names"]), samples=info["samples"], width=info["width"],
                     height=info["height"], keyframes=info["keyframes"], knobs=info["knobs"],
                     longtail_scenes=list(info["longtail_scenes"]))


def _write_stripped(world: str, scene_names: list[str]) -> None:
    """``v1.0-fleet``: the truth tables without labels (and without the generator's hidden-truth side file)."""
    src, dst = os.path.join(world, TRUTH_VERSION), os.path.join(world, FLEET_VERSION)
    os.makedirs(dst)
    for t in TABLES:
        if t in STRIPPED_TABLES:
            write_json(os.path.join(dst, f"{t}.json"), [])
        else:
            shutil.copyfile(os.path.join(src, f"{t}.json"), os.path.join(dst, f"{t}.json"))
    write_json(os.path.join(dst, "splits.json"), {FLEET_SPLIT: scene_names})


def generate_longtail_val(root: str, scenes: int, seed: int, width: int = 400, height: int = 225,
                          keyframes: int = 8, knobs: dict | None = None, workers: int = 2) -> LongtailInfo:
    """The fixed long-tail validation world: every scene val ('rich': every class retried in), long-tail knobs,
    full ground truth in ``v1.0-mini``; ``splits.json`` adds ``longtail_val`` to the usual synth splits."""
    if scenes < 1 or keyframes < 1:
        raise LabellingError(f"generate_longtail_val: scenes and keyframes must be >= 1 (got {scenes}, {keyframes})")
    wk = longtail_knobs(knobs)
    params = {"seed": int(seed), "scenes": int(scenes), "width": int(width), "height": int(height),
              "keyframes": int(keyframes), "knobs": asdict(wk)}

    def build(world: str) -> dict:
        generate_world(world, scenes=scenes, seed=seed, width=width, height=height, workers=workers, knobs=wk,
                       keyframes=keyframes, scene_prefix="longtail", all_split="val")
        names = [s["name"] for s in read_table(world, TRUTH_VERSION, "scene")]
        splits = read_json(os.path.join(world, TRUTH_VERSION, "splits.json"), "splits file")
        write_json(os.path.join(world, TRUTH_VERSION, "splits.json"), {**splits, LONGTAIL_SPLIT: names})
        return {"scene_names": names, "samples": len(read_table(world, TRUTH_VERSION, "sample")),
                "annotations": len(read_table(world, TRUTH_VERSION, "sample_annotation"))}

    info = _build_atomically(root, LONGTAIL_MARKER, params, build)
    return LongtailInfo(root=info["root"], seed=info["seed"], scene_names=list(info["scene_names"]),
                        samples=info["samples"], annotations=info["annotations"], width=info["width"],
                        height=info["height"], keyframes=info["keyframes"], knobs=info["knobs"])


# ---------------------------------------------------------------------------------------------- clips


class _Upload:
    """The tables of an upload, indexed for the clip queries."""

    def __init__(self, root: str, version: str):
        self.root = os.path.abspath(os.path.expanduser(str(root)))
        self.version = version
        T = read_tables(self.root, version, ("scene", "sample", "sample_data", "calibrated_sensor", "sensor",
                                             "ego_pose", "log", "map"))
        try:
            self.scenes = {s["token"]: s for s in T["scene"]}
            self.samples_of: dict[str, list[dict]] = {}
            for s in T["sample"]:
                self.samples_of.setdefault(s["scene_token"], []).append(s)
            for rows in self.samples_of.values():
                rows.sort(key=lambda s: (int(s["timestamp"]), s["token"]))
            self.keyframe_data: dict[str, list[dict]] = {}
            for r in T["sample_data"]:
                if r.get("is_key_frame"):
                    self.keyframe_data.setdefault(r["sample_token"], []).append(r)
            self.calib = {r["token"]: r for r in T["calibrated_sensor"]}
            self.channel = {r["token"]: r["channel"] for r in T["sensor"]}
            self.poses = {r["token"] for r in T["ego_pose"]}
            self.logs = {r["token"] for r in T["log"]}
            self.mapped_logs = {t for m in T["map"] for t in m["log_tokens"]}
        except (KeyError, TypeError) as e:
            raise LabellingError(f"inconsistent tables in {os.path.join(self.root, version)}: a row lacks field "
                                 f"{e}") from e

    def scene(self, scene_token: str) -> dict:
        if scene_token not in self.scenes:
            raise LabellingError(f"{os.path.join(self.root, self.version, 'scene.json')}: no scene {scene_token}")
        return self.scenes[scene_token]

    def channel_of(self, sd: dict) -> str | None:
        """The row's channel via its calibration; from its file name (``samples/<CHANNEL>/...``) if that dangles."""
        cs = self.calib.get(sd.get("calibrated_sensor_token"))
        if cs is not None and cs.get("sensor_token") in self.channel:
            return self.channel[cs["sensor_token"]]
        parts = str(sd.get("filename", "")).split("/")
        return parts[1] if len(parts) > 2 else None

    def clip(self, scene_token: str) -> ClipInfo:
        scene = self.scene(scene_token)
        samples = self.samples_of.get(scene_token, [])
        size = 0
        for s in samples:
            for sd in self.keyframe_data.get(s["token"], []):
                if self.channel_of(sd) in CAMERAS or self.channel_of(sd) == LIDAR:
                    try:
                        path = data_path(self.root, sd.get("filename"), "")
                    except LabellingError:
                        continue
                    if os.path.isfile(path):
                        size += os.path.getsize(path)
        return ClipInfo(scene_token, scene["name"], [s["token"] for s in samples], size)


def list_clips(root: str, version: str) -> list[ClipInfo]:
    """Every scene of ``<root>/<version>`` as a clip, in scene-table order."""
    up = _Upload(root, version)
    return [up.clip(tok) for tok in up.scenes]


def validate_clip(root: str, version: str, scene_token: str) -> list[str]:
    """Why the upload of one scene is malformed; an empty list means it is fine. An unknown scene token or an
    unreadable table is a ``LabellingError`` (the whole upload is broken, not one clip)."""
    up = _Upload(root, version)
    scene = up.scene(scene_token)
    where = f"scene {scene['name']}"
    reasons: list[str] = []
    samples = up.samples_of.get(scene_token, [])
    if not samples:
        reasons.append(f"{where}: no keyframe samples")
    if scene.get("log_token") not in up.logs:
        reasons.append(f"{where}: log {scene.get('log_token')} missing from log.json")
    elif scene.get("log_token") not in up.mapped_logs:
        reasons.append(f"{where}: no map row for log {scene.get('log_token')}")
    for k, s in enumerate(samples):
        here = f"{where} keyframe {k} (sample {s['token']})"
        by_channel: dict[str, dict] = {}
        for sd in up.keyframe_data.get(s["token"], []):
            ch = up.channel_of(sd)
            if ch is not None:
                by_channel.setdefault(ch, sd)
            if sd.get("calibrated_sensor_token") not in up.calib:
                reasons.append(f"{here}: sample_data {sd['token']} ({ch or '?'}): calibrated_sensor "
                               f"{sd.get('calibrated_sensor_token')} missing")
            if sd.get("ego_pose_token") not in up.poses:
                reasons.append(f"{here}: sample_data {sd['token']} ({ch or '?'}): ego_pose {sd.get('ego_pose_token')} "
                               f"missing")
        for cam in CAMERAS:
            sd = by_channel.get(cam)
            if sd is None:
                reasons.append(f"{here}: no keyframe sample_data row for camera {cam}")
                continue
            bad = _check_image(up.root, sd)
            if bad:
                reasons.append(f"{here}: {cam} {bad}")
        if LIDAR in by_channel:  # optional (camera-only cars), but if uploaded it must be readable
            bad = _check_lidar(up.root, by_channel[LIDAR])
            if bad:
                reasons.append(f"{here}: {LIDAR} {bad}")
    return reasons


def _resolve(root: str, sd: dict) -> tuple[str | None, str | None]:
    try:
        return data_path(root, sd.get("filename"), ""), None
    except LabellingError:
        return None, f"file {sd.get('filename')!r} is outside the upload root"


def _present(root: str, sd: dict) -> tuple[str, int, str | None]:
    """(path, size, reason) of an uploaded file: a reason when it escapes the root or is missing."""
    path, bad = _resolve(root, sd)
    if bad:
        return "", 0, bad
    if not os.path.isfile(path):
        return path, 0, f"file {sd['filename']} missing"
    return path, os.path.getsize(path), None


def _check_image(root: str, sd: dict) -> str | None:
    path, size, bad = _present(root, sd)
    if bad:
        return bad
    name = sd["filename"]
    if size == 0:
        return f"file {name} is empty"
    if name.lower().endswith((".jpg", ".jpeg")):
        with open(path, "rb") as f:
            f.seek(max(0, size - 64))
            tail = f.read().rstrip(b"\x00\r\n ")
        if not tail.endswith(b"\xff\xd9"):
            return f"file {name} is a truncated / corrupt JPEG (no end-of-image marker)"
    if cv2.imread(path, cv2.IMREAD_COLOR) is None:
        return f"file {name} cannot be decoded as an image"
    return None


def _check_lidar(root: str, sd: dict) -> str | None:
    _, size, bad = _present(root, sd)
    if bad:
        return bad
    name = sd["filename"]
    if size == 0 or size % 20:  # float32 x, y, z, intensity, ring per point
        return f"file {name} is not a point cloud of (x, y, z, intensity, ring) float32 points ({size} bytes)"
    return None
