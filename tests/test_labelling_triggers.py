"""Edge triggers: each signal on hand-made detection sequences with known answers, the budgeted selection, and
the miner end to end on the synthetic world with a tiny-model checkpoint."""
import json

import numpy as np
import pytest

from drive.labelling.errors import LabellingError
from drive.labelling.miner import ClipMiner
from drive.labelling.triggers import (FrameObservation, TriggerConfig, clip_report, clip_score,
                                      select_clips, signal_summary, uncertainty_signal)

from eval_fixtures import write_checkpoint


# the four signals read from the model's outputs, equally weighted (the default weighs novelty alone, which needs a
# reference: tests/test_labelling_novelty.py)
OUTPUTS = {"uncertainty": 1.0, "flicker": 1.0, "disagreement": 1.0, "rare": 1.0}


def det(tok, x, y, score=0.9, name="car"):
    return {"sample_token": tok, "translation": [float(x), float(y), 1.0], "size": [2.0, 4.5, 1.6],
            "rotation": [1.0, 0.0, 0.0, 0.0], "velocity": [0.0, 0.0], "detection_name": name,
            "detection_score": float(score), "attribute_name": "vehicle.parked"}


def pose(x=0.0, y=0.0):
    T = np.eye(4)
    T[0, 3], T[1, 3] = x, y
    return T.tolist()


def clip(dets_per_frame, plan_changes=None, ego=(0.0, 0.0)):
    """FrameObservations of a clip at 2 Hz: dets_per_frame[t] = list of (x, y, score, name) in GLOBAL coordinates."""
    frames = []
    for t, dets in enumerate(dets_per_frame):
        tok = f"s{t}"
        frames.append(FrameObservation(tok, 1_000_000 + 500_000 * t, pose(*ego),
                                       [det(tok, *d) for d in dets],
                                       (plan_changes or [0.0] * len(dets_per_frame))[t]))
    return frames


def signals(report, name):
    return [fr["signals"][name] for fr in report["frames"]]


# ------------------------------------------------------------------------------------------- signals

def test_uncertainty_ambiguous_scores_count_confident_ones_do_not():
    assert uncertainty_signal([0.5, 0.5]) == pytest.approx(2.0)  # two maximally ambiguous boxes: 1 bit each
    assert uncertainty_signal([0.99, 0.01]) == 0.0  # confident either way, outside the band
    assert uncertainty_signal([0.5, 0.5]) > uncertainty_signal([0.7, 0.3]) > uncertainty_signal([0.99, 0.01])
    cfg = TriggerConfig(weights=OUTPUTS)
    rep = clip_report("c", clip([[(10, 0, 0.5), (20, 5, 0.5)], [(10, 0, 0.99), (20, 5, 0.01)]]), cfg)
    u = signals(rep, "uncertainty")
    assert u[0] == pytest.approx(2.0) and u[1] == 0.0  # the 0.01 box is also below score_threshold
    assert rep["frames"][0]["score"] > rep["frames"][1]["score"]


def test_one_frame_track_is_flicker_steady_track_is_not():
    steady = (10.0, 0.0, 0.9)
    seq = [[steady], [steady], [steady, (5.0, 5.0, 0.9)], [steady], [steady]]
    rep = clip_report("c", clip(seq), TriggerConfig(weights=OUTPUTS))
    # the blip at frame 2 is born there, dies there and is a short track: 3 events; the steady car none
    assert signals(rep, "flicker") == [0.0, 0.0, 3.0, 0.0, 0.0]
    assert rep["frames"][2]["counts"]["births"] == 1 and rep["frames"][2]["counts"]["deaths"] == 1
    assert rep["frames"][2]["counts"]["short"] == 1
    assert int(np.argmax([fr["score"] for fr in rep["frames"]])) == 2
    # the same blip 45 m away (outside flicker_range = 30 m) is not counted
    far = [[steady], [steady], [steady, (45.0, 0.0, 0.9)], [steady], [steady]]
    assert signals(clip_report("c", clip(far), TriggerConfig(weights=OUTPUTS)), "flicker") == [0.0] * 5


def test_flicker_range_is_taken_in_the_ego_frame():
    # ego at global x = 100: a blip at global (105, 5) is 5 m away (inside), one at (5, 5) is 95 m away (outside)
    steady = (110.0, 0.0, 0.9)
    near = [[steady], [steady], [steady, (105.0, 5.0, 0.9)], [steady], [steady]]
    far = [[steady], [steady], [steady, (5.0, 5.0, 0.9)], [steady], [steady]]
    cfg = TriggerConfig(weights=OUTPUTS)
    assert signals(clip_report("c", clip(near, ego=(100.0, 0.0)), cfg), "flicker")[2] == 3.0
    assert signals(clip_report("c", clip(far, ego=(100.0, 0.0)), cfg), "flicker")[2] == 0.0


def test_tracks_cut_by_the_clip_ends_are_not_flicker():
    # a car present from the first frame and leaving after frame 1: only its death counts, it is not "short"
    seq = [[(10.0, 0.0, 0.9)], [(10.0, 0.0, 0.9)], [], [], []]
    rep = clip_report("c", clip(seq), TriggerConfig(weights=OUTPUTS))
    assert signals(rep, "flicker") == [0.0, 1.0, 0.0, 0.0, 0.0]


def test_rare_class_detection_raises_the_rare_signal():
    seq = [[(10.0, 0.0, 0.9, "car")], [(10.0, 0.0, 0.9, "car"), (20.0, 3.0, 0.7, "bus")],
           [(10.0, 0.0, 0.9, "car"), (20.0, 3.0, 0.2, "bicycle")]]
    rep = clip_report("c", clip(seq), TriggerConfig(weights={"rare": 1.0}))
    assert signals(rep, "rare") == [0.0, pytest.approx(0.7), 0.0]  # the 0.2 bicycle is below rare_min_score
    assert rep["frames"][1]["score"] == pytest.approx(0.7) and rep["frames"][0]["score"] == 0.0
    # a car is not rare; a custom rare list makes it so
    rep_car = clip_report("c", clip(seq), TriggerConfig(rare_classes=("car",)))
    assert signals(rep_car, "rare") == [pytest.approx(0.9)] * 3


def test_big_plan_change_raises_disagreement():
    seq = [[(10.0, 0.0, 0.9)]] * 3
    rep = clip_report("c", clip(seq, plan_changes=[0.0, 0.05, 3.0]), TriggerConfig(weights=OUTPUTS))
    assert signals(rep, "disagreement") == [0.0, pytest.approx(0.05), pytest.approx(3.0)]
    assert rep["frames"][2]["normalised"]["disagreement"] == pytest.approx(3.0 / 4.0)  # x / (x + 1 m)
    s = [fr["score"] for fr in rep["frames"]]
    assert s[2] > s[1] > s[0]


def test_frame_and_clip_scores():
    cfg = TriggerConfig(weights={"disagreement": 1.0, "rare": 3.0})
    rep = clip_report("c", clip([[(20.0, 3.0, 0.8, "bus")]], plan_changes=[1.0]), cfg)
    assert rep["frames"][0]["score"] == pytest.approx((1.0 * 0.5 + 3.0 * 0.8) / 4.0)
    frames = [0.1, 0.9, 0.5, 0.3]
    assert clip_score(frames, TriggerConfig(top_k=2)) == pytest.approx(0.7)
    assert clip_score(frames, TriggerConfig(aggregate="mean")) == pytest.approx(0.45)
    assert clip_score(frames, TriggerConfig(aggregate="max")) == pytest.approx(0.9)
    assert clip_score([], TriggerConfig(weights=OUTPUTS)) == 0.0


def test_report_is_json_and_summary_counts():
    rep = clip_report("c", clip([[(10.0, 0.0, 0.5)], [(10.0, 0.0, 0.5), (20.0, 3.0, 0.7, "bus")]],
                                plan_changes=[0.0, 2.0]), TriggerConfig(weights=OUTPUTS))
    assert json.loads(json.dumps(rep, allow_nan=False)) == rep
    assert [fr["sample_token"] for fr in rep["frames"]] == ["s0", "s1"]
    assert [len(rep["detections"][t]) for t in ("s0", "s1")] == [1, 2]
    summ = signal_summary([rep, {**rep, "scene_token": "d", "clip_score": 0.0}])
    assert summ["clips"] == 2 and summ["frames"] == 4
    assert summ["rare"]["fired"] == pytest.approx(0.5) and summ["disagreement"]["max"] == pytest.approx(2.0)
    assert summ["top_clips"] == ["c", "d"]


def test_config_and_order_errors():
    with pytest.raises(LabellingError, match="unknown signal 'speed'"):
        TriggerConfig(weights={"speed": 1.0})
    with pytest.raises(LabellingError, match="not a detection class"):
        TriggerConfig(rare_classes=("ufo",))
    with pytest.raises(LabellingError, match="aggregate"):
        TriggerConfig(aggregate="median")
    frames = clip([[], []])
    with pytest.raises(LabellingError, match="timestamp order"):
        clip_report("c", frames[::-1], TriggerConfig(weights=OUTPUTS))


# ------------------------------------------------------------------------------------------- selection

REPORTS = [{"scene_token": t, "clip_score": s} for t, s in (("C", 0.5), ("A", 0.9), ("D", 0.1), ("B", 0.8))]
SIZES = {"A": 60, "B": 50, "C": 30, "D": 10}


def test_select_by_score_within_byte_and_clip_budgets():
    # A (60) fits, B (50) would make 110 > 100 and is skipped, C (30) -> 90, D (10) -> exactly 100
    assert select_clips(REPORTS, SIZES, budget_bytes=100) == ["A", "C", "D"]
    assert select_clips(REPORTS, SIZES, budget_bytes=99) == ["A", "C"]
    assert select_clips(REPORTS, SIZES, budget_clips=2) == ["A", "B"]
    assert select_clips(REPORTS, SIZES, budget_bytes=100, budget_clips=2) == ["A", "C"]
    assert select_clips(REPORTS, SIZES, budget_bytes=0) == []
    assert select_clips(REPORTS, {}, budget_clips=10) == ["A", "B", "C", "D"]  # bytes unused without byte budget


def test_random_selection_is_seeded_and_obeys_the_budget():
    reports = [{"scene_token": f"clip{i:02d}", "clip_score": i / 20} for i in range(20)]
    sizes = {r["scene_token"]: 10 + i for i, r in enumerate(reports)}
    a = select_clips(reports, sizes, budget_bytes=100, strategy="random", seed=1)
    assert a == select_clips(reports[::-1], sizes, budget_bytes=100, strategy="random", seed=1)
    assert a != select_clips(reports, sizes, budget_bytes=100, strategy="random", seed=2)
    assert sum(sizes[t] for t in a) <= 100 and len(set(a)) == len(a)
    ordered = select_clips(reports, {}, budget_clips=20, strategy="random", seed=1)
    assert sorted(ordered) == sorted(sizes) and ordered != sorted(sizes)


def test_select_errors():
    with pytest.raises(LabellingError, match="strategy"):
        select_clips(REPORTS, SIZES, budget_clips=1, strategy="oracle")
    with pytest.raises(LabellingError, match="budget"):
        select_clips(REPORTS, SIZES)
    with pytest.raises(LabellingError, match="no size for clip B"):
        select_clips(REPORTS, {"A": 1, "C": 1, "D": 1}, budget_bytes=10)
    with pytest.raises(LabellingError, match="two trigger reports"):
        select_clips(REPORTS + REPORTS[:1], SIZES, budget_clips=1)


# ------------------------------------------------------------------------------------------- the miner

def test_clip_miner_on_synth_world(synth_world, tmp_path):
    from drive.data.nusc import open_nuscenes

    nusc = open_nuscenes(synth_world, "v1.0-mini")
    scene = nusc.scene[3]
    expected, tok = [], scene["first_sample_token"]
    while tok:
        expected.append(tok)
        tok = nusc.get("sample", tok)["next"]
    ckpt = write_checkpoint(tmp_path / "tiny.ckpt")
    miner = ClipMiner(synth_world, "v1.0-mini", ckpt_path=ckpt, config=TriggerConfig(score_threshold=0.0, weights=OUTPUTS),
                      threads=1)
    run = miner.build()
    rep = run({"scene_token": scene["token"]})
    assert rep["scene_token"] == scene["token"]
    assert [fr["sample_token"] for fr in rep["frames"]] == expected  # one record per keyframe, temporal order
    ts = [fr["timestamp"] for fr in rep["frames"]]
    assert ts == sorted(ts) and len(set(ts)) == len(ts)
    assert set(rep["detections"]) == set(expected)
    assert all(0.0 <= fr["score"] <= 1.0 for fr in rep["frames"]) and 0.0 <= rep["clip_score"] <= 1.0
    assert all(len(rep["detections"][t]) == fr["counts"]["detections"] > 0 for t, fr in zip(expected, rep["frames"]))
    assert json.loads(json.dumps(rep, allow_nan=False)) == rep
    assert rep["model"]["checkpoint"] == ckpt
    with pytest.raises(LabellingError, match="clip nope: no such scene"):
        run({"scene_token": "nope"})
    with pytest.raises(LabellingError, match="exactly one of onnx_path"):
        ClipMiner(synth_world, "v1.0-mini").build()
    with pytest.raises(LabellingError, match="ckpt_path not found: .*missing.ckpt"):
        ClipMiner(synth_world, "v1.0-mini", ckpt_path=str(tmp_path / "missing.ckpt")).check()
    with pytest.raises(LabellingError, match="no v9 tables under root"):
        ClipMiner(synth_world, "v9", ckpt_path=ckpt).check()


@pytest.mark.slow
def test_clip_miner_onnx_edge_model_matches_torch(synth_world, tmp_path):
    """The car runs the exported graph: mining with it gives the checkpoint's report (export ~45 s: slow)."""
    from drive.data.nusc import open_nuscenes
    from drive.deploy.export import export_onnx
    from drive.evaluation.checkpoint import load_model

    ckpt = write_checkpoint(tmp_path / "tiny.ckpt")
    model, cfg, _ = load_model(ckpt)
    onnx_path = export_onnx(model, cfg, str(tmp_path / "tiny.onnx"))["path"]
    scene = open_nuscenes(synth_world, "v1.0-mini").scene[0]["token"]
    trig = TriggerConfig(score_threshold=0.0, weights=OUTPUTS)
    a = ClipMiner(synth_world, "v1.0-mini", onnx_path=onnx_path, config=trig).build()({"scene_token": scene})
    b = ClipMiner(synth_world, "v1.0-mini", ckpt_path=ckpt, config=trig).build()({"scene_token": scene})
    assert [f["sample_token"] for f in a["frames"]] == [f["sample_token"] for f in b["frames"]]
    assert [f["score"] for f in a["frames"]] == pytest.approx([f["score"] for f in b["frames"]], abs=1e-4)
    assert [f["counts"]["detections"] for f in a["frames"]] == [f["counts"]["detections"] for f in b["frames"]]
    assert a["model"]["onnx"] == onnx_path and len(a["model"]["sha256"]) == 64
