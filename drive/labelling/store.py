"""The label store: one strategy's labelled data root, growing by one nuScenes table version per round.

Why a store and not "append to the base world": the loop compares strategies at equal labelling cost, so each
strategy needs its own training set (the human-labelled base plus the fleet clips *it* uploaded, with the labels
*it* paid for), and every round must stay reproducible and resumable. The store is an ordinary nuScenes-format
root that the devkit and ``NuScenesDrivingDataset(root, version, split="loop_train")`` read unchanged:

    <store>/samples/..., sweeps/..., maps/...   sensor and map files, hard-linked (copied across devices) from
                                                the base world and the fleet roots; shared by every version
    <store>/v1.0-r0/                            the base world's split, every annotation ``human`` round 0
    <store>/v1.0-r1/ ...                        the previous version + the round's accepted clips and labels

A version directory holds the 13 tables, ``splits.json`` (``loop_train``: every scene of the version),
``label_index.json`` (sample token -> the source and round of its current label set; a keyframe a human looked
at and found empty is human-labelled too) and ``stats.json``. It is written into a temporary sibling and
renamed into place, ``stats.json`` last, so a version directory without ``stats.json`` is a crash leftover and
is rebuilt. Sensor files are linked in before the rename (each one atomically); a crash leaves at most files
that the rerun finds identical and keeps.

Label rules (``write_round``), per keyframe:

* human labels are never overwritten: auto labels for a sample that already has human labels are dropped; human
  labels for a sample that already has human labels keep the existing ones (both counted in the stats);
* human labels for a sample replace its auto labels; newer auto labels replace older auto labels;
* every annotation row carries ``provenance`` (``Provenance.to_dict()``, ``confidence`` = the box's score,
  ``strategy`` = the store's; ``round`` must be the round being written), copied unchanged from version to version.

One writer per store at a time (the loop runs a strategy's rounds in sequence).

Tokens are ``stable_token`` of (kind, strategy, source, round, sample, box index / track), so a rerun with the
same inputs writes byte-identical tables. New annotation rows get the visibility token of the highest level
(``v80-100``): the loop does not estimate occlusion and a visibility filter should not silently drop its boxes.
``num_radar_pts`` is 0; ``num_lidar_pts`` is the box's own count, or the keyframe ``LIDAR_TOP`` points inside
the box (devkit ``points_in_box``), or 0 when the sample has no lidar file.
"""
from __future__ import annotations

import json
import logging
import os
import re
from typing import Mapping, Optional, Sequence

import numpy as np
from nuscenes.utils.data_classes import Box
from nuscenes.utils.geometry_utils import points_in_box
from pyquaternion import Quaternion

from drive.types import ATTRIBUTES, LIDAR

from .errors import LabellingError
from .records import DETECTION_TO_CATEGORY, FrameLabels, LabelBox, Provenance, stable_token
from .tables import (Tables, add_static, by_token, data_path, digest, full_visibility_token, link_file, merge_static,
                     read_json, read_table, read_tables, rechain, restrict_to_scenes, split_scene_names,
                     write_version_dir)

log = logging.getLogger(__name__)

LOOP_SPLIT = "loop_train"
STATS_FILE = "stats.json"  # written last: its presence marks a complete version
LABEL_INDEX_FILE = "label_index.json"
_VERSION_RE = re.compile(r"^v1\.0-r(\d+)$")


# ---------------------------------------------------------------------------------------------- lidar counts


class LidarCounter:
    """Counts keyframe ``LIDAR_TOP`` points inside global-frame boxes (devkit ``LidarPointCloud`` layout:
    float32 x, y, z, intensity, ring); 0 for every box of a sample without a lidar row or file."""

    def __init__(self, root: str, tables: Tables):
        self.root = root
        self.calib = by_token(tables["calibrated_sensor"])
        self.pose = by_token(tables["ego_pose"])
        channel = {r["token"]: r["channel"] for r in tables["sensor"]}
        self.lidar_of = {r["sample_token"]: r for r in tables["sample_data"] if r.get("is_key_frame") and
                         channel.get(self.calib.get(r["calibrated_sensor_token"], {}).get("sensor_token")) == LIDAR}

    def points_global(self, sample_token: str) -> Optional[np.ndarray]:
        """(N, 3) keyframe lidar points in the global frame, or None without a lidar file."""
        sd = self.lidar_of.get(sample_token)
        if sd is None:
            return None
        path = data_path(self.root, sd["filename"], f"sample_data {sd['token']} filename")
        if not os.path.isfile(path):
            return None
        scan = np.fromfile(path, dtype=np.float32)
        if scan.size % 5:
            raise LabellingError(f"lidar file {path}: {scan.size} floats is not a whole number of "
                                 f"(x, y, z, intensity, ring) points")
        cs, pose = self.calib[sd["calibrated_sensor_token"]], self.pose.get(sd["ego_pose_token"])
        if pose is None:
            raise LabellingError(f"sample_data {sd['token']}: ego_pose {sd['ego_pose_token']} not found")
        pts = scan.reshape(-1, 5)[:, :3].astype(np.float64)
        pts = pts @ Quaternion(cs["rotation"]).rotation_matrix.T + np.asarray(cs["translation"], np.float64)
        return pts @ Quaternion(pose["rotation"]).rotation_matrix.T + np.asarray(pose["translation"], np.float64)

    def count(self, sample_token: str, boxes: Sequence[LabelBox]) -> list[int]:
        pts = self.points_global(sample_token)
        if pts is None:
            return [0] * len(boxes)
        return [int(points_in_box(Box(b.translation, b.size, Quaternion(b.rotation)), pts.T).sum()) for b in boxes]


# ---------------------------------------------------------------------------------------------- the store


class LabelStore:
    """One strategy's labelled data root (see the module doc)."""

    def __init__(self, root: str, strategy: str):
        if not isinstance(strategy, str) or not strategy or "/" in strategy:
            raise LabellingError(f"strategy must be a non-empty name without '/', got {strategy!r}")
        self.root = os.path.abspath(os.path.expanduser(str(root)))
        self.strategy = strategy
        os.makedirs(self.root, exist_ok=True)

    # ---------------------------------------------------------------- versions

    @staticmethod
    def version_name(round_index: int) -> str:
        return f"v1.0-r{int(round_index)}"

    def _complete(self, version: str) -> bool:
        return os.path.isfile(os.path.join(self.root, version, STATS_FILE))

    def versions(self) -> list[str]:
        """Complete versions, oldest round first."""
        found = [(int(m.group(1)), d) for d in os.listdir(self.root)
                 if (m := _VERSION_RE.match(d)) and self._complete(d)]
        return [d for _, d in sorted(found)]

    def latest_version(self) -> str:
        vs = self.versions()
        if not vs:
            raise LabellingError(f"label store {self.root} has no complete version yet (run init_from_base first)")
        return vs[-1]

    def stats(self, version: str) -> dict:
        return read_json(os.path.join(self.root, version, STATS_FILE), "stats file")

    def label_index(self, version: str) -> dict[str, dict]:
        """sample token -> {"source", "round"} of the sample's current label set."""
        return read_json(os.path.join(self.root, version, LABEL_INDEX_FILE), "label index")

    def provenance_counts(self, version: str) -> dict[str, dict[int, int]]:
        """Annotation rows of ``version`` by provenance source and round: {"human": {0: n, 2: m}, "auto": {...}}."""
        out: dict[str, dict[int, int]] = {}
        for i, row in enumerate(read_table(self.root, version, "sample_annotation")):
            prov = row.get("provenance")
            if not isinstance(prov, dict) or "source" not in prov or "round" not in prov:
                raise LabellingError(f"{os.path.join(self.root, version, 'sample_annotation.json')} row {i} "
                                     f"({row.get('token')}): missing or malformed 'provenance'")
            by_round = out.setdefault(prov["source"], {})
            by_round[int(prov["round"])] = by_round.get(int(prov["round"]), 0) + 1
        return {s: dict(sorted(r.items())) for s, r in sorted(out.items())}

    # ---------------------------------------------------------------- round 0

    def init_from_base(self, base_root: str, base_version: str, split: str) -> str:
        """``v1.0-r0``: the base world's ``split`` scenes, files linked in, every annotation human round 0."""
        name = self.version_name(0)
        base_root = os.path.abspath(os.path.expanduser(str(base_root)))
        source = {"base_root": base_root, "base_version": base_version, "split": split}
        if self._complete(name):
            old = self.stats(name)
            if {k: old.get(k) for k in source} != source:
                raise LabellingError(f"{os.path.join(self.root, name, STATS_FILE)}: the store was built from "
                                     f"{ {k: old.get(k) for k in source} }, not {source}")
            return name
        T = read_tables(base_root, base_version)
        wanted = split_scene_names(base_root, base_version, split)
        scenes = [s for s in T["scene"] if s["name"] in set(wanted)]
        if not scenes:
            raise LabellingError(f"split {split!r} of {base_root}/{base_version}: none of its {len(wanted)} scenes "
                                 f"is in scene.json")
        where = os.path.join(base_root, base_version)
        try:
            R = restrict_to_scenes(T, {s["token"] for s in scenes})
        except KeyError as e:
            raise LabellingError(f"inconsistent tables in {where}: token or field {e} not found") from e
        prov = Provenance("human", 0, self.strategy, reviewer="base").to_dict()
        for row in R["sample_annotation"]:
            row.setdefault("provenance", dict(prov))
        self._link_files(base_root, R["sample_data"], R["map"], where, require_all=True)
        index = {s["token"]: {"source": "human", "round": 0} for s in R["sample"]}
        stats = {**source, "version": name, "round": 0, "strategy": self.strategy, "scenes": len(R["scene"]),
                 "samples": len(R["sample"]), "annotations": len(R["sample_annotation"]),
                 "instances": len(R["instance"])}
        self._write(name, R, index, stats)
        return name

    # ---------------------------------------------------------------- rounds

    def write_round(self, round_index: int, clips: Sequence[tuple[str, str, str]],
                    labels: Mapping[str, FrameLabels]) -> dict:
        """``v1.0-r{round}`` = the previous version + ``clips`` (fleet_root, fleet_version, scene_token) + the rows
        built from ``labels`` (FrameLabels per keyframe sample token). Returns the round's stats."""
        if int(round_index) < 1:
            raise LabellingError(f"round_index must be >= 1 (round 0 is init_from_base), got {round_index}")
        round_index = int(round_index)
        name = self.version_name(round_index)
        inputs = digest({"clips": [list(map(str, c)) for c in clips],
                          "labels": {k: _frame_dict(v) for k, v in sorted(labels.items())}})
        if self._complete(name):
            stats = self.stats(name)
            if stats.get("inputs") != inputs:
                log.warning("%s exists and was written from other inputs; keeping it", os.path.join(self.root, name))
            return stats
        prev = [v for v in self.versions() if int(_VERSION_RE.match(v).group(1)) < round_index]
        if not prev:
            raise LabellingError(f"label store {self.root}: no version before round {round_index} "
                                 f"(run init_from_base first)")
        prev_name = prev[-1]
        T = read_tables(self.root, prev_name)
        index = dict(self.label_index(prev_name))
        stats = {"version": name, "round": round_index, "previous": prev_name, "strategy": self.strategy,
                 "inputs": inputs, "clips_added": 0, "clips_already_present": 0, "samples_added": 0,
                 "files": 0, "boxes_added": {"human": 0, "auto": 0}, "auto_dropped_human_exists": 0,
                 "human_kept_existing": 0, "auto_replaced_by_human": 0, "auto_replaced_by_auto": 0,
                 "duplicate_track_boxes": 0}
        fleets: dict[tuple[str, str], Tables] = {}
        for fleet_root, fleet_version, scene_token in clips:
            fleet_root = os.path.abspath(os.path.expanduser(str(fleet_root)))
            key = (fleet_root, fleet_version)
            if key not in fleets:
                fleets[key] = read_tables(fleet_root, fleet_version)
            added = self._add_clip(T, fleets[key], fleet_root, fleet_version, scene_token, stats)
            for s in added:
                index.setdefault(s, None)
        self._apply_labels(T, index, round_index, labels, stats)
        stats.update(scenes=len(T["scene"]), samples=len(T["sample"]), annotations=len(T["sample_annotation"]),
                     instances=len(T["instance"]))
        self._write(name, T, {k: v for k, v in index.items() if v is not None}, stats)
        return stats

    # ---------------------------------------------------------------- internals

    def _write(self, name: str, T: Tables, index: dict, stats: dict) -> None:
        scene_names = [s["name"] for s in T["scene"]]
        write_version_dir(os.path.join(self.root, name), T,
                          [("splits.json", {LOOP_SPLIT: scene_names}),
                           (LABEL_INDEX_FILE, dict(sorted(index.items()))), (STATS_FILE, stats)])

    def _link_files(self, src_root: str, sample_data: list[dict], maps: list[dict], where: str,
                    require_all: bool) -> int:
        """Link the sensor and map files into the store; returns how many files the rows name."""
        n = 0
        for row, what in [(r, "sample_data") for r in sample_data] + [(m, "map") for m in maps]:
            if what == "map" and not row.get("filename"):
                continue
            label = f"{where} {what} {row['token']} filename"
            src = data_path(src_root, row["filename"], label)
            dst = data_path(self.root, row["filename"], label)
            n += 1
            if not os.path.isfile(src):
                if what == "map":
                    log.warning("%s: map file %s missing (drivable area will be invalid)", where, src)
                    continue
                if require_all or row.get("fileformat") == "jpg":
                    raise LabellingError(f"{label}: file {src} not found")
                log.warning("%s: %s not found; linked without it", label, src)
                continue
            link_file(src, dst)
        return n

    def _add_clip(self, T: Tables, F: Tables, fleet_root: str, fleet_version: str, scene_token: str,
                  stats: dict) -> list[str]:
        """Append one fleet scene's rows to ``T`` and link its files; returns the new sample tokens."""
        where = os.path.join(fleet_root, fleet_version)
        fscene = next((s for s in F["scene"] if s["token"] == scene_token), None)
        if fscene is None:
            raise LabellingError(f"{where}/scene.json: no scene with token {scene_token}")
        existing = next((s for s in T["scene"] if s["token"] == scene_token), None)
        if existing is not None:
            stats["clips_already_present"] += 1
            return []
        if any(s["name"] == fscene["name"] for s in T["scene"]):
            raise LabellingError(f"{where}/scene.json: scene name {fscene['name']!r} (token {scene_token}) is already "
                                 f"in the store under another token")
        try:
            samples = [s for s in F["sample"] if s["scene_token"] == scene_token]
            sample_toks = {s["token"] for s in samples}
            sds = [r for r in F["sample_data"] if r["sample_token"] in sample_toks]
            calib_toks = {r["calibrated_sensor_token"] for r in sds}
            pose_toks = {r["ego_pose_token"] for r in sds}
            calibs = [r for r in F["calibrated_sensor"] if r["token"] in calib_toks]
            poses = [r for r in F["ego_pose"] if r["token"] in pose_toks]
            logs = [r for r in F["log"] if r["token"] == fscene["log_token"]]
            maps = [m for m in F["map"] if fscene["log_token"] in m["log_tokens"]]
        except KeyError as e:
            raise LabellingError(f"inconsistent tables in {where}: a row lacks field {e}") from e
        for what, got, want in (("calibrated_sensor", calibs, calib_toks), ("ego_pose", poses, pose_toks)):
            if len({r["token"] for r in got}) != len(want):
                missing = sorted(want - {r["token"] for r in got})
                raise LabellingError(f"{where}/{what}.json: token(s) {missing[:3]} of scene {fscene['name']} missing")
        if not logs or not maps:
            raise LabellingError(f"{where}: scene {fscene['name']} has no {'log' if not logs else 'map'} row for "
                                 f"log {fscene['log_token']}")
        stats["files"] += self._link_files(fleet_root, sds, maps, where, require_all=False)
        sensor_map = merge_static(T, F)
        have = {t: {r["token"] for r in T[t]} for t in ("sample", "sample_data", "ego_pose", "calibrated_sensor",
                                                       "log")}
        for table, rows in (("sample", samples), ("sample_data", sds), ("ego_pose", poses),
                            ("calibrated_sensor", calibs), ("log", logs)):
            for r in rows:
                if r["token"] in have[table]:
                    if table in ("calibrated_sensor", "log"):
                        continue  # shared with a clip ingested earlier
                    raise LabellingError(f"{where}/{table}.json: token {r['token']} of scene {fscene['name']} is "
                                         f"already in the store")
                r = dict(r)
                if table == "calibrated_sensor":
                    r["sensor_token"] = sensor_map.get(r["sensor_token"], r["sensor_token"])
                T[table].append(r)
        T["scene"].append(dict(fscene))
        map_rows = by_token(T["map"])
        for m in maps:
            if m["token"] in map_rows:
                tokens = map_rows[m["token"]]["log_tokens"]
                if fscene["log_token"] not in tokens:
                    tokens.append(fscene["log_token"])
            else:
                T["map"].append({**m, "log_tokens": [fscene["log_token"]]})
        stats["clips_added"] += 1
        stats["samples_added"] += len(samples)
        return sorted(sample_toks)

    def _apply_labels(self, T: Tables, index: dict, round_index: int, labels: Mapping[str, FrameLabels],
                      stats: dict) -> None:
        samples = by_token(T["sample"])
        ts = {s["token"]: int(s["timestamp"]) for s in T["sample"]}
        scene_of = {s["token"]: s["scene_token"] for s in T["sample"]}
        rows_of: dict[str, list[dict]] = {}
        for a in T["sample_annotation"]:
            rows_of.setdefault(a["sample_token"], []).append(a)
        removed: set[str] = set()
        touched: set[str] = set()
        new_frames: list[FrameLabels] = []
        for tok in sorted(labels):
            fl = labels[tok]
            if not isinstance(fl, FrameLabels) or fl.sample_token != tok:
                raise LabellingError(f"labels[{tok!r}]: expected FrameLabels with sample_token {tok!r}")
            if tok not in samples:
                raise LabellingError(f"labels[{tok!r}]: sample is in no clip of round {round_index} and not in the "
                                     f"previous version")
            for j, b in enumerate(fl.boxes):
                if b.sample_token != tok:
                    raise LabellingError(f"labels[{tok!r}].boxes[{j}]: sample_token {b.sample_token!r} differs")
            prov = fl.provenance
            if not isinstance(prov, Provenance) or prov.round != round_index:
                raise LabellingError(f"labels[{tok!r}].provenance.round: {getattr(prov, 'round', prov)!r}, but this "
                                     f"is round {round_index}")
            if prov.strategy not in ("", self.strategy):
                raise LabellingError(f"labels[{tok!r}].provenance.strategy: {prov.strategy!r}, but this store is "
                                     f"{self.strategy!r}")
            src = prov.source
            cur = index.get(tok)
            if cur is not None and cur["source"] == "human":
                stats["auto_dropped_human_exists" if src == "auto" else "human_kept_existing"] += len(fl.boxes)
                continue
            if cur is not None:  # auto labels so far: replaced
                old = rows_of.get(tok, [])
                stats["auto_replaced_by_human" if src == "human" else "auto_replaced_by_auto"] += len(old)
                removed.update(a["token"] for a in old)
                touched.update(a["instance_token"] for a in old)
            index[tok] = {"source": src, "round": round_index}
            new_frames.append(fl)
        if removed:
            T["sample_annotation"] = [a for a in T["sample_annotation"] if a["token"] not in removed]
        new_rows, new_instances = self._build_rows(T, round_index, new_frames, scene_of, stats)
        T["sample_annotation"].extend(new_rows)
        T["instance"].extend(new_instances)
        touched.update(i["token"] for i in new_instances)
        rechain(T, touched, ts)

    def _build_rows(self, T: Tables, round_index: int, frames: list[FrameLabels], scene_of: dict,
                    stats: dict) -> tuple[list[dict], list[dict]]:
        cat_tok = {c["name"]: c["token"] for c in T["category"]}
        attr_tok = {a["name"]: a["token"] for a in T["attribute"]}
        vis_tok = full_visibility_token(T)
        lidar = LidarCounter(self.root, T)
        instances: dict[str, dict] = {}
        rows = []
        for fl in frames:
            prov = fl.provenance
            counts = lidar.count(fl.sample_token, fl.boxes) if any(b.num_lidar_pts < 0 for b in fl.boxes) else None
            seen_tracks: set[tuple] = set()
            for j, b in enumerate(fl.boxes):
                where = f"labels[{fl.sample_token!r}].boxes[{j}]"
                cat = DETECTION_TO_CATEGORY[b.detection_name]
                if cat not in cat_tok:
                    cat_tok[cat] = add_static(T, "category", cat)
                if b.attribute_name and b.attribute_name not in attr_tok:
                    if b.attribute_name not in ATTRIBUTES:
                        raise LabellingError(f"{where}: attribute_name {b.attribute_name!r} is not a nuScenes "
                                             f"attribute ({', '.join(ATTRIBUTES)})")
                    attr_tok[b.attribute_name] = add_static(T, "attribute", b.attribute_name)
                track_key = (b.track_id, b.detection_name)
                if b.track_id and track_key not in seen_tracks:
                    seen_tracks.add(track_key)
                    inst = stable_token("instance", self.strategy, prov.source, round_index,
                                        scene_of[fl.sample_token], b.track_id, b.detection_name)
                else:
                    stats["duplicate_track_boxes"] += bool(b.track_id)
                    inst = stable_token("instance", self.strategy, prov.source, round_index, fl.sample_token, j)
                if inst not in instances:
                    instances[inst] = {"token": inst, "category_token": cat_tok[cat], "nbr_annotations": 0,
                                       "first_annotation_token": "", "last_annotation_token": ""}
                n_pts = int(b.num_lidar_pts) if b.num_lidar_pts >= 0 else counts[j]
                rows.append({
                    "token": stable_token("ann", self.strategy, prov.source, round_index, fl.sample_token, j),
                    "sample_token": fl.sample_token, "instance_token": inst, "visibility_token": vis_tok,
                    "attribute_tokens": [attr_tok[b.attribute_name]] if b.attribute_name else [],
                    "translation": [float(v) for v in b.translation], "size": [float(v) for v in b.size],
                    "rotation": [float(v) for v in b.rotation], "prev": "", "next": "",
                    "num_lidar_pts": n_pts, "num_radar_pts": 0,
                    "provenance": {**prov.to_dict(), "strategy": self.strategy, "confidence": float(b.score)}})
                stats["boxes_added"][prov.source] += 1
        return rows, list(instances.values())


# ---------------------------------------------------------------------------------------------- helpers


def _frame_dict(fl: FrameLabels) -> dict:
    return {"sample_token": fl.sample_token, "boxes": [b.to_dict() for b in fl.boxes],
            "provenance": fl.provenance.to_dict()}
