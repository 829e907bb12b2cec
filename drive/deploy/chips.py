"""Edge chip catalogue and a per-stage roofline latency estimator.

ESTIMATES, NOT MEASUREMENTS. No chip in the catalogue was available; every chip figure below is
arithmetic on public (partly uncertain) datasheet / press numbers and on this host's measurements.

Model, per stage ``s`` of the graph (``drive.deploy.profile.graph_costs``):

    compute_s = FLOPs_int8 / (INT8 peak x eff_c) + FLOPs_float / (FP16 peak x eff_c)
    memory_s  = bytes / (bandwidth x eff_m)
    roofline_s = max(compute_s, memory_s)
    estimate_s = roofline_s x correction_s

* ``eff_c``, ``eff_m``: attainable / peak on the chip (``configs/deploy/chips.yaml``), the chip-side
  analogue of the host's matmul probe and measured bandwidth.
* ``correction_s`` is calibrated on the host: the same roofline for this CPU (probe GFLOP/s and
  its memory bandwidth, efficiency 1 because both are attainable figures) against the measured
  per-stage onnxruntime kernel time gives ``measured / floor`` per stage (>= 1). It captures how far
  a stage's op mix (gathers in GridSample, many tiny element-wise ops in the feasibility layer,
  per-op overheads) sits from the roofline, and is carried to the chip on the assumption that the
  mix hurts there as much as here: optimistic for chips without a fast gather path, pessimistic
  where a compiler fuses what onnxruntime runs op by op. Both ``roofline_ms`` and ``estimate_ms``
  are reported.
* ``bytes``: weights at the storage precision + activations read and written by the heavy ops
  (element-wise / shape ops assumed fused). In int8, nodes kept in float are costed at fp16.
* Chips without an FP16 figure cost float work at INT8 peak / 4 (assumption, flagged).
* Energy per frame = power envelope (upper end) x estimated latency: an upper bound.
* Chip-side anchor (chips with a published per-stage figure, e.g. Orin X: CUDA-FastBEV's ResNet-18 backbone,
  13.9 ms INT8): the same estimator run on that published network gives ``published / estimate``, how far the
  chip's toolchain sits below the assumed compute efficiency on dense conv work. ``anchored.estimate_ms``
  multiplies the compute-bound stages by it and leaves memory-bound stages at their host-calibrated figure
  (a conv backbone says nothing about gathers, whose host correction is already in); ``anchored.upper_bound_ms``
  multiplies every stage (assumes the memory-bound stages fall as far short too). Both are printed.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any, Iterable, Mapping, Optional, Sequence

import yaml

from drive.deploy.export import STAGES, DeployError

ESTIMATE_NOTE = ("ESTIMATE, not a measurement: roofline arithmetic on public chip figures (some uncertain) "
                 "calibrated on this host's measurements")
CATALOGUE_PATH = os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))),
                              "configs", "deploy", "chips.yaml")


class UnknownTargetError(DeployError):
    """A target name that is not in the catalogue."""


@dataclass(frozen=True)
class Chip:
    key: str
    name: str
    vendor: str
    toolchain: str
    int8_tops: float
    fp16_tflops: Optional[float]
    mem_bw_gbs: float
    memory_gb: float
    power_w: Optional[float]
    efficiency_compute: float = 0.4
    efficiency_memory: float = 0.7
    sources: dict = field(default_factory=dict)
    uncertain: tuple = ()
    unsupported_ops: dict = field(default_factory=dict)
    restricted_ops: dict = field(default_factory=dict)
    notes: str = ""
    anchor: Optional[dict] = None  # {what, input: [N, 3, H, W], published_ms, source}: a ResNet-18 backbone figure

    def peak_flops(self, precision: str) -> tuple[float, Optional[str]]:
        """Peak ops/s at ``precision`` and the assumption used, if any."""
        if precision == "int8":
            return self.int8_tops * 1e12, None
        if precision == "fp16":
            if self.fp16_tflops:
                return self.fp16_tflops * 1e12, None
            return self.int8_tops * 1e12 / 4, f"{self.key}: no FP16 figure, float work costed at INT8 peak / 4"
        if precision == "fp32":
            base = self.fp16_tflops * 1e12 if self.fp16_tflops else self.int8_tops * 1e12 / 4
            return base / 2, f"{self.key}: fp32 costed at FP16 peak / 2 (not a deployment precision on this chip)"
        raise DeployError(f"unknown precision {precision!r}")


def load_catalogue(path: Optional[str] = None) -> dict[str, Chip]:
    """Chips by key from ``configs/deploy/chips.yaml`` (or ``path``)."""
    path = path or CATALOGUE_PATH
    with open(path) as f:
        raw = yaml.safe_load(f)
    eff = raw.get("defaults", {}).get("efficiency", {})
    chips = {}
    for key, c in raw["chips"].items():
        ce = c.get("efficiency", {})
        chips[key] = Chip(key=key, name=c["name"], vendor=c["vendor"], toolchain=c.get("toolchain", ""),
                          int8_tops=float(c["int8_tops"]), fp16_tflops=c.get("fp16_tflops"),
                          mem_bw_gbs=float(c["mem_bw_gbs"]), memory_gb=float(c["memory_gb"]), power_w=c.get("power_w"),
                          efficiency_compute=float(ce.get("compute", eff.get("compute", 0.4))),
                          efficiency_memory=float(ce.get("memory", eff.get("memory", 0.7))),
                          sources=dict(c.get("sources", {})), uncertain=tuple(c.get("uncertain", ())),
                          unsupported_ops=dict(c.get("unsupported_ops") or {}),
                          restricted_ops=dict(c.get("restricted_ops") or {}), notes=c.get("notes", ""),
                          anchor=_anchor(key, c.get("anchor"), path))
    return chips


def _anchor(key: str, raw: Optional[Mapping[str, Any]], path: str) -> Optional[dict]:
    if raw is None:
        return None
    try:
        shape = [int(v) for v in raw["input"]]
        out = {"what": str(raw["what"]), "input": shape, "published_ms": float(raw["published_ms"]),
               "source": str(raw["source"])}
    except (KeyError, TypeError, ValueError) as e:
        raise DeployError(f"{path}: chips.{key}.anchor needs what, input [N, 3, H, W], published_ms, source ({e!r})") from e
    if len(shape) != 4 or shape[1] != 3 or out["published_ms"] <= 0:
        raise DeployError(f"{path}: chips.{key}.anchor: input must be [N, 3, H, W] and published_ms > 0")
    return out


def get_targets(names: Iterable[str] | str, catalogue: Optional[Mapping[str, Chip]] = None) -> list[Chip]:
    """Chips for target names (a list or a comma-separated string); ``UnknownTargetError`` listing the catalogue."""
    catalogue = catalogue if catalogue is not None else load_catalogue()
    if isinstance(names, str):
        names = [n for n in names.split(",") if n.strip()]
    names = [n.strip().lower() for n in names]
    unknown = [n for n in names if n not in catalogue]
    if unknown:
        raise UnknownTargetError(f"unknown target(s) {unknown}; the catalogue has: {', '.join(sorted(catalogue))}")
    return [catalogue[n] for n in names]


def roofline_ms(flops: float, bytes_: float, peak_flops: float, bandwidth_gbs: float, eff_compute: float = 1.0,
                eff_memory: float = 1.0) -> dict[str, Any]:
    """``max(flops / (peak x eff_c), bytes / (bw x eff_m))`` in ms, with both terms and the bound."""
    t_c = flops / (peak_flops * eff_compute) * 1e3
    t_m = bytes_ / (bandwidth_gbs * 1e9 * eff_memory) * 1e3
    return {"compute_ms": t_c, "memory_ms": t_m, "ms": max(t_c, t_m), "bound": "compute" if t_c >= t_m else "memory"}


def host_corrections(host_roofline: Mapping[str, Any]) -> dict[str, float]:
    """Per stage ``max(1, measured / floor)`` from ``profile.host_roofline`` (1 where unmeasured)."""
    out = {}
    for stage, s in host_roofline["stages"].items():
        r = s.get("measured_over_floor")
        out[stage] = max(1.0, float(r)) if r else 1.0
    return out


def estimate(costs: Mapping[str, Mapping[str, float]], chip: Chip, precision: str = "int8",
             corrections: Optional[Mapping[str, float]] = None, graph_ops: Iterable[str] = (),
             footprint_bytes: Optional[float] = None, anchor: Optional[Mapping[str, Any]] = None) -> dict[str, Any]:
    """Estimated latency of one graph on one chip, per stage and in total (see the module notes).

    Args:
        costs: per stage ``flops``, ``flops_float``, ``bytes``, ``weight_bytes`` at ``precision``.
        corrections: per-stage host correction factors (``host_corrections``); None -> 1.
        graph_ops: op types of the graph, to flag what the chip's toolchain may not support.
        footprint_bytes: weights + activations (no buffer reuse: an upper bound) for the memory fit.
        anchor: the chip's ``anchor_check`` (its ``published_over_estimate`` is the factor); adds the ``anchored``
            block (compute-bound stages x factor; the all-stages upper bound).
    """
    corrections = corrections or {}
    assumptions = []
    peak, note = chip.peak_flops(precision)
    peak_float, note_f = chip.peak_flops("fp16") if precision == "int8" else (peak, None)
    for n in (note, note_f):
        if n:
            assumptions.append(n)
    stages = {}
    for stage in sorted(costs, key=lambda s: STAGES.index(s) if s in STAGES else 99):
        c = costs[stage]
        f_float = c.get("flops_float", 0.0) if precision == "int8" else 0.0
        f_main = c["flops"] - f_float
        t_c = (f_main / (peak * chip.efficiency_compute) + f_float / (peak_float * chip.efficiency_compute)) * 1e3
        t_m = c["bytes"] / (chip.mem_bw_gbs * 1e9 * chip.efficiency_memory) * 1e3
        roof = max(t_c, t_m)
        corr = float(corrections.get(stage, 1.0))
        stages[stage] = {"compute_ms": t_c, "memory_ms": t_m, "roofline_ms": roof,
                         "bound": "compute" if t_c >= t_m else "memory", "correction": corr, "estimate_ms": roof * corr}
    total = sum(s["estimate_ms"] for s in stages.values())
    roof_total = sum(s["roofline_ms"] for s in stages.values())
    ops = set(graph_ops)
    weights = sum(c.get("weight_bytes", 0.0) for c in costs.values())
    need = footprint_bytes if footprint_bytes is not None else weights
    memory = {"weights_mb": weights / 2**20, "footprint_upper_bound_mb": need / 2**20,
              "chip_memory_gb": chip.memory_gb, "fits": need < 0.25 * chip.memory_gb * 2**30,
              "rule": "fits if weights + all activations (no reuse) < 25% of the chip's DRAM"}
    anchored = None
    if anchor is not None:
        factor = float(anchor["published_over_estimate"])
        per = {k: v["estimate_ms"] * (factor if v["bound"] == "compute" else 1.0) for k, v in stages.items()}
        a_total = sum(per.values())
        anchored = {"factor": factor, "anchor": dict(anchor), "stages": per,
                    "estimate_ms": a_total, "fps": 1e3 / a_total if a_total > 0 else float("inf"),
                    "meets_10hz": a_total <= 100.0, "meets_20hz": a_total <= 50.0,
                    "upper_bound_ms": total * factor,
                    "rule": "compute-bound stages x factor, memory-bound stages as estimated; upper bound: all x factor"}
    return {
        "target": chip.key, "chip": chip.name, "precision": precision, "note": ESTIMATE_NOTE,
        "stages": stages, "estimate_ms": total, "roofline_ms": roof_total, "anchored": anchored,
        "fps": 1e3 / total if total > 0 else float("inf"),
        "energy_mj_per_frame": chip.power_w * total if chip.power_w else None,
        "meets_10hz": total <= 100.0, "meets_20hz": total <= 50.0, "memory": memory,
        "unsupported_ops": {op: chip.unsupported_ops[op] for op in sorted(ops & set(chip.unsupported_ops))},
        "restricted_ops": {op: chip.restricted_ops[op] for op in sorted(ops & set(chip.restricted_ops))},
        "uncertain_figures": list(chip.uncertain),
        "assumptions": assumptions + [
            f"efficiency compute {chip.efficiency_compute}, memory {chip.efficiency_memory} (attainable / peak)",
            "per-stage correction = host measured / host roofline floor (>= 1)",
            "energy = power envelope upper end x latency (upper bound)"],
        "figures": {"int8_tops": chip.int8_tops, "fp16_tflops": chip.fp16_tflops, "mem_bw_gbs": chip.mem_bw_gbs,
                    "power_w": chip.power_w, "sources": chip.sources},
    }


def estimate_targets(costs_by_precision: Mapping[str, Mapping[str, Mapping[str, float]]], targets: Sequence[Chip],
                     corrections: Optional[Mapping[str, float]] = None, graph_ops: Iterable[str] = (),
                     footprint_by_precision: Optional[Mapping[str, float]] = None,
                     precisions: Sequence[str] = ("int8", "fp16")) -> dict[str, dict[str, Any]]:
    """``{target: {precision: estimate}}``; fp16 is skipped on chips without an FP16 datapath. INT8 estimates on a
    chip with a published anchor carry the ``anchored`` figures (the anchors are INT8 measurements)."""
    out: dict[str, dict[str, Any]] = {}
    ops = list(graph_ops)
    for chip in targets:
        out[chip.key] = {}
        for p in precisions:
            if p == "fp16" and not chip.fp16_tflops:
                continue
            fp = (footprint_by_precision or {}).get(p)
            anchor = None
            if p == "int8" and chip.anchor:
                anchor = anchor_check(chip, (corrections or {}).get("backbone", 1.0))
            out[chip.key][p] = estimate(costs_by_precision[p], chip, p, corrections, ops, fp, anchor=anchor)
    return out


def anchor_check(chip: Chip, correction: float = 1.0) -> dict[str, Any]:
    """The estimator on the chip's anchor network against its published figure: a ResNet-18 (width 64) backbone
    on ``anchor.input`` images, INT8, with the host's backbone correction (Orin X: CUDA-FastBEV's 13.9 ms
    backbone on AGX Orin, ANCHORS.md). FLOPs and conv activations are counted on the meta device (no compute)."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    from drive.models.backbone import ResNetBackbone

    if not chip.anchor:
        raise DeployError(f"{chip.key}: no published anchor in the catalogue")
    with torch.device("meta"):
        net = ResNetBackbone(block="basic", layers=(2, 2, 2, 2), base_width=64, out_indices=(3,)).eval()
        x = torch.empty(*chip.anchor["input"])
    act = [0]

    def hook(m, inp, out):
        act[0] += inp[0].numel() + out.numel()

    handles = [m.register_forward_hook(hook) for m in net.modules() if isinstance(m, torch.nn.Conv2d)]
    counter = FlopCounterMode(display=False)
    with counter, torch.no_grad():
        net(x)
    for h in handles:
        h.remove()
    flops = float(counter.get_total_flops())
    weights = float(sum(p.numel() for p in net.parameters()))
    costs = {"backbone": {"flops": flops, "flops_float": 0.0, "bytes": weights + act[0], "weight_bytes": weights}}
    est = estimate(costs, chip, "int8", {"backbone": correction})
    published = chip.anchor["published_ms"]
    return {"what": chip.anchor["what"], "gflop": flops / 1e9, "target": chip.key,
            "estimate_ms": est["estimate_ms"], "roofline_ms": est["roofline_ms"], "bound": est["stages"]["backbone"]["bound"],
            "published_ms": published, "published_over_estimate": published / est["estimate_ms"],
            "source": chip.anchor["source"], "note": ESTIMATE_NOTE}
