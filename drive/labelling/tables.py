"""nuScenes tables as plain rows: reading and atomically writing a table version, linking sensor files into a
root, and the table surgery the label store needs (restrict to scenes, merge static tables by name, re-chain
annotation ``prev`` / ``next``). Every failure is a ``LabellingError`` naming the file or row."""
from __future__ import annotations

import filecmp
import hashlib
import json
import os
import shutil
from typing import Iterable, Mapping, Sequence

from nuscenes.utils import splits as devkit_splits

from drive.data.errors import DataError
from drive.data.nusc import TABLES, resolve_data_path
from drive.staging import staged_dir

from .errors import LabellingError
from .records import stable_token

# Static tables are merged by name onto the tokens already in the store: one row per name.
_STATIC_KEY = {"category": "name", "attribute": "name", "visibility": "level", "sensor": "channel"}
_FULL_VISIBILITY = ("4", "v80-100", "visibility of whole object is between 80 and 100%")

Tables = dict[str, list[dict]]


def read_table(root: str, version: str, name: str) -> list[dict]:
    """One table of ``<root>/<version>`` as a list of rows; a missing / malformed file is a ``LabellingError``."""
    path = os.path.join(root, version, f"{name}.json")
    try:
        with open(path) as f:
            rows = json.load(f)
    except FileNotFoundError:
        raise LabellingError(f"missing table file {path}") from None
    except (OSError, ValueError) as e:
        raise LabellingError(f"malformed table file {path}: {e}") from e
    if not isinstance(rows, list) or not all(isinstance(r, dict) and "token" in r for r in rows):
        raise LabellingError(f"table file {path} must be a list of rows, each with a 'token'")
    return rows


def read_tables(root: str, version: str, names: Iterable[str] = TABLES) -> Tables:
    return {n: read_table(root, version, n) for n in names}


def read_json(path: str, what: str = "file"):
    try:
        with open(path) as f:
            return json.load(f)
    except FileNotFoundError:
        raise LabellingError(f"missing {what} {path}") from None
    except (OSError, ValueError) as e:
        raise LabellingError(f"malformed {what} {path}: {e}") from e


def write_json(path: str, obj) -> None:
    """Write ``obj`` as JSON atomically (temp file in the same folder, then ``os.replace``)."""
    tmp = f"{path}.tmp-{os.getpid()}"
    with open(tmp, "w") as f:
        json.dump(obj, f, indent=0)
    os.replace(tmp, path)


def data_path(root: str, filename: str, where: str) -> str:
    """``resolve_data_path`` with a ``LabellingError`` naming the table row that holds the bad name."""
    if not isinstance(filename, str) or not filename:
        raise LabellingError(f"{where}: empty or non-string file name {filename!r}")
    try:
        return resolve_data_path(root, filename)
    except DataError as e:
        raise LabellingError(f"{where}: {e}") from e


def link_file(src: str, dst: str) -> bool:
    """Hard-link ``src`` to ``dst`` (copy if linking fails), atomically. Returns False if ``dst`` already holds
    the same file; two different files for one path is a ``LabellingError``."""
    if os.path.lexists(dst):
        try:
            same = os.path.samefile(src, dst) or filecmp.cmp(src, dst, shallow=False)
        except OSError as e:
            raise LabellingError(f"cannot compare {src} with the existing {dst}: {e}") from e
        if not same:
            raise LabellingError(f"file name collision: {dst} already holds a different file than {src}")
        return False
    os.makedirs(os.path.dirname(dst), exist_ok=True)
    tmp = f"{dst}.tmp-{os.getpid()}"
    if os.path.lexists(tmp):
        os.remove(tmp)
    try:
        os.link(src, tmp)
    except OSError:  # another file system, or links not allowed
        shutil.copyfile(src, tmp)
    os.replace(tmp, dst)
    return True


def write_version_dir(final: str, tables: Tables, extra: Sequence[tuple[str, object]]) -> None:
    """Write a table version into a temporary sibling and rename it to ``final`` (replacing a leftover).

    ``extra`` files are written in order after the tables; put the completion marker last."""
    with staged_dir(final, f".{os.path.basename(final)}.tmp-") as tmp:
        for t in TABLES:
            with open(os.path.join(tmp, f"{t}.json"), "w") as f:
                json.dump(tables[t], f, indent=0)
        for fname, obj in extra:
            with open(os.path.join(tmp, fname), "w") as f:
                json.dump(obj, f, indent=0)


def by_token(rows: Iterable[dict]) -> dict[str, dict]:
    return {r["token"]: r for r in rows}


def digest(obj) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True).encode()).hexdigest()


def split_scene_names(root: str, version: str, split: str) -> list[str]:
    path = os.path.join(root, version, "splits.json")
    if os.path.isfile(path):
        custom = read_json(path, "splits file")
        if not isinstance(custom, dict):
            raise LabellingError(f"splits file {path} must map split names to lists of scene names")
        if split in custom:
            return list(custom[split])
    builtin = devkit_splits.create_splits_scenes()
    if split not in builtin:
        raise LabellingError(f"unknown split {split!r} for {root}/{version} (not in {path} nor a devkit split)")
    return list(builtin[split])


def restrict_to_scenes(T: Tables, scene_tokens: set[str]) -> Tables:
    """The tables of ``scene_tokens`` only (static tables whole)."""
    R: Tables = {t: [] for t in TABLES}
    for t in ("category", "attribute", "visibility"):
        R[t] = [dict(r) for r in T[t]]
    R["scene"] = [dict(s) for s in T["scene"] if s["token"] in scene_tokens]
    samples = {s["token"] for s in T["sample"] if s["scene_token"] in scene_tokens}
    R["sample"] = [dict(s) for s in T["sample"] if s["token"] in samples]
    R["sample_data"] = [dict(r) for r in T["sample_data"] if r["sample_token"] in samples]
    calib = {r["calibrated_sensor_token"] for r in R["sample_data"]}
    poses = {r["ego_pose_token"] for r in R["sample_data"]}
    R["calibrated_sensor"] = [dict(r) for r in T["calibrated_sensor"] if r["token"] in calib]
    R["ego_pose"] = [dict(r) for r in T["ego_pose"] if r["token"] in poses]
    sensors = {r["sensor_token"] for r in R["calibrated_sensor"]}
    R["sensor"] = [dict(r) for r in T["sensor"] if r["token"] in sensors]
    logs = {s["log_token"] for s in R["scene"]}
    R["log"] = [dict(r) for r in T["log"] if r["token"] in logs]
    R["map"] = [{**m, "log_tokens": [t for t in m["log_tokens"] if t in logs]} for m in T["map"]
                if any(t in logs for t in m["log_tokens"])]
    R["sample_annotation"] = [dict(a) for a in T["sample_annotation"] if a["sample_token"] in samples]
    insts = {a["instance_token"] for a in R["sample_annotation"]}
    R["instance"] = [dict(i) for i in T["instance"] if i["token"] in insts]
    return R


def merge_static(T: Tables, F: Tables) -> dict[str, str]:
    """Merge the fleet's static tables into ``T`` by name; returns fleet sensor token -> store sensor token."""
    sensor_map = {}
    for table, key in _STATIC_KEY.items():
        mine = {r[key]: r["token"] for r in T[table]}
        tokens = {r["token"] for r in T[table]}
        for r in F[table]:
            if r[key] in mine:
                tok = mine[r[key]]
            else:
                tok = r["token"] if r["token"] not in tokens else stable_token(table, r[key])
                row = {**r, "token": tok}
                if table == "category" and "index" in r:
                    row["index"] = max([int(c.get("index", -1)) for c in T[table]] + [-1]) + 1
                T[table].append(row)
                mine[r[key]], tokens = tok, tokens | {tok}
            if table == "sensor":
                sensor_map[r["token"]] = tok
    return sensor_map


def add_static(T: Tables, table: str, name: str) -> str:
    tok = stable_token(table, name)
    row = {"token": tok, "name": name, "description": ""}
    if table == "category":
        row["index"] = max([int(c.get("index", -1)) for c in T[table]] + [-1]) + 1
    T[table].append(row)
    return tok


def full_visibility_token(T: Tables) -> str:
    for v in T["visibility"]:
        if v.get("level") == _FULL_VISIBILITY[1]:
            return v["token"]
    tok, level, desc = _FULL_VISIBILITY
    if any(v["token"] == tok for v in T["visibility"]):
        tok = stable_token("visibility", level)
    T["visibility"].append({"token": tok, "level": level, "description": desc})
    return tok


def rechain(T: Tables, instance_tokens: set[str], ts: Mapping[str, int]) -> None:
    """Rebuild prev / next / first / last / nbr of ``instance_tokens`` in time order; drop instances left empty."""
    if not instance_tokens:
        return
    rows: dict[str, list[dict]] = {t: [] for t in instance_tokens}
    for a in T["sample_annotation"]:
        if a["instance_token"] in rows:
            rows[a["instance_token"]].append(a)
    for inst in T["instance"]:
        tok = inst["token"]
        if tok not in rows:
            continue
        chain = sorted(rows[tok], key=lambda a: (ts[a["sample_token"]], a["token"]))
        for k, a in enumerate(chain):
            a["prev"] = chain[k - 1]["token"] if k else ""
            a["next"] = chain[k + 1]["token"] if k + 1 < len(chain) else ""
        inst["nbr_annotations"] = len(chain)
        inst["first_annotation_token"] = chain[0]["token"] if chain else ""
        inst["last_annotation_token"] = chain[-1]["token"] if chain else ""
    T["instance"] = [i for i in T["instance"] if i["token"] not in rows or rows[i["token"]]]
