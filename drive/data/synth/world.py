"""`drive synth`: write a whole synthetic world as a nuScenes-format root (all 13 tables).

The output is written into a temporary sibling directory and renamed into place at the end, so an
interrupted run never leaves a half-written data set behind.
"""
from __future__ import annotations

import hashlib
import json
import logging
import multiprocessing as mp
import os
import time
from dataclasses import asdict
from typing import Sequence

import numpy as np
from pyquaternion import Quaternion

from drive.staging import staged_dir

from .catalog import ATTRIBUTE_DESCRIPTIONS, CATEGORY_TREE, VISIBILITY_LEVELS
from .layout import LAYOUTS
from .scenario import WorldKnobs
from .scene import ScenePlan, SceneResult, run_scene
from .sensors import build_rig

log = logging.getLogger(__name__)

VERSION = "v1.0-mini"
MINI_TRAIN = ("scene-0061", "scene-0553", "scene-0655", "scene-0757", "scene-0796", "scene-1077", "scene-1094",
              "scene-1100")
MINI_VAL = ("scene-0103", "scene-0916")
CUSTOM_SPLITS = ("synth_train", "synth_val")  # 'train'/'val' are the devkit's own trainval splits


def plan_world(scenes: int, seed: int, width: int, height: int,
               knobs: WorldKnobs | Sequence[WorldKnobs] | None = None, keyframes: int = 40,
               scene_prefix: str | None = None, all_split: str | None = None) -> list[ScenePlan]:
    """Scene names, splits and layouts. The first ten reuse the nuScenes mini names.

    ``knobs``: one ``WorldKnobs`` for every scene, or a sequence of one per scene (a fleet that mixes ordinary
    drives with long-tail ones).

    ``scene_prefix``: name the scenes ``f"{scene_prefix}-{i:04d}"`` instead (worlds that must not collide
    with another world's scene names, e.g. fleet drives next to the base world). ``all_split`` ("train" or
    "val"): every scene in that split (val scenes are 'rich': retried until every class appears).
    """
    if all_split not in (None, "train", "val"):
        raise ValueError(f"all_split must be 'train', 'val' or None, got {all_split!r}")
    if scene_prefix is not None and (not scene_prefix or "/" in scene_prefix or scene_prefix != scene_prefix.strip()):
        raise ValueError(f"scene_prefix must be a non-empty name without '/' or spaces around it, got {scene_prefix!r}")
    per_scene = _per_scene_knobs(knobs, scenes)
    rng = np.random.default_rng(seed)
    names = list(MINI_TRAIN) + list(MINI_VAL)
    plans = []
    for i in range(scenes):
        if scene_prefix is not None:
            name = f"{scene_prefix}-{i:04d}"
            split = "val" if i % 5 == 4 else "train"
        elif i < len(names):
            name = names[i]
            split = "val" if name in MINI_VAL else "train"
        else:
            name = f"scene-{2000 + i:04d}"
            split = "val" if i % 5 == 4 else "train"
        split = all_split or split
        plans.append(ScenePlan(i, name, split, "", split == "val", seed, keyframes, width, height,
                               asdict(per_scene[i])))
    # Every layout in both splits: cycle the layouts over each split in a seeded order.
    for split in ("train", "val"):
        order = list(rng.permutation(LAYOUTS))
        for j, p in enumerate([p for p in plans if p.split == split]):
            p.layout = str(order[j % len(order)])
    return plans


def _per_scene_knobs(knobs: WorldKnobs | Sequence[WorldKnobs] | None, scenes: int) -> list[WorldKnobs]:
    if knobs is None or isinstance(knobs, WorldKnobs):
        return [knobs or WorldKnobs()] * scenes
    per_scene = list(knobs)
    if len(per_scene) != scenes or not all(isinstance(k, WorldKnobs) for k in per_scene):
        raise ValueError(f"knobs: one WorldKnobs per scene expected ({scenes}), got {len(per_scene)} items")
    return per_scene


def _common_knobs(results: list[SceneResult]) -> dict | None:
    """The knobs every scene shares (None when they differ: then each scene's entry says its own)."""
    first = results[0].plan.knobs
    return first if all(r.plan.knobs == first for r in results) else None


def _tok(seed: int, *parts) -> str:
    return hashlib.md5("/".join([str(seed), *map(str, parts)]).encode()).hexdigest()


def build_tables(results: list[SceneResult], seed: int, width: int, height: int) -> dict[str, list[dict]]:
    """All 13 nuScenes tables from the scene results, with consistent tokens and chains."""
    T = {k: [] for k in ("attribute", "calibrated_sensor", "category", "ego_pose", "instance", "log", "map",
                         "sample", "sample_annotation", "sample_data", "scene", "sensor", "visibility")}
    attr_tok = {name: _tok(seed, "attribute", name) for name in ATTRIBUTE_DESCRIPTIONS}
    T["attribute"] = [{"token": attr_tok[n], "name": n, "description": d} for n, d in ATTRIBUTE_DESCRIPTIONS.items()]
    cat_tok = {name: _tok(seed, "category", name) for name, _ in CATEGORY_TREE}
    T["category"] = [{"token": cat_tok[n], "name": n, "description": d, "index": i}
                     for i, (n, d) in enumerate(CATEGORY_TREE)]
    T["visibility"] = [{"token": t, "level": lvl, "description": d} for t, lvl, d in VISIBILITY_LEVELS]
    rig = build_rig(width, height)
    sensor_tok = {s.channel: _tok(seed, "sensor", s.channel) for s in rig}
    T["sensor"] = [{"token": sensor_tok[s.channel], "channel": s.channel, "modality": s.modality} for s in rig]
    for res in results:
        p = res.plan
        log_tok, scene_tok, map_tok = _tok(seed, "log", p.name), _tok(seed, "scene", p.name), _tok(seed, "map", p.name)
        T["log"].append({"token": log_tok, "logfile": f"synth-{p.index:04d}", "vehicle": "n900",
                         "date_captured": "2026-01-01", "location": f"synth-{p.layout}-{p.index:04d}"})
        T["map"].append({"token": map_tok, "log_tokens": [log_tok], "category": "semantic_prior",
                         "filename": res.map_png})
        calib = {}
        for s in rig:
            calib[s.channel] = _tok(seed, "calib", p.name, s.channel)
            T["calibrated_sensor"].append({
                "token": calib[s.channel], "sensor_token": sensor_tok[s.channel],
                "translation": s.translation.tolist(), "rotation": list(s.rotation.elements),
                "camera_intrinsic": s.intrinsic.tolist() if s.intrinsic is not None else []})
        sample_toks = [_tok(seed, "sample", p.name, k) for k in range(len(res.keyframes))]
        T["scene"].append({"token": scene_tok, "log_token": log_tok, "nbr_samples": len(sample_toks),
                           "first_sample_token": sample_toks[0], "last_sample_token": sample_toks[-1],
                           "name": p.name, "description": f"{p.layout}, {res.lighting}, " + ", ".join(res.events)})
        for k, kf in enumerate(res.keyframes):
            T["sample"].append({"token": sample_toks[k], "timestamp": kf["timestamp"], "scene_token": scene_tok,
                                "prev": sample_toks[k - 1] if k else "",
                                "next": sample_toks[k + 1] if k + 1 < len(sample_toks) else ""})
            q = Quaternion(axis=[0, 0, 1], angle=kf["ego_yaw"])
            for s in rig:
                sd = _tok(seed, "sd", p.name, k, s.channel)
                ep = _tok(seed, "ego", p.name, k, s.channel)
                T["ego_pose"].append({"token": ep, "timestamp": kf["timestamp"], "rotation": list(q.elements),
                                      "translation": [kf["ego_xy"][0], kf["ego_xy"][1], 0.0]})
                cam = s.modality == "camera"
                T["sample_data"].append({
                    "token": sd, "sample_token": sample_toks[k], "ego_pose_token": ep,
                    "calibrated_sensor_token": calib[s.channel], "timestamp": kf["timestamp"],
                    "fileformat": "jpg" if cam else "pcd", "is_key_frame": True,
                    "height": height if cam else 0, "width": width if cam else 0,
                    "filename": kf["files"][s.channel],
                    "prev": _tok(seed, "sd", p.name, k - 1, s.channel) if k else "",
                    "next": _tok(seed, "sd", p.name, k + 1, s.channel) if k + 1 < len(res.keyframes) else ""})
        by_agent: dict[int, list[dict]] = {}
        for a in res.annotations:
            by_agent.setdefault(a["agent"], []).append(a)
        for aid in sorted(by_agent):
            anns = sorted(by_agent[aid], key=lambda a: a["keyframe"])
            inst = _tok(seed, "instance", p.name, aid)
            toks = [_tok(seed, "ann", p.name, aid, a["keyframe"]) for a in anns]
            T["instance"].append({"token": inst, "category_token": cat_tok[anns[0]["category"]],
                                  "nbr_annotations": len(anns), "first_annotation_token": toks[0],
                                  "last_annotation_token": toks[-1]})
            for j, a in enumerate(anns):
                x, y, z, l, w, h, yaw = a["box"]
                T["sample_annotation"].append({
                    "token": toks[j], "sample_token": sample_toks[a["keyframe"]], "instance_token": inst,
                    "visibility_token": a["visibility"],
                    "attribute_tokens": [attr_tok[a["attribute"]]] if a["attribute"] else [],
                    "translation": [x, y, z], "size": [w, l, h],
                    "rotation": list(Quaternion(axis=[0, 0, 1], angle=yaw).elements),
                    "prev": toks[j - 1] if j else "", "next": toks[j + 1] if j + 1 < len(toks) else "",
                    "num_lidar_pts": a["num_lidar_pts"], "num_radar_pts": 0})
    return T


def _run(args):
    import cv2

    cv2.setNumThreads(1)  # one scene per process; do not oversubscribe the cores
    plan, root, *rest = args
    res = run_scene(plan, root)
    if rest and rest[0]:
        _prefix_files(res, root)
    return res


def _prefix_files(res: SceneResult, root: str) -> None:
    """Put the scene name in front of its sensor / map file names (``samples/CAM_FRONT/<scene>__<file>``).

    ``run_scene`` names files by scene index and timestamp, which repeat from world to world; a prefixed
    world's files must be able to sit next to another world's in one root (the label store links fleet
    clips in beside the base world)."""
    def move(rel: str) -> str:
        new = f"{os.path.dirname(rel)}/{res.plan.name}__{os.path.basename(rel)}"
        os.replace(os.path.join(root, rel), os.path.join(root, new))
        return new

    for kf in res.keyframes:
        kf["files"] = {ch: move(rel) for ch, rel in kf["files"].items()}
    res.map_png = move(res.map_png)


def generate_world(out: str, scenes: int = 10, seed: int = 0, width: int = 800, height: int = 450,
                   workers: int = 2, knobs: WorldKnobs | Sequence[WorldKnobs] | None = None, keyframes: int = 40,
                   overwrite: bool = False, scene_prefix: str | None = None, all_split: str | None = None) -> dict:
    """Generate the world into ``out`` (atomically). Returns a summary dict.

    ``scene_prefix`` / ``all_split``: see ``plan_world``; with a prefix the sensor and map file names also
    start with the scene name, so two prefixed worlds' files never share a path."""
    out = os.path.abspath(out)
    if os.path.exists(out) and not overwrite:
        raise FileExistsError(f"{out} already exists (pass --overwrite to replace it)")
    if scenes < 1:
        raise ValueError("--scenes must be at least 1")
    t0 = time.time()
    with staged_dir(out, os.path.basename(out) + ".tmp-", clean_stale=False) as tmp:
        plans = plan_world(scenes, seed, width, height, knobs, keyframes, scene_prefix, all_split)
        jobs = [(p, tmp, scene_prefix is not None) for p in plans]
        if workers > 1 and len(plans) > 1:
            # spawn, not fork: forking a process that has torch / OpenCV thread pools running deadlocks.
            ctx = mp.get_context("spawn")
            with ctx.Pool(min(workers, len(plans))) as pool:
                results = list(pool.imap(_run, jobs))
        else:
            results = [_run(j) for j in jobs]
        tables = build_tables(results, seed, width, height)
        vdir = os.path.join(tmp, VERSION)
        os.makedirs(vdir, exist_ok=True)
        for name, rows in tables.items():
            with open(os.path.join(vdir, f"{name}.json"), "w") as f:
                json.dump(rows, f, indent=0)
        splits = {"synth_train": [r.plan.name for r in results if r.plan.split == "train"],
                  "synth_val": [r.plan.name for r in results if r.plan.split == "val"]}
        with open(os.path.join(vdir, "splits.json"), "w") as f:
            json.dump(splits, f, indent=1)
        world = {"seed": seed, "width": width, "height": height, "knobs": _common_knobs(results),
                 "scenes": [{"name": r.plan.name, "split": r.plan.split, "layout": r.plan.layout, "knobs": r.plan.knobs,
                             "events": r.events, "lighting": r.lighting, "attempt": r.attempt,
                             "missing_classes": r.missing_classes} for r in results],
                 "situations": {_tok(seed, "sample", r.plan.name, k): {"situation": kf["situation"],
                                                                        "leader": kf["leader"]}
                                for r in results for k, kf in enumerate(r.keyframes)},
                 "annotation_colours": {_tok(seed, "ann", r.plan.name, a["agent"], a["keyframe"]): a["color"]
                                        for r in results for a in r.annotations}}
        with open(os.path.join(vdir, "drive_world.json"), "w") as f:
            json.dump(world, f, indent=1)
    for r in results:
        if r.missing_classes and r.plan.split == "val":
            log.warning("val scene %s lacks classes %s after %d attempts", r.plan.name, r.missing_classes, r.attempt + 1)
    return {"root": out, "scenes": scenes, "samples": len(tables["sample"]),
            "annotations": len(tables["sample_annotation"]), "seconds": round(time.time() - t0, 1),
            "splits": {k: len(v) for k, v in splits.items()}}
