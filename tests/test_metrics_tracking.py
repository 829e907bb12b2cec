"""Tracker on hand-made frames, and GT-as-detections through tracker + devkit ``TrackingEval`` on the world."""
import math

import numpy as np
import pytest

from drive.metrics.detection import boxes_to_nusc, write_results
from drive.metrics.tracker import Tracker, TrackerConfig, samples_of_split, track_detections
from drive.metrics.tracking import evaluate_tracking

US = 500_000  # 0.5 s in microseconds


def det(x, y=0.0, name="car", score=0.9, v=(0.0, 0.0), token="s"):
    return {"sample_token": token, "translation": [x, y, 1.0], "size": [1.9, 4.5, 1.6], "rotation": [1.0, 0, 0, 0],
            "velocity": list(v), "detection_name": name, "detection_score": score, "attribute_name": ""}


def ids(records):
    return [r["tracking_id"] for r in records]


def test_parallel_objects_keep_their_ids():
    tr = Tracker()
    frames = [[det(0.0 + 2 * k, 0.0, v=(4, 0)), det(0.0 + 2 * k, 3.5, v=(4, 0))] for k in range(4)]
    out = [tr.update(f, k * US) for k, f in enumerate(frames)]
    assert all(ids(o) == ids(out[0]) for o in out) and len(set(ids(out[0]))) == 2
    r = out[0][0]
    assert r["tracking_name"] == "car" and r["tracking_score"] == 0.9 and r["sample_token"] == "s"
    assert set(r) == {"sample_token", "translation", "size", "rotation", "velocity", "tracking_id", "tracking_name",
                      "tracking_score"}


def test_velocity_back_projection_associates_fast_objects():
    # 10 m per frame: beyond the 4 m car gate unless the detection is moved back by its velocity * dt.
    tr = Tracker()
    a, b = tr.update([det(0.0, v=(20, 0))], 0), tr.update([det(10.0, v=(20, 0))], US)
    assert ids(a) == ids(b)
    tr = Tracker()
    a, b = tr.update([det(0.0)], 0), tr.update([det(10.0)], US)
    assert ids(a) != ids(b)


def test_coasting_through_a_gap_and_death_after_max_misses():
    cfg = TrackerConfig(max_misses=2)
    tr = Tracker(cfg)
    first = ids(tr.update([det(0.0, v=(4, 0))], 0))
    assert tr.update([], US) == [] and tr.update([], 2 * US) == []  # missed twice: alive, not emitted
    assert ids(tr.update([det(6.0, v=(4, 0))], 3 * US)) == first  # back-projected over 1.5 s
    for k in range(4, 7):
        tr.update([], k * US)  # three misses: dead
    assert ids(tr.update([det(18.0, v=(4, 0))], 7 * US)) != first


def test_birth_by_score_or_hits_and_classes():
    tr = Tracker(TrackerConfig(birth_score=0.5, birth_hits=2))
    out0 = tr.update([det(0.0, score=0.3), det(20.0, score=0.9), det(40.0, name="barrier", score=0.9)], 0)
    assert [r["translation"][0] for r in out0] == [20.0]  # weak one tentative, barrier not a tracking class
    out1 = tr.update([det(0.0, score=0.3), det(20.0, score=0.9)], US)
    assert sorted(r["translation"][0] for r in out1) == [0.0, 20.0]  # second hit confirms the weak one
    # a tentative track that misses a frame dies
    tr = Tracker(TrackerConfig(birth_score=0.5, birth_hits=2))
    tr.update([det(0.0, score=0.3)], 0)
    tr.update([], US)
    assert tr.tracks == []
    # different classes never associate
    tr = Tracker()
    assert ids(tr.update([det(0.0, name="car")], 0)) != ids(tr.update([det(0.0, name="truck")], US))
    with pytest.raises(ValueError):
        tr.update([], 0)  # time must increase


def test_greedy_vs_hungarian():
    # Tracks at x = 0 and x = 2. Greedy gives the stronger detection (x = 1.2) to the nearer track 2 and leaves
    # x = 5 (out of reach of track 0) unmatched; Hungarian pairs 1.2 -> track 0 and 5 -> track 2.
    def run(method):
        tr = Tracker(TrackerConfig(method=method))
        first = {r["translation"][0]: r["tracking_id"] for r in tr.update([det(0.0), det(2.0)], 0)}
        second = {r["translation"][0]: r["tracking_id"] for r in tr.update([det(1.2, score=0.9),
                                                                            det(5.0, score=0.8)], US)}
        return first, second
    first, second = run("greedy")
    assert second[1.2] == first[2.0] and second[5.0] not in first.values()
    first, second = run("hungarian")
    assert second[1.2] == first[0.0] and second[5.0] == first[2.0]
    with pytest.raises(ValueError):
        Tracker(TrackerConfig(method="magic"))


def test_track_detections_over_scenes():
    samples = [("b1", "B", 2 * US), ("a0", "A", 0), ("b0", "B", US), ("a1", "A", US), ("a2", "A", 2 * US)]
    dets = {"a0": [det(0.0, token="a0")], "a1": [det(0.5, token="a1")], "b0": [det(0.0, token="b0")],
            "b1": [det(0.5, token="b1")]}
    out = track_detections(dets, samples)
    assert set(out) == {"a0", "a1", "a2", "b0", "b1"} and out["a2"] == []
    assert ids(out["a0"]) == ids(out["a1"]) and ids(out["b0"]) == ids(out["b1"])
    assert ids(out["a0"]) != ids(out["b0"])  # unique across scenes
    assert out["b1"][0]["sample_token"] == "b1"


@pytest.fixture(scope="module")
def world(synth_world):
    from drive.data.dataset import index_samples
    from drive.data.nusc import open_nuscenes, scenes_of_split

    nusc = open_nuscenes(synth_world, "v1.0-mini")
    return nusc, index_samples(nusc, scenes_of_split(nusc, "mini_val"), with_targets=True)


def _gt_detections(records):
    """GT boxes with points, through the data layer and back to global, as score-1 detections."""
    out = {}
    for r in records:
        a = r.annotations
        keep = a.num_pts > 0
        out[r.sample_token] = boxes_to_nusc(a.boxes[keep], np.ones(keep.sum()), a.labels[keep], a.attributes[keep],
                                            r.global_T_ego, r.sample_token)
    return out


def test_gt_detections_track_perfectly(world, tmp_path):
    nusc, records = world
    samples = samples_of_split(nusc, "mini_val")
    assert sorted(samples) == sorted((r.sample_token, r.scene_token, r.timestamp) for r in records)
    tracks = track_detections(_gt_detections(records), samples)
    path = write_results(str(tmp_path / "tracks.json"), tracks)
    out = evaluate_tracking(nusc, path, "mini_val", str(tmp_path / "eval"))
    assert out["amota"] == pytest.approx(1.0) and out["ids"] == 0 and out["fp"] == 0 and out["fn"] == 0
    assert out["amotp"] == pytest.approx(0.0, abs=1e-4)
    assert not any(math.isnan(out[f"amota_{c}"]) for c in ("car", "pedestrian", "truck"))
    # the same scenes under the custom splits.json name (devkit custom-split path)
    assert evaluate_tracking(nusc, path, "synth_val", str(tmp_path / "eval_custom"))["amota"] == pytest.approx(1.0)

    # the evaluation is not blind: with a fresh id at every frame, identities switch and AMOTA drops
    fresh = {tok: [dict(r, tracking_id=f"{tok}-{i}") for i, r in enumerate(recs)] for tok, recs in tracks.items()}
    path = write_results(str(tmp_path / "fresh.json"), fresh)
    bad = evaluate_tracking(nusc, path, "mini_val", str(tmp_path / "eval_fresh"))
    assert bad["ids"] > 0 and bad["amota"] < 0.9

    partial = dict(tracks)
    partial.pop(samples[0][0])
    path = write_results(str(tmp_path / "partial.json"), partial)
    with pytest.raises(ValueError, match="misses 1 of the 16 samples"):
        evaluate_tracking(nusc, path, "mini_val", str(tmp_path / "eval_partial"))
