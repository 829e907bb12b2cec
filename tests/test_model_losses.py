"""Losses and the feasibility layer on hand-made cases with known answers; empty-agent frames."""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from drive.losses import LossConfig, detection_loss, map_loss, motion_loss, planning_loss, total_loss
from drive.losses.detection import build_detection_targets, gaussian_focal_loss, gaussian_radius
from drive.losses.motion import match_decoded_agents
from drive.losses.planning import PlanningLossConfig, collision_penalty, offroad_penalty, plan_l1
from drive.models.feasibility import FeasibilityLayer
from drive.models.heads.detection import CenterPointHead
from model_fixtures import empty_targets, synthetic_targets, tiny_inputs, tiny_model

torch.set_num_threads(1)
S, R = 16, 16.0  # 2 m cells


def _one_box_targets(x: float, y: float, label: int = 0, num_pts: int = 5):
    t = empty_targets(1, 2, S)
    t.boxes[0, 0] = torch.tensor([x, y, 0.8, 4.5, 1.9, 1.6, 0.3, 1.0, -0.5])
    t.labels[0, 0], t.num_pts[0, 0], t.mask[0, 0] = label, num_pts, True
    t.attributes[0, 0] = 5
    return t


# --- detection -------------------------------------------------------------------------------
def test_heatmap_target_peaks_at_the_gt_centre_cell() -> None:
    t = _one_box_targets(5.1, -3.3, label=3)
    dt = build_detection_targets(t, 10, S, R)
    row, col = int((-3.3 + R) // 2), int((5.1 + R) // 2)
    assert dt.heatmap[0, 3, row, col] == 1.0
    assert dt.heatmap[0, 3].flatten().topk(2).values[1] < 1.0  # a single peak
    assert dt.heatmap[0, [c for c in range(10) if c != 3]].max() == 0  # other classes untouched
    assert dt.valid.tolist() == [[True, False]]
    assert dt.cell_index[0, 0] == row * S + col
    torch.testing.assert_close(dt.regression[0, 0, :2], torch.tensor([(5.1 + R) / 2 - col, (-3.3 + R) / 2 - row]))


def test_boxes_without_points_or_outside_the_grid_are_skipped() -> None:
    for t in (_one_box_targets(5.0, 5.0, num_pts=0), _one_box_targets(40.0, 0.0)):
        dt = build_detection_targets(t, 10, S, R)
        assert dt.heatmap.max() == 0 and not dt.valid.any()


def test_gaussian_radius_is_centerpoint_formula() -> None:
    # CenterPoint's numpy implementation on (h, w) = (4, 2), min_overlap 0.1
    h, w, mo = 4.0, 2.0, 0.1
    r1 = (h + w + math.sqrt((h + w) ** 2 - 4 * w * h * (1 - mo) / (1 + mo))) / 2
    r2 = (2 * (h + w) + math.sqrt((2 * (h + w)) ** 2 - 16 * (1 - mo) * w * h)) / 2
    r3 = (-2 * mo * (h + w) + math.sqrt((2 * mo * (h + w)) ** 2 - 16 * mo * (mo - 1) * w * h)) / 2
    got = gaussian_radius(torch.tensor(h), torch.tensor(w), mo)
    assert abs(got.item() - min(r1, r2, r3)) < 1e-5


def test_decoding_inverts_the_regression_targets() -> None:
    head = CenterPointHead(in_channels=8, bev_size=S, bev_range=R, head_channels=8, top_k=3)
    t = _one_box_targets(5.1, -3.3, label=0)
    dt = build_detection_targets(t, 10, S, R)
    heat = torch.full((1, 10, S, S), -10.0)
    heat.view(1, 10, -1)[0, 0, dt.cell_index[0, 0]] = 5.0
    reg = torch.zeros(1, 10, S * S)
    reg[0, :, dt.cell_index[0, 0]] = dt.regression[0, 0]
    attr = torch.zeros(1, 8, S * S)
    attr[0, 5, dt.cell_index[0, 0]] = 3.0
    boxes, scores, labels, attrs = head.decode(heat, reg.view(1, 10, S, S), attr.view(1, 8, S, S))
    torch.testing.assert_close(boxes[0, 0], t.boxes[0, 0], atol=1e-5, rtol=0)
    assert labels[0, 0] == 0 and attrs[0, 0] == 5 and scores[0, 0] > 0.99 and scores[0, 1] < 1e-3


def test_focal_loss_small_for_the_right_heatmap_large_for_the_wrong_one() -> None:
    t = _one_box_targets(5.1, -3.3)
    target = build_detection_targets(t, 10, S, R).heatmap
    good = torch.where(target >= 1, torch.tensor(8.0), torch.tensor(-8.0))
    assert gaussian_focal_loss(good, target) < 1e-3
    assert gaussian_focal_loss(-good, target) > 5.0


def test_detection_loss_components() -> None:
    t = _one_box_targets(5.1, -3.3)
    dt = build_detection_targets(t, 10, S, R)
    reg = torch.zeros(1, 10, S * S)
    reg[0, :, dt.cell_index[0, 0]] = dt.regression[0, 0]
    attr = torch.zeros(1, 8, S * S)
    attr[0, 5, dt.cell_index[0, 0]] = 20.0
    out = detection_loss(torch.zeros(1, 10, S, S), reg.view(1, 10, S, S), attr.view(1, 8, S, S), t, R)
    assert out["det_regression"] < 1e-6 and out["det_attribute"] < 1e-6 and out["det_heatmap"] > 0
    reg[0, 0, dt.cell_index[0, 0]] += 1.0  # 1 cell of x-offset error, code weight 1
    out = detection_loss(torch.zeros(1, 10, S, S), reg.view(1, 10, S, S), attr.view(1, 8, S, S), t, R)
    assert abs(out["det_regression"].item() - 1.0) < 1e-5


def test_spread_regression_targets_the_cells_around_the_centre() -> None:
    from drive.losses.detection import DetectionLossConfig, spread_regression

    t = _one_box_targets(5.1, -3.3)
    dt = build_detection_targets(t, 10, S, R)
    row, col = int((-3.3 + R) // 2), int((5.1 + R) // 2)
    cells, reg, w = spread_regression(dt, S, radius=1)
    assert cells.shape == (1, 2 * 9) and reg.shape == (1, 18, 10) and w.shape == (1, 18)
    assert w[0, 9:].abs().max() == 0  # the padding box slot
    assert cells[0, 4] == row * S + col and w[0, 4] == 1.0  # the centre: weight 1, the target as built
    torch.testing.assert_close(reg[0, 4], dt.regression[0, 0])
    sigma = dt.sigma[0, 0].item()
    for k, (dy, dx) in enumerate([(a, b) for a in (-1, 0, 1) for b in (-1, 0, 1)]):
        assert cells[0, k] == (row + dy) * S + col + dx
        assert abs(w[0, k].item() - math.exp(-(dx * dx + dy * dy) / (2 * sigma**2))) < 1e-6
        # the offset is measured from the predicting cell: cell + offset is the same centre from every cell
        assert abs(col + dx + reg[0, k, 0].item() - (5.1 + R) / 2) < 1e-5
        assert abs(row + dy + reg[0, k, 1].item() - (-3.3 + R) / 2) < 1e-5
        torch.testing.assert_close(reg[0, k, 2:], dt.regression[0, 0, 2:])
    # a prediction right at the centre only is perfect for radius 0, wrong around it for radius 1
    pred = torch.zeros(1, 10, S * S)
    pred[0, :, dt.cell_index[0, 0]] = dt.regression[0, 0]
    args = (torch.zeros(1, 10, S, S), pred.view(1, 10, S, S), torch.zeros(1, 8, S, S), t, R)
    assert detection_loss(*args)["det_regression"] < 1e-6
    assert detection_loss(*args, DetectionLossConfig(regression_radius=1))["det_regression"] > 0.1
    for k in range(9):  # right at every cell of the window: perfect again
        pred[0, :, cells[0, k]] = reg[0, k].nan_to_num(0.0)
    assert detection_loss(*args, DetectionLossConfig(regression_radius=1))["det_regression"] < 1e-6
    # a box in the grid's corner cell: the window's outside cells weigh nothing
    corner = build_detection_targets(_one_box_targets(-R + 0.5, -R + 0.5), 10, S, R)
    _, _, wc = spread_regression(corner, S, radius=1)
    assert (wc[0, :9] > 0).sum() == 4


# --- map -------------------------------------------------------------------------------------
def test_map_loss() -> None:
    target = (torch.rand(2, S, S) > 0.5).float()
    perfect = (target * 2 - 1) * 20
    out = map_loss(perfect, target, torch.ones(2))
    assert out["map_bce"] < 1e-6 and out["map_dice"] < 0.05
    wrong = map_loss(-perfect, target, torch.ones(2))
    assert wrong["map"] > 10
    masked = map_loss(-perfect, target, torch.zeros(2))  # placeholder maps do not count
    assert masked["map"] == 0


# --- motion ----------------------------------------------------------------------------------
def _motion_case():
    t = empty_targets(1, 3, S)
    t.mask[0, :2] = True
    t.boxes[0, :2, :2] = torch.tensor([[1.0, 2.0], [-4.0, 0.0]])
    steps = torch.arange(1, 7, dtype=torch.float32)[:, None]
    t.future[0, 0] = t.boxes[0, 0, :2] + steps * torch.tensor([1.0, 0.0])
    t.future_mask[0, 0] = True  # agent 1 has no valid future -> ignored
    trajs = torch.zeros(1, 3, 6, 6, 2)
    for m in range(6):
        trajs[0, 0, m] = steps * torch.tensor([1.0, 0.0]) + torch.tensor([0.0, abs(m - 2) * 1.0])  # mode 2 exact
    trajs[0, 1] = 100.0
    return t, trajs


def test_wta_picks_the_closest_mode() -> None:
    t, trajs = _motion_case()
    logits = torch.zeros(1, 3, 6)
    out = motion_loss(trajs, logits, t)
    assert out["motion_reg"] < 1e-6 and out["motion_min_ade"] < 1e-6
    assert abs(out["motion_cls"].item() - math.log(6)) < 1e-5  # uniform logits, CE to any winner
    logits[0, 0, 2] = 10.0
    assert motion_loss(trajs, logits, t)["motion_cls"] < 1e-3  # confident on the winner (mode 2)
    logits[0, 0, 2], logits[0, 0, 0] = 0.0, 10.0
    assert motion_loss(trajs, logits, t)["motion_cls"] > 5.0


def test_decoded_agents_are_matched_within_radius() -> None:
    t, trajs = _motion_case()
    decoded = torch.zeros(1, 4, 9)
    decoded[0, 2, :2] = torch.tensor([1.5, 2.0])  # 0.5 m from GT agent 0
    decoded[0, 0, :2] = torch.tensor([30.0, 30.0])
    dec_trajs = torch.zeros(1, 4, 6, 6, 2)
    dec_trajs[0, 2] = trajs[0, 0] - torch.tensor([0.5, 0.0])  # offsets from the decoded centre
    aligned, logits, matched = match_decoded_agents(dec_trajs, torch.zeros(1, 4, 6), decoded, t.boxes, t.mask, 2.0)
    assert matched.tolist() == [[True, False, False]]
    torch.testing.assert_close(aligned[0, 0], trajs[0, 0])
    assert motion_loss(aligned, logits, t, valid_BM=matched)["motion_reg"] < 1e-6


# --- planning --------------------------------------------------------------------------------
def test_plan_l1_of_one_metre_offset_is_one() -> None:
    t = empty_targets(2, 1, S)
    plan = t.ego_future + torch.tensor([1.0, 0.0])
    assert abs(plan_l1(plan, t.ego_future, t.ego_future_mask).item() - 1.0) < 1e-6
    t.ego_future_mask[:, 3:] = False
    plan[:, 3:] += 50.0  # masked steps do not count
    assert abs(plan_l1(plan, t.ego_future, t.ego_future_mask).item() - 1.0) < 1e-6


def test_collision_penalty_zero_when_far_positive_when_overlapping() -> None:
    t = empty_targets(1, 2, S)
    t.mask[0, 0] = True
    t.future_mask[0, 0] = True
    plan = t.ego_future.clone()
    t.future[0, 0] = plan[0] + torch.tensor([0.0, 10.0])  # 10 m to the side all the time
    assert collision_penalty(plan, t, margin=2.0) == 0
    t.future[0, 0, 2] = plan[0, 2] + torch.tensor([0.0, 0.5])  # 0.5 m away at step 3 only
    assert abs(collision_penalty(plan, t, margin=2.0).item() - 1.5 / 6) < 1e-6
    t.future_mask[0, 0, 2] = False  # an invalid step never collides
    assert collision_penalty(plan, t, margin=2.0) == 0


def test_offroad_penalty_reads_the_raster() -> None:
    t = synthetic_targets(1, 2, 64, 32.0)  # road: |y| < 6 m
    on = torch.stack([torch.arange(1, 7) * 2.0, torch.zeros(6)], -1)[None]
    off = on + torch.tensor([0.0, 15.0])
    assert offroad_penalty(on, t, 32.0, blur=1) < 1e-6
    assert abs(offroad_penalty(off, t, 32.0, blur=1).item() - 1.0) < 1e-6
    t.map_valid[:] = 0
    assert offroad_penalty(off, t, 32.0, blur=1) == 0


def test_offroad_has_a_gradient_near_the_edge() -> None:
    t = synthetic_targets(1, 2, 64, 32.0)
    plan = (torch.stack([torch.arange(1, 7) * 2.0, torch.full((6,), 6.5)], -1)[None]).requires_grad_()
    loss = planning_loss(plan, t, 32.0, PlanningLossConfig(l1_weight=0, collision_weight=0))["planning"]
    loss.backward()
    assert (plan.grad[0, :, 1] > 0).all()  # descending moves the plan back towards the road (-y)


# --- empty frames ----------------------------------------------------------------------------
def test_every_loss_handles_frames_without_agents() -> None:
    model, cfg = tiny_model()
    model.train()
    for m in (0, 4):
        targets = empty_targets(2, m, cfg.map.map_size)
        out = model(*tiny_inputs(model, cfg), query_boxes=targets.boxes, query_labels=targets.labels.clamp(min=0),
                    query_mask=targets.mask)
        losses = total_loss(out, targets, LossConfig(bev_range=cfg.bev_range, map_range=cfg.map.map_range))
        assert all(torch.isfinite(v) for v in losses.values()), losses
        assert losses["motion"] == 0 and losses["det_regression"] == 0 and losses["plan_collision"] == 0
        losses["loss"].backward()
        model.zero_grad()
    out = model(*tiny_inputs(model, cfg))  # decoded-agent matching with no GT
    losses = total_loss(out, empty_targets(2, 0, cfg.map.map_size), LossConfig(bev_range=cfg.bev_range, map_range=cfg.map.map_range))
    assert losses["motion"] == 0 and torch.isfinite(losses["loss"])


# --- feasibility -----------------------------------------------------------------------------
def _agents_far(b: int, a: int = 2):
    return torch.full((b, a, 2), 100.0), torch.zeros(b, a, 6, 6, 2), torch.zeros(b, a, 6), torch.ones(b, a)


def test_feasibility_gradient_matches_autograd_of_its_cost() -> None:
    layer = FeasibilityLayer()
    g = torch.Generator().manual_seed(0)
    plan = torch.cumsum(torch.rand(3, 6, 2, generator=g) * torch.tensor([4.0, 1.5]), 1)
    x = (plan + torch.randn(3, 6, 2, generator=g) * 0.5).requires_grad_()
    agents = plan[:, None] + torch.randn(3, 4, 6, 2, generator=g)
    weight = torch.rand(3, 4, generator=g)
    auto, = torch.autograd.grad(layer.cost(x, plan, agents, weight).sum(), x)
    torch.testing.assert_close(layer.gradient(x.detach(), plan, agents, weight), auto, atol=1e-4, rtol=1e-4)


def test_feasibility_keeps_a_feasible_plan() -> None:
    layer = FeasibilityLayer()
    plan = torch.stack([torch.arange(1, 7) * 4.0, torch.zeros(6)], -1)[None]  # straight, 8 m/s
    refined, change = layer(plan, *_agents_far(1))
    assert change.item() < 1e-4
    torch.testing.assert_close(refined, plan, atol=1e-4, rtol=0)


def test_feasibility_moves_away_from_an_agent_on_the_path() -> None:
    layer = FeasibilityLayer()
    plan = torch.stack([torch.arange(1, 7) * 2.5, torch.zeros(6)], -1)[None]
    xy, trajs, logits, scores = _agents_far(1)
    xy[0, 0] = torch.tensor([7.5, 0.3])  # standing right on waypoint 3
    refined, change = layer(plan, xy, trajs, logits, scores)
    assert (refined[0, 2] - xy[0, 0]).norm() > 1.5 and change.item() > 1.0
    scores[0, 0] = 0.1  # below the score threshold: ignored
    _, change = layer(plan, xy, trajs, logits, scores)
    assert change.item() < 1e-4


def test_feasibility_reduces_curvature_beyond_the_limit() -> None:
    layer = FeasibilityLayer()
    k, v = 0.5, 6.0  # radius 2 m at 6 m/s: beyond the 0.2 1/m limit
    s = torch.arange(1, 7) * 0.5 * v
    plan = torch.stack([torch.sin(k * s) / k, (1 - torch.cos(k * s)) / k], -1)[None]
    refined, change = layer(plan, *_agents_far(1))

    def excess(x):
        lateral, limit, _ = layer.curvature_terms(x)
        return F.relu(lateral.abs() - limit).amax()

    assert excess(refined) < 0.6 * excess(plan) and change.item() > 0.5
