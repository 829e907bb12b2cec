"""Fleet drives: the upload has no labels but the hidden truth does, scene / file names never collide, roots are
reused or rebuilt, and malformed uploads are flagged with a reason naming what is wrong."""
import json
import os
import shutil
from dataclasses import fields

import pytest

from drive.data.nusc import open_nuscenes, scenes_of_split
from drive.data.synth.scenario import WorldKnobs
from drive.data.synth.world import MINI_TRAIN, MINI_VAL, plan_world
from drive.labelling.errors import LabellingError
from drive.labelling.fleet import (FLEET_VERSION, LONGTAIL_KNOBS, generate_fleet, generate_longtail_val, list_clips,
                                   longtail_knobs, longtail_mask, validate_clip)
from drive.labelling.tables import read_table, write_json
from drive.types import CAMERAS


@pytest.fixture(scope="module")
def fleet(tmp_path_factory):
    root = str(tmp_path_factory.mktemp("fleet") / "round01")
    return generate_fleet(root, round_index=1, scenes=2, seed=11, keyframes=4, workers=1)


def test_plan_world_prefix_and_all_split():
    plans = plan_world(6, 0, 160, 90, keyframes=2, scene_prefix="fleet02", all_split="val")
    assert [p.name for p in plans] == [f"fleet02-{i:04d}" for i in range(6)]
    assert all(p.split == "val" and p.rich for p in plans)
    assert all(p.split == "train" and not p.rich for p in plan_world(3, 0, 160, 90, keyframes=2, all_split="train"))
    default = plan_world(10, 0, 160, 90, keyframes=2)  # unchanged without the new arguments
    assert [p.name for p in default] == list(MINI_TRAIN) + list(MINI_VAL)
    assert [p.split for p in default] == ["train"] * 8 + ["val"] * 2
    with pytest.raises(ValueError, match="all_split"):
        plan_world(2, 0, 160, 90, all_split="test")


def test_plan_world_takes_one_knobs_per_scene():
    tail = WorldKnobs(dusk_prob=1.0)
    plans = plan_world(3, 0, 160, 90, knobs=[WorldKnobs(), tail, WorldKnobs()], keyframes=2)
    assert [p.knobs["dusk_prob"] for p in plans] == [WorldKnobs().dusk_prob, 1.0, WorldKnobs().dusk_prob]
    assert all(p.knobs["dusk_prob"] == 1.0 for p in plan_world(2, 0, 160, 90, knobs=tail, keyframes=2))
    with pytest.raises(ValueError, match="one WorldKnobs per scene expected \\(3\\), got 2"):
        plan_world(3, 0, 160, 90, knobs=[tail, tail], keyframes=2)


def test_longtail_mask_counts_and_seed():
    m = longtail_mask(12, 0.25, seed=5)
    assert len(m) == 12 and sum(m) == 3
    assert longtail_mask(12, 0.25, seed=5) == m  # deterministic in the seed
    assert any(longtail_mask(12, 0.25, seed=s) != m for s in range(6, 12))  # and it depends on it
    assert sum(longtail_mask(12, 0.01, seed=5)) == 1  # a positive share always gives at least one clip
    assert longtail_mask(4, 0.0, seed=5) == [False] * 4 and longtail_mask(4, 1.0, seed=5) == [True] * 4
    with pytest.raises(LabellingError, match="longtail_frac must be in \\[0, 1\\], got 1.5"):
        longtail_mask(4, 1.5, seed=5)


def test_mixed_fleet_marks_its_longtail_scenes(tmp_path):
    info = generate_fleet(str(tmp_path / "mixed"), round_index=3, scenes=2, seed=21, keyframes=2, workers=1,
                          longtail_frac=0.5, knobs={"dusk_prob": 1.0})
    assert len(info.longtail_scenes) == 1 and set(info.longtail_scenes) < set(info.scene_names)
    world = json.load(open(os.path.join(info.root, info.truth_version, "drive_world.json")))
    assert world["knobs"] is None  # the scenes differ: each says its own
    knobs = {s["name"]: s["knobs"] for s in world["scenes"]}
    for name in info.scene_names:
        lt = name in info.longtail_scenes
        assert knobs[name]["dusk_prob"] == (1.0 if lt else WorldKnobs().dusk_prob), name
        assert knobs[name]["jaywalk_frac"] == (LONGTAIL_KNOBS["jaywalk_frac"] if lt else WorldKnobs().jaywalk_frac)
    with pytest.raises(LabellingError, match="longtail_frac"):  # a different mix is a different fleet
        generate_fleet(info.root, round_index=3, scenes=2, seed=21, keyframes=2, workers=1, longtail_frac=1.0,
                       knobs={"dusk_prob": 1.0})


def test_longtail_knobs_turn_the_tail_up():
    defaults = WorldKnobs()
    assert set(LONGTAIL_KNOBS) <= {f.name for f in fields(WorldKnobs)}
    for k in ("crossing_prob", "jaywalk_frac", "rare_boost", "stopped_in_lane_prob", "cut_in_prob", "dusk_prob"):
        assert LONGTAIL_KNOBS[k] > getattr(defaults, k), k
    assert longtail_knobs({"dusk_prob": 1.0}).dusk_prob == 1.0
    with pytest.raises(LabellingError, match="warp_drive"):
        longtail_knobs({"warp_drive": 1.0})


def test_upload_has_no_labels_but_the_truth_has(fleet):
    assert fleet.scene_names == ["fleet01-0000", "fleet01-0001"]
    assert fleet.longtail_scenes == fleet.scene_names  # longtail_frac defaults to 1: all of them
    up = open_nuscenes(fleet.root, FLEET_VERSION)
    truth = open_nuscenes(fleet.root, fleet.truth_version)
    assert len(up.sample_annotation) == 0 and len(up.instance) == 0
    assert len(truth.sample_annotation) > 50 and len(truth.instance) > 10
    assert {s["token"] for s in up.sample} == {s["token"] for s in truth.sample}
    assert len(up.sample) == fleet.samples == 8
    assert [up.get("scene", t)["name"] for t in scenes_of_split(up, "fleet")] == fleet.scene_names
    assert len(scenes_of_split(truth, "fleet")) == 2
    assert not os.path.exists(os.path.join(fleet.root, FLEET_VERSION, "drive_world.json"))  # no hidden truth
    # Every file name starts with its scene's name: fleet files can sit beside the base world's.
    scene_of_sample = {s["token"]: up.get("scene", s["scene_token"])["name"] for s in up.sample}
    for sd in up.sample_data:
        assert os.path.basename(sd["filename"]).startswith(scene_of_sample[sd["sample_token"]] + "__")
    assert all(os.path.basename(m["filename"]).startswith("fleet01-") for m in up.map)


def test_fleet_root_is_reused_then_rebuilt_when_half_made(fleet, tmp_path):
    marker = os.path.join(fleet.root, "fleet.json")
    before = os.stat(marker).st_mtime_ns
    again = generate_fleet(fleet.root, round_index=1, scenes=2, seed=11, keyframes=4, workers=1)
    assert again == fleet and os.stat(marker).st_mtime_ns == before
    with pytest.raises(LabellingError, match="seed"):
        generate_fleet(fleet.root, round_index=1, scenes=2, seed=12, keyframes=4, workers=1)
    half = tmp_path / "round02"
    (half / FLEET_VERSION).mkdir(parents=True)  # a crash leftover: no marker, a stray table
    (half / FLEET_VERSION / "scene.json").write_text("[")
    info = generate_fleet(str(half), round_index=2, scenes=1, seed=5, keyframes=2, workers=1)
    assert info.scene_names == ["fleet02-0000"]
    assert len(read_table(str(half), FLEET_VERSION, "scene")) == 1
    assert os.path.isfile(half / "fleet.json")
    assert [p.name for p in tmp_path.iterdir()] == ["round02"]  # no temporary build dir left behind


def test_list_clips_order_and_upload_bytes(fleet):
    clips = list_clips(fleet.root, FLEET_VERSION)
    assert [c.scene_name for c in clips] == fleet.scene_names
    samples = {s["token"]: s for s in read_table(fleet.root, FLEET_VERSION, "sample")}
    for c in clips:
        assert len(c.sample_tokens) == 4
        ts = [samples[t]["timestamp"] for t in c.sample_tokens]
        assert ts == sorted(ts) and len(set(ts)) == 4
        # The synthetic world writes keyframes only: every sensor file named after the scene is uploaded.
        on_disk = sum(os.path.getsize(os.path.join(d, f)) for d, _, fs in os.walk(os.path.join(fleet.root, "samples"))
                      for f in fs if f.startswith(c.scene_name + "__"))
        assert c.bytes == on_disk > 0


def _rewrite(root, table, fn):
    rows = read_table(root, FLEET_VERSION, table)
    write_json(os.path.join(root, FLEET_VERSION, f"{table}.json"), fn(rows))


def test_validate_clip_flags_malformed_uploads(fleet, tmp_path):
    clips = list_clips(fleet.root, FLEET_VERSION)
    assert [validate_clip(fleet.root, FLEET_VERSION, c.scene_token) for c in clips] == [[], []]
    bad = str(tmp_path / "bad")
    shutil.copytree(fleet.root, bad)  # a real copy: the files below are damaged
    sds = read_table(bad, FLEET_VERSION, "sample_data")
    cam = {r["token"]: r["channel"] for r in read_table(bad, FLEET_VERSION, "sensor")}
    calib = {r["token"]: cam[r["sensor_token"]] for r in read_table(bad, FLEET_VERSION, "calibrated_sensor")}

    def row(clip, k, channel):
        return next(r for r in sds if r["sample_token"] == clip.sample_tokens[k]
                    and calib[r["calibrated_sensor_token"]] == channel)

    c0, c1 = clips
    dropped = row(c0, 2, "CAM_BACK")
    garbage, truncated = row(c0, 1, "CAM_FRONT"), row(c0, 0, "CAM_FRONT_LEFT")
    with open(os.path.join(bad, garbage["filename"]), "wb") as f:
        f.write(b"this is no jpeg" * 50 + b"\xff\xd9")
    path = os.path.join(bad, truncated["filename"])
    data = open(path, "rb").read()
    with open(path, "wb") as f:
        f.write(data[: len(data) // 2])
    outside, empty, posed = row(c1, 0, "CAM_BACK_LEFT"), row(c1, 1, "CAM_FRONT_RIGHT"), row(c1, 3, "CAM_BACK_RIGHT")
    open(os.path.join(bad, empty["filename"]), "wb").close()
    os.remove(os.path.join(bad, row(c1, 2, "CAM_FRONT")["filename"]))

    def edit(rows):
        rows = [r for r in rows if r["token"] != dropped["token"]]
        for r in rows:
            if r["token"] == outside["token"]:
                r["filename"] = "../../" + os.path.basename(r["filename"])
        return rows

    _rewrite(bad, "sample_data", edit)
    _rewrite(bad, "ego_pose", lambda rows: [r for r in rows if r["token"] != posed["ego_pose_token"]])

    r0 = validate_clip(bad, FLEET_VERSION, c0.scene_token)
    assert len(r0) == 3, r0
    assert any("no keyframe sample_data row for camera CAM_BACK" in r and c0.sample_tokens[2] in r for r in r0)
    assert any(garbage["filename"] in r and "cannot be decoded" in r for r in r0)
    assert any(truncated["filename"] in r and "truncated" in r for r in r0)
    r1 = validate_clip(bad, FLEET_VERSION, c1.scene_token)
    assert len(r1) == 4, r1
    assert any("CAM_BACK_LEFT" in r and "outside the upload root" in r for r in r1)
    assert any(empty["filename"] in r and "empty" in r for r in r1)
    assert any("CAM_FRONT" in r and "missing" in r and c1.sample_tokens[2] in r for r in r1)
    assert any("ego_pose" in r and posed["token"] in r for r in r1)
    with pytest.raises(LabellingError, match="no scene"):
        validate_clip(bad, FLEET_VERSION, "0" * 32)
    os.remove(os.path.join(bad, FLEET_VERSION, "calibrated_sensor.json"))
    with pytest.raises(LabellingError, match="calibrated_sensor.json"):
        validate_clip(bad, FLEET_VERSION, c0.scene_token)


def test_longtail_val_world(tmp_path):
    info = generate_longtail_val(str(tmp_path / "lt"), scenes=1, seed=2, keyframes=3, workers=1)
    assert info.scene_names == ["longtail-0000"] and info.annotations > 0
    with open(os.path.join(info.root, info.version, "splits.json")) as f:
        splits = json.load(f)
    assert splits["longtail_val"] == splits["synth_val"] == info.scene_names and splits["synth_train"] == []
    nusc = open_nuscenes(info.root, info.version)
    assert len(scenes_of_split(nusc, "longtail_val")) == 1 and len(nusc.sample_annotation) == info.annotations
    assert all(len(s["data"]) == len(CAMERAS) + 1 for s in nusc.sample)
