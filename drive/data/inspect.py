"""``inspect_root``: a summary and a picture of a nuScenes-format root, through the same data path.

The summary is computed from the dataset index (no image decoding), so it is quick even on
trainval; only the one pictured keyframe decodes its six images.
"""
from __future__ import annotations

import logging
import os
from collections import Counter
from typing import Optional, Sequence

import numpy as np
from nuscenes.eval.detection.utils import category_to_detection_name

from drive.types import CAMERAS, CLASSES, COMMANDS, IMAGE_MEAN, IMAGE_STD

from .dataset import NuScenesDrivingDataset
from .features import command_index, ego_status
from .geometry import box_corners, project_points
from .nusc import open_nuscenes
from .targets import in_bev_range

log = logging.getLogger(__name__)

CLASS_COLORS = ("#1f77b4", "#ff7f0e", "#8c564b", "#d62728", "#9467bd", "#7f7f7f", "#e377c2", "#bcbd22",
                "#2ca02c", "#17becf")
CAMERA_GRID = (("CAM_FRONT_LEFT", "CAM_FRONT", "CAM_FRONT_RIGHT"), ("CAM_BACK_LEFT", "CAM_BACK", "CAM_BACK_RIGHT"))
BOX_EDGES = ((0, 1), (1, 2), (2, 3), (3, 0), (4, 5), (5, 6), (6, 7), (7, 4), (0, 4), (1, 5), (2, 6), (3, 7))


def _stats(values: Sequence[float]) -> dict:
    v = np.asarray(values, np.float64)
    if v.size == 0:
        return dict(min=0.0, mean=0.0, max=0.0)
    return dict(min=float(v.min()), mean=float(v.mean()), max=float(v.max()))


def summarize(ds: NuScenesDrivingDataset, category_counts: Optional[dict] = None) -> dict:
    """Counts and profiles over every keyframe of a data set (reads records, not images)."""
    boxes_per_class: Counter = Counter()
    boxes_per_frame, speeds, commands, map_ok = [], [], Counter(), Counter()
    scenes = set()
    for i in range(len(ds)):
        rec = ds.record(i)
        scenes.add(rec.scene_token)
        if rec.annotations is not None:
            ann = rec.annotations.select(in_bev_range(rec.annotations.boxes, ds.bev_range, ds.box_margin))
            boxes_per_frame.append(len(ann))
            boxes_per_class.update(CLASSES[int(k)] for k in ann.labels)
        speeds.append(float(ego_status(rec.track)[0]))
        commands[COMMANDS[command_index(rec.track)]] += 1
        map_ok[os.path.basename(rec.map_file)] += int(ds.maps.is_valid(rec.map_file, rec.global_T_ego))
    n = len(ds)
    return dict(
        root=ds.root, version=ds.version, split=ds.split, scenes=len(scenes), samples=n,
        boxes_per_class={c: int(boxes_per_class.get(c, 0)) for c in CLASSES},
        categories=dict(sorted((category_counts or {}).items())),
        boxes_per_frame=_stats(boxes_per_frame),
        ego_speed=_stats(speeds),
        commands={c: int(commands.get(c, 0)) for c in COMMANDS},
        map_valid_fraction=float(sum(map_ok.values()) / n) if n else 0.0,
        map_valid_per_map={k: int(v) for k, v in map_ok.items()},
    )


def _format(summary: dict) -> str:
    s = summary
    lines = [f"{s['root']} {s['version']} split={s['split']}: {s['scenes']} scenes, {s['samples']} keyframes"]
    lines.append("boxes in BEV range per class: " + ", ".join(f"{k} {v}" for k, v in s["boxes_per_class"].items()))
    dropped = {k: v for k, v in s["categories"].items() if category_to_detection_name(k) is None}
    if dropped:
        lines.append("annotations of non-detection categories (dropped): "
                     + ", ".join(f"{k} {v}" for k, v in dropped.items()))
    b, v = s["boxes_per_frame"], s["ego_speed"]
    lines.append(f"boxes per frame min/mean/max: {b['min']:.0f} / {b['mean']:.1f} / {b['max']:.0f}")
    lines.append(f"ego speed m/s min/mean/max: {v['min']:.2f} / {v['mean']:.2f} / {v['max']:.2f}")
    lines.append("commands: " + ", ".join(f"{k} {n}" for k, n in s["commands"].items()))
    lines.append(f"map valid on {100 * s['map_valid_fraction']:.0f}% of keyframes")
    return "\n".join(lines)


def draw_sample(ds: NuScenesDrivingDataset, index: int, out_png: str) -> None:
    """Six camera views with projected GT boxes, plus a BEV panel (boxes, agent futures, ego plan, drivable)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    feats, targets, meta = ds.load(index)
    mean, std = np.array(IMAGE_MEAN), np.array(IMAGE_STD)
    images = np.clip(feats.images.numpy().transpose(0, 2, 3, 1) * std + mean, 0, 1)
    m = targets.mask.numpy()
    boxes, labels = targets.boxes.numpy()[m], targets.labels.numpy()[m]
    corners = box_corners(boxes)

    fig = plt.figure(figsize=(20, 7))
    gs = fig.add_gridspec(2, 4, width_ratios=(1, 1, 1, 1.1))
    H, W = images.shape[1:3]
    for r, row in enumerate(CAMERA_GRID):
        for c, ch in enumerate(row):
            n = CAMERAS.index(ch)
            ax = fig.add_subplot(gs[r, c])
            ax.imshow(images[n])
            uv, d = project_points(feats.ego2img[n].numpy(), corners)
            for k in range(len(boxes)):
                if (d[k] > 0.1).all() and ((uv[k, :, 0] > 0) & (uv[k, :, 0] < W) & (uv[k, :, 1] > 0)
                                           & (uv[k, :, 1] < H)).any():
                    for a, b in BOX_EDGES:
                        ax.plot(uv[k, [a, b], 0], uv[k, [a, b], 1], color=CLASS_COLORS[labels[k]], lw=1)
            ax.set_xlim(0, W)
            ax.set_ylim(H, 0)
            ax.set_title(ch, fontsize=9)
            ax.axis("off")

    ax = fig.add_subplot(gs[:, 3])
    R = ds.bev_range
    ax.imshow(targets.drivable.numpy(), origin="lower", extent=(-R, R, -R, R), cmap="Greys", vmin=0, vmax=3)
    for k in range(len(boxes)):
        fp = corners[k, [0, 1, 5, 4, 0], :2]  # bottom-ish footprint outline
        ax.plot(fp[:, 0], fp[:, 1], color=CLASS_COLORS[labels[k]], lw=1)
    fut, fmask = targets.future.numpy()[m], targets.future_mask.numpy()[m]
    for k in range(len(boxes)):
        if fmask[k].any():
            pts = np.concatenate([boxes[k:k + 1, :2], fut[k][fmask[k]]])
            ax.plot(pts[:, 0], pts[:, 1], color=CLASS_COLORS[labels[k]], lw=0.8, ls="--")
    ef, em = targets.ego_future.numpy(), targets.ego_future_mask.numpy()
    ax.plot(np.r_[0.0, ef[em, 0]], np.r_[0.0, ef[em, 1]], "r.-", lw=2, label="ego plan")
    ax.add_patch(matplotlib.patches.Rectangle((-1.0, -0.95), 4.5, 1.9, color="r", alpha=0.6))
    for c_idx, name in enumerate(CLASSES):
        ax.plot([], [], color=CLASS_COLORS[c_idx], label=name)
    ax.legend(loc="upper left", fontsize=7)
    ax.set_xlim(-R, R)
    ax.set_ylim(-R, R)
    ax.set_aspect("equal")
    status = feats.ego_status.numpy()
    ax.set_title(f"BEV (x fwd -> right, y left -> up); command {COMMANDS[int(feats.command)]}, "
                 f"v {status[0]:.1f} m/s, map_valid {float(targets.map_valid):.0f}", fontsize=9)
    fig.suptitle(f"sample {meta.sample_token}", fontsize=10)
    fig.tight_layout()
    os.makedirs(os.path.dirname(os.path.abspath(out_png)), exist_ok=True)
    fig.savefig(out_png, dpi=90)
    plt.close(fig)


def inspect_root(root: str, version: str = "v1.0-mini", sample_token: Optional[str] = None,
                 out_png: Optional[str] = "inspect.png", split: Optional[str] = None,
                 image_size: Sequence[int] = (225, 400), bev_range: float = 51.2, map_size: int = 200) -> dict:
    """Print a summary of a root (all scenes, or ``split``) and draw one keyframe; returns the summary dict.

    The pictured keyframe is ``sample_token`` or the middle keyframe of the first scene.
    """
    nusc = open_nuscenes(root, version)
    category_counts = Counter(a["category_name"] for a in nusc.sample_annotation)
    ds = NuScenesDrivingDataset(root, version, split, image_size=image_size, bev_range=bev_range,
                                map_size=map_size, cache_images=False, nusc=nusc)
    summary = summarize(ds, dict(category_counts))
    print(_format(summary))
    if out_png and len(ds):
        tokens = [ds.record(i).sample_token for i in range(len(ds))]
        if sample_token is not None:
            if sample_token not in tokens:
                from .errors import DataError

                raise DataError(f"sample {sample_token!r} is not a keyframe of {root} ({version}, split {split})",
                                sample_token)
            index = tokens.index(sample_token)
        else:
            first_scene = ds.record(0).scene_token
            n_first = sum(1 for i in range(len(ds)) if ds.record(i).scene_token == first_scene)
            index = n_first // 2
        draw_sample(ds, index, out_png)
        summary["picture"] = os.path.abspath(out_png)
        summary["pictured_sample"] = tokens[index]
        print(f"wrote {summary['picture']} (sample {tokens[index]})")
    return summary
