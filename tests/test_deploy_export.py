"""Export, FP16 / INT8 variants, model card and report on the tiny model (one export per module).

Tolerances (tiny model, random weights, synthetic frames; measured values in brackets):

* fp32 ONNX vs eager: max |diff| <= 1e-4 on every output (~1e-5: float32 reordering only).
* FP16 vs fp32 graph (held-out frames): every relative L2 <= 1e-2 [<= 1.3e-3], plan after the
  feasibility layer <= 0.01 m [0.001 m], every top-10 detection found again. float16 keeps an
  11-bit mantissa (5e-4 relative per op) a few dozen ops deep; sampling coordinates stay float32.
* INT8 vs fp32 graph, on 4 held-out frames of a synthetic scene (calibration: 16 other frames):
  BEV relative L2 <= 0.04 [0.028], dense heads <= 0.06 [<= 0.041], score map max |diff| <= 0.01
  [0.0014]; of the reference's top-10 detections (same class, centre within 1 m; a BEV cell here
  is 6.4 m) >= 85% found again [97%: misses are near-ties at the top-K cut-off of an untrained
  model], every "decisive" one found (score clear of the cut-off by more than twice the largest
  score change) with mean centre error <= 0.5 m [0.025 m]; plan <= 0.25 m [0.13 m]. Why: uint8
  activations carry ~0.4% of each tensor's range per quantized op (rms ~0.1%), accumulated over
  ~10 quantized layers from image to BEV, plus clipping on frames outside the calibration ranges
  -> a few % relative error on features; detections must stay put because their coordinates stay
  float. The BEV / head bounds fail when the sampling-location path is quantized too (BEV 0.049,
  heads 0.073).
"""
from __future__ import annotations

import hashlib
import json
import os
from dataclasses import replace
from types import SimpleNamespace

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch

from drive.deploy.card import CARD_FIELDS
from drive.deploy.command import run_export
from drive.deploy.export import (FORBIDDEN_OPS, OUTPUT_NAMES, DeployError, atomic_path, default_example, export_onnx,
                                 parity, split_batch)
from drive.deploy.profile import graph_costs, stage_flops
from drive.deploy.fidelity import compare_to_reference, detection_agreement
from drive.deploy.quantize import CalibrationError, quantize_int8, temporal_inputs, to_fp16
from drive.deploy.report import ProfileSubject, run_profile
from drive.evaluation.backends import OnnxBackend
from drive.models import INPUT_NAMES
from drive.models.example_inputs import example_inputs
from drive.types import CAMERAS, CLASSES, IMAGE_MEAN, IMAGE_STD
from model_fixtures import tiny_model

torch.set_num_threads(1)


def scene_frames(model, cfg, n: int, seed: int = 100) -> list[dict]:
    """``n`` frames of one synthetic scene in order (first has no previous frame), prev_bev filled by the model."""
    frames = []
    for i in range(n):
        f = dict(zip(INPUT_NAMES, split_batch(example_inputs(2, cfg.image_hw, model.bev_shape, cfg.num_cameras, seed + i))[1]))
        f["has_prev"] = torch.tensor([0.0 if i == 0 else 1.0])
        del f["prev_bev"]
        frames.append(f)
    return list(temporal_inputs(model, frames))


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    model, cfg = tiny_model(seed=1)
    cfg = replace(cfg, image_crop_top=0.25)  # preprocessing only: recorded in the graph and the card
    model.eval()
    root = tmp_path_factory.mktemp("deploy")
    ckpt = root / "tiny.ckpt"
    torch.save(model.state_dict(), ckpt)
    calib = scene_frames(model, cfg, 16)
    held_out = scene_frames(model, cfg, 4, seed=500)  # not seen by calibration: parity / accuracy frames
    summary = run_export(lambda path: (model, cfg, {"epoch": 3, "source": "unit test"}), str(ckpt), str(root / "out"),
                         "int8", lambda: iter(calib + held_out), calib_samples=16)
    return SimpleNamespace(model=model, cfg=cfg, ckpt=str(ckpt), calib=calib, held_out=held_out, summary=summary, root=root,
                           fp32=summary["export"]["path"], int8=summary["int8"]["path"])


def test_export_is_static_default_domain_and_matches_eager(exported) -> None:
    graph = onnx.load(exported.fp32).graph
    assert {n.domain for n in graph.node} <= {"", "ai.onnx"}
    assert not {n.op_type for n in graph.node} & FORBIDDEN_OPS
    assert [i.name for i in graph.input] == list(INPUT_NAMES)
    assert [o.name for o in graph.output] == list(OUTPUT_NAMES)
    for v in [*graph.input, *graph.output]:  # static shapes, batch 1
        dims = v.type.tensor_type.shape.dim
        assert all(d.HasField("dim_value") for d in dims) and dims[0].dim_value == 1, v.name
    # the temporal state loops: prev_bev in, bev out, same shape
    shapes = {v.name: [d.dim_value for d in v.type.tensor_type.shape.dim] for v in [*graph.input, *graph.output]}
    assert shapes["prev_bev"] == shapes["bev"] == [1, *exported.model.bev_shape]
    # real frames from the export run (previous BEV from the model) plus a first frame and a synthetic one
    first_and_next = split_batch(example_inputs(2, exported.cfg.image_hw, exported.model.bev_shape, 6, seed=7))
    result = parity(exported.fp32, exported.model, first_and_next)
    assert result["_frames"] == 2
    worst = {k: v["max_abs"] for k, v in result.items() if k != "_frames"}
    assert max(worst.values()) <= 1e-4, worst
    recorded = exported.summary["parity_fp32_vs_eager"]
    assert "after the 16 used to calibrate" in exported.summary["parity_inputs"]
    assert recorded["_frames"] == 4 and max(v["max_abs"] for k, v in recorded.items() if k != "_frames") <= 1e-4


def test_int8_keeps_outputs_within_tolerance(exported) -> None:
    report = exported.summary["int8"]
    assert report["calibration"] == {"frames": 16, "asked": 16}
    assert report["quantized_nodes"].get("Conv", 0) > 0 and report["quantized_nodes"].get("Gemm", 0) > 0
    kept = report["by_op_type"]
    for op in ("Softmax", "LayerNormalization", "GridSample"):
        assert kept[op]["count"] > 0, op
    # the learned sampling-offset projections (Gemm after pre-processing) stay float, for that reason
    reasons = {(n["op_type"], n["reason"]) for n in report["nodes"]}
    assert ("Gemm", "sampling_grid") in reasons and ("MatMul", "feasibility") in reasons
    # the last learned layer before each task output stays float: the detection convs and the plan decoder
    head_out = {(n["op_type"], n["stage"]) for n in report["nodes"] if n["reason"] == "head_output"}
    assert ("Conv", "detection_head") in head_out and ("Gemm", "planning_head") in head_out, head_out
    # the view transform (it writes the BEV state fed back next frame) and the planning head stay float whole
    by_reason = {r: {n["stage"] for n in report["nodes"] if n["reason"] == r} for r in ("recurrent_state", "plan_head")}
    assert by_reason == {"recurrent_state": {"view_transform"}, "plan_head": {"planning_head"}}, by_reason
    assert report["quantized_by_stage"].get("backbone", 0) > 0, report["quantized_by_stage"]
    assert not {"view_transform", "planning_head"} & set(report["quantized_by_stage"]), report["quantized_by_stage"]
    q = onnx.load(exported.int8).graph
    assert {n.domain for n in q.node} <= {"", "ai.onnx"}
    assert {"QuantizeLinear", "DequantizeLinear"} <= {n.op_type for n in q.node}

    acc = compare_to_reference(exported.fp32, exported.int8, exported.held_out)
    assert acc["rel_l2"]["bev"] <= 0.04, acc["rel_l2"]
    assert max(acc["rel_l2"].values()) <= 0.06, acc["rel_l2"]
    assert acc["score_map_max_abs"] <= 0.01
    det = acc["detections"]
    assert det["match_rate"] >= 0.85 and det["centre_err_m"] <= 0.5, det
    # random weights give a smooth heatmap: most peaks are near-ties with a neighbour cell, few are decisive
    assert det["decisive"] >= 1 and det["decisive_match_rate"] == 1.0, det
    assert acc["plan_max_abs_m"] <= 0.25 and acc["plan_refined_max_abs_m"] <= 0.25


def test_fp16_runs_in_ort_within_tolerance(exported, tmp_path) -> None:
    path = str(tmp_path / "model_fp16.onnx")
    report = to_fp16(exported.fp32, path)
    session = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
    assert all(i.type == "tensor(float)" for i in session.get_inputs() if i.name != "command")  # float32 IO kept
    assert report["by_op_type"]["GridSample"]["count"] > 0
    graph = onnx.load(path).graph
    assert any(init.data_type == onnx.TensorProto.FLOAT16 for init in graph.initializer)
    acc = compare_to_reference(exported.fp32, path, exported.held_out)
    assert max(acc["rel_l2"].values()) <= 1e-2, acc["rel_l2"]
    assert acc["detections"]["match_rate"] == 1.0 and acc["plan_refined_max_abs_m"] <= 0.01
    assert OnnxBackend(path).image_crop_top == 0.25


def test_every_precision_records_the_image_crop(exported) -> None:
    for path in (exported.fp32, exported.int8):
        assert OnnxBackend(path).image_crop_top == 0.25, path
    for path in exported.summary["cards"].values():
        assert json.load(open(path))["image_normalisation"]["image_crop_top"] == 0.25


def test_calibration_set_smaller_than_asked_is_an_error(exported, tmp_path) -> None:
    out = tmp_path / "q.onnx"
    with pytest.raises(CalibrationError, match="asked for 20 but the source yielded only 16"):
        quantize_int8(exported.fp32, str(out), iter(exported.calib), calib_samples=20)
    assert not out.exists() and os.listdir(tmp_path) == []


def test_cli_exits_non_zero_on_short_calibration_and_unknown_target(exported, tmp_path, capsys) -> None:
    import argparse

    from drive.deploy.command import add_export_arguments, export_command
    from drive.deploy.profile_cli import add_profile_arguments, profile_command

    load = lambda path: (exported.model, exported.cfg, {})  # noqa: E731
    parser = argparse.ArgumentParser()
    add_export_arguments(parser)
    args = parser.parse_args([exported.ckpt, "--out", str(tmp_path / "x"), "--precision", "int8", "--calib-samples", "5"])
    assert export_command(args, load, lambda: iter(exported.calib[:3])) == 2
    assert "asked for 5 but the source yielded only 3" in capsys.readouterr().err
    assert not (tmp_path / "x").exists()  # failed before exporting anything; the directory it made is gone too
    parser = argparse.ArgumentParser()
    add_profile_arguments(parser)
    args = parser.parse_args([exported.fp32, "--targets", "orin-x,hal9000"])
    assert profile_command(args, load) == 2
    err = capsys.readouterr().err
    assert "hal9000" in err and "journey5" in err and "tda4vm" in err


def test_unwritable_output_dir_is_an_error_and_leaves_nothing(exported, tmp_path, monkeypatch) -> None:
    blocker = tmp_path / "not_a_dir"
    blocker.write_text("x")
    with pytest.raises(DeployError, match="not writable"):
        export_onnx(exported.model, exported.cfg, str(blocker / "sub" / "m.onnx"))
    # a write that fails half-way leaves neither the temporary nor the final file
    target = tmp_path / "out" / "m.onnx"

    class HalfWritten:
        model_proto = onnx.load(exported.fp32, load_external_data=False)

        def save(self, path):
            with open(path, "wb") as f:
                f.write(b"partial")
            raise OSError("disk full")

    monkeypatch.setattr(torch.onnx, "export", lambda *a, **k: HalfWritten())
    with pytest.raises(OSError, match="disk full"):
        export_onnx(exported.model, exported.cfg, str(target))
    assert os.listdir(target.parent) == []
    with pytest.raises(RuntimeError):
        with atomic_path(str(target)) as tmp:
            open(tmp, "w").write("half")
            raise RuntimeError("boom")
    assert os.listdir(target.parent) == []


def test_model_card_has_every_field(exported) -> None:
    cards = exported.summary["cards"]
    assert set(cards) == {"fp32", "int8"}
    for precision, path in cards.items():
        assert os.path.dirname(path) == os.path.dirname(exported.fp32)
        card = json.load(open(path))
        assert set(CARD_FIELDS) <= set(card), set(CARD_FIELDS) - set(card)
        assert card["precision"] == precision and card["cameras"] == list(CAMERAS)
        assert card["image_normalisation"]["mean"] == list(IMAGE_MEAN) and card["image_normalisation"]["std"] == list(IMAGE_STD)
        assert card["classes"] == list(CLASSES) and card["bev_grid"]["size"] == exported.cfg.bev_size
        assert [i["name"] for i in card["inputs"]] == list(INPUT_NAMES) and all(i["meaning"] for i in card["inputs"])
        assert card["source_checkpoint"]["sha256"] == hashlib.sha256(open(exported.ckpt, "rb").read()).hexdigest()
        assert card["source_checkpoint"]["meta"]["epoch"] == 3
        assert card["parity"]["figures"]
    int8 = json.load(open(cards["int8"]))
    assert int8["calibration"]["frames"] == 16 and "LayerNormalization" in int8["precision_report"]["by_op_type"]
    assert int8["precision_report"]["quantized_by_stage"].get("backbone", 0) > 0


def test_graph_flops_agree_with_torch_counter(exported) -> None:
    torch_flops = stage_flops(exported.model, default_example(exported.model, exported.cfg))["stages"]
    graph = graph_costs(onnx.load(exported.fp32))
    for stage in ("backbone", "neck", "detection_head", "map_head", "feasibility"):
        assert graph[stage]["flops"] == torch_flops[stage], stage
    # the exporter folds the BEV positional-embedding MLP (constant input) into a constant
    for stage in ("view_transform", "motion_head", "planning_head"):
        assert 0 < torch_flops[stage] - graph[stage]["flops"] <= 0.05 * torch_flops[stage] + 6e5, stage


def test_report_compares_two_models(exported, tmp_path) -> None:
    graphs = {"fp32": exported.fp32, "int8": exported.int8}
    subjects = [ProfileSubject("tiny-eager+onnx", exported.model, exported.cfg, onnx=dict(graphs)),
                ProfileSubject("tiny-onnx-only", onnx=dict(graphs))]
    accuracy = {"tiny-eager+onnx": {"fp32": {"NDS": 0.30}, "int8": {"NDS": 0.29}}}
    result = run_profile(subjects, "orin-x,tda4vm", str(tmp_path / "report"), runs=5, warmup=1, threads=1,
                         accuracy=accuracy, op_profile_runs=2)
    for name in ("profile.json", "profile.md", "stage_latency.png", "accuracy_latency.png"):
        assert (tmp_path / "report" / name).stat().st_size > 0, name
    md = (tmp_path / "report" / "profile.md").read_text()
    assert "Side by side" in md and "tiny-onnx-only" in md and "not a measurement" in md
    p = result["subjects"]["tiny-eager+onnx"]
    for variant in ("torch_eager_fp32", "ort_fp32", "ort_int8"):
        assert {"p50_ms", "p90_ms", "p99_ms"} <= set(p["latency"][variant])
    assert p["ort_ops"]["fp32"]["by_op_type"] and p["host_roofline"]["floor_ms"] > 0
    est = p["chips"]["tda4vm"]["int8"]
    assert "GridSample" in est["unsupported_ops"] and est["estimate_ms"] > 0 and est["anchored"] is None  # no anchor
    orin = p["chips"]["orin-x"]["int8"]["anchored"]  # CUDA-FastBEV's backbone: compute-bound stages scaled
    assert orin["factor"] > 1 and orin["estimate_ms"] <= orin["upper_bound_ms"]
    assert "Chip-side anchor on orin-x" in md and "orin-x int8 anchored ms" in md
    saved = json.load(open(tmp_path / "report" / "profile.json"))
    assert saved["note"].startswith("ESTIMATE") and set(saved["subjects"]) == {"tiny-eager+onnx", "tiny-onnx-only"}


def test_export_failing_after_the_fp32_graph_leaves_no_model(exported, tmp_path, monkeypatch) -> None:
    """The fp32 graph, parity and card succeed, then quantization fails: out_dir holds no graph or card."""
    import drive.deploy.quantize as quantize

    def broken(*args, **kwargs):
        raise RuntimeError("quantizer crashed")

    monkeypatch.setattr(quantize, "quantize_int8", broken)
    mine = tmp_path / "mine"  # a directory the user made stays (empty); one the export made is removed
    mine.mkdir()
    for out in (tmp_path / "out", mine):
        with pytest.raises(RuntimeError, match="quantizer crashed"):
            run_export(lambda path: (exported.model, exported.cfg, {}), exported.ckpt, str(out), "int8",
                       lambda: iter(exported.calib + exported.held_out), calib_samples=16)
    assert not (tmp_path / "out").exists() and os.listdir(mine) == []


def test_a_peak_tied_with_its_neighbour_is_not_decisive() -> None:
    """Hand case: a clear peak, a peak 0.005 (logit) above its neighbour, and the cut-off peak. The variant lets
    the neighbour overtake, so the tied detection moves one cell (2 m): it is missed but not decisive (its
    score is far above the cut-off, but not above its neighbour); the clear peak is decisive and found."""

    logits = np.full((1, 1, 5, 5), -4.0)
    logits[0, 0, 2, 2] = 3.0  # clear peak
    logits[0, 0, 0, 0], logits[0, 0, 0, 1] = 1.0, 0.995  # near-tie with its right neighbour
    logits[0, 0, 4, 4] = -1.0  # the K-th (cut-off) detection
    sig = lambda x: 1 / (1 + np.exp(-x))  # noqa: E731
    boxes = np.zeros((1, 3, 9))
    boxes[0, :, :2] = [(0.0, 0.0), (-4.0, -4.0), (4.0, 4.0)]
    ref = {"det_heatmap": logits, "boxes": boxes, "scores": sig(np.array([[3.0, 1.0, -1.0]])),
           "labels": np.zeros((1, 3), np.int64)}
    test_logits = logits.copy()
    test_logits[0, 0, 0, 1] = 1.01
    moved = boxes.copy()
    moved[0, 1, :2] = (-2.0, -4.0)
    test = {"det_heatmap": test_logits, "boxes": moved, "scores": ref["scores"], "labels": ref["labels"]}
    agreement = detection_agreement(ref, test, top_n=3, radius=1.0)
    assert agreement["match_rate"] == pytest.approx(2 / 3)
    assert agreement["decisive"] == 1 and agreement["decisive_match_rate"] == 1.0
