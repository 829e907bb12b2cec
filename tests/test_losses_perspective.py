"""The perspective (image-view) auxiliary loss on hand-made cameras and boxes with known answers."""
from __future__ import annotations

import math

import torch

from drive.losses.perspective import PerspectiveLossConfig, box_corners, build_perspective_targets, perspective_loss
from drive.models.heads.perspective import PerspectiveHead
from drive.models.model import ModelOutputs
from model_fixtures import empty_targets

torch.set_num_threads(1)
H, W, FH, FW = 64, 128, 4, 8  # stride 16
F_PX = 50.0


def front_camera() -> torch.Tensor:
    """(1, 1, 4, 4) ego2img of a camera at the ego origin looking along +x (OpenCV axes), f = 50 px."""
    cam_T_ego = torch.tensor([[0.0, -1.0, 0.0, 0.0], [0.0, 0.0, -1.0, 0.0], [1.0, 0.0, 0.0, 0.0], [0, 0, 0, 1.0]])
    k = torch.tensor([[F_PX, 0.0, W / 2, 0.0], [0.0, F_PX, H / 2, 0.0], [0.0, 0.0, 1.0, 0.0], [0, 0, 0, 1.0]])
    return (k @ cam_T_ego)[None, None]


def one_box(x: float, y: float, z: float = 0.0, label: int = 2, num_pts: int = 3):
    t = empty_targets(1, 2, 8)
    t.boxes[0, 0] = torch.tensor([x, y, z, 4.0, 2.0, 1.5, 0.0, 0.0, 0.0])
    t.labels[0, 0], t.num_pts[0, 0], t.mask[0, 0] = label, num_pts, True
    return t


def test_centre_projects_to_the_hand_computed_cell_with_its_log_depth() -> None:
    # x = 20 m ahead, y = 4 m left: u = 64 - 50 * 4 / 20 = 54 px, v = 32 px -> cell (row 2, col 3)
    t = build_perspective_targets(one_box(20.0, 4.0), front_camera(), (H, W), (FH, FW), 10)
    assert t.valid.tolist() == [[[True, False]]]
    assert int(t.cell_index[0, 0, 0]) == 2 * FW + 3
    assert abs(float(t.log_depth[0, 0, 0]) - math.log(20.0)) < 1e-5
    assert float(t.heatmap[0, 0, 2, 2, 3]) == 1.0
    assert float(t.heatmap[0, 0, [c for c in range(10) if c != 2]].max()) == 0.0  # other classes untouched
    assert (t.heatmap[0, 0, 2] == 1.0).sum() == 1  # one peak


def test_boxes_behind_outside_or_without_points_give_no_target() -> None:
    for t in (one_box(-20.0, 0.0), one_box(5.0, 30.0), one_box(20.0, 0.0, num_pts=0)):
        pt = build_perspective_targets(t, front_camera(), (H, W), (FH, FW), 10)
        assert not pt.valid.any() and float(pt.heatmap.max()) == 0.0


def test_radius_grows_with_the_projected_size() -> None:
    # at 3 m the box fills most of the image (about 6 x 4 cells, radius 2); at 60 m it is under a cell (radius min_radius = 1)
    near = build_perspective_targets(one_box(3.0, 0.0), front_camera(), (H, W), (FH, FW), 10).heatmap
    far = build_perspective_targets(one_box(60.0, 0.0), front_camera(), (H, W), (FH, FW), 10).heatmap
    assert int((near > 0).sum()) == 5 * 4 and int((far > 0).sum()) == 3 * 3  # windows clipped by the 4 x 8 grid


def test_box_corners_of_a_rotated_box() -> None:
    box = torch.tensor([[[1.0, 2.0, 0.5, 4.0, 2.0, 1.0, math.pi / 2, 0.0, 0.0]]])
    c = (box_corners(box)[0, 0] * 1e4).round() / 1e4  # cos(pi / 2) is -4e-8 in float32
    # yaw 90 deg: length along +y, width along x
    torch.testing.assert_close(c[:, 0].unique().sort().values, torch.tensor([0.0, 2.0]), atol=1e-5, rtol=0)
    torch.testing.assert_close(c[:, 1].unique().sort().values, torch.tensor([0.0, 4.0]), atol=1e-5, rtol=0)
    torch.testing.assert_close(c[:, 2].unique().sort().values, torch.tensor([0.0, 1.0]), atol=1e-5, rtol=0)


def test_loss_is_low_for_the_target_and_trains_the_head() -> None:
    t = one_box(20.0, 4.0)
    cam = front_camera()
    pt = build_perspective_targets(t, cam, (H, W), (FH, FW), 10)
    good_heat = torch.logit(pt.heatmap.clamp(1e-4, 1 - 1e-4))
    good_depth = torch.full((1, 1, 1, FH, FW), math.log(20.0))
    good = perspective_loss(good_heat, good_depth, t, cam, (H, W))
    bad = perspective_loss(torch.zeros_like(good_heat), torch.zeros_like(good_depth), t, cam, (H, W))
    assert float(good["persp_depth"]) < 1e-5 and abs(float(bad["persp_depth"]) - math.log(20.0)) < 1e-5
    assert float(good["persp_heatmap"]) < 0.01 < float(bad["persp_heatmap"])

    torch.manual_seed(0)
    head = PerspectiveHead(8, hidden=8)
    feats = torch.randn(1, 1, 8, FH, FW)
    opt = torch.optim.Adam(head.parameters(), lr=1e-2)
    losses = []
    for _ in range(30):
        opt.zero_grad()
        heat, depth = head(feats)
        loss = perspective_loss(heat, depth, t, cam, (H, W), PerspectiveLossConfig(weight=1.0))["perspective"]
        loss.backward()
        opt.step()
        losses.append(float(loss))
    assert losses[-1] < 0.5 * losses[0], losses


def test_image_features_are_never_a_graph_output() -> None:
    assert "image_feats" in ModelOutputs.names() and "image_feats" not in ModelOutputs.export_names()
