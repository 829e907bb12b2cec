"""Bad input to ``drive-eval``: one clear error, exit code 2, and nothing partial in the output directory."""
import json
import os
import subprocess
import sys

import pytest

from drive.cli.eval import main
from drive.evaluation.errors import EvalError
from drive.evaluation.runner import evaluate
from eval_fixtures import fast_options, tiny_hparams, write_checkpoint

RESULTS = ("metrics.json", "report.md", "results_nusc.json", "results_track.json", "detection", "tracking", "figures")


def _run_cli(args, out) -> int:
    with pytest.raises(SystemExit) as exc:
        main([*args, "data.num_workers=0", "eval.ego_mlp_steps=20", f"hydra.run.dir={out}"])
    return exc.value.code


def _assert_nothing_written(out):
    left = set(os.listdir(out)) if os.path.isdir(out) else set()
    assert not left & set(RESULTS), left
    assert not [n for n in left if n.startswith(".eval_partial_")], left


def test_checkpoint_of_another_config_names_the_first_mismatching_key(realformat_root, tmp_path, capsys):
    from drive.evaluation.checkpoint import load_model

    other = load_model(write_checkpoint(tmp_path / "c16.ckpt", embed_dim=16))[0]
    wrong = write_checkpoint(tmp_path / "wrong.ckpt", hparams=tiny_hparams(), model=other)
    out = tmp_path / "out"
    code = _run_cli([f"ckpt_path={wrong}", f"data.root={realformat_root.root}", "split=mini_train"], out)
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2
    assert len(err) == 1 and err[0].startswith("drive-eval: error: ") and "wrong.ckpt" in err[0]
    expected = load_model(write_checkpoint(tmp_path / "c32.ckpt"))[0].state_dict()
    first = next(k for k, v in expected.items() if other.state_dict()[k].shape != v.shape)
    assert f"key {first!r} has shape" in err[0]  # the first key, in the model's order, whose shape differs
    _assert_nothing_written(out)


def test_unknown_and_empty_splits(fresh_realformat_root, tmp_path, capsys):
    root = fresh_realformat_root.root
    ckpt = write_checkpoint(tmp_path / "t.ckpt")
    assert _run_cli([f"ckpt_path={ckpt}", f"data.root={root}", "split=nope"], tmp_path / "a") == 2
    assert "unknown split 'nope'" in capsys.readouterr().err
    _assert_nothing_written(tmp_path / "a")
    with open(os.path.join(root, "v1.0-mini", "splits.json"), "w") as f:
        json.dump({"empty": [], "ghost": ["scene-9999"]}, f)
    for split in ("empty", "ghost"):
        assert _run_cli([f"ckpt_path={ckpt}", f"data.root={root}", f"split={split}"], tmp_path / split) == 2
        assert f"split {split!r} lists" in capsys.readouterr().err
        _assert_nothing_written(tmp_path / split)


def test_results_file_missing_samples(realformat_root, tmp_path, capsys):
    sub = tmp_path / "sub.json"
    tokens = realformat_root.sample_tokens
    sub.write_text(json.dumps({"meta": {"use_camera": True}, "results": {t: [] for t in tokens[:-1]}}))
    out = tmp_path / "out"
    assert _run_cli([f"results_path={sub}", f"data.root={realformat_root.root}", "split=mini_train"], out) == 2
    err = capsys.readouterr().err
    assert "misses 1 of the 4 samples of split 'mini_train'" in err and tokens[-1] in err
    _assert_nothing_written(out)
    # complete: detection + tracking of the submission only; without a single box the devkit is not run
    sub.write_text(json.dumps({"meta": {"use_camera": True}, "results": {t: [] for t in tokens}}))
    m = evaluate(fast_options(realformat_root.root, "mini_train", tmp_path / "ok", results_path=str(sub)))
    assert m["detection"] == {"mAP": 0.0, "NDS": 0.0, "empty": True} and m["tracking"]["amota"] == 0
    assert m["run"]["backend"] == "submission" and "planning" not in m
    box = {"sample_token": tokens[0], "translation": [0, 0, 0], "size": [2, 4, 1.5], "rotation": [1, 0, 0, 0],
           "velocity": [0, 0], "detection_name": "car", "detection_score": 0.9, "attribute_name": "vehicle.parked"}
    sub.write_text(json.dumps({"meta": {"use_camera": True},
                               "results": {t: [box] if t == tokens[0] else [] for t in tokens}}))
    m = evaluate(fast_options(realformat_root.root, "mini_train", tmp_path / "ok", results_path=str(sub)))
    assert m["detection"]["mAP"] == 0 and "mATE" in m["detection"] and "amota" in m["tracking"]
    assert os.path.isfile(tmp_path / "ok" / "report.md") and os.path.isfile(tmp_path / "ok" / "results_track.json")


def test_missing_options_and_files(realformat_root, tmp_path, capsys):
    root = realformat_root.root
    assert _run_cli([f"data.root={root}", "split=mini_train"], tmp_path / "a") == 2
    assert "ckpt_path is required" in capsys.readouterr().err
    assert _run_cli([f"ckpt_path={tmp_path}/none.ckpt", f"data.root={root}", "split=mini_train"], tmp_path / "b") == 2
    assert "checkpoint not found" in capsys.readouterr().err
    assert _run_cli(["backend=onnx", f"data.root={root}", "split=mini_train"], tmp_path / "c") == 2
    assert "backend=onnx needs onnx_path" in capsys.readouterr().err
    assert _run_cli(["backend=gt", f"data.root={tmp_path}/nowhere", "split=mini_train"], tmp_path / "d") == 2
    assert "nuScenes root not found" in capsys.readouterr().err
    for d in "abcd":
        _assert_nothing_written(tmp_path / d)


def test_a_late_failure_leaves_no_partial_results(realformat_root, tmp_path, monkeypatch):
    import drive.evaluation.report as report

    def broken(*args, **kwargs):
        raise EvalError("report failed")

    monkeypatch.setattr(report, "write_report", broken)
    out = tmp_path / "out"
    os.makedirs(out)
    (out / "metrics.json").write_text("{}")  # an older run's file stays untouched
    with pytest.raises(EvalError, match="report failed"):
        evaluate(fast_options(realformat_root.root, "mini_train", out, backend="gt"))
    assert sorted(os.listdir(out)) == ["metrics.json"] and (out / "metrics.json").read_text() == "{}"


def test_console_script_exit_code(tmp_path):
    exe = os.path.join(os.path.dirname(sys.executable), "drive-eval")
    proc = subprocess.run([exe, f"ckpt_path={tmp_path}/missing.ckpt", f"hydra.run.dir={tmp_path}/out"],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines()[-1].startswith("drive-eval: error: checkpoint not found")
