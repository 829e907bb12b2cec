"""BEV picture of one frame: predictions vs ground truth (matplotlib, no display needed).

Ego frame, x forward to the right, y left upwards, metres. Left panel: GT drivable area (grey),
GT boxes and futures (green), predicted boxes with score >= threshold and their most likely
motion mode (red / orange), the plan after (blue) and before (dashed blue) the feasibility layer
and the GT ego future (black). Right panel: predicted drivable probability with the GT outline.
"""
from __future__ import annotations

import numpy as np
from matplotlib.figure import Figure

from drive.models.model import ModelOutputs
from drive.types import CLASSES, Batch


def box_corners(boxes_K9: np.ndarray) -> np.ndarray:
    """(K, 5, 2) closed BEV outlines of ``(x, y, z, l, w, h, yaw, ...)`` boxes."""
    b = np.asarray(boxes_K9, np.float64).reshape(-1, boxes_K9.shape[-1])
    c, s = np.cos(b[:, 6]), np.sin(b[:, 6])
    hl, hw = b[:, 3] / 2, b[:, 4] / 2
    local = np.array([[1, 1], [1, -1], [-1, -1], [-1, 1], [1, 1]], np.float64)
    dx = local[None, :, 0] * hl[:, None]
    dy = local[None, :, 1] * hw[:, None]
    x = b[:, None, 0] + c[:, None] * dx - s[:, None] * dy
    y = b[:, None, 1] + s[:, None] * dx + c[:, None] * dy
    return np.stack([x, y], -1)


def draw_bev(batch: Batch, out: ModelOutputs, bev_range: float, map_range: float, score_threshold: float = 0.3,
             title: str = "", index: int = 0) -> Figure:
    t = batch.targets
    fig = Figure(figsize=(12, 6), layout="constrained")
    ax, ax_map = fig.subplots(1, 2)
    extent = (-map_range, map_range, -map_range, map_range)
    drivable = t.drivable[index].numpy()
    ax.imshow(drivable, origin="lower", extent=extent, cmap="Greys", vmin=0, vmax=3, interpolation="nearest")

    mask = t.mask[index].numpy()
    gt = t.boxes[index].numpy()[mask]
    for poly in box_corners(gt):
        ax.plot(poly[:, 0], poly[:, 1], color="tab:green", lw=1.2)
    fut, fm = t.future[index].numpy()[mask], t.future_mask[index].numpy()[mask]
    for k in range(len(fut)):
        if fm[k].any():
            ax.plot(np.r_[gt[k, 0], fut[k][fm[k], 0]], np.r_[gt[k, 1], fut[k][fm[k], 1]], color="tab:green", lw=0.8)

    scores = out.scores[index].numpy()
    keep = scores >= score_threshold
    boxes = out.boxes[index].numpy()[keep]
    labels = out.labels[index].numpy()[keep]
    trajs = out.motion_trajs[index].numpy()[keep]
    modes = out.motion_mode_logits[index].numpy()[keep].argmax(-1) if keep.any() else np.zeros(0, int)
    for k, poly in enumerate(box_corners(boxes)):
        ax.plot(poly[:, 0], poly[:, 1], color="tab:red", lw=1.0, alpha=float(np.clip(scores[keep][k], 0.3, 1)))
        traj = boxes[k, None, :2] + trajs[k, modes[k]]
        ax.plot(np.r_[boxes[k, 0], traj[:, 0]], np.r_[boxes[k, 1], traj[:, 1]], color="tab:orange", lw=0.8)
        if k < 15:
            ax.text(boxes[k, 0], boxes[k, 1], CLASSES[int(labels[k])][:3], fontsize=6, color="tab:red")

    ego = np.array([[0.0, 0.0, 0.0, 4.08, 1.85, 1.56, 0.0]])
    ego[0, 0] = 1.4
    poly = box_corners(np.pad(ego, ((0, 0), (0, 2))))[0]
    ax.fill(poly[:, 0], poly[:, 1], color="tab:blue", alpha=0.6)
    em = t.ego_future_mask[index].numpy()
    ef = t.ego_future[index].numpy()[em]
    ax.plot(np.r_[0, ef[:, 0]], np.r_[0, ef[:, 1]], "k--o", ms=3, lw=1.2, label="GT ego future")
    raw, plan = out.plan[index].numpy(), out.plan_refined[index].numpy()
    ax.plot(np.r_[0, raw[:, 0]], np.r_[0, raw[:, 1]], "--", color="tab:blue", lw=1.0, label="plan (head)")
    ax.plot(np.r_[0, plan[:, 0]], np.r_[0, plan[:, 1]], "-o", color="tab:blue", ms=3, lw=1.5, label="plan (refined)")
    ax.plot([], [], color="tab:green", label=f"GT boxes ({len(gt)})")
    ax.plot([], [], color="tab:red", label=f"pred boxes >= {score_threshold:g} ({int(keep.sum())})")
    ax.set_xlim(-bev_range, bev_range)
    ax.set_ylim(-bev_range, bev_range)
    ax.set_aspect("equal")
    ax.legend(loc="lower left", fontsize=7)
    ax.set_title(f"boxes, motion, plan  {title}", fontsize=9)

    prob = 1.0 / (1.0 + np.exp(-out.map_logits[index].numpy().astype(np.float64)))
    im = ax_map.imshow(prob, origin="lower", extent=extent, cmap="viridis", vmin=0, vmax=1)
    if drivable.any() and not drivable.all():
        ys = np.linspace(-map_range, map_range, drivable.shape[0])
        ax_map.contour(ys, ys, drivable, levels=[0.5], colors="white", linewidths=0.8)
    fig.colorbar(im, ax=ax_map, fraction=0.046, label="P(drivable)")
    ax_map.set_aspect("equal")
    ax_map.set_title("drivable: predicted (colour) vs GT (white)", fontsize=9)
    for a in (ax, ax_map):
        a.set_xlabel("x [m] (forward)")
        a.set_ylabel("y [m] (left)")
    return fig
