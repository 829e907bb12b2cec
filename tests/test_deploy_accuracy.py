"""Task-level accuracy per precision: the deltas and goals of drive.deploy.accuracy, and drive profile's --eval."""
import json

import pytest

from drive.deploy.accuracy import accuracy_deltas
from drive.deploy.export import DeployError
from drive.deploy.profile_cli import eval_accuracy
from drive.evaluation.errors import EvalError
from drive.evaluation.summary import load_eval_summary


def _metrics(nds: float, l2: float) -> dict:
    return {"detection": {"NDS": nds, "mAP": nds / 2}, "map": {"drivable_iou": 0.7},
            "motion": {"model": {"minADE": 2.0, "minFDE": 3.0}},
            "planning": {"methods": {"plan_refined": {"l2_avg_averaged": l2, "l2_avg_per_step": 2 * l2,
                                                     "collision_avg_averaged": 0.01},
                                     "plan": {"l2_avg_averaged": 99.0}}},
            "run": {"inference_s_per_frame": 0.2}}


def test_summary_reads_the_refined_plan_and_the_headline_figures(tmp_path):
    (tmp_path / "metrics.json").write_text(json.dumps(_metrics(0.3, 1.25)))
    s = load_eval_summary(tmp_path)
    assert s == {"NDS": 0.3, "mAP": 0.15, "minADE": 2.0, "minFDE": 3.0, "map_iou": 0.7, "plan_l2_avg_averaged": 1.25,
                 "plan_l2_avg_per_step": 2.5, "collision_avg_averaged": 0.01, "inference_s_per_frame": 0.2}
    with pytest.raises(EvalError, match="nope"):
        load_eval_summary(tmp_path / "nope")


def test_deltas_are_checked_against_the_goal_of_each_precision():
    results = {"torch": {"NDS": 0.3000, "plan_l2_avg_averaged": 1.000, "mAP": 0.2},
               "fp32": {"NDS": 0.3004, "plan_l2_avg_averaged": 1.0008, "mAP": 0.2},
               "int8": {"NDS": 0.2940, "plan_l2_avg_averaged": 1.0100, "mAP": None}}
    d = accuracy_deltas(results)
    assert set(d) == {"fp32", "int8"}  # no fp16 run -> no row
    assert d["fp32"]["reference"] == "torch" and d["fp32"]["meets_goal"]
    assert d["fp32"]["delta"]["NDS"] == pytest.approx(0.0004)
    assert d["int8"]["reference"] == "fp32"
    assert d["int8"]["delta"]["NDS"] == pytest.approx(-0.0064)  # beyond 0.005
    assert d["int8"]["delta"]["plan_l2_avg_averaged"] == pytest.approx(0.0092)  # within 0.02
    assert "mAP" not in d["int8"]["delta"] and not d["int8"]["meets_goal"]
    results["int8"]["NDS"] = 0.2990
    assert accuracy_deltas(results)["int8"]["meets_goal"]


def test_profile_eval_arguments(tmp_path):
    (tmp_path / "a").mkdir()
    (tmp_path / "a" / "metrics.json").write_text(json.dumps(_metrics(0.3, 1.0)))
    (tmp_path / "b.json").write_text(json.dumps(_metrics(0.28, 1.1)))
    acc = eval_accuracy([f"fp32={tmp_path / 'a'}", f"cloud:int8={tmp_path / 'b.json'}"], ["edge", "cloud"])
    assert acc["edge"]["fp32"]["NDS"] == 0.3 and acc["cloud"]["int8"]["plan_l2_avg_averaged"] == 1.1
    for bad, why in [(f"int4={tmp_path / 'a'}", "PREC fp32, fp16 or int8"), ("fp32", "expected"),
                     (f"other:fp32={tmp_path / 'a'}", "no profiled model"), (f"fp32={tmp_path / 'c'}", "metrics.json")]:
        with pytest.raises(DeployError, match=why):
            eval_accuracy([bad], ["edge", "cloud"])


@pytest.mark.slow
def test_bench_deploy_with_a_checkpoint_scores_every_precision_through_drive_eval(synth_world, tmp_path):
    """scripts/bench_deploy.py --ckpt: export, int8 calibrated on the run's train split, drive-eval of eager /
    fp32 / int8 on its val split, deltas against the goals, and the accuracy-vs-latency plot."""
    import os
    import subprocess
    import sys

    from eval_fixtures import ROOT, tiny_hparams, write_checkpoint

    hparams = {**tiny_hparams(), "data": {"root": synth_world, "version": "v1.0-mini", "train_split": "mini_train",
                                          "val_split": "mini_val"}}
    ckpt = write_checkpoint(tmp_path / "tiny.ckpt", hparams=hparams)
    report = tmp_path / "report"
    proc = subprocess.run([sys.executable, "scripts/bench_deploy.py", "--ckpt", ckpt, "--calib", "4", "--runs", "3",
                           "--warmup", "1", "--threads", "1", "--report", str(report), "--no-record"],
                          cwd=ROOT, env=dict(os.environ, OMP_NUM_THREADS="1"), capture_output=True, text=True,
                          timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    for line in ("drive-eval mini_val torch", "drive-eval mini_val fp32", "drive-eval mini_val int8",
                 "fp32 vs torch:", "int8 vs fp32:"):
        assert line in proc.stdout, proc.stdout[-3000:]
    fp32_line = next(ln for ln in proc.stdout.splitlines() if ln.startswith("fp32 vs torch:"))
    assert "met: True" in fp32_line  # the fp32 graph scores what eager scores
    assert (report / "accuracy_latency.png").stat().st_size > 0
    profile = json.loads((report / "profile.json").read_text())
    assert set(profile["accuracy"]["edge"]) == {"fp32", "int8"}
