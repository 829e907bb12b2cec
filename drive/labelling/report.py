"""Round reports and the loop summary: what each strategy uploaded, labelled and paid, how good the labels
were against the hidden truth, how many of the fleet's long-tail clips it uploaded, and how the edge model did
on the long-tail val split, with its latency.

``round_report`` gathers one (strategy, round) from its step files; ``write_loop_report`` writes
``report.json``, ``report.md`` and ``cost_vs_metric.png`` (long-tail NDS and planning L2 against cumulative
human-labelling cost, one line per strategy, round 0 = the shared starting model).
"""
from __future__ import annotations

import os
from typing import TYPE_CHECKING, Any, Optional

from .config import STRATEGY_LABELS
from .loop import read_json, write_json

if TYPE_CHECKING:
    from .loop import Loop


def _get(d: Optional[dict], *keys, default=None):
    for k in keys:
        if not isinstance(d, dict) or k not in d:
            return default
        d = d[k]
    return d


def longtail_flags(fleet: Optional[dict]) -> Optional[dict[str, bool]]:
    """Hidden truth of a fleet step result: scene token -> is a long-tail clip; None when the fleet does not
    say (a real fleet) or lists no clips."""
    names = {c["scene_token"]: c["scene_name"] for c in _get(fleet, "clips", default=[]) or []}
    truth = _get(fleet, "info", "longtail_scenes")
    if truth is None or not names:
        return None
    truth = set(truth)
    return {tok: name in truth for tok, name in names.items()}


def longtail_mining(fleet: Optional[dict], mine: Optional[dict], uploaded: list[str]) -> Optional[dict]:
    """How well the round's triggers found the long-tail clips (hidden truth, used only to report).

    ``fleet`` / ``mine``: the round's fleet and mine step results; ``uploaded``: scene tokens the car sent.
    Returns the number of long-tail clips in the fleet and among the uploads, and the ROC AUC (Mann-Whitney:
    the chance a long-tail clip outscores an ordinary one, ties half) of the clip score and of each signal's
    clip mean; None when the fleet does not say which clips are long-tail, AUCs None when one side is empty.
    """
    import numpy as np
    from scipy.stats import mannwhitneyu

    from .triggers import SIGNALS

    is_lt = longtail_flags(fleet)
    if is_lt is None:
        return None
    reports = [c for c in _get(mine, "clips", default=[]) or [] if c.get("scene_token") in is_lt]

    def auc(values: dict) -> Optional[float]:
        pos = [v for t, v in values.items() if is_lt[t]]
        neg = [v for t, v in values.items() if not is_lt[t]]
        if not pos or not neg:
            return None
        return float(mannwhitneyu(pos, neg, alternative="two-sided").statistic / (len(pos) * len(neg)))

    def clip_mean(c: dict, k: str) -> float:
        return float(np.mean([fr["signals"].get(k, 0.0) for fr in c["frames"]] or [0.0]))

    signal_auc = {k: auc({c["scene_token"]: clip_mean(c, k) for c in reports}) for k in SIGNALS}
    return {"fleet_clips": len(is_lt), "fleet_longtail": sum(is_lt.values()),
            "uploaded_longtail": sum(bool(is_lt.get(t)) for t in uploaded),
            "clip_score_auc": auc({c["scene_token"]: float(c.get("clip_score", 0.0)) for c in reports}),
            "signal_auc": signal_auc}


def round_report(loop: "Loop", strategy: str, r: int) -> dict:
    d = loop.paths.round_dir(strategy, r)
    f = {name: read_json(os.path.join(d, f"{name}.json")) for name in
         ("mine", "select", "teacher", "review", "store", "train", "export", "profile", "eval", "quality")}
    prev = read_json(os.path.join(loop.paths.round_dir(strategy, r - 1), "report.json")) if r > 1 else None
    prev_cost = prev["cost_cumulative"] if prev else 0.0
    cost = float(_get(f["review"], "cost", default=0.0))
    stats = _get(f["store"], "stats", default={}) or {}
    auto_boxes = sum(len([b for b in boxes if b["score"] >= loop.cfg.auto_labels.min_confidence])
                     for clip in (_get(f["teacher"], "clips", default=[]) or []) for boxes in clip["boxes"].values())
    prec = loop.cfg.export.precision
    return {
        "strategy": strategy, "round": r,
        "uploaded_clips": len(_get(f["select"], "uploaded", default=[])),
        "accepted_clips": len(_get(f["select"], "accepted", default=[])),
        "rejected": _get(f["select"], "rejected", default={}),
        "uploaded_bytes": _get(f["select"], "bytes", default=0),
        "auto_boxes": auto_boxes if strategy != "human" else 0,
        "human_frames": _get(f["review"], "frames", default=0), "human_boxes": _get(f["review"], "boxes", default=0),
        "label_cost": cost, "cost_cumulative": prev_cost + cost,
        "store": stats,
        "pseudo_label_quality": {"teacher": _get(f["quality"], "teacher"), "edge": _get(f["quality"], "edge")},
        "train": {k: _get(f["train"], k) for k in ("steps", "loss_first", "loss_last")},
        "longtail": f["eval"],
        "latency_ms": _get(f["profile"], "latency_p50_ms", f"ort_{prec}"),
        "chips": _get(f["profile"], "chips"),
        "trigger_summary": _get(f["mine"], "summary"),
        "longtail_mining": longtail_mining(loop.step_fleet(r), f["mine"],
                                           _get(f["select"], "uploaded", default=[]) or []),
    }


def write_loop_report(loop: "Loop") -> dict:
    r0 = loop.paths.round_dir("", 0)
    start = {"strategy": "start", "round": 0, "cost_cumulative": 0.0,
             "longtail": read_json(os.path.join(r0, "eval.json")),
             "latency_ms": _get(read_json(os.path.join(r0, "profile.json")), "latency_p50_ms",
                                f"ort_{loop.cfg.export.precision}")}
    rows = {s: [] for s in loop.cfg.strategies}
    for s in loop.cfg.strategies:
        for r in range(1, (loop.cfg.round or loop.cfg.rounds) + 1):
            rep = read_json(os.path.join(loop.paths.round_dir(s, r), "report.json"))
            if rep is not None:
                rows[s].append(rep)
    summary = {"start": start, "strategies": rows, "config": _config_summary(loop)}
    write_json(os.path.join(loop.paths.root, "report.json"), summary)
    plot_cost_vs_metric(summary, os.path.join(loop.paths.root, "cost_vs_metric.png"))
    md = render_markdown(summary)
    tmp = os.path.join(loop.paths.root, ".report.md.tmp")
    with open(tmp, "w") as fh:
        fh.write(md)
    os.replace(tmp, os.path.join(loop.paths.root, "report.md"))
    return summary


def _config_summary(loop: "Loop") -> dict:
    c = loop.cfg
    return {"rounds": c.round or c.rounds, "strategies": list(c.strategies), "engine": c.engine,
            "fleet_clips_per_round": c.fleet.scenes, "keyframes_per_clip": c.fleet.keyframes,
            "upload_budget_clips": c.upload.budget_clips, "upload_budget_bytes": c.upload.budget_bytes,
            "review_budget_per_round": c.review.budget, "cost_per_box": c.review.cost_per_box,
            "cost_per_frame": c.review.cost_per_frame, "retrain_steps": c.retrain.steps,
            "precision": c.export.precision, "student_ckpt": c.student_ckpt, "teacher_ckpt": c.teacher_ckpt}


def _fmt(x: Any, nd: int = 3) -> str:
    if x is None:
        return "-"
    if isinstance(x, float):
        return f"{x:.{nd}f}"
    return str(x)


def render_markdown(summary: dict) -> str:
    c = summary["config"]
    lines = ["# Labelling loop report", "",
             f"{c['rounds']} rounds x {len(c['strategies'])} strategies; per round each strategy may upload "
             f"{c['upload_budget_clips']} of {c['fleet_clips_per_round']} fleet clips and spend {c['review_budget_per_round']} "
             f"cost units on human labels ({c['cost_per_frame']} per frame + {c['cost_per_box']} per box). "
             f"Retraining: {c['retrain_steps']} steps per round; the {c['precision']} graph is what runs on the fleet, "
             "gets profiled and gets evaluated. Chip figures are estimates, not measurements.", "",
             "## Edge model on the long-tail val split", "",
             "| strategy | round | cum. label cost | NDS | mAP | minADE | plan L2 avg (ST-P3) | collision avg | ORT ms |",
             "|---|---|---|---|---|---|---|---|---|"]
    s0 = summary["start"]
    lt = s0.get("longtail") or {}
    lines.append(f"| start | 0 | 0 | {_fmt(lt.get('NDS'))} | {_fmt(lt.get('mAP'))} | {_fmt(lt.get('minADE'))} | "
                 f"{_fmt(lt.get('plan_l2_avg_averaged'))} | {_fmt(lt.get('collision_avg_averaged'))} | "
                 f"{_fmt(s0.get('latency_ms'), 1)} |")
    for s, reps in summary["strategies"].items():
        for rep in reps:
            lt = rep.get("longtail") or {}
            lines.append(f"| {STRATEGY_LABELS.get(s, s)} | {rep['round']} | {_fmt(rep['cost_cumulative'], 1)} | "
                         f"{_fmt(lt.get('NDS'))} | {_fmt(lt.get('mAP'))} | {_fmt(lt.get('minADE'))} | "
                         f"{_fmt(lt.get('plan_l2_avg_averaged'))} | {_fmt(lt.get('collision_avg_averaged'))} | "
                         f"{_fmt(rep.get('latency_ms'), 1)} |")
    lines += ["", "## Uploads, labels and label quality (devkit, against the hidden truth, on the uploaded frames)", "",
              "| strategy | round | uploaded (accepted) | MB | rejected | auto boxes | human frames / boxes | cost | "
              "teacher mAP / NDS | edge mAP / NDS | long-tail clips uploaded (fleet) | trigger AUC |",
              "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for s, reps in summary["strategies"].items():
        for rep in reps:
            q = rep.get("pseudo_label_quality") or {}
            t, e, lm = q.get("teacher") or {}, q.get("edge") or {}, rep.get("longtail_mining") or {}
            rej = "; ".join(f"{k[:8]}: {', '.join(v)}" for k, v in (rep.get("rejected") or {}).items()) or "-"
            lines.append(f"| {s} | {rep['round']} | {rep['uploaded_clips']} ({rep['accepted_clips']}) | "
                         f"{_fmt((rep.get('uploaded_bytes') or 0) / 2**20, 1)} | {rej} | {rep['auto_boxes']} | "
                         f"{rep['human_frames']} / {rep['human_boxes']} | {_fmt(rep['label_cost'], 1)} | "
                         f"{_fmt(t.get('mAP'))} / {_fmt(t.get('NDS'))} | {_fmt(e.get('mAP'))} / {_fmt(e.get('NDS'))} | "
                         f"{_fmt(lm.get('uploaded_longtail'))} ({_fmt(lm.get('fleet_longtail'))}) | "
                         f"{_fmt(lm.get('clip_score_auc'), 2)} |")
    lines += ["", "## Chip fit of the last round's models (estimates)", ""]
    for s, reps in summary["strategies"].items():
        if reps and reps[-1].get("chips"):
            for target, per in reps[-1]["chips"].items():
                for p, e in per.items():
                    anchored = f" (anchored {_fmt(e['anchored_ms'], 1)} ms)" if e.get("anchored_ms") is not None else ""
                    lines.append(f"- {s} r{reps[-1]['round']} on {target} ({p}): {_fmt(e['estimate_ms'], 1)} ms{anchored}, "
                                 f"10 Hz {'yes' if e['meets_10hz'] else 'no'}, 20 Hz {'yes' if e['meets_20hz'] else 'no'}, "
                                 f"memory {'fits' if e['fits'] else 'does not fit'}, unsupported ops: "
                                 f"{', '.join(e['unsupported_ops']) or 'none'}")
    lines += ["", "![metric vs labelling cost](cost_vs_metric.png)", ""]
    return "\n".join(lines)


def plot_cost_vs_metric(summary: dict, path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    start = summary["start"].get("longtail") or {}
    for ax, key, label in ((axes[0], "NDS", "long-tail val NDS (higher is better)"),
                           (axes[1], "plan_l2_avg_averaged", "long-tail val plan L2 avg, m (lower is better)")):
        for s, reps in summary["strategies"].items():
            xs = [0.0] + [rep["cost_cumulative"] for rep in reps]
            ys = [start.get(key)] + [(rep.get("longtail") or {}).get(key) for rep in reps]
            pts = [(x, y) for x, y in zip(xs, ys) if y is not None]
            if pts:
                ax.plot(*zip(*pts), marker="o", label=STRATEGY_LABELS.get(s, s))
        ax.set_xlabel("cumulative human labelling cost")
        ax.set_ylabel(label)
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=8)
    fig.tight_layout()
    tmp = path + ".tmp.png"
    fig.savefig(tmp, dpi=100)
    plt.close(fig)
    os.replace(tmp, path)
