"""Opening roots: the hand-written real-format fixture is valid for the devkit; bad input -> DataError."""
import json
import logging
import os
import shutil

import pytest
from fixtures.realformat import SCENE_NAME, VERSION
from nuscenes import NuScenes

from drive.data.dataset import NuScenesDrivingDataset
from drive.data.errors import DataError
from drive.data.nusc import available_splits, open_nuscenes, resolve_data_path, scenes_of_split


def test_fixture_is_a_valid_devkit_root(realformat_root):
    nusc = NuScenes("v1.0-mini", realformat_root.root, verbose=False)
    assert [s["name"] for s in nusc.scene] == [SCENE_NAME]
    assert len(nusc.category) == 23 and len(nusc.sample) == 4
    names = {c["name"] for c in nusc.category}
    assert {"animal", "static_object.bicycle_rack", "vehicle.emergency.police", "movable_object.debris"} <= names
    sweeps = [sd for sd in nusc.sample_data if not sd["is_key_frame"]]
    assert sweeps and not any(os.path.exists(os.path.join(realformat_root.root, sd["filename"])) for sd in sweeps)
    assert {"RADAR_FRONT", "LIDAR_TOP"} <= set(nusc.sample[0]["data"])
    for inst in nusc.instance:  # consistent instance bookkeeping
        chain, tok = [], inst["first_annotation_token"]
        while tok:
            chain.append(tok)
            tok = nusc.get("sample_annotation", tok)["next"]
        assert len(chain) == inst["nbr_annotations"] and chain[-1] == inst["last_annotation_token"]


def test_builtin_split_and_order(realformat_root):
    nusc = open_nuscenes(realformat_root.root, VERSION)
    assert len(scenes_of_split(nusc, "mini_train")) == 1
    assert len(scenes_of_split(nusc, None)) == 1
    with pytest.raises(DataError, match="none of them"):
        scenes_of_split(nusc, "mini_val")


def test_unknown_and_custom_splits(fresh_realformat_root):
    root = fresh_realformat_root.root
    nusc = open_nuscenes(root, VERSION)
    with pytest.raises(DataError, match=r"unknown split 'nope'.*mini_train"):
        scenes_of_split(nusc, "nope")
    with open(os.path.join(root, VERSION, "splits.json"), "w") as f:
        json.dump({"synth_train": [SCENE_NAME], "synth_val": []}, f)
    assert "synth_train" in available_splits(nusc)
    assert len(scenes_of_split(nusc, "synth_train")) == 1


def test_missing_root_and_wrong_version(realformat_root, tmp_path):
    with pytest.raises(DataError, match="root not found") as e:
        open_nuscenes(str(tmp_path / "absent"), VERSION)
    assert e.value.where.endswith("absent")
    with pytest.raises(DataError, match="versions found: v1.0-mini"):
        open_nuscenes(realformat_root.root, "v1.0-trainval")


def test_missing_and_malformed_table(fresh_realformat_root):
    root = fresh_realformat_root.root
    os.remove(os.path.join(root, VERSION, "visibility.json"))
    with pytest.raises(DataError, match="visibility.json"):
        open_nuscenes(root, VERSION)
    with open(os.path.join(root, VERSION, "visibility.json"), "w") as f:
        f.write("[{")
    with pytest.raises(DataError, match="malformed table file .*visibility.json"):
        open_nuscenes(root, VERSION)


def test_path_escaping_root_is_rejected(fresh_realformat_root, tmp_path):
    root = fresh_realformat_root.root
    with pytest.raises(DataError, match="outside the data root"):
        resolve_data_path(root, "../secret.jpg")
    with pytest.raises(DataError, match="outside"):
        resolve_data_path(root, "/etc/passwd")
    assert resolve_data_path(root, "samples/x/../CAM_FRONT/a.jpg").endswith("samples/CAM_FRONT/a.jpg")
    # a table row pointing outside the root fails when the data set is indexed, naming the file name
    path = fresh_realformat_root.sample_data_json
    rows = json.load(open(path))
    bad = next(r for r in rows if r["is_key_frame"] and "CAM_BACK" in r["filename"])
    bad["filename"] = "../../outside/" + os.path.basename(bad["filename"])
    json.dump(rows, open(path, "w"))
    with pytest.raises(DataError, match=r"'\.\./\.\./outside/.*outside the data root"):
        NuScenesDrivingDataset(root, VERSION, None, image_size=(45, 80))


def test_missing_map_file_is_tolerated(fresh_realformat_root, caplog):
    root = fresh_realformat_root.root
    shutil.rmtree(os.path.join(root, "maps"))
    with caplog.at_level(logging.WARNING):
        ds = NuScenesDrivingDataset(root, VERSION, None, image_size=(45, 80), cache_images=False)
        t0, t1 = ds[0][1], ds[1][1]
    assert float(t0.map_valid) == 0 and float(t1.drivable.sum()) == 0
    assert sum("is missing" in r.getMessage() for r in caplog.records) == 1


def test_dangling_tokens_and_empty_tables(fresh_realformat_root):
    root = fresh_realformat_root.root
    path = fresh_realformat_root.sample_data_json
    rows = json.load(open(path))
    next(r for r in rows if r["is_key_frame"] and "CAM_FRONT" in r["filename"])["ego_pose_token"] = "deadbeef"
    json.dump(rows, open(path, "w"))
    with pytest.raises(DataError, match="deadbeef.*scene-0061"):
        NuScenesDrivingDataset(root, VERSION, None, image_size=(45, 80))
    with open(os.path.join(root, VERSION, "map.json"), "w") as f:
        json.dump([], f)
    with pytest.raises(DataError, match="inconsistent tables"):
        open_nuscenes(root, VERSION)
