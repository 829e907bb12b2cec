"""Chip catalogue, roofline estimator and FLOP counting on hand-computed cases (no export: fast)."""
from __future__ import annotations

import numpy as np
import onnx
import pytest
import torch
from onnx import TensorProto, helper, numpy_helper
from torch import nn

from drive.deploy.chips import (ESTIMATE_NOTE, UnknownTargetError, anchor_check, estimate, estimate_targets, get_targets,
                                host_corrections, load_catalogue, roofline_ms)
from drive.deploy.export import DeployError
from drive.deploy.profile import count_flops, graph_costs, latency_stats, reset_peak_rss, rss_mb

REQUESTED = {"orin-x", "orin-n", "thor", "journey5", "journey6", "tda4vm", "sa8650p", "ax650n", "a1000"}

MADE_UP = """
defaults:
  efficiency: {compute: 0.5, memory: 0.5}
chips:
  toy:
    name: Toy NPU
    vendor: nobody
    int8_tops: 10.0
    fp16_tflops: 5.0
    mem_bw_gbs: 100.0
    memory_gb: 1
    power_w: 10
    sources: {int8_tops: made up}
    unsupported_ops: {GridSample: "no sampler"}
    restricted_ops: {TopK: "k <= 64"}
    anchor: {what: "ResNet-18 at 224", input: [1, 3, 224, 224], published_ms: 7.26, source: made up}
"""


def test_torch_flops_match_hand_count() -> None:
    # Conv2d(3 -> 8, 3x3, pad 1) on 1x3x16x16: 2 * Cout * H * W * Cin * k * k (bias not counted)
    conv = nn.Conv2d(3, 8, 3, padding=1)
    assert count_flops(conv, torch.randn(1, 3, 16, 16))["total"] == 2 * 8 * 16 * 16 * 3 * 3 * 3 == 110_592
    # Linear(16 -> 32) on 4 rows: 2 * M * K * N
    lin = nn.Linear(16, 32)
    assert count_flops(lin, torch.randn(4, 16))["total"] == 2 * 4 * 16 * 32 == 4_096


def _toy_graph() -> onnx.ModelProto:
    """x(1,3,16,16) -Conv 8x3x3x3-> (1,8,16,16) -Reshape-> (1,8,256) -MatMul W(256,10)-> (1,8,10) -Gemm-> ..."""
    w_conv = numpy_helper.from_array(np.zeros((8, 3, 3, 3), np.float32), "w_conv")
    shape = numpy_helper.from_array(np.array([8, 256], np.int64), "shape")
    w_mm = numpy_helper.from_array(np.zeros((256, 10), np.float32), "w_mm")
    w_gemm = numpy_helper.from_array(np.zeros((10, 4), np.float32), "w_gemm")
    nodes = [helper.make_node("Conv", ["x", "w_conv"], ["c"], name="conv", pads=[1, 1, 1, 1]),
             helper.make_node("Reshape", ["c", "shape"], ["r"], name="reshape"),
             helper.make_node("MatMul", ["r", "w_mm"], ["m"], name="matmul"),
             helper.make_node("Gemm", ["m", "w_gemm"], ["y"], name="gemm")]
    graph = helper.make_graph(nodes, "toy", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 16, 16])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [8, 4])],
                              [w_conv, shape, w_mm, w_gemm])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])


def test_onnx_flops_and_bytes_match_hand_count() -> None:
    model = _toy_graph()
    costs = graph_costs(model, "fp32")["other"]  # no scope metadata: everything is stage 'other'
    conv, mm, gemm = 2 * 8 * 16 * 16 * 27, 2 * 8 * 256 * 10, 2 * 8 * 10 * 4
    assert costs["flops"] == conv + mm + gemm
    weights = (8 * 27 + 2 + 256 * 10 + 10 * 4) * 4  # the int64 shape counted at the precision's width too
    assert costs["weight_bytes"] == weights
    # heavy ops read their activation inputs and write their outputs; Reshape is assumed fused (0 bytes)
    acts = (3 * 256 + 8 * 256) + (8 * 256 + 8 * 10) + (8 * 10 + 8 * 4)
    assert costs["act_bytes"] == acts * 4
    int8 = graph_costs(model, "int8", float_nodes=["gemm"])["other"]
    # int8: quantized ops move 1 byte per element, nodes kept float 2 bytes (fp16 on a chip)
    assert int8["flops_float"] == gemm
    assert int8["act_bytes"] == (3 * 256 + 8 * 256) + (8 * 256 + 8 * 10) + 2 * (8 * 10 + 8 * 4)


def test_roofline_estimate_matches_hand_computation(tmp_path) -> None:
    path = tmp_path / "chips.yaml"
    path.write_text(MADE_UP)
    chip = load_catalogue(str(path))["toy"]
    costs = {
        # compute bound: 1e9 int8 FLOPs / (10e12 * 0.5) = 0.2 ms plus 1e9 float FLOPs / (5e12 * 0.5) = 0.4 ms
        "backbone": {"flops": 2e9, "flops_float": 1e9, "bytes": 1e7, "weight_bytes": 4e6},
        # memory bound: 1e9 B / (100e9 * 0.5) = 20 ms, x3 host correction = 60 ms
        "view_transform": {"flops": 1e8, "flops_float": 0.0, "bytes": 1e9, "weight_bytes": 1e6},
    }
    est = estimate(costs, chip, "int8", corrections={"view_transform": 3.0}, graph_ops={"Conv", "GridSample", "TopK"})
    bb, vt = est["stages"]["backbone"], est["stages"]["view_transform"]
    assert bb["compute_ms"] == pytest.approx(0.6) and bb["memory_ms"] == pytest.approx(0.2) and bb["bound"] == "compute"
    assert vt["memory_ms"] == pytest.approx(20.0) and vt["bound"] == "memory" and vt["estimate_ms"] == pytest.approx(60.0)
    assert est["estimate_ms"] == pytest.approx(60.6) and est["roofline_ms"] == pytest.approx(20.6)
    assert est["fps"] == pytest.approx(1000 / 60.6)
    assert est["energy_mj_per_frame"] == pytest.approx(10 * 60.6)
    assert est["meets_10hz"] and not est["meets_20hz"]
    assert est["unsupported_ops"] == {"GridSample": "no sampler"} and est["restricted_ops"] == {"TopK": "k <= 64"}
    assert est["note"] == ESTIMATE_NOTE and "not a measurement" in est["note"]
    assert roofline_ms(2e9, 1e7, 10e12, 100.0, 0.5, 0.5)["ms"] == pytest.approx(0.4)


def test_anchored_estimate_matches_hand_computation(tmp_path) -> None:
    path = tmp_path / "chips.yaml"
    path.write_text(MADE_UP)
    chip = load_catalogue(str(path))["toy"]
    # ResNet-18 without its classifier at 224 x 224: 1.81 GMAC = 3.63 GFLOP (the published count, minus the fc layer)
    a = anchor_check(chip)
    assert a["gflop"] == pytest.approx(3.63, rel=0.01) and a["bound"] == "compute"
    # compute bound on the toy chip: 3.63e9 / (10e12 * 0.5) = 0.726 ms -> published 7.26 ms is ~10x the estimate
    assert a["estimate_ms"] == pytest.approx(a["gflop"] * 1e9 / 5e12 * 1e3)
    assert a["published_over_estimate"] == pytest.approx(7.26 / a["estimate_ms"]) and 9.8 < a["published_over_estimate"] < 10.2
    costs = {"backbone": {"flops": 2e9, "flops_float": 1e9, "bytes": 1e7, "weight_bytes": 4e6},  # compute bound, 0.6 ms
             "view_transform": {"flops": 1e8, "flops_float": 0.0, "bytes": 1e9, "weight_bytes": 1e6}}  # memory, 60 ms
    est = estimate(costs, chip, "int8", corrections={"view_transform": 3.0}, anchor={"published_over_estimate": 4.0})
    an = est["anchored"]
    assert an["stages"] == {"backbone": pytest.approx(2.4), "view_transform": pytest.approx(60.0)}
    assert an["estimate_ms"] == pytest.approx(62.4) and an["upper_bound_ms"] == pytest.approx(4 * 60.6)
    assert an["meets_10hz"] and not an["meets_20hz"] and est["estimate_ms"] == pytest.approx(60.6)
    assert estimate(costs, chip, "int8")["anchored"] is None
    # estimate_targets anchors INT8 only (the published figures are INT8), with the host's backbone correction
    both = estimate_targets({"int8": costs, "fp16": costs}, [chip], corrections={"backbone": 2.0})["toy"]
    assert both["fp16"]["anchored"] is None
    assert both["int8"]["anchored"]["factor"] == pytest.approx(a["published_over_estimate"] / 2.0)
    bad = tmp_path / "bad.yaml"
    bad.write_text(MADE_UP.replace("published_ms: 7.26, ", ""))
    with pytest.raises(DeployError, match=r"chips.toy.anchor"):
        load_catalogue(str(bad))


def test_unknown_target_lists_the_catalogue() -> None:
    with pytest.raises(UnknownTargetError) as err:
        get_targets("orin-x,warp-drive")
    msg = str(err.value)
    assert "warp-drive" in msg and all(k in msg for k in REQUESTED)


def test_catalogue_has_every_requested_chip_with_sources() -> None:
    cat = load_catalogue()
    assert REQUESTED <= set(cat)
    for chip in cat.values():
        assert chip.int8_tops > 0 and chip.mem_bw_gbs > 0
        assert {"int8_tops", "mem_bw_gbs"} <= set(chip.sources), chip.key
    assert "GridSample" in cat["tda4vm"].unsupported_ops
    assert cat["orin-x"].anchor["published_ms"] == 13.9 and cat["orin-x"].anchor["input"] == [6, 3, 256, 704]


def test_host_corrections_and_latency_stats() -> None:
    roof = {"stages": {"a": {"measured_over_floor": 3.5}, "b": {"measured_over_floor": 0.5}, "c": {"measured_over_floor": None}}}
    assert host_corrections(roof) == {"a": 3.5, "b": 1.0, "c": 1.0}
    s = latency_stats([0.001 * i for i in range(1, 101)])
    assert s["p50_ms"] == pytest.approx(50.5) and s["p99_ms"] == pytest.approx(99.01) and s["runs"] == 100
    reset_peak_rss()
    m = rss_mb()
    assert m["peak_mb"] >= m["current_mb"] > 0


def test_profile_subject_names_are_distinct() -> None:
    from drive.deploy.export import DeployError
    from drive.deploy.profile_cli import subject_names
    from drive.deploy.report import ProfileSubject, run_profile

    # two runs' last.ckpt: named by their run directories, not both "last" (one would overwrite the other)
    assert subject_names(["out/edge30/checkpoints/last.ckpt", "out/cloud/checkpoints/last.ckpt"]) == \
        ["edge30/last", "cloud/last"]
    assert subject_names(["exp/model_fp32.onnx", "run/checkpoints/last.ckpt"]) == ["model_fp32", "last"]
    assert subject_names(["x/a/last.ckpt", "y/a/last.ckpt"]) == ["x/a/last", "y/a/last"]
    with pytest.raises(DeployError, match="the same model is given twice"):
        subject_names(["a/last.ckpt", "a/last.ckpt"])
    with pytest.raises(DeployError, match="distinct names"):
        run_profile([ProfileSubject("m", onnx={"fp32": "a.onnx"}), ProfileSubject("m", onnx={"fp32": "b.onnx"})],
                    "orin-x", None)
