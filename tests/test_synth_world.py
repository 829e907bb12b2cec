"""The synthetic world as the devkit sees it: tables, splits, GT-as-predictions and pixels."""
from __future__ import annotations

import colorsys
import json
import os
import subprocess
import sys
import warnings

import cv2
import numpy as np
import pytest
from nuscenes.eval.detection.config import config_factory
from nuscenes.eval.detection.evaluate import DetectionEval
from nuscenes.eval.detection.utils import category_to_detection_name
from nuscenes.nuscenes import NuScenes
from nuscenes.utils.geometry_utils import BoxVisibility, view_points

from drive.data.synth.world import generate_world



@pytest.fixture(scope="session")
def world(synth_world):
    return synth_world


@pytest.fixture(scope="session")
def nusc(world):
    return NuScenes("v1.0-mini", world, verbose=False)


def test_devkit_loads_without_warnings(world):
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        n = NuScenes("v1.0-mini", world, verbose=False)
    assert len(n.scene) == 10 and len(n.sample) == 80
    assert len(n.category) == 23 and len(n.attribute) == 8 and len(n.visibility) == 4
    for table in ("log", "map", "calibrated_sensor", "ego_pose", "instance", "sample_annotation", "sample_data"):
        assert len(getattr(n, table)) > 0, table


def test_tables_are_consistent(nusc, world):
    for scene in nusc.scene:
        toks, tok = [], scene["first_sample_token"]
        while tok:
            toks.append(tok)
            s = nusc.get("sample", tok)
            assert s["scene_token"] == scene["token"]
            if s["next"]:
                assert nusc.get("sample", s["next"])["prev"] == tok
            tok = s["next"]
        assert len(toks) == scene["nbr_samples"] and toks[-1] == scene["last_sample_token"]
        log = nusc.get("log", scene["log_token"])
        assert log["location"] and nusc.get("map", log["map_token"])["filename"].startswith("maps/")
    for inst in nusc.instance:
        n, tok = 0, inst["first_annotation_token"]
        while tok:
            ann = nusc.get("sample_annotation", tok)
            assert ann["instance_token"] == inst["token"]
            n += 1
            last, tok = tok, ann["next"]
        assert n == inst["nbr_annotations"] and last == inst["last_annotation_token"]
    for sd in nusc.sample_data:
        assert os.path.isfile(os.path.join(world, sd["filename"]))
        nusc.get("ego_pose", sd["ego_pose_token"])
        if sd["next"]:
            assert nusc.get("sample_data", sd["next"])["prev"] == sd["token"]
    assert len({sd["ego_pose_token"] for sd in nusc.sample_data}) == len(nusc.sample_data)
    # Attributes follow kinematics: a moving vehicle really moves.
    names = {a["token"]: a["name"] for a in nusc.attribute}
    speeds = {"vehicle.moving": [], "vehicle.parked": []}
    for ann in nusc.sample_annotation:
        for t in ann["attribute_tokens"]:
            if names[t] in speeds:
                v = nusc.box_velocity(ann["token"])
                if np.all(np.isfinite(v)):
                    speeds[names[t]].append(np.linalg.norm(v[:2]))
    assert np.median(speeds["vehicle.moving"]) > 2.0
    assert np.max(speeds["vehicle.parked"]) < 0.3
    splits = json.load(open(os.path.join(world, "v1.0-mini", "splits.json")))
    assert set(splits) == {"synth_train", "synth_val"} and set(splits["synth_val"]) == {"scene-0103", "scene-0916"}


def test_every_detection_class_in_val_and_lidar_counts(nusc):
    val = {"scene-0103", "scene-0916"}
    seen = set()
    for ann in nusc.sample_annotation:
        scene = nusc.get("scene", nusc.get("sample", ann["sample_token"])["scene_token"])["name"]
        det = category_to_detection_name(ann["category_name"])
        if scene in val and det and ann["num_lidar_pts"] > 0:
            seen.add(det)
    assert len(seen) == 10, seen
    pts = np.array([a["num_lidar_pts"] for a in nusc.sample_annotation])
    assert (pts == 0).any() and (pts > 50).any()  # some hidden, some close by
    # The lidar file really holds about that many returns in the annotated boxes.
    sample = nusc.sample[len(nusc.sample) // 2]
    from nuscenes.utils.data_classes import LidarPointCloud
    from nuscenes.utils.geometry_utils import points_in_box
    path, boxes, _ = nusc.get_sample_data(sample["data"]["LIDAR_TOP"])
    pc = LidarPointCloud.from_file(path)
    for box in boxes:
        ann = nusc.get("sample_annotation", box.token)
        inside = points_in_box(box, pc.points[:3]).sum()
        assert abs(int(inside) - ann["num_lidar_pts"]) <= 1, box.name


def test_gt_as_predictions_scores_nds_one(nusc, tmp_path):
    attr = {a["token"]: a["name"] for a in nusc.attribute}
    scenes = {s["token"] for s in nusc.scene if s["name"] in ("scene-0103", "scene-0916")}
    results = {}
    for s in nusc.sample:
        if s["scene_token"] not in scenes:
            continue
        boxes = []
        for tok in s["anns"]:
            a = nusc.get("sample_annotation", tok)
            det = category_to_detection_name(a["category_name"])
            if det is None or a["num_lidar_pts"] + a["num_radar_pts"] == 0:
                continue
            v = nusc.box_velocity(tok)[:2]
            boxes.append({"sample_token": s["token"], "translation": a["translation"], "size": a["size"],
                          "rotation": a["rotation"], "velocity": [float(x) for x in v], "detection_name": det,
                          "detection_score": 1.0,
                          "attribute_name": attr[a["attribute_tokens"][0]] if a["attribute_tokens"] else ""})
        results[s["token"]] = boxes
    meta = {"use_camera": True, "use_lidar": False, "use_radar": False, "use_map": False, "use_external": False}
    path = tmp_path / "results.json"
    path.write_text(json.dumps({"meta": meta, "results": results}))
    ev = DetectionEval(nusc, config_factory("detection_cvpr_2019"), str(path), "mini_val", str(tmp_path / "eval"),
                       verbose=False)
    summary = ev.main(plot_examples=0, render_curves=False)
    assert summary["mean_ap"] == pytest.approx(1.0, abs=1e-6)
    assert summary["nd_score"] == pytest.approx(1.0, abs=1e-6)


def test_box_centres_land_on_object_pixels(nusc, world):
    """A fully visible box's projected centre lands on pixels of that object's colour (hue)."""
    meta = json.load(open(os.path.join(world, "v1.0-mini", "drive_world.json")))
    colours = meta["annotation_colours"]
    checked, passed = 0, 0
    for sample in nusc.sample:
        for cam in ("CAM_FRONT", "CAM_BACK", "CAM_FRONT_LEFT", "CAM_FRONT_RIGHT"):
            path, boxes, K = nusc.get_sample_data(sample["data"][cam], box_vis_level=BoxVisibility.ALL)
            img = cv2.imread(path)[:, :, ::-1].astype(np.float32) / 255
            for box in boxes:
                ann = nusc.get("sample_annotation", box.token)
                if ann["visibility_token"] != "4" or not ann["category_name"].startswith(("vehicle.car", "vehicle.bus")):
                    continue
                if not 4.0 < box.center[2] < 35.0:
                    continue
                rgb = np.array(colours[box.token])
                h, s, v = colorsys.rgb_to_hsv(*rgb)
                if s < 0.6 or v < 0.4:
                    continue  # only strongly coloured bodies have a hue to compare
                u, vv = view_points(box.center[:, None], K, normalize=True)[:2, 0]
                patch = img[int(vv) - 1:int(vv) + 2, int(u) - 1:int(u) + 2].reshape(-1, 3).mean(0)
                hp, sp, _ = colorsys.rgb_to_hsv(*patch)
                dh = min(abs(hp - h), 1 - abs(hp - h))
                checked += 1
                passed += int(sp > 0.15 and dh < 0.08)
    assert checked >= 5, checked
    assert passed / checked >= 0.85, (passed, checked)


def test_same_seed_same_world(tmp_path):
    a, b = str(tmp_path / "a"), str(tmp_path / "b")
    for root in (a, b):
        generate_world(root, scenes=2, seed=11, width=160, height=90, keyframes=2, workers=1)
    for table in ("sample_annotation", "ego_pose", "scene"):
        assert open(f"{a}/v1.0-mini/{table}.json").read() == open(f"{b}/v1.0-mini/{table}.json").read()
    img = json.load(open(f"{a}/v1.0-mini/sample_data.json"))[0]["filename"]
    assert open(f"{a}/{img}", "rb").read() == open(f"{b}/{img}", "rb").read()


def test_cli_refuses_to_overwrite_and_leaves_nothing_half_written(tmp_path):
    root = tmp_path / "w"
    root.mkdir()
    r = subprocess.run([sys.executable, "-m", "drive.cli.main", "synth", "--out", str(root), "--scenes", "1"],
                       capture_output=True, text=True)
    assert r.returncode == 2 and "already exists" in r.stderr
    r = subprocess.run([sys.executable, "-m", "drive.cli.main", "synth", "--out", str(tmp_path / "x"),
                        "--scenes", "0"], capture_output=True, text=True)
    assert r.returncode == 2 and "--scenes" in r.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["w"]
