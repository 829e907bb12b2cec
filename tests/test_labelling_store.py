"""The label store: versions the devkit and the data set read, provenance on every row and never changed, human
labels never overwritten, byte-identical reruns, crash leftovers rebuilt, and no path ever leaving the root."""
import json
import os
import shutil
from collections import Counter

import pytest
from nuscenes.eval.detection.utils import category_to_detection_name

from drive.data.dataset import NuScenesDrivingDataset
from drive.data.nusc import TABLES, open_nuscenes
from drive.data.synth.world import generate_world
from drive.labelling.errors import LabellingError
from drive.labelling.fleet import FLEET_VERSION, generate_fleet, list_clips
from drive.labelling.records import FrameLabels, LabelBox, Provenance
from drive.labelling.store import LabelStore
from drive.labelling.tables import read_table, write_json
from drive.types import CLASSES

BASE_PROV = Provenance("human", 0, "ours", reviewer="base").to_dict()


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    root = str(tmp_path_factory.mktemp("base") / "world")
    generate_world(root, scenes=2, seed=1, width=400, height=225, keyframes=4, workers=1)
    return root


@pytest.fixture(scope="module")
def fleet(tmp_path_factory):
    root = str(tmp_path_factory.mktemp("fleet") / "round01")
    info = generate_fleet(root, round_index=1, scenes=2, seed=11, keyframes=4, workers=1)
    return info, list_clips(info.root, FLEET_VERSION)


@pytest.fixture
def store(tmp_path, base):
    st = LabelStore(str(tmp_path / "store"), "ours")
    assert st.init_from_base(base, "v1.0-mini", "synth_train") == "v1.0-r0"
    return st


def truth_rows(fleet_root, sample):
    """The hidden truth's detection-class annotation rows of a sample (with ``detection_name`` / ``attribute_name``)."""
    T = {t: read_table(fleet_root, "v1.0-mini", t) for t in ("sample_annotation", "instance", "category", "attribute")}
    cat = {i["token"]: {c["token"]: c["name"] for c in T["category"]}[i["category_token"]] for i in T["instance"]}
    attr = {a["token"]: a["name"] for a in T["attribute"]}
    return [{**a, "detection_name": category_to_detection_name(cat[a["instance_token"]]),
             "attribute_name": attr[a["attribute_tokens"][0]] if a["attribute_tokens"] else ""}
            for a in T["sample_annotation"]
            if a["sample_token"] == sample and category_to_detection_name(cat[a["instance_token"]]) is not None]


def truth_labels(fleet_root, samples, source, round_index, score=0.8, keep=None, **prov):
    """FrameLabels of ``samples`` from the hidden truth (num_lidar_pts left for the store to count)."""
    return {s: FrameLabels(s, [LabelBox(s, a["translation"], a["size"], a["rotation"], [0.0, 0.0], a["detection_name"],
                                        a["attribute_name"], score, a["instance_token"])
                               for a in truth_rows(fleet_root, s)][:keep],
                           Provenance(source, round_index, "ours", **prov))
            for s in samples}


def table_bytes(st, version):
    d = os.path.join(st.root, version)
    return {f: open(os.path.join(d, f), "rb").read() for f in sorted(os.listdir(d))}


def check_chains(st, version):
    """Every instance's prev / next chain is consistent with its first / last / nbr and in time order."""
    anns = {a["token"]: a for a in read_table(st.root, version, "sample_annotation")}
    ts = {s["token"]: s["timestamp"] for s in read_table(st.root, version, "sample")}
    seen = 0
    for inst in read_table(st.root, version, "instance"):
        tok, chain, prev = inst["first_annotation_token"], [], ""
        while tok:
            a = anns[tok]
            assert a["instance_token"] == inst["token"] and a["prev"] == prev
            chain.append(a)
            prev, tok = tok, a["next"]
        assert len(chain) == inst["nbr_annotations"] > 0 and chain[-1]["token"] == inst["last_annotation_token"]
        assert [ts[a["sample_token"]] for a in chain] == sorted(ts[a["sample_token"]] for a in chain)
        seen += len(chain)
    assert seen == len(anns)


def test_init_from_base(store, base):
    nusc = open_nuscenes(store.root, "v1.0-r0")
    with open(os.path.join(base, "v1.0-mini", "splits.json")) as f:
        train = json.load(f)["synth_train"]
    assert sorted(s["name"] for s in nusc.scene) == sorted(train) and len(nusc.sample) == 4 * len(train)
    assert len(nusc.sample_annotation) > 0
    assert all(a["provenance"] == BASE_PROV for a in nusc.sample_annotation)
    for sd in nusc.sample_data:  # hard-linked, not copied
        assert os.path.samefile(os.path.join(store.root, sd["filename"]), os.path.join(base, sd["filename"]))
    with open(os.path.join(store.root, "v1.0-r0", "splits.json")) as f:
        assert json.load(f) == {"loop_train": [s["name"] for s in read_table(store.root, "v1.0-r0", "scene")]}
    stats = os.path.join(store.root, "v1.0-r0", "stats.json")
    before = os.stat(stats).st_mtime_ns
    assert store.init_from_base(base, "v1.0-mini", "synth_train") == "v1.0-r0"
    assert os.stat(stats).st_mtime_ns == before
    with pytest.raises(LabellingError, match="split"):
        store.init_from_base(base, "v1.0-mini", "synth_val")
    assert store.versions() == ["v1.0-r0"] and store.latest_version() == "v1.0-r0"


def test_round_is_read_by_devkit_and_dataset(store, fleet):
    info, clips = fleet
    labels = truth_labels(info.root, clips[0].sample_tokens, "auto", 1, teacher="abc123")
    n_boxes = sum(len(fl.boxes) for fl in labels.values())
    stats = store.write_round(1, [(info.root, FLEET_VERSION, clips[0].scene_token)], labels)
    assert stats["clips_added"] == 1 and stats["samples_added"] == 4
    assert stats["boxes_added"] == {"human": 0, "auto": n_boxes}
    base_samples = len(read_table(store.root, "v1.0-r0", "sample"))
    nusc = open_nuscenes(store.root, "v1.0-r1")
    assert len(nusc.scene) == 3 and len(nusc.sample) == base_samples + 4
    assert len(nusc.sensor) == 7 and len({c["name"] for c in nusc.category}) == len(nusc.category)  # merged by name
    auto = [a for a in nusc.sample_annotation if a["provenance"]["source"] == "auto"]
    assert len(auto) == n_boxes
    assert all(a["provenance"] == {**Provenance("auto", 1, "ours", teacher="abc123").to_dict(), "confidence": 0.8}
               for a in auto)
    check_chains(store, "v1.0-r1")
    # num_lidar_pts counted from the keyframe LIDAR_TOP scan equals the generator's own ray hits.
    for t in clips[0].sample_tokens:
        counted = [a["num_lidar_pts"] for a in nusc.sample_annotation if a["sample_token"] == t]
        assert counted == [a["num_lidar_pts"] for a in truth_rows(info.root, t)]
    assert sum(a["num_lidar_pts"] for a in auto) > 100

    ds = NuScenesDrivingDataset(store.root, "v1.0-r1", "loop_train", image_size=(32, 88), bev_range=60.0,
                                cache_images=False)
    assert len(ds) == base_samples + 4
    hits = 0
    for i in range(len(ds)):
        rec = ds.record(i)
        if rec.sample_token in labels:
            want = Counter(CLASSES.index(b.detection_name) for b in labels[rec.sample_token].boxes)
            assert Counter(rec.annotations.labels.tolist()) == want
            _, targets, meta = ds[i]
            assert meta.sample_token == rec.sample_token and int(targets.mask.sum()) > 0
            hits += 1
    assert hits == 4


def test_auto_labels_never_replace_human_ones(store, fleet):
    info, clips = fleet
    s = clips[0].sample_tokens
    b0, b1 = [x["token"] for x in read_table(store.root, "v1.0-r0", "sample")][:2]
    r0 = {a["token"]: a for a in read_table(store.root, "v1.0-r0", "sample_annotation")}
    store.write_round(1, [(info.root, FLEET_VERSION, clips[0].scene_token)],
                      truth_labels(info.root, s, "auto", 1, keep=3))

    def hand(t, n=1):
        return [LabelBox(t, [1.0, 2.0, 0.5], [2.0, 4.5, 1.6], [1.0, 0.0, 0.0, 0.0], [0.0, 0.0], "car",
                         "vehicle.parked", num_lidar_pts=7) for _ in range(n)]

    human2 = Provenance("human", 2, "ours", reviewer="sim")
    labels2 = {
        s[1]: FrameLabels(s[1], hand(s[1]), human2),  # replaces the frame's auto labels
        s[2]: truth_labels(info.root, [s[2]], "auto", 2, score=0.5, keep=2)[s[2]],  # newer auto replaces older auto
        s[3]: FrameLabels(s[3], [], human2),  # reviewed: nothing there
        b0: FrameLabels(b0, hand(b0, 2), Provenance("auto", 2, teacher="t")),  # auto on a base frame: dropped
        b1: FrameLabels(b1, hand(b1, 2), human2),  # human again on a human frame: the existing labels stay
    }
    stats = store.write_round(2, [], labels2)
    assert stats["auto_replaced_by_human"] == 6 and stats["auto_replaced_by_auto"] == 3  # s1 + s3, s2
    assert stats["auto_dropped_human_exists"] == 2 and stats["human_kept_existing"] == 2
    assert stats["boxes_added"] == {"human": 1, "auto": 2}
    rows2 = read_table(store.root, "v1.0-r2", "sample_annotation")
    of = lambda rows, t: sorted((a for a in rows if a["sample_token"] == t), key=lambda a: a["token"])  # noqa: E731
    (h,) = of(rows2, s[1])
    assert h["provenance"] == {**human2.to_dict(), "confidence": 1.0}
    assert h["num_lidar_pts"] == 7 and h["translation"] == [1.0, 2.0, 0.5]
    assert [a["provenance"]["confidence"] for a in of(rows2, s[2])] == [0.5, 0.5]
    assert of(rows2, s[3]) == []
    for t in (b0, b1):  # base rows untouched, token for token
        assert of(rows2, t) == sorted((r0[k] | {"provenance": BASE_PROV} for k in r0 if r0[k]["sample_token"] == t),
                                      key=lambda a: a["token"]) != []
    assert store.label_index("v1.0-r2")[s[3]] == {"source": "human", "round": 2}
    check_chains(store, "v1.0-r2")
    open_nuscenes(store.root, "v1.0-r2")

    # Round 3: auto labels for the reviewed frames (one of them reviewed empty) are dropped.
    stats3 = store.write_round(3, [], {**truth_labels(info.root, [s[1], s[3]], "auto", 3, keep=2)})
    assert stats3["auto_dropped_human_exists"] == 4 and stats3["boxes_added"] == {"human": 0, "auto": 0}
    rows3 = read_table(store.root, "v1.0-r3", "sample_annotation")
    assert of(rows3, s[1]) == [h] and of(rows3, s[3]) == []
    assert store.provenance_counts("v1.0-r3") == {"auto": {1: 3, 2: 2}, "human": {0: len(r0), 2: 1}}


def test_provenance_on_every_row_and_unchanged_across_rounds(store, fleet):
    info, clips = fleet
    c0, c1 = clips
    labels1 = truth_labels(info.root, c0.sample_tokens, "auto", 1)
    store.write_round(1, [(info.root, FLEET_VERSION, c0.scene_token)], labels1)
    labels2 = truth_labels(info.root, c1.sample_tokens, "auto", 2)
    labels2.update(truth_labels(info.root, c0.sample_tokens[:1], "human", 2, score=1.0, reviewer="sim"))
    store.write_round(2, [(info.root, FLEET_VERSION, c1.scene_token), (info.root, FLEET_VERSION, c0.scene_token)],
                      labels2)
    assert store.versions() == ["v1.0-r0", "v1.0-r1", "v1.0-r2"] and store.latest_version() == "v1.0-r2"
    assert store.stats("v1.0-r2")["clips_already_present"] == 1
    prev = {}
    for v in store.versions():
        rows = {a["token"]: a for a in read_table(store.root, v, "sample_annotation")}
        for a in rows.values():
            p = Provenance.from_dict(a["provenance"])  # present and well-formed
            assert p.strategy == "ours" and 0 <= p.round <= int(v[-1])
        for tok in set(prev) & set(rows):
            assert rows[tok]["provenance"] == prev[tok]["provenance"]
        prev = rows
        with open(os.path.join(store.root, v, "splits.json")) as f:
            assert sorted(json.load(f)["loop_train"]) == sorted(s["name"] for s in read_table(store.root, v, "scene"))
    r0 = read_table(store.root, "v1.0-r0", "sample_annotation")
    assert all(a["token"] in prev and prev[a["token"]]["provenance"] == BASE_PROV for a in r0)
    counts = store.provenance_counts("v1.0-r2")
    assert counts["human"][0] == len(r0) and counts["human"][2] == len(labels2[c0.sample_tokens[0]].boxes) > 0
    assert counts["auto"] == {1: sum(len(labels1[t].boxes) for t in c0.sample_tokens[1:]),
                              2: sum(len(labels2[t].boxes) for t in c1.sample_tokens)}
    check_chains(store, "v1.0-r2")


def test_rerun_is_idempotent_and_crash_leftovers_are_rebuilt(store, fleet, monkeypatch):
    info, clips = fleet
    args = (1, [(info.root, FLEET_VERSION, clips[0].scene_token)], truth_labels(info.root, clips[0].sample_tokens,
                                                                                "auto", 1))
    stats = store.write_round(*args)
    first = table_bytes(store, "v1.0-r1")
    stamp = os.stat(os.path.join(store.root, "v1.0-r1", "stats.json")).st_mtime_ns
    assert store.write_round(*args) == stats  # complete: left as is
    assert os.stat(os.path.join(store.root, "v1.0-r1", "stats.json")).st_mtime_ns == stamp
    shutil.rmtree(os.path.join(store.root, "v1.0-r1"))
    assert store.write_round(*args) == stats and table_bytes(store, "v1.0-r1") == first

    # A half-written version (no stats.json) and a stale temporary dir are replaced.
    half = os.path.join(store.root, "v1.0-r1")
    for f in os.listdir(half):
        if f not in ("scene.json", "sample.json"):
            os.remove(os.path.join(half, f))
    os.makedirs(os.path.join(store.root, ".v1.0-r1.tmp-crashed"))
    assert store.versions() == ["v1.0-r0"]
    store.write_round(*args)
    assert table_bytes(store, "v1.0-r1") == first
    assert sorted(os.listdir(store.root)) == ["maps", "samples", "v1.0-r0", "v1.0-r1"]

    # A crash while the tables are being written leaves no version behind.
    shutil.rmtree(half)
    import drive.labelling.store as store_mod

    real_dump, calls = json.dump, []

    def crashing_dump(*a, **k):
        calls.append(1)
        if len(calls) == 5:
            raise KeyboardInterrupt("killed")
        return real_dump(*a, **k)

    monkeypatch.setattr(store_mod.json, "dump", crashing_dump)
    with pytest.raises(KeyboardInterrupt):
        store.write_round(*args)
    monkeypatch.setattr(store_mod.json, "dump", real_dump)
    assert store.versions() == ["v1.0-r0"] and not os.path.exists(half)
    assert [d for d in os.listdir(store.root) if d.startswith(".")] == []
    store.write_round(*args)
    assert table_bytes(store, "v1.0-r1") == first


def _copy_fleet(info, dst):
    shutil.copytree(info.root, dst, copy_function=os.link)  # tables are rewritten by replace, files untouched
    return dst


def _keyframe_row(root, sample, channel):
    ch = {r["token"]: r["channel"] for r in read_table(root, FLEET_VERSION, "sensor")}
    cs = {r["token"]: ch[r["sensor_token"]] for r in read_table(root, FLEET_VERSION, "calibrated_sensor")}
    return next(r for r in read_table(root, FLEET_VERSION, "sample_data")
                if r["sample_token"] == sample and cs[r["calibrated_sensor_token"]] == channel)


def _rename(root, token, filename):
    rows = read_table(root, FLEET_VERSION, "sample_data")
    for r in rows:
        if r["token"] == token:
            r["filename"] = filename
    write_json(os.path.join(root, FLEET_VERSION, "sample_data.json"), rows)


def test_paths_never_leave_the_root(store, fleet, tmp_path):
    info, clips = fleet
    bad = _copy_fleet(info, str(tmp_path / "bad_fleet"))
    row = _keyframe_row(bad, clips[0].sample_tokens[0], "CAM_FRONT")
    shutil.copyfile(os.path.join(bad, row["filename"]), str(tmp_path / "escape.jpg"))
    _rename(bad, row["token"], "../escape.jpg")  # exists just outside the fleet root
    outside_before = sorted(os.listdir(tmp_path))
    with pytest.raises(LabellingError, match="outside the data root"):
        store.write_round(1, [(bad, FLEET_VERSION, clips[0].scene_token)], {})
    assert store.versions() == ["v1.0-r0"] and sorted(os.listdir(tmp_path)) == outside_before
    store.write_round(1, [(info.root, FLEET_VERSION, c.scene_token) for c in clips], {})
    real_root = os.path.realpath(store.root)
    for v in store.versions():
        for r in read_table(store.root, v, "sample_data") + read_table(store.root, v, "map"):
            path = os.path.realpath(os.path.join(store.root, r["filename"]))
            assert path.startswith(real_root + os.sep) and os.path.isfile(path)


def test_two_different_files_on_one_path_is_an_error(store, fleet, tmp_path):
    info, clips = fleet
    bad = _copy_fleet(info, str(tmp_path / "bad_fleet"))
    row = _keyframe_row(bad, clips[0].sample_tokens[0], "CAM_FRONT")
    base_name = read_table(store.root, "v1.0-r0", "sample_data")[0]["filename"]  # a base image already linked in
    os.makedirs(os.path.dirname(os.path.join(bad, base_name)), exist_ok=True)
    shutil.copyfile(os.path.join(bad, row["filename"]), os.path.join(bad, base_name))
    _rename(bad, row["token"], base_name)
    with pytest.raises(LabellingError, match="collision"):
        store.write_round(1, [(bad, FLEET_VERSION, clips[0].scene_token)], {})
    assert store.versions() == ["v1.0-r0"]


def test_bad_label_input_is_rejected(store, fleet):
    info, clips = fleet
    clip = [(info.root, FLEET_VERSION, clips[0].scene_token)]
    s = clips[0].sample_tokens[0]
    with pytest.raises(LabellingError, match="f" * 32):
        store.write_round(1, clip, {"f" * 32: FrameLabels("f" * 32, [], Provenance("auto", 1))})
    with pytest.raises(LabellingError, match="provenance.round"):
        store.write_round(1, clip, {s: FrameLabels(s, [], Provenance("auto", 0))})
    with pytest.raises(LabellingError, match="sample_token"):
        store.write_round(1, clip, {s: FrameLabels(clips[0].sample_tokens[1], [], Provenance("auto", 1))})
    with pytest.raises(LabellingError, match="init_from_base"):
        LabelStore(os.path.join(store.root, "..", "empty"), "ours").write_round(1, clip, {})
    assert store.versions() == ["v1.0-r0"]
    for t in TABLES:  # nothing half-written
        assert os.path.isfile(os.path.join(store.root, "v1.0-r0", f"{t}.json"))
