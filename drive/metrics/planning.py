"""Open-loop planning metrics: L2, collision and off-road at 1 / 2 / 3 s, in BOTH conventions of the field.

The plan is 6 waypoints at 2 Hz (t + 0.5 ... t + 3.0 s) in the current ego frame, cumulative positions of
the ego origin (rear axle). Horizon ``h`` seconds is waypoint ``2h`` (1-based), i.e. steps 2 / 4 / 6.

Two conventions, named after what they compute (ANCHORS.md: re-scoring one under the other flips rankings):

* ``per_step`` (UniAD): the value AT the horizon. L2 at 2 s = error of waypoint 4; collision at 2 s = rate of
  samples whose ego box overlaps an agent at waypoint 4.
* ``averaged`` (ST-P3 / VAD): the mean over all waypoints UP TO the horizon. L2 at 2 s = per sample the mean
  error of waypoints 1..4, then the mean over samples; collision at 2 s = the mean of the per-step collision
  rates of waypoints 1..4.

Keys of the returned dicts are ``<metric>_<h>s_<convention>`` (``l2_2s_per_step``, ``collision_3s_averaged``)
plus ``<metric>_avg_<convention>`` (mean of the three horizons). Rates are fractions in [0, 1]; papers print
them in percent (multiply by 100). NaN when no sample is valid for a horizon.

Every aggregator takes the arrays of the WHOLE data set (concatenate per-batch arrays; averaging batch means is
not the same when batches have different numbers of valid samples). Inputs may be numpy arrays or torch tensors.
"""
from __future__ import annotations

from typing import Optional, Sequence

import numpy as np

HORIZONS_S: tuple[int, ...] = (1, 2, 3)
STEPS_PER_S = 2  # 2 Hz keyframes
CONVENTIONS: tuple[str, ...] = ("per_step", "averaged")
EGO_LWH: tuple[float, float, float] = (4.084, 1.85, 1.56)  # nuScenes ego (Renault Zoe), as in UniAD / VAD
EGO_CENTER_OFFSET = 1.4  # box centre ahead of the rear axle along the heading, metres
MIN_YAW_DISPLACEMENT = 0.1  # metres; below it the previous heading is kept


def to_numpy(x, dtype=None) -> np.ndarray:
    """numpy view of a numpy array / torch tensor / sequence (detached, on CPU)."""
    if hasattr(x, "detach"):
        x = x.detach().cpu().numpy()
    a = np.asarray(x)
    return a.astype(dtype, copy=False) if dtype is not None else a


def _horizon_step(h: int) -> int:
    """0-based index of the waypoint at ``h`` seconds."""
    return h * STEPS_PER_S - 1


# --------------------------------------------------------------------------------------------------- L2
def plan_l2_errors(pred, gt) -> np.ndarray:
    """Euclidean error of each waypoint ``(N, T)`` from plans ``(N, T, 2)``."""
    pred, gt = to_numpy(pred, np.float64), to_numpy(gt, np.float64)
    if pred.shape != gt.shape:
        raise ValueError(f"plan shapes differ: pred {pred.shape} vs gt {gt.shape}")
    return np.linalg.norm(pred[..., :2] - gt[..., :2], axis=-1)


def plan_l2(pred, gt, mask=None) -> dict[str, float]:
    """L2 (metres) at 1 / 2 / 3 s in both conventions.

    pred, gt: ``(N, 6, 2)`` ego-frame waypoints; mask: ``(N, 6)`` bool validity of the GT waypoints (None: all).
    A sample counts for horizon h under ``per_step`` when waypoint 2h is valid and under ``averaged`` when
    waypoints 1..2h are all valid; otherwise it is left out of that horizon only. ``l2_avg_<conv>`` is the
    mean of the three horizons (NaN if any is NaN). Also returns ``count_<h>s_<conv>``: samples used.
    """
    err = plan_l2_errors(pred, gt)
    valid = np.ones(err.shape, bool) if mask is None else to_numpy(mask).astype(bool)
    out: dict[str, float] = {}
    for h in HORIZONS_S:
        k = _horizon_step(h)
        ok = valid[:, k]
        out[f"l2_{h}s_per_step"] = float(err[ok, k].mean()) if ok.any() else float("nan")
        out[f"count_{h}s_per_step"] = float(ok.sum())
        ok = valid[:, : k + 1].all(axis=1)
        out[f"l2_{h}s_averaged"] = float(err[ok, : k + 1].mean(axis=1).mean()) if ok.any() else float("nan")
        out[f"count_{h}s_averaged"] = float(ok.sum())
    for conv in CONVENTIONS:
        out[f"l2_avg_{conv}"] = float(np.mean([out[f"l2_{h}s_{conv}"] for h in HORIZONS_S]))
    return out


def initial_speed_agreement(pred, gt, mask=None) -> dict[str, float]:
    """Does a plan start at the ego's real speed? The speed each plan implies over its first 0.5 s
    (distance to waypoint 1 x 2 Hz) against the GT future's, over samples whose waypoint 1 is valid.

    A planner that sees no ego status must read its speed off the cameras; when it cannot, its L2 grows with
    every step. Returns ``speed_mae_mps`` (mean absolute difference), ``speed_bias_mps`` (mean of plan - GT),
    ``speed_corr`` (Pearson r; NaN with fewer than 2 samples or a constant speed) and ``speed_count``.
    """
    pred, gt = to_numpy(pred, np.float64), to_numpy(gt, np.float64)
    if pred.shape != gt.shape:
        raise ValueError(f"plan shapes differ: pred {pred.shape} vs gt {gt.shape}")
    ok = np.ones(gt.shape[0], bool) if mask is None else to_numpy(mask).astype(bool)[:, 0]
    v_pred = np.linalg.norm(pred[ok, 0, :2], axis=-1) * STEPS_PER_S
    v_gt = np.linalg.norm(gt[ok, 0, :2], axis=-1) * STEPS_PER_S
    n = int(ok.sum())
    if n == 0:
        return {"speed_mae_mps": float("nan"), "speed_bias_mps": float("nan"), "speed_corr": float("nan"),
                "speed_count": 0.0}
    spread = v_pred.std() > 1e-9 and v_gt.std() > 1e-9
    corr = float(np.corrcoef(v_pred, v_gt)[0, 1]) if n >= 2 and spread else float("nan")
    return {"speed_mae_mps": float(np.abs(v_pred - v_gt).mean()), "speed_bias_mps": float((v_pred - v_gt).mean()),
            "speed_corr": corr, "speed_count": float(n)}


# ------------------------------------------------------------------------------------------ ego footprint
def yaw_from_trajectory(traj, min_displacement: float = MIN_YAW_DISPLACEMENT) -> np.ndarray:
    """Heading ``(N, T)`` of each waypoint of ``(N, T, 2)`` plans starting at the origin with yaw 0.

    Waypoint k's heading is the direction of the displacement from waypoint k-1 (the origin for k = 0); when
    that displacement is shorter than ``min_displacement`` the previous heading is kept (a stopped car keeps
    its heading instead of taking the direction of noise).
    """
    traj = to_numpy(traj, np.float64)
    N, T = traj.shape[:2]
    prev = np.concatenate([np.zeros((N, 1, 2)), traj[:, :-1, :2]], axis=1)
    d = traj[..., :2] - prev
    moved = np.linalg.norm(d, axis=-1) >= min_displacement
    raw = np.arctan2(d[..., 1], d[..., 0])
    yaw = np.zeros((N, T))
    last = np.zeros(N)
    for k in range(T):
        last = np.where(moved[:, k], raw[:, k], last)
        yaw[:, k] = last
    return yaw


def ego_boxes(traj, yaw=None, ego_lwh: Sequence[float] = EGO_LWH,
              ego_center_offset: float = EGO_CENTER_OFFSET) -> np.ndarray:
    """BEV ego boxes ``(N, T, 5)`` = (cx, cy, l, w, yaw) for waypoints of the rear axle ``(N, T, 2)``.

    yaw: ``(N, T)`` headings, or None to derive them with ``yaw_from_trajectory``.
    """
    traj = to_numpy(traj, np.float64)
    yaw = yaw_from_trajectory(traj) if yaw is None else to_numpy(yaw, np.float64)
    cx = traj[..., 0] + ego_center_offset * np.cos(yaw)
    cy = traj[..., 1] + ego_center_offset * np.sin(yaw)
    length = np.full_like(cx, float(ego_lwh[0]))
    width = np.full_like(cx, float(ego_lwh[1]))
    return np.stack([cx, cy, length, width, yaw], axis=-1)


def box_corners_bev(boxes) -> np.ndarray:
    """Corners ``(..., 4, 2)`` of BEV boxes ``(..., 5)`` = (cx, cy, l, w, yaw), counter-clockwise from front-left."""
    b = to_numpy(boxes, np.float64)
    c, s = np.cos(b[..., 4]), np.sin(b[..., 4])
    hl, hw = b[..., 2] / 2, b[..., 3] / 2
    signs = np.array([[1, 1], [-1, 1], [-1, -1], [1, -1]], np.float64)  # (l, w) signs
    dl = signs[:, 0] * hl[..., None]  # (..., 4)
    dw = signs[:, 1] * hw[..., None]
    x = b[..., 0, None] + dl * c[..., None] - dw * s[..., None]
    y = b[..., 1, None] + dl * s[..., None] + dw * c[..., None]
    return np.stack([x, y], axis=-1)


def boxes_overlap_bev(a, b) -> np.ndarray:
    """Do oriented BEV boxes overlap (separating axis theorem)? ``a``, ``b``: ``(..., 5)`` broadcastable.

    Boxes are (cx, cy, l, w, yaw). Two rectangles are disjoint iff their projections on one of the four edge
    normals are disjoint. Touching boxes (zero-area contact) do not overlap.
    """
    a, b = to_numpy(a, np.float64), to_numpy(b, np.float64)
    d = b[..., :2] - a[..., :2]
    axes_a = np.stack([np.stack([np.cos(a[..., 4]), np.sin(a[..., 4])], -1),
                       np.stack([-np.sin(a[..., 4]), np.cos(a[..., 4])], -1)], -2)  # (..., 2 axes, 2)
    axes_b = np.stack([np.stack([np.cos(b[..., 4]), np.sin(b[..., 4])], -1),
                       np.stack([-np.sin(b[..., 4]), np.cos(b[..., 4])], -1)], -2)
    half_a = a[..., 2:4] / 2  # (..., 2): half length along axis 0, half width along axis 1
    half_b = b[..., 2:4] / 2
    shape = np.broadcast_shapes(axes_a.shape, axes_b.shape)
    axes_a, axes_b = np.broadcast_to(axes_a, shape), np.broadcast_to(axes_b, shape)
    axes = np.concatenate([axes_a, axes_b], axis=-2)  # (..., 4, 2)
    # radius of each box projected on each axis: sum_i half_i * |axis_i . n|
    ra = np.abs(np.einsum("...ij,...kj->...ki", axes_a, axes)) @ half_a[..., None]  # (..., 4, 1)
    rb = np.abs(np.einsum("...ij,...kj->...ki", axes_b, axes)) @ half_b[..., None]
    dist = np.abs(np.einsum("...kj,...j->...k", axes, d))  # (..., 4)
    separated = dist >= (ra[..., 0] + rb[..., 0])
    return ~separated.any(axis=-1)


# ------------------------------------------------------------------------------------------- collisions
def agents_future_boxes(boxes, future, future_yaw, future_mask, mask):
    """Assemble other agents' future boxes from ``Targets`` fields (current ego frame).

    boxes ``(N, M, 9)``, future ``(N, M, 6, 2)``, future_yaw ``(N, M, 6)``, future_mask ``(N, M, 6)``,
    mask ``(N, M)`` -> (``(N, M, 6, 7)`` x y z l w h yaw at each future step, ``(N, M, 6)`` bool validity).
    """
    boxes = to_numpy(boxes, np.float64)
    future, future_yaw = to_numpy(future, np.float64), to_numpy(future_yaw, np.float64)
    valid = to_numpy(future_mask).astype(bool) & to_numpy(mask).astype(bool)[..., None]
    T = future.shape[2]
    out = np.concatenate([future, np.repeat(boxes[:, :, None, 2:6], T, axis=2), future_yaw[..., None]], axis=-1)
    return out, valid


def plan_collisions(pred, pred_yaw, agents_future_boxes, agents_future_mask, ego_lwh: Sequence[float] = EGO_LWH,
                    ego_center_offset: float = EGO_CENTER_OFFSET) -> np.ndarray:
    """Per-sample per-step collision flags ``(N, 6)`` bool of the ego box along the plan with other agents.

    pred: ``(N, 6, 2)`` rear-axle waypoints; pred_yaw: ``(N, 6)`` or None (derived with ``yaw_from_trajectory``).
    agents_future_boxes: ``(N, M, 6, 7)`` x y z l w h yaw of every other agent at each future step, in the
    current ego frame (``agents_future_boxes()`` builds it from ``Targets``); agents_future_mask ``(N, M, 6)``.
    The ego box (``ego_lwh``, centre ``ego_center_offset`` ahead of the rear axle) and the agents' boxes are
    tested for oriented-box overlap in BEV (height ignored). Step k collides if any valid agent overlaps at k.
    """
    ego = ego_boxes(pred, pred_yaw, ego_lwh, ego_center_offset)  # (N, T, 5)
    ag = to_numpy(agents_future_boxes, np.float64)
    am = to_numpy(agents_future_mask).astype(bool)
    if ag.shape[1] == 0:
        return np.zeros(ego.shape[:2], bool)
    ag_bev = ag[..., [0, 1, 3, 4, 6]]  # (N, M, T, 5)
    hit = boxes_overlap_bev(ego[:, None], ag_bev) & am  # (N, M, T)
    return hit.any(axis=1)


def event_rates(flags, valid=None, name: str = "collision") -> dict[str, float]:
    """Rates of per-step events ``(N, 6)`` at 1 / 2 / 3 s in both conventions.

    valid: ``(N, 6)`` bool, which (sample, step) pairs count (None: all), e.g. the GT ego future mask.
    per_step at h: rate at waypoint 2h over its valid samples. averaged at h: mean of the per-step rates of
    waypoints 1..2h (ST-P3 / VAD).
    """
    flags = to_numpy(flags).astype(bool)
    valid = np.ones(flags.shape, bool) if valid is None else to_numpy(valid).astype(bool)
    n = valid.sum(axis=0)
    with np.errstate(invalid="ignore", divide="ignore"):
        rate = np.where(n > 0, (flags & valid).sum(axis=0) / np.maximum(n, 1), np.nan)  # (T,)
    out: dict[str, float] = {}
    for h in HORIZONS_S:
        k = _horizon_step(h)
        out[f"{name}_{h}s_per_step"] = float(rate[k])
        out[f"{name}_{h}s_averaged"] = float(np.mean(rate[: k + 1]))
    for conv in CONVENTIONS:
        out[f"{name}_avg_{conv}"] = float(np.mean([out[f"{name}_{h}s_{conv}"] for h in HORIZONS_S]))
    return out


def collision_rates(flags, valid=None) -> dict[str, float]:
    """``event_rates`` of ``plan_collisions`` flags: keys ``collision_<h>s_<convention>``."""
    return event_rates(flags, valid, "collision")


# --------------------------------------------------------------------------------------------- off-road
def points_in_raster(points, raster, bev_range: float):
    """Look up ego-frame points ``(N, P, 2)`` in BEV rasters ``(N, S, S)`` (row = y, col = x, types.py grid).

    Returns (values ``(N, P)`` float, inside ``(N, P)`` bool); points outside the grid get value 0, inside False.
    """
    points = to_numpy(points, np.float64)
    raster = to_numpy(raster, np.float64)
    N, S = raster.shape[0], raster.shape[-1]
    res = 2.0 * bev_range / S
    col = np.floor((points[..., 0] + bev_range) / res).astype(np.int64)
    row = np.floor((points[..., 1] + bev_range) / res).astype(np.int64)
    inside = (col >= 0) & (col < S) & (row >= 0) & (row < S)
    n_idx = np.broadcast_to(np.arange(N).reshape((N,) + (1,) * (points.ndim - 2)), col.shape)
    vals = np.where(inside, raster[n_idx, np.clip(row, 0, S - 1), np.clip(col, 0, S - 1)], 0.0)
    return vals, inside


def plan_offroad(pred, drivable, bev_range: float, map_valid=None, pred_yaw=None, mode: str = "corners",
                 ego_lwh: Sequence[float] = EGO_LWH, ego_center_offset: float = EGO_CENTER_OFFSET) -> np.ndarray:
    """Per-sample per-step off-road flags ``(N, 6)`` bool of the plan on the drivable raster.

    drivable: ``(N, S, S)`` {0, 1} (or probabilities, > 0.5 = drivable) on the BEV grid of ``drive/types.py``
    covering ``[-bev_range, bev_range]``. mode ``"corners"`` (default, like NAVSIM's drivable-area compliance):
    a step is off-road when any of the 4 corners of the ego footprint lies on a non-drivable cell;
    ``"centre"``: when the footprint centre does. Points outside the raster are unknown and never off-road.
    Samples with ``map_valid == 0`` (placeholder map) are never flagged; exclude them from rates with
    ``offroad_rates(flags, map_valid)``.
    """
    ego = ego_boxes(pred, pred_yaw, ego_lwh, ego_center_offset)  # (N, T, 5)
    N, T = ego.shape[:2]
    if mode == "corners":
        pts = box_corners_bev(ego).reshape(N, T * 4, 2)
    elif mode == "centre":
        pts = ego[..., :2]
    else:
        raise ValueError(f"mode must be 'corners' or 'centre', got {mode!r}")
    vals, inside = points_in_raster(pts, drivable, bev_range)
    off = (inside & (vals <= 0.5)).reshape(N, T, -1).any(axis=-1)
    if map_valid is not None:
        off &= to_numpy(map_valid).astype(bool).reshape(N, 1)
    return off


def offroad_rates(flags, map_valid=None, valid=None) -> dict[str, float]:
    """``event_rates`` of ``plan_offroad`` flags over samples with a valid map: keys ``offroad_<h>s_<conv>``."""
    flags = to_numpy(flags).astype(bool)
    ok = np.ones(flags.shape, bool) if valid is None else to_numpy(valid).astype(bool)
    if map_valid is not None:
        ok = ok & (to_numpy(map_valid).reshape(-1, 1) > 0)
    return event_rates(flags, ok, "offroad")


def planning_metrics(pred, gt, gt_mask, agents_boxes=None, agents_mask=None, pred_yaw=None,
                     drivable=None, bev_range: Optional[float] = None, map_valid=None) -> dict[str, float]:
    """All planning metrics of a data set in one dict: L2, initial speed, collision (if agents given), off-road (if
    a raster is given). Collision and off-road steps count where the GT ego waypoint is valid (``gt_mask``)."""
    out = plan_l2(pred, gt, gt_mask)
    out.update(initial_speed_agreement(pred, gt, gt_mask))
    if agents_boxes is not None:
        out.update(collision_rates(plan_collisions(pred, pred_yaw, agents_boxes, agents_mask), gt_mask))
    if drivable is not None:
        if bev_range is None:
            raise ValueError("bev_range is needed with drivable")
        flags = plan_offroad(pred, drivable, bev_range, map_valid, pred_yaw)
        out.update(offroad_rates(flags, map_valid, gt_mask))
    return out
