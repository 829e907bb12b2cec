"""Camera projection, validity weights, ego-motion warp and the first-frame path."""
from __future__ import annotations

import math

import pytest
import torch

from drive.models.example_inputs import camera_rig
from drive.models.geometry import bev_cell_centers, project_to_cameras
from drive.models.temporal import warp_prev_bev
from drive.models.view_transform_bevformer import BEVFormerViewTransform, SpatialCrossAttention
from drive.models.view_transform_lss import BilinearLiftViewTransform
from model_fixtures import tiny_inputs, tiny_model, tiny_view_transform

torch.set_num_threads(1)
H, W = 64, 96


def test_bev_cell_centres_follow_the_legend() -> None:
    centres = bev_cell_centers(4, 2.0)  # res 1 m
    assert centres[0, 0].tolist() == [-1.5, -1.5]
    assert centres[0, 3].tolist() == [1.5, -1.5]  # column = x
    assert centres[3, 0].tolist() == [-1.5, 1.5]  # row = y


def test_point_straight_ahead_projects_to_front_principal_column() -> None:
    vt = BEVFormerViewTransform(embed_dim=8, bev_size=15, bev_range=15.0, num_layers=1, num_heads=2)
    ego2img = camera_rig((H, W))[2][None]
    grid, valid = vt.reference_points(ego2img, (H, W))  # (1, N, Q, Z, 2), (1, N, Q, Z)
    q = 7 * 15 + 12  # row 7 -> y = 0, column 12 -> x = 10 m straight ahead
    assert torch.allclose(vt.pillars_QZ3[q, :, :2], torch.tensor([10.0, 0.0]).expand(4, 2))
    principal_u = (W / 2 + 0.5) * 2 / W - 1  # cx = W / 2 in pixels -> normalised, align_corners=False
    torch.testing.assert_close(grid[0, 0, q, :, 0], torch.full((4,), principal_u))
    assert valid[0, 0, q].tolist() == [1.0] * 4  # front camera sees the whole pillar
    assert valid[0, 3, q].tolist() == [0.0] * 4  # the back camera has it behind
    # heights: higher points project higher in the image (smaller v)
    assert (grid[0, 0, q, 1:, 1] < grid[0, 0, q, :-1, 1]).all()


def test_behind_camera_and_outside_image_get_zero_weight() -> None:
    ego2img = camera_rig((H, W))[2][None]
    pts = torch.tensor([[-20.0, 0.0, 1.0], [20.0, 0.0, 1.0], [20.0, 0.0, 60.0], [1.8, 0.0, 1.6]])
    grid, valid = project_to_cameras(pts, ego2img, (H, W))
    assert valid[0, 0].tolist() == [0.0, 1.0, 0.0, 0.0]  # behind, visible, above the image, at the lens
    assert torch.isfinite(grid).all() and grid.abs().max() <= 2.0


def test_invisible_camera_contributes_nothing() -> None:
    torch.manual_seed(0)
    n, c = 6, 16
    sca = SpatialCrossAttention(c, num_cameras=n, num_levels=1, num_z=4, num_heads=2, num_points=2)
    vt = BEVFormerViewTransform(embed_dim=c, bev_size=15, bev_range=15.0, num_layers=1, num_heads=2)
    grid, valid = vt.reference_points(camera_rig((H, W))[2][None], (H, W))
    query = torch.randn(1, 15 * 15, c)
    feats = torch.randn(1, n, c, 4, 6)
    out = sca(query, [feats], grid, valid)
    feats2 = feats.clone()
    feats2[:, 3] = torch.randn_like(feats2[:, 3]) * 10  # back camera
    out2 = sca(query, [feats2], grid, valid)
    q_front = 7 * 15 + 12
    torch.testing.assert_close(out[0, q_front], out2[0, q_front])
    q_back = 7 * 15 + 2  # x = -10 m: the back camera sees it
    assert not torch.allclose(out[0, q_back], out2[0, q_back])


def test_warp_identity_returns_prev() -> None:
    prev = torch.randn(2, 3, 8, 8)
    warped = warp_prev_bev(prev, torch.eye(4).expand(2, 4, 4), bev_range=8.0)
    torch.testing.assert_close(warped, prev, atol=1e-5, rtol=0)


def test_warp_translation_by_one_cell_shifts_by_one_cell() -> None:
    prev = torch.randn(1, 3, 8, 8)
    res = 2.0  # 8 cells over +-8 m
    t = torch.eye(4)[None].clone()
    t[0, 0, 3] = res  # the current origin is one cell ahead (+x) of the previous one
    warped = warp_prev_bev(prev, t, bev_range=8.0)
    torch.testing.assert_close(warped[..., :-1], prev[..., 1:], atol=1e-5, rtol=0)
    assert warped[..., -1].abs().max() == 0  # never seen before: zeros
    t = torch.eye(4)[None].clone()
    t[0, 1, 3] = -res  # one cell in -y: rows shift the other way
    warped = warp_prev_bev(prev, t, bev_range=8.0)
    torch.testing.assert_close(warped[..., 1:, :], prev[..., :-1, :], atol=1e-5, rtol=0)


def test_warp_rotation_by_90_degrees() -> None:
    prev = torch.randn(1, 2, 6, 6)
    t = torch.eye(4)[None].clone()
    c, s = math.cos(math.pi / 2), math.sin(math.pi / 2)
    t[0, :2, :2] = torch.tensor([[c, -s], [s, c]])  # current frame = previous rotated by +90 deg
    warped = warp_prev_bev(prev, t, bev_range=6.0)
    # current (x_c, y_r) -> previous (-y_r, x_c), i.e. previous column S-1-r, row c
    expected = torch.stack([torch.stack([prev[..., c, 5 - r] for c in range(6)], -1) for r in range(6)], -2)
    torch.testing.assert_close(warped, expected, atol=1e-5, rtol=0)


@pytest.mark.parametrize("view_transform", ["bevformer", "bilinear", "bevformer+conv_fusion",
                                            "bilinear+temporal_regression"])
def test_first_frame_output_independent_of_prev_bev(view_transform: str) -> None:
    model, cfg = tiny_model(**tiny_view_transform(view_transform))
    model.eval()
    images, ego2img, status, command, prev_bev, prev_T_cur, _ = tiny_inputs(model, cfg, batch=2)
    zeros = torch.zeros(2)
    with torch.no_grad():
        a = model(images, ego2img, status, command, torch.randn_like(prev_bev), prev_T_cur, zeros)
        b = model(images, ego2img, status, command, torch.randn_like(prev_bev) * 5, prev_T_cur, zeros)
        c = model(images, ego2img, status, command, torch.randn_like(prev_bev), prev_T_cur, torch.ones(2))
    for x, y in zip(a.to_tuple(), b.to_tuple()):
        assert torch.equal(x, y)
    assert not torch.allclose(a.bev, c.bev)  # with has_prev = 1 the previous BEV does matter


def _all_camera_reference(sca: SpatialCrossAttention, query, values, ref_grid, ref_valid):
    """The straightforward formulation: every camera sampled with its own zero-padded grid_sample."""
    from einops import rearrange

    from drive.models.attention import deformable_sample

    b, q, _ = query.shape
    n, h, nl, z, p = sca.shape
    off = sca.sampling_offsets(query).view(b, q, n, h, nl, z, p, 2)
    w = sca.attention_weights(query).view(b, q, n, h, nl * z * p).softmax(dim=-1)
    w = w.view(b, q, n, h, nl, z, p) * rearrange(ref_valid, "b n q z -> b q n 1 1 z 1")
    ref = rearrange(ref_grid, "b n q z t -> b n 1 q z 1 t")
    out = 0.0
    for lvl, feat in enumerate(values):
        fh, fw = feat.shape[-2:]
        value = rearrange(sca.value_proj(rearrange(feat, "b n c y x -> b n y x c")), "b n y x (h d) -> (b n h) d y x", h=h)
        grid = ref + rearrange(off[:, :, :, :, lvl], "b q n h z p t -> b n h q z p t") * off.new_tensor([2.0 / fw, 2.0 / fh])
        grid = rearrange(grid, "b n h q z p t -> (b n h) q (z p) t")
        out = out + deformable_sample(value, grid, rearrange(w[:, :, :, :, lvl], "b q n h z p -> (b n h) q (z p)"))
    out = rearrange(out, "(b n h) d q -> b n q (h d)", b=b, n=n, h=h).sum(dim=1)
    count = ref_valid.amax(dim=-1).sum(dim=1).clamp(min=1.0)
    return sca.output_proj(out / count[..., None])


def _random_sca(k):
    torch.manual_seed(0)
    n, c = 6, 16
    sca = SpatialCrossAttention(c, num_cameras=n, num_levels=2, num_z=4, num_heads=2, num_points=2, cameras_per_query=k)
    for lin in (sca.sampling_offsets, sca.attention_weights):  # large random offsets: points leave their images
        torch.nn.init.normal_(lin.weight, std=0.5)
        torch.nn.init.normal_(lin.bias, std=3.0)
    vt = BEVFormerViewTransform(embed_dim=c, bev_size=15, bev_range=15.0, num_layers=1, num_heads=2)
    grid, valid = vt.reference_points(camera_rig((H, W))[2][None].expand(2, -1, -1, -1), (H, W))
    query = torch.randn(2, 15 * 15, c)
    feats = [torch.randn(2, n, c, 4, 6), torch.randn(2, n, c, 2, 3)]
    return sca, query, feats, grid, valid


def test_camera_atlas_with_all_slots_equals_per_camera_sampling() -> None:
    sca, query, feats, grid, valid = _random_sca(k=None)
    torch.testing.assert_close(sca(query, feats, grid, valid), _all_camera_reference(sca, query, feats, grid, valid),
                               atol=1e-5, rtol=1e-5)


def test_camera_slots_keep_the_cameras_that_see_the_pillar() -> None:
    """With 2 slots the result equals the all-camera one wherever at most 2 cameras see the pillar."""
    sca2, query, feats, grid, valid = _random_sca(k=2)
    sca6, *_ = _random_sca(k=None)
    sca6.load_state_dict(sca2.state_dict())
    seen = (valid.amax(dim=-1) > 0).sum(dim=1)  # (B, Q) cameras seeing each pillar
    assert (seen == 2).any() and (seen == 1).any()
    a, b = sca2(query, feats, grid, valid), sca6(query, feats, grid, valid)
    few = seen <= 2
    torch.testing.assert_close(a[few], b[few], atol=1e-5, rtol=1e-5)
    slots = sca2.camera_slots(valid)
    assert slots.shape == (2, 15 * 15, 2)


def test_temporal_regression_head_reads_the_aligned_previous_map() -> None:
    """The two-frame box branch: the previous map changes the boxes (offset, size, heading, velocity) but
    not the heatmap or the attributes; without it the head refuses to run."""
    from drive.models.heads.detection import CenterPointHead

    torch.manual_seed(0)
    head = CenterPointHead(in_channels=16, bev_size=8, bev_range=8.0, head_channels=8, top_k=5,
                           temporal_regression=True).eval()
    bev = torch.randn(1, 16, 8, 8)
    with torch.no_grad():
        a, b = head(bev, bev), head(bev, torch.roll(bev, 1, dims=-1))  # the same map, and one moved by a cell
    assert torch.equal(a.heatmap, b.heatmap) and torch.equal(a.attributes, b.attributes)
    assert not torch.allclose(a.regression, b.regression)
    with pytest.raises(ValueError, match="aligned previous BEV"):
        head(bev)
