"""The whole labelling loop on a tiny world with tiny models: one round, two strategies, a malformed upload,
a crash in the middle of the round and the resume, provenance, the report."""
from __future__ import annotations

import json
import os
import shutil
import sys

import pytest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from eval_fixtures import write_checkpoint  # noqa: E402

from drive.labelling import engine, retrain  # noqa: E402
from drive.labelling.config import (AutoLabelConfig, BaseData, DistillConfig, FleetConfig, LongtailValConfig,  # noqa: E402
                                    LoopConfig, ProfileConfig, RetrainConfig, ReviewConfig, UploadConfig)
from drive.labelling.errors import LabellingError  # noqa: E402
from drive.labelling.loop import FLEET_VERSION, Loop, read_json  # noqa: E402


def tiny_loop_config(tmp_path, base_root) -> LoopConfig:
    return LoopConfig(
        out_dir=str(tmp_path / "loop"), student_ckpt=write_checkpoint(tmp_path / "student.ckpt", seed=0),
        teacher_ckpt=write_checkpoint(tmp_path / "teacher.ckpt", seed=1), rounds=1, strategies=["triggers", "human"],
        threads=1, base=BaseData(root=base_root), fleet=FleetConfig(scenes=3, keyframes=4, workers=1, seed=77),
        longtail_val=LongtailValConfig(scenes=1, keyframes=4, workers=1), upload=UploadConfig(budget_clips=3),
        review=ReviewConfig(budget=60.0), teacher={"min_box_score": 0.0}, auto_labels=AutoLabelConfig(min_confidence=0.0),
        retrain=RetrainConfig(steps=2, warmup_steps=1, num_workers=0, distill=DistillConfig(weight=1.0)),
        profile=ProfileConfig(targets=["orin-x"], runs=2, warmup=1))


def test_bad_loop_config_is_one_clear_error(tmp_path):
    cfg = LoopConfig(out_dir=str(tmp_path), student_ckpt=str(tmp_path / "missing.ckpt"), teacher_ckpt="x")
    with pytest.raises(LabellingError, match="student_ckpt: checkpoint not found"):
        Loop(cfg)


def test_review_budget_carries_unspent_budget_over_and_is_never_negative(tmp_path):
    from drive.labelling.scalabel import atomic_write_json

    cfg = tiny_loop_config(tmp_path, str(tmp_path))
    loop = Loop(cfg)
    assert loop.review_budget("triggers", 1) == 60.0
    atomic_write_json(os.path.join(loop.paths.round_dir("triggers", 1), "review.json"), {"cost": 45.5})
    assert loop.review_budget("triggers", 2) == 120.0 - 45.5  # 14.5 left over from round 1
    atomic_write_json(os.path.join(loop.paths.round_dir("triggers", 2), "review.json"), {"cost": 74.5 + 1e-12})
    assert loop.review_budget("triggers", 3) == pytest.approx(60.0)
    loop.cfg.review.budget = 0.0  # a frame may overshoot by the budget tolerance: the next budget is 0, not < 0
    assert loop.review_budget("triggers", 3) == 0.0


def test_oracle_ranks_the_hidden_long_tail_first_and_needs_the_truth():
    from drive.labelling.loop import _oracle_scores
    from drive.labelling.triggers import select_clips

    fleet = {"root": "/f", "info": {"longtail_scenes": ["s1", "s3"]},
             "clips": [{"scene_token": t, "scene_name": n} for t, n in (("a", "s0"), ("b", "s1"), ("c", "s2"),
                                                                         ("d", "s3"))]}
    mined = [{"scene_token": t, "clip_score": v} for t, v in (("a", 0.9), ("b", 0.1), ("c", 0.8), ("d", 0.0))]
    scores = _oracle_scores(fleet, mined)
    assert [s["clip_score"] for s in scores] == [0.0, 1.0, 0.0, 1.0]
    assert select_clips(scores, {}, budget_clips=3) == ["b", "d", "a"]  # long tail first, then ties by token
    with pytest.raises(LabellingError, match="'oracle' needs a fleet with hidden truth.*/f"):
        _oracle_scores({**fleet, "info": {}}, mined)


def test_longtail_mining_counts_and_auc_on_a_hand_made_round():
    from drive.labelling.report import longtail_mining

    fleet = {"clips": [{"scene_token": t, "scene_name": f"fleet01-{i:04d}"} for i, t in enumerate("abcd")],
             "info": {"longtail_scenes": ["fleet01-0000", "fleet01-0001"]}}  # a and b are long-tail

    def clip(tok, score, flicker):
        sig = {"uncertainty": 1.0, "flicker": flicker, "disagreement": 0.0, "rare": 0.0}
        return {"scene_token": tok, "clip_score": score, "frames": [{"signals": sig}, {"signals": {**sig, "flicker": 0.0}}]}

    mine = {"clips": [clip("a", 0.9, 4.0), clip("b", 0.5, 2.0), clip("c", 0.6, 2.0), clip("d", 0.1, 0.0)]}
    out = longtail_mining(fleet, mine, uploaded=["a", "c"])
    assert out["fleet_clips"] == 4 and out["fleet_longtail"] == 2 and out["uploaded_longtail"] == 1
    # pairs (long-tail, ordinary): a>c, a>d, b<c, b>d -> 3 of 4
    assert out["clip_score_auc"] == pytest.approx(0.75)
    # flicker clip means a 2, b 1, c 1, d 0: a>c, a>d, b=c (half), b>d -> 3.5 of 4; uncertainty all tied
    assert out["signal_auc"]["flicker"] == pytest.approx(0.875)
    assert out["signal_auc"]["uncertainty"] == pytest.approx(0.5)
    assert longtail_mining({"clips": fleet["clips"], "info": {}}, mine, ["a"]) is None  # a fleet without truth
    one_sided = longtail_mining({**fleet, "info": {"longtail_scenes": []}}, mine, ["a"])
    assert one_sided["clip_score_auc"] is None and one_sided["uploaded_longtail"] == 0


@pytest.mark.timeout(1500)
def test_a_round_resumes_after_a_crash_and_keeps_provenance(synth_world, tmp_path, monkeypatch):
    from drive.labelling.tables import read_tables

    cfg = tiny_loop_config(tmp_path, synth_world)
    loop = Loop(cfg)
    loop.prepare()
    fleet = loop.step_fleet(1)
    loop.step_mine("triggers", 1)  # the car mined intact clips; one arrives corrupt in the cloud
    oracle = loop.step_select("oracle", 1)  # the hidden truth uploads the fleet's one long-tail clip first
    longtail = set(fleet["info"]["longtail_scenes"])
    assert [c["scene_name"] in longtail for c in fleet["clips"]].count(True) == 1
    name = {c["scene_token"]: c["scene_name"] for c in fleet["clips"]}
    assert [name[t] in longtail for t in oracle["uploaded"]] == [True, False, False]
    bad = fleet["clips"][0]["scene_token"]
    from drive.data.nusc import open_nuscenes

    nusc = open_nuscenes(loop.paths.fleet(1), FLEET_VERSION)
    first = nusc.get("sample", nusc.get("scene", bad)["first_sample_token"])
    path = os.path.join(loop.paths.fleet(1), nusc.get("sample_data", first["data"]["CAM_FRONT"])["filename"])
    with open(path, "wb") as f:
        f.write(b"not a jpeg")

    calls = {"clips": 0}
    real_run = engine.run_clips

    def counting(worker, jobs, **kw):
        calls["clips"] += len(jobs)
        return real_run(worker, jobs, **kw)

    monkeypatch.setattr(engine, "run_clips", counting)
    real_finetune = retrain.finetune

    def crash(*args, **kwargs):
        raise RuntimeError("killed mid-round")

    monkeypatch.setattr(retrain, "finetune", crash)
    with pytest.raises(RuntimeError, match="killed mid-round"):
        loop.run_round("triggers", 1)
    d = loop.paths.round_dir("triggers", 1)
    sel = read_json(os.path.join(d, "select.json"))
    assert bad in sel["rejected"] and "CAM_FRONT" in " ".join(sel["rejected"][bad])  # rejected, round went on
    assert bad not in sel["accepted"] and len(sel["accepted"]) == 2
    review = read_json(os.path.join(d, "review.json"))
    store_before = read_tables(loop.paths.store("triggers"), "v1.0-r1")
    mined_and_labelled = calls["clips"]
    assert mined_and_labelled == 2  # mining was done before; the 2 accepted clips labelled

    monkeypatch.setattr(retrain, "finetune", real_finetune)
    rep = loop.run_round("triggers", 1)
    assert calls["clips"] == mined_and_labelled  # nothing mined or relabelled again
    ref = read_json(os.path.join(loop.paths.round_dir("", 0), "novelty_reference.json"))  # round 0's model's
    assert os.path.isfile(ref["path"]) and ref["frames"] > 0 and ref["graph"] == loop.model_of("triggers", 0)[1]
    mined = read_json(os.path.join(d, "mine.json"))["clips"]
    assert all(fr["signals"]["novelty"] > 0 for c in mined for fr in c["frames"][ref["warmup"]:])
    assert ref["warmup"] == 2 and all(fr["signals"]["novelty"] == 0 for c in mined for fr in c["frames"][:2])
    from omegaconf import OmegaConf

    train_cfg = OmegaConf.load(os.path.join(d, "train", "config.yaml"))
    assert dict(train_cfg.temporal.repeat_scenes) == {"fleet": loop.cfg.retrain.fleet_repeat}  # fleet oversampled
    # distillation: the teacher kept maps of exactly the accepted clips' keyframes, the fine-tune used them
    accepted_frames = {t for c in read_json(os.path.join(d, "teacher.json"))["clips"] for t in c["samples"]}
    assert {f[:-4] for f in os.listdir(loop.paths.teacher_maps)} == accepted_frames and len(accepted_frames) == 8
    trained = read_json(os.path.join(d, "train.json"))
    assert trained["distill"]["frames_with_maps"] == 8 and train_cfg.loss.distill.weight == 1.0
    assert train_cfg.loss.distill.targets_dir == loop.paths.teacher_maps
    assert read_json(os.path.join(d, "review.json")) == review
    store_after = read_tables(loop.paths.store("triggers"), "v1.0-r1")
    assert store_after["sample_annotation"] == store_before["sample_annotation"]
    from drive.labelling.queue import ReviewQueue

    items = ReviewQueue(loop.paths.queue).items("triggers", 1)
    assert len(items) == len({i.sample_token for i in items})  # one queue row per frame, no duplicates

    anns = store_after["sample_annotation"]
    assert anns and all("provenance" in a for a in anns)
    sources = {(a["provenance"]["source"], a["provenance"]["round"]) for a in anns}
    assert ("human", 0) in sources  # the base world's labels
    if review["frames"]:
        reviewed = set(review["labels"])
        assert all(a["provenance"]["source"] == "human" for a in anns if a["sample_token"] in reviewed)
    auto = [a for a in anns if a["provenance"]["source"] == "auto"]
    assert all(a["provenance"]["teacher"] == loop.teacher_sha() for a in auto)
    assert rep["accepted_clips"] == 2 and rep["label_cost"] <= cfg.review.budget
    assert rep["longtail"]["NDS"] is not None and rep["latency_ms"] > 0
    lm = rep["longtail_mining"]  # fleet.longtail_frac 0.25 of 3 clips: one long-tail clip
    assert lm["fleet_clips"] == 3 and lm["fleet_longtail"] == 1 and 0 <= lm["uploaded_longtail"] <= 1

    human = loop.run_round("human", 1)  # its own mining meets the corrupt clip: skipped, the round goes on
    assert bad in read_json(os.path.join(loop.paths.round_dir("human", 1), "mine.json"))["failed"]
    assert human["auto_boxes"] == 0 and human["label_cost"] <= cfg.review.budget
    human_cfg = OmegaConf.load(os.path.join(loop.paths.round_dir("human", 1), "train", "config.yaml"))
    assert human_cfg.loss.distill.weight == 0.0  # no teacher in this strategy: nothing to distil from
    from drive.labelling.report import write_loop_report

    summary = write_loop_report(loop)
    assert set(summary["strategies"]) == {"triggers", "human"}
    assert os.path.isfile(os.path.join(loop.paths.root, "cost_vs_metric.png"))

    # a reference the miner cannot use is the miner's failure, not every clip's: mining stops with the reason
    # instead of "uploading" nothing and training the round on no fleet data
    import numpy as np

    with np.load(ref["path"]) as z:
        old = {k: z[k] for k in z.files if k != "warmup"}
    np.savez(ref["path"], **old)
    shutil.rmtree(os.path.join(d, "mine_clips"))
    os.remove(os.path.join(d, "mine.json"))
    with pytest.raises(LabellingError, match="no fleet clip could be mined: .*field 'warmup' missing"):
        loop.step_mine("triggers", 1)
    assert read_json(os.path.join(d, "mine.json")) is None
    md = open(os.path.join(loop.paths.root, "report.md")).read()
    assert "long-tail" in md and "CAM_FRONT" in md and "long-tail clips uploaded (fleet)" in md
    json.dumps(summary)


def test_distillation_curve_summary_skips_batches_without_maps():
    assert retrain._start_end([0.0, 4.0, 0.0, 2.0, 6.0, 8.0, 10.0, 12.0, 14.0]) == {"start": 4.0, "end": 14.0,
                                                                                       "logged": 7}
    assert retrain._start_end([0.0, 0.0]) == {"start": None, "end": None, "logged": 0}
