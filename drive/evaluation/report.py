"""``report.md`` and its pictures for one evaluation run (matplotlib, no display needed).

Pictures (``figures/``): the devkit's own detection plots (``summary.png`` PR + TP curves of every class,
``pr_<class>.png``, rendered by ``nuscenes.eval.detection.render`` from the metric data ``DetectionEval``
wrote), per-class AP bars, L2 over the horizon per convention and method, and for the best and worst
planning cases (mean L2 of the refined plan) a BEV panel (``drive.training.visualize.draw_bev``: boxes,
predicted futures, plan vs true future, drivable area) and the six cameras with GT / predicted boxes and
the plans projected on the ground.
"""
from __future__ import annotations

import json
import logging
import math
import os
import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402  (after choosing the backend)
import numpy as np  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402

from drive.data.dataset import collate  # noqa: E402
from drive.data.geometry import box_corners, project_points  # noqa: E402
from drive.data.inspect import BOX_EDGES, CAMERA_GRID  # noqa: E402
from drive.metrics.detection import TP_ERROR_KEYS  # noqa: E402
from drive.metrics.motion import CLASS_GROUPS  # noqa: E402
from drive.metrics.planning import HORIZONS_S  # noqa: E402
from drive.types import CAMERAS, CLASSES, IMAGE_MEAN, IMAGE_STD  # noqa: E402

from .accumulate import METHOD_LABELS  # noqa: E402

log = logging.getLogger(__name__)

CONVENTION_TITLES = {"per_step": "per-step (UniAD: value at the horizon)",
                     "averaged": "averaged (ST-P3 / VAD: mean over the waypoints up to the horizon)"}


def _f(x, digits: int = 3, scale: float = 1.0) -> str:
    if x is None or (isinstance(x, float) and not math.isfinite(x)):
        return "–"
    return f"{float(x) * scale:.{digits}f}"


def _table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(lines) + "\n"


def _save(fig: Figure, path: str, dpi: int = 90) -> str:
    fig.savefig(path, dpi=dpi)
    return path


# ---------------------------------------------------------------------- figures

def devkit_curves(detection_dir: str, fig_dir: str) -> list[str]:
    """Render the devkit's PR / TP curves from its metric files; returns the picture paths."""
    from nuscenes.eval.detection.data_classes import DetectionMetricDataList, DetectionMetrics
    from nuscenes.eval.detection.render import class_pr_curve, summary_plot

    with open(os.path.join(detection_dir, "metrics_summary.json")) as f:
        metrics = DetectionMetrics.deserialize(json.load(f))
    with open(os.path.join(detection_dir, "metrics_details.json")) as f:
        md_list = DetectionMetricDataList.deserialize(json.load(f))
    cfg = metrics.cfg
    paths = []
    with matplotlib.rc_context({"savefig.dpi": 40}):
        path = os.path.join(fig_dir, "det_summary.png")
        summary_plot(md_list, metrics, cfg.min_precision, cfg.min_recall, cfg.dist_th_tp, savepath=path)
        paths.append(path)
    with matplotlib.rc_context({"savefig.dpi": 70}):
        for name in cfg.class_names:
            path = os.path.join(fig_dir, f"pr_{name}.png")
            class_pr_curve(md_list, metrics, name, cfg.min_precision, cfg.min_recall, savepath=path)
            paths.append(path)
    plt.close("all")
    return paths


def ap_bars(detection: dict, path: str) -> str:
    fig = Figure(figsize=(8, 3.5), layout="constrained")
    ax = fig.subplots()
    aps = [detection.get(f"AP_{c}", float("nan")) for c in CLASSES]
    ax.bar(range(len(CLASSES)), [0 if not math.isfinite(a) else a for a in aps], color="tab:blue")
    for i, a in enumerate(aps):
        ax.text(i, (a if math.isfinite(a) else 0) + 0.01, _f(a, 2), ha="center", fontsize=7)
    ax.set_xticks(range(len(CLASSES)), CLASSES, rotation=30, ha="right", fontsize=8)
    ax.set_ylim(0, 1.05)
    ax.set_ylabel("AP (mean over 0.5/1/2/4 m)")
    ax.set_title(f"per-class AP, mAP {_f(detection.get('mAP'))}, NDS {_f(detection.get('NDS'))}", fontsize=9)
    return _save(fig, path)


def l2_plot(curves: dict, path: str) -> str:
    fig = Figure(figsize=(11, 4), layout="constrained")
    axes = fig.subplots(1, 2, sharey=True)
    t = 0.5 * np.arange(1, 7)
    for ax, conv in zip(axes, ("per_step", "averaged")):
        for name, c in curves.items():
            if name == "gt_future":
                continue
            ax.plot(t, c[conv], "-o", ms=3, label=METHOD_LABELS.get(name, name))
        ax.set_title(CONVENTION_TITLES[conv], fontsize=9)
        ax.set_xlabel("horizon [s]")
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("L2 [m]")
    axes[0].legend(fontsize=7)
    return _save(fig, path)


def camera_figure(batch, out, title: str, score_threshold: float) -> Figure:
    """Six cameras: GT boxes (green), predicted boxes >= threshold (red), GT ego future (black) and the refined
    plan (blue) on the ground plane."""
    f, t = batch.features, batch.targets
    images = np.clip(f.images[0].numpy().transpose(0, 2, 3, 1) * np.array(IMAGE_STD) + np.array(IMAGE_MEAN), 0, 1)
    H, W = images.shape[1:3]
    gt = t.boxes[0].numpy()[t.mask[0].numpy()]
    keep = out.scores[0].numpy() >= score_threshold
    pred = out.boxes[0].numpy()[keep]
    ef = t.ego_future[0].numpy()[t.ego_future_mask[0].numpy()]
    plan = out.plan_refined[0].numpy()
    fig = Figure(figsize=(15, 5.2), layout="constrained")
    axes = fig.subplots(2, 3)
    for r, row in enumerate(CAMERA_GRID):
        for c, ch in enumerate(row):
            n, ax = CAMERAS.index(ch), axes[r, c]
            ax.imshow(images[n])
            e2i = f.ego2img[0, n].numpy()
            for boxes, colour in ((gt, "tab:green"), (pred, "tab:red")):
                if not len(boxes):
                    continue
                uv, d = project_points(e2i, box_corners(boxes))
                for k in range(len(boxes)):
                    inside = (uv[k, :, 0] > 0) & (uv[k, :, 0] < W) & (uv[k, :, 1] > 0) & (uv[k, :, 1] < H)
                    if (d[k] > 0.1).all() and inside.any():
                        for a, b in BOX_EDGES:
                            ax.plot(uv[k, [a, b], 0], uv[k, [a, b], 1], color=colour, lw=0.8)
            for traj, style in ((ef, "k-o"), (plan, "b-o")):
                pts = np.concatenate([np.zeros((1, 2)), traj])
                uv, d = project_points(e2i, np.concatenate([pts, np.zeros((len(pts), 1))], 1))
                ok = d > 0.5
                if ok.sum() >= 2:
                    ax.plot(uv[ok, 0], uv[ok, 1], style, ms=2, lw=1.2)
            ax.set_xlim(0, W)
            ax.set_ylim(H, 0)
            ax.set_title(ch, fontsize=8)
            ax.axis("off")
    fig.suptitle(f"{title}  (green GT, red predicted >= {score_threshold:g}, black GT future, blue plan)", fontsize=9)
    return fig


def case_figures(acc, ds, fig_dir: str, bev_range: float, map_range: float, score_threshold: float) -> list[dict]:
    from drive.training.visualize import draw_bev

    rows = []
    for kind, cases in acc.cases().items():
        for rank, case in enumerate(cases, 1):
            batch = collate([ds.load(case.index)])
            title = f"{kind} #{rank}: {case.sample_token[:8]} L2 {case.l2:.2f} m"
            bev = os.path.join(fig_dir, f"case_{kind}_{rank}_bev.png")
            _save(draw_bev(batch, case.outputs, bev_range, map_range, score_threshold, title=title), bev, dpi=70)
            cams = os.path.join(fig_dir, f"case_{kind}_{rank}_cams.png")
            _save(camera_figure(batch, case.outputs, title, score_threshold), cams, dpi=70)
            rows.append({"kind": kind, "rank": rank, "sample_token": case.sample_token, "l2": case.l2,
                         "situation": acc.situations[case.index], "bev": bev, "cams": cams})
    return rows


def scene_gif(acc, ds, path: str, bev_range: float, score_threshold: float, seconds_per_frame: float = 0.5) -> str:
    """Animated BEV panels of the frames ``acc.scene_frames`` kept (the first scene of the split)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from PIL import Image

    from drive.training.visualize import draw_bev

    frames = []
    for k, case in enumerate(acc.scene_frames):
        batch = collate([ds.load(case.index)])
        fig = draw_bev(batch, case.outputs, bev_range, bev_range, score_threshold,
                       title=f"frame {k}: L2 {case.l2:.2f} m")
        canvas = FigureCanvasAgg(fig)
        fig.set_dpi(50)
        canvas.draw()
        rgb = np.asarray(canvas.buffer_rgba())[..., :3]
        frames.append(Image.fromarray(rgb).convert("P", palette=Image.ADAPTIVE))
    frames[0].save(path, save_all=True, append_images=frames[1:], duration=int(seconds_per_frame * 1000), loop=0)
    return path


# ---------------------------------------------------------------------- markdown

def _detection_md(det: dict, figs: dict) -> str:
    s = "## Detection (nuScenes devkit `DetectionEval`, detection_cvpr_2019)\n\n"
    keys = ["mAP", "NDS", *TP_ERROR_KEYS.values()]
    s += _table(keys, [[_f(det.get(k)) for k in keys]])
    s += "\n" + _table(["class", "AP", *TP_ERROR_KEYS.values()],
                       [[c, _f(det.get(f"AP_{c}"))] + [_f(det.get(f"{e}_{c}")) for e in TP_ERROR_KEYS]
                        for c in CLASSES])
    if "flip_rate" in det:
        s += ("\nHeading and velocity over the devkit's 2 m matches (not devkit metrics): flip rate = share of "
              "boxes facing more than 90 degrees from the truth (0.5 = a coin flip); moving speed ratio = mean "
              "predicted / true speed of matches whose truth moves faster than 1 m/s.\n\n")
        keys = ["flip_rate", "flip_rate_car", "flip_rate_pedestrian", "moving_speed_ratio", "moving_vel_err",
                "static_vel_err"]
        s += _table(keys, [[_f(det.get(k)) for k in keys]])
    if "ap_bars" in figs:
        s += f"\n![per-class AP]({figs['ap_bars']})\n"
    if figs.get("pr"):
        s += f"\nDevkit curves: [summary (PR + TP errors, every class)]({figs['pr'][0]}); PR per class: "
        s += ", ".join(f"[{os.path.basename(p)[3:-4]}]({p})" for p in figs["pr"][1:]) + "\n"
        car = [p for p in figs["pr"] if p.endswith("pr_car.png")]
        if car:
            s += f"\n![devkit PR curve, car]({car[0]})\n"
    return s + "\n"


def _tracking_md(tr: dict) -> str:
    s = "## Tracking (`drive.metrics.tracker` on the detections, devkit `TrackingEval`)\n\n"
    keys = ["amota", "amotp", "recall", "mota", "ids", "frag", "fp", "fn"]
    s += _table(["AMOTA", "AMOTP", "recall", "MOTA", "IDS", "FRAG", "FP", "FN"],
                [[_f(tr.get(k), 0 if k in ("ids", "frag", "fp", "fn") else 3) for k in keys]])
    names = sorted(k[6:] for k in tr if k.startswith("amota_"))
    if names:
        s += "\n" + _table(["class"] + names, [["AMOTA"] + [_f(tr.get(f"amota_{n}")) for n in names]])
    return s + "\n"


def _motion_md(mo: dict) -> str:
    s = ("## Motion (detections matched to GT: same class, centre <= 2 m; K = 6 modes, MR = minFDE > 2 m)\n\n"
         "Constant velocity: each matched detection's own box moved with its predicted velocity (1 mode).\n\n")
    header = ["method", "group", "agents", "minADE", "minFDE", "MR"]
    rows = []
    for name, m in mo.items():
        for g in ("", *(f"_{k}" for k in CLASS_GROUPS)):
            rows.append([name, g[1:] or "all", _f(m.get(f"num_agents{g}"), 0), _f(m.get(f"minADE{g}")),
                         _f(m.get(f"minFDE{g}")), _f(m.get(f"MR{g}"))])
    return s + _table(header, rows) + "\n"


def _planning_tables(methods: dict) -> str:
    s = ""
    for conv in ("per_step", "averaged"):
        header = (["method"] + [f"L2 {h}s" for h in HORIZONS_S] + ["L2 avg"] + [f"Col {h}s %" for h in HORIZONS_S]
                  + ["Col avg %"] + [f"Off-road {h}s %" for h in HORIZONS_S])
        rows = []
        for name, m in methods.items():
            rows.append([METHOD_LABELS.get(name, name)] + [_f(m.get(f"l2_{h}s_{conv}"), 2) for h in HORIZONS_S]
                        + [_f(m.get(f"l2_avg_{conv}"), 2)]
                        + [_f(m.get(f"collision_{h}s_{conv}"), 2, 100) for h in HORIZONS_S]
                        + [_f(m.get(f"collision_avg_{conv}"), 2, 100)]
                        + [_f(m.get(f"offroad_{h}s_{conv}"), 2, 100) for h in HORIZONS_S])
        s += f"### Convention: {CONVENTION_TITLES[conv]}\n\n" + _table(header, rows) + "\n"
    return s


def _planning_md(pl: dict, figs: dict) -> str:
    s = ("## Planning (open loop; L2 in m, collision and off-road in % of samples)\n\n"
         "Both conventions of the field, from the same plans (ANCHORS.md). Collision: the ego box (4.08 x 1.85 m, "
         "heading from the plan) overlaps a GT agent's box at that future step; off-road: a corner of the ego box "
         f"on a non-drivable cell of the GT map ({pl.get('map_valid_samples', 0)} of {pl.get('samples', 0)} samples "
         "have a valid map).\n\n")
    s += _planning_tables(pl["methods"])
    s += (f"Feasibility layer: changed the plan (max waypoint displacement > {pl['plan_change_threshold_m']:g} m) on "
          f"{_f(pl['plan_change_rate'], 1, 100)} % of the samples (mean displacement "
          f"{_f(pl['plan_change_mean_m'], 3)} m).\n\n")
    rows = [[METHOD_LABELS.get(name, name), _f(m.get("speed_mae_mps"), 2), _f(m.get("speed_bias_mps"), 2),
             _f(m.get("speed_corr"), 2)] for name, m in pl["methods"].items() if name != "gt_future"]
    s += ("Does the plan start at the ego's speed? Speed over the first 0.5 s of each plan against the GT future's "
          "(a planner without ego status must read it off the cameras):\n\n"
          + _table(["method", "speed error [m/s]", "bias [m/s]", "correlation r"], rows) + "\n")
    if "l2" in figs:
        s += f"![L2 over the horizon]({figs['l2']})\n\n"
    s += f"### By driving situation (source: {pl.get('situation_source', '?')})\n\n"
    methods = [m for m in pl["methods"] if m != "gt_future"]
    for metric, title, scale in (("l2_avg", "L2 avg [m], per-step / averaged", 1.0),
                                 ("collision_avg", "collision avg [%], per-step / averaged", 100.0)):
        header = ["situation", "samples"] + [METHOD_LABELS.get(m, m) for m in methods]
        rows = []
        for sit, block in pl["by_situation"].items():
            rows.append([sit, str(block["count"])] + [
                f"{_f(block['methods'][m].get(f'{metric}_per_step'), 2, scale)} / "
                f"{_f(block['methods'][m].get(f'{metric}_averaged'), 2, scale)}" for m in methods])
        total = sum(b["count"] for b in pl["by_situation"].values())
        rows.append(["**all**", str(total)] + [
            f"{_f(pl['methods'][m].get(f'{metric}_per_step'), 2, scale)} / "
            f"{_f(pl['methods'][m].get(f'{metric}_averaged'), 2, scale)}" for m in methods])
        s += f"{title}:\n\n" + _table(header, rows) + "\n"
    for note in pl.get("baseline_notes", []):
        s += f"- {note}\n"
    return s + "\n"


def write_report(out_dir: str, metrics: dict, acc, ds, opts) -> str:
    """Pictures into ``<out_dir>/figures`` and ``<out_dir>/report.md`` (links relative to out_dir)."""
    fig_dir = os.path.join(out_dir, "figures")
    os.makedirs(fig_dir, exist_ok=True)
    rel = lambda p: os.path.relpath(p, out_dir)  # noqa: E731
    figs: dict = {}
    det, run = metrics.get("detection", {}), metrics.get("run", {})
    figs["ap_bars"] = rel(ap_bars(det, os.path.join(fig_dir, "ap_per_class.png")))
    if opts.render_curves and os.path.isdir(os.path.join(out_dir, "detection")):
        figs["pr"] = [rel(p) for p in devkit_curves(os.path.join(out_dir, "detection"), fig_dir)]
    cases = []
    if acc is not None:
        figs["l2"] = rel(l2_plot(metrics["planning"]["l2_curves"], os.path.join(fig_dir, "l2_horizon.png")))
        mc = run.get("model_config", {})
        cases = case_figures(acc, ds, fig_dir, mc.get("bev_range", 51.2), mc.get("bev_range", 51.2),
                             opts.draw_score_threshold)
        if acc.scene_frames:
            figs["gif"] = rel(scene_gif(acc, ds, os.path.join(fig_dir, "scene.gif"), mc.get("bev_range", 51.2),
                                        opts.draw_score_threshold))

    s = "# Offline evaluation\n\n"
    ck = run.get("checkpoint") or {}
    if ck.get("random_init"):
        s += "> **RANDOMLY INITIALISED MODEL** (random_init=true): timing only, the numbers mean nothing.\n\n"
    if run.get("backend") == "ground_truth":
        s += "> **Ground-truth backend**: the targets fed back as predictions (a pipeline check, not a result).\n\n"
    facts = [("split", f"`{run.get('split')}` of `{run.get('root')}` ({run.get('version')})"),
             ("backend", run.get("backend")),
             ("samples / scenes", f"{run.get('samples')} / {run.get('scenes', '–')}")]
    if ck.get("path"):
        facts.append(("checkpoint", f"`{ck['path']}` (sha256 `{ck['sha256'][:16]}…`, {ck.get('weights')} weights, "
                                    f"step {ck.get('global_step')})"))
    for key in ("onnx", "ego_checkpoint"):
        if run.get(key):
            facts.append((key, f"`{run[key]['path']}` (sha256 `{run[key]['sha256'][:16]}…`)"))
    if run.get("results_path"):
        facts.append(("submission", f"`{run['results_path']}`"))
    if "temporal_link_rate" in run:
        facts.append(("frames given the previous BEV", _f(run["temporal_link_rate"], 3)))
        facts.append(("inference", f"{_f(run['inference_s_per_frame'], 3)} s/frame"))
    s += _table(["", ""], [[k, str(v)] for k, v in facts]) + "\n"
    s += _detection_md(det, figs)
    s += _tracking_md(metrics.get("tracking", {}))
    if acc is not None:
        s += _motion_md(metrics["motion"])
        s += _planning_md(metrics["planning"], figs)
        m = metrics["map"]
        s += (f"## Map\n\nDrivable-area IoU (pooled over {int(m['valid_samples'])} samples with a valid map): "
              f"**{_f(m['drivable_iou'])}**\n\n")
        if cases:
            s += "## Best and worst planning cases (mean L2 of the refined plan)\n\n"
            for c in cases:
                s += (f"**{c['kind']} #{c['rank']}** sample `{c['sample_token']}` ({c['situation']}), L2 "
                      f"{c['l2']:.2f} m\n\n![BEV]({rel(c['bev'])})\n\n![cameras]({rel(c['cams'])})\n\n")
    if "gif" in figs:
        s += f"## The first scene, frame by frame\n\n![BEV of the first scene]({figs['gif']})\n\n"
    s += ("Files: `metrics.json` (all numbers, resolved config, checksums), `results_nusc.json` and "
          "`results_track.json` (submissions), `detection/` and `tracking/` (devkit outputs).\n")
    path = os.path.join(out_dir, "report.md")
    with open(path, "w") as f:
        f.write(s)
    return path
