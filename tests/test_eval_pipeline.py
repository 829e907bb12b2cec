"""The evaluation pipeline end to end: the ground truth fed back through it scores perfectly, every output
is written, and a real-format root (placeholder map, missing sweeps) evaluates through the CLI."""
import json
import math
import os

import pytest

from drive.evaluation.runner import evaluate
from eval_fixtures import fast_options, write_checkpoint


@pytest.fixture(scope="module")
def oracle(synth_world, tmp_path_factory):
    out = tmp_path_factory.mktemp("oracle")
    metrics = evaluate(fast_options(synth_world, "mini_val", out, backend="gt", render_curves=True,
                                    gif_frames=3))
    return metrics, out


def test_ground_truth_scores_perfect_detection_and_tracking(oracle):
    m, _ = oracle
    det, trk = m["detection"], m["tracking"]
    assert det["NDS"] == pytest.approx(1.0, abs=1e-6) and det["mAP"] == pytest.approx(1.0, abs=1e-6)
    assert trk["amota"] == pytest.approx(1.0) and trk["ids"] == 0 and trk["fp"] == 0 and trk["fn"] == 0


def test_ground_truth_scores_perfect_motion_planning_and_map(oracle):
    m, _ = oracle
    mo = m["motion"]["model"]
    assert mo["num_agents"] > 50 and mo["minADE"] == pytest.approx(0, abs=1e-5) and mo["MR"] == 0
    assert m["motion"]["constant_velocity"]["num_agents"] == mo["num_agents"]  # same matched agents
    pl = m["planning"]
    for method in ("plan", "plan_refined", "gt_future"):
        for conv in ("per_step", "averaged"):
            for h in (1, 2, 3):
                assert pl["methods"][method][f"l2_{h}s_{conv}"] == pytest.approx(0, abs=1e-6)
                assert pl["methods"][method][f"collision_{h}s_{conv}"] == 0
        assert pl["methods"][method]["speed_mae_mps"] == pytest.approx(0, abs=1e-6)
        assert pl["methods"][method]["speed_count"] >= pl["methods"][method]["count_1s_per_step"] > 0
    # the camera-free baselines sit beside it, in both conventions, and are not perfect
    for method in ("ego_mlp", "constant_velocity", "straight_line"):
        assert pl["methods"][method]["l2_3s_per_step"] > pl["methods"][method]["l2_3s_averaged"] > 0
    assert pl["plan_change_rate"] == 0
    assert m["map"]["drivable_iou"] == pytest.approx(1.0)
    assert m["run"]["temporal_link_rate"] == pytest.approx(14 / 16)  # 2 scenes x 8 keyframes: 2 scene starts


def test_situation_breakdown_adds_up(oracle):
    pl = oracle[0]["planning"]
    counts = {s: b["count"] for s, b in pl["by_situation"].items()}
    assert sum(counts.values()) == pl["samples"] == 16
    assert pl["situation_label_counts"] == {"world": 16, "derived": 0}
    weighted = sum(b["methods"]["straight_line"]["count_1s_per_step"] for b in pl["by_situation"].values())
    assert weighted == pl["methods"]["straight_line"]["count_1s_per_step"]


def test_outputs_are_complete_and_nothing_partial_is_left(oracle):
    m, out = oracle
    names = set(os.listdir(out))
    assert {"metrics.json", "report.md", "results_nusc.json", "results_track.json", "detection", "tracking",
            "figures"} <= names
    assert not [n for n in names if n.startswith(".eval_partial_")]
    with open(out / "results_nusc.json") as f:
        assert len(json.load(f)["results"]) == 16
    figs = set(os.listdir(out / "figures"))
    assert {"det_summary.png", "pr_car.png", "ap_per_class.png", "l2_horizon.png", "case_best_1_bev.png",
            "case_worst_1_cams.png", "scene.gif"} <= figs
    report = (out / "report.md").read_text()
    for fig in ("figures/pr_car.png", "figures/l2_horizon.png", "figures/case_worst_1_bev.png"):
        assert fig in report
    assert "| model: planning head | 0.00 | 0.00 | 1.00 |" in report  # the initial-speed table, GT plans
    with open(out / "metrics.json") as f:
        saved = json.load(f)  # strict JSON (NaN written as null)
    assert saved["detection"]["NDS"] == pytest.approx(1.0)


def test_real_format_root_through_the_cli(realformat_root, tmp_path):
    """Torch backend from a hand-built checkpoint plus an ego-status checkpoint, on the real-format fixture."""
    root = realformat_root.root
    from drive.cli.eval import main

    ckpt = write_checkpoint(tmp_path / "tiny.ckpt", seed=0)
    ego = write_checkpoint(tmp_path / "ego.ckpt", seed=1, planning__use_ego_status=True)
    out = tmp_path / "out"
    main([f"ckpt_path={ckpt}", f"ego_ckpt_path={ego}", f"data.root={root}", "split=mini_train",
          "data.num_workers=0", "eval.ego_mlp_steps=50", "eval.num_cases=1", "eval.render_curves=false",
          f"hydra.run.dir={out}"])
    with open(out / "metrics.json") as f:
        m = json.load(f)
    run = m["run"]
    assert run["samples"] == 4 and run["scenes"] == 1 and run["temporal_link_rate"] == pytest.approx(3 / 4)
    from drive.evaluation.checkpoint import sha256_of

    assert run["checkpoint"]["sha256"] == sha256_of(ckpt) and run["ego_checkpoint"]["use_ego_status"] is True
    assert m["config"]["ckpt_path"] == ckpt and m["config"]["data"]["root"] == root
    assert set(m["planning"]["methods"]) == {"plan", "plan_refined", "model_ego_status", "ego_mlp",
                                             "constant_velocity", "straight_line", "gt_future"}
    assert m["planning"]["situation_label_counts"] == {"world": 0, "derived": 4}  # no drive_world.json here
    assert sum(b["count"] for b in m["planning"]["by_situation"].values()) == 4
    assert m["map"]["drivable_iou"] is None and m["map"]["valid_samples"] == 0  # placeholder map
    assert math.isfinite(m["detection"]["NDS"]) and "amota" in m["tracking"]
    assert "model with ego status" in (out / "report.md").read_text()


def test_bev_stream_links_frames_and_the_temporal_ablation_cuts_them():
    """Each frame gets the BEV of the frame just run when it is that frame's successor; ``temporal=False``
    (``eval.temporal=false``) runs every frame as a scene start."""
    from types import SimpleNamespace

    import torch

    from drive.evaluation.runner import BevStream

    class Backend:
        bev_shape = (2, 3, 3)

        def __init__(self):
            self.seen = []

        def __call__(self, batch, prev_bev, has_prev):
            self.seen.append((prev_bev.clone(), float(has_prev)))
            return SimpleNamespace(bev=torch.full((1, 2, 3, 3), float(len(self.seen))))

    def frames():  # scene A: a0 -> a1 -> a2; scene B: b0
        for tok, prev in [("a0", ""), ("a1", "a0"), ("a2", "a1"), ("b0", "")]:
            yield SimpleNamespace(meta=[SimpleNamespace(sample_token=tok, prev_token=prev)],
                                  features=SimpleNamespace(has_prev=torch.tensor(float(prev != ""))))

    for temporal, expected in [(True, [0.0, 1.0, 1.0, 0.0]), (False, [0.0] * 4)]:
        backend = Backend()
        stream = BevStream(backend, temporal)
        for batch in frames():
            stream(batch)
        assert [h for _, h in backend.seen] == expected
        assert stream.linked == int(sum(expected))
        firsts = [p.flatten()[0].item() for p, _ in backend.seen]
        assert firsts == ([0.0, 1.0, 2.0, 0.0] if temporal else [0.0] * 4)  # the BEV of the frame before
