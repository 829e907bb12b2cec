"""Opening a nuScenes-format root through the devkit, with errors that name the bad file.

Works the same for real nuScenes (v1.0-mini / v1.0-trainval as downloaded) and for our synthetic
world. Splits go through ``nuscenes.utils.splits``: the built-in names (``mini_train``,
``mini_val``, ``train``, ``val``, ...) or custom names from ``<root>/<version>/splits.json``.
"""
from __future__ import annotations

import json
import logging
import os
from contextlib import contextmanager
from typing import Iterator, Optional

from nuscenes import NuScenes
from nuscenes import nuscenes as devkit_nuscenes
from nuscenes.utils import splits as devkit_splits
from nuscenes.utils.map_mask import MapMask

from .errors import DataError

log = logging.getLogger(__name__)

TABLES: tuple[str, ...] = (
    "attribute", "calibrated_sensor", "category", "ego_pose", "instance", "log", "map",
    "sample", "sample_annotation", "sample_data", "scene", "sensor", "visibility",
)


class _LenientMapMask(MapMask):
    """A devkit ``MapMask`` that tolerates a missing PNG (the devkit asserts at load time).

    ``bev_map`` checks the file itself and falls back to an all-zero raster with ``map_valid = 0``.
    """

    def __init__(self, img_file: str, resolution: float = 0.1):
        self.img_file = img_file
        self.resolution = resolution
        self.foreground = 255
        self.background = 0


@contextmanager
def _lenient_map_masks() -> Iterator[None]:
    original = devkit_nuscenes.MapMask
    devkit_nuscenes.MapMask = _LenientMapMask
    try:
        yield
    finally:
        devkit_nuscenes.MapMask = original


def versions_in(root: str) -> list[str]:
    """Sub-folders of ``root`` that look like a table version (hold a ``scene.json``)."""
    if not os.path.isdir(root):
        return []
    return sorted(d for d in os.listdir(root) if os.path.isfile(os.path.join(root, d, "scene.json")))


def _check_tables(root: str, version: str) -> None:
    if not os.path.isdir(root):
        raise DataError(f"nuScenes root not found: {root}", root)
    table_dir = os.path.join(root, version)
    if not os.path.isdir(table_dir):
        found = versions_in(root)
        raise DataError(
            f"version {version!r} not found under {root}; versions found: {', '.join(found) or 'none'}", table_dir)
    for table in TABLES:
        path = os.path.join(table_dir, f"{table}.json")
        if not os.path.isfile(path):
            raise DataError(f"missing table file {path}", path)


def _find_bad_table(root: str, version: str) -> Optional[str]:
    for table in TABLES:
        path = os.path.join(root, version, f"{table}.json")
        try:
            with open(path) as f:
                json.load(f)
        except (OSError, ValueError):
            return path
    return None


def open_nuscenes(root: str, version: str, verbose: bool = False) -> NuScenes:
    """Load a nuScenes-format root with the devkit; bad input raises ``DataError`` naming the file.

    A map PNG listed in ``map.json`` but absent on disk is tolerated (warned about once here);
    the drivable-area raster of its logs is then all zero with ``map_valid = 0``.
    """
    root = os.path.abspath(os.path.expanduser(str(root)))
    _check_tables(root, version)
    missing_maps = []
    with open(os.path.join(root, version, "map.json")) as f:
        try:
            maps = json.load(f)
        except ValueError as e:
            raise DataError(f"malformed table file {f.name}: {e}", f.name) from e
    for m in maps:
        if not os.path.isfile(os.path.join(root, m.get("filename", ""))):
            missing_maps.append(m.get("filename", "?"))
    if missing_maps:
        log.warning("map file(s) missing under %s: %s (drivable area will be invalid)", root, ", ".join(missing_maps))
    try:
        with _lenient_map_masks():
            return NuScenes(version=version, dataroot=root, verbose=verbose)
    except ValueError as e:  # json.JSONDecodeError is a ValueError
        bad = _find_bad_table(root, version)
        raise DataError(f"malformed table file {bad or os.path.join(root, version)}: {e}", bad or "") from e
    except (KeyError, IndexError) as e:
        raise DataError(f"inconsistent tables in {os.path.join(root, version)}: dangling token, missing field or "
                        f"empty table ({type(e).__name__}: {e})", os.path.join(root, version)) from e


def available_splits(nusc: NuScenes) -> list[str]:
    """Built-in devkit split names plus the custom ones in ``<root>/<version>/splits.json``."""
    names = list(devkit_splits.create_splits_scenes().keys())
    path = os.path.join(nusc.dataroot, nusc.version, "splits.json")
    if os.path.isfile(path):
        try:
            with open(path) as f:
                custom = json.load(f)
        except ValueError as e:
            raise DataError(f"malformed splits file {path}: {e}", path) from e
        if not isinstance(custom, dict):
            raise DataError(f"splits file {path} must map split names to lists of scene names", path)
        names += [k for k in custom if k not in names]
    return names


def scenes_of_split(nusc: NuScenes, split: Optional[str]) -> list[str]:
    """Scene tokens of a split, in temporal order (first keyframe timestamp). ``None``: every scene."""
    scenes = list(nusc.scene)
    if split is not None:
        names = available_splits(nusc)
        if split not in names:
            raise DataError(f"unknown split {split!r}; available: {', '.join(names)}", split)
        try:
            wanted = devkit_splits.get_scenes_of_split(split, nusc)
        except (ValueError, AssertionError) as e:
            raise DataError(f"split {split!r}: {e}", split) from e
        by_name = {s["name"]: s for s in scenes}
        missing = [n for n in wanted if n not in by_name]
        scenes = [by_name[n] for n in wanted if n in by_name]
        if not scenes:
            raise DataError(f"split {split!r} lists {len(wanted)} scenes, none of them in {nusc.dataroot}/"
                            f"{nusc.version}", split)
        if missing:
            log.warning("split %r: %d of its %d scenes are not in %s/%s", split, len(missing), len(wanted),
                        nusc.dataroot, nusc.version)
    first_ts = {s["token"]: nusc.get("sample", s["first_sample_token"])["timestamp"] for s in scenes}
    return sorted(first_ts, key=lambda t: first_ts[t])


def resolve_data_path(root: str, filename: str) -> str:
    """Absolute path of a table ``filename`` that must stay inside ``root``.

    The root is resolved with ``realpath`` and the file name is normalised lexically, so ``../`` or an
    absolute name that leaves the root is a ``DataError``; a symlinked sub-folder inside the root (a
    common setup: ``samples/`` on another disk) stays allowed.
    """
    real_root = os.path.realpath(root)
    path = os.path.normpath(os.path.join(real_root, filename))
    if os.path.commonpath([path, real_root]) != real_root or path == real_root:
        raise DataError(f"file name {filename!r} resolves outside the data root {real_root}", filename)
    return path
