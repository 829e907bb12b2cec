"""Forward shapes and build-time contracts of the driving model."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from drive.models import build_model, tiny_config
from drive.models.build import BackboneConfig, _make
from drive.models.backbone import ResNetBackbone
from drive.models.model import ModelOutputs
from model_fixtures import tiny_inputs, tiny_model

torch.set_num_threads(1)


@pytest.mark.parametrize("view_transform", ["bevformer", "bilinear"])
def test_forward_shapes(view_transform: str) -> None:
    model, cfg = tiny_model(view_transform=view_transform)
    model.eval()
    b, k, s, c, sm = 2, cfg.detection.top_k, cfg.bev_size, cfg.embed_dim, cfg.map.map_size
    with torch.no_grad():
        out = model(*tiny_inputs(model, cfg, batch=b))
    expected = {
        "bev": (b, c, s, s), "det_heatmap": (b, 10, s, s), "det_regression": (b, 10, s, s),
        "det_attributes": (b, 8, s, s), "boxes": (b, k, 9), "scores": (b, k), "labels": (b, k), "attrs": (b, k),
        "map_logits": (b, sm, sm), "motion_trajs": (b, k, 6, 6, 2), "motion_mode_logits": (b, k, 6),
        "plan": (b, 6, 2), "plan_refined": (b, 6, 2), "plan_change": (b,),
    }
    for name, shape in expected.items():
        value = getattr(out, name)
        assert tuple(value.shape) == shape, name
        assert torch.isfinite(value.float()).all(), name
    assert out.labels.dtype == torch.int64 and out.attrs.dtype == torch.int64
    assert out.query_trajs is None and len(out.to_tuple()) == len(ModelOutputs.export_names())
    assert ((out.labels >= 0) & (out.labels < 10)).all()
    assert ((out.attrs >= -1) & (out.attrs < 8)).all()
    # barrier (5) and traffic_cone (9) carry no attribute
    assert (out.attrs[(out.labels == 5) | (out.labels == 9)] == -1).all()
    assert (out.scores[:, :-1] >= out.scores[:, 1:]).all()


def test_query_boxes_add_outputs_without_changing_others() -> None:
    model, cfg = tiny_model()
    model.eval()
    inputs = tiny_inputs(model, cfg, batch=2)
    boxes = torch.zeros(2, 5, 9)
    boxes[..., 3:6] = 2.0
    labels = torch.zeros(2, 5, dtype=torch.long)
    mask = torch.tensor([[1, 1, 0, 0, 0], [1, 0, 0, 0, 0]], dtype=torch.bool)
    with torch.no_grad():
        plain = model(*inputs)
        queried = model(*inputs, query_boxes=boxes, query_labels=labels, query_mask=mask)
    assert queried.query_trajs.shape == (2, 5, 6, 6, 2) and queried.query_mode_logits.shape == (2, 5, 6)
    torch.testing.assert_close(plain.plan_refined, queried.plan_refined)


def test_edge_config_forward() -> None:
    """The edge preset builds with the sizes promised in its docstring and runs one sample."""
    from drive.models import edge_config

    cfg = edge_config()
    assert cfg.image_hw == (128, 352) and cfg.image_crop_top == 0.35 and cfg.bev_size == 50 and cfg.backbone.base_width == 32
    torch.manual_seed(0)
    model = build_model(cfg).eval()
    n_params = sum(p.numel() for p in model.parameters())
    assert 1e6 < n_params < 10e6
    with torch.no_grad():
        out = model(*tiny_inputs(model, cfg, batch=1))
    assert out.bev.shape == (1, 64, 50, 50) and out.map_logits.shape == (1, 200, 200)


def test_ego_status_enters_only_when_switched_on() -> None:
    from drive.models.build import PlanningConfig

    for use in (False, True):
        model, cfg = tiny_model(planning=PlanningConfig(use_ego_status=use))
        model.eval()
        images, ego2img, status, command, prev_bev, prev_T_cur, has_prev = tiny_inputs(model, cfg)
        with torch.no_grad():
            a = model(images, ego2img, status, command, prev_bev, prev_T_cur, has_prev).plan
            b = model(images, ego2img, status + 3.0, command, prev_bev, prev_T_cur, has_prev).plan
            c = model(images, ego2img, status, (command + 1) % 3, prev_bev, prev_T_cur, has_prev).plan
        assert torch.equal(a, b) != use
        assert not torch.allclose(a, c)  # the command always conditions the plan


def test_config_fields_must_be_constructor_arguments() -> None:
    with pytest.raises(TypeError, match="no arguments"):
        _make(ResNetBackbone, tiny_config().neck)
    assert isinstance(_make(ResNetBackbone, BackboneConfig(layers=(1, 1, 1, 1), base_width=8)), ResNetBackbone)


def test_configs_round_trip_through_omegaconf() -> None:
    """Hydra / OmegaConf turn tuples into lists; the builder must accept what comes back."""
    from omegaconf import OmegaConf

    from drive.models import cloud_config, edge_config

    for preset in (tiny_config, edge_config, cloud_config):
        cfg = OmegaConf.to_object(OmegaConf.structured(preset()))  # raises on an unsupported field type
        assert list(cfg.backbone.layers) == list(preset().backbone.layers)
    model = build_model(OmegaConf.to_object(OmegaConf.structured(tiny_config())))
    model.eval()
    with torch.no_grad():
        assert model(*tiny_inputs(model, tiny_config())).plan.shape == (2, 6, 2)


def test_contracts_checked_at_build() -> None:
    with pytest.raises(ValueError, match="divisible"):
        build_model(tiny_config(image_hw=(60, 96)))
    with pytest.raises(ValueError, match="view_transform"):
        build_model(tiny_config(view_transform="pointpillars"))


def test_backbone_layouts_and_checkpoint(tmp_path) -> None:
    for block, norm in [("basic", "group"), ("bottleneck", "batch")]:
        net = ResNetBackbone(block=block, layers=(1, 1, 1, 1), base_width=8, norm=norm, num_groups=4, out_indices=(1, 2, 3))
        feats = net(torch.randn(1, 3, 64, 96))
        assert [tuple(f.shape[-2:]) for f in feats] == [(8, 12), (4, 6), (2, 3)]
        assert [f.shape[1] for f in feats] == list(net.out_channels)
        path = tmp_path / f"{block}.pt"
        torch.save({"state_dict": {f"backbone.{k}": v for k, v in net.state_dict().items()}}, path)
        other = ResNetBackbone(block=block, layers=(1, 1, 1, 1), base_width=8, norm=norm, num_groups=4)
        missing, unexpected = other.load_checkpoint(path, strict=True)
        assert not missing and not unexpected
        for (k, v), v2 in zip(net.state_dict().items(), other.state_dict().values()):
            assert torch.equal(v, v2), k


@pytest.mark.slow
def test_cloud_config_forward() -> None:
    from drive.models import cloud_config

    cfg = cloud_config()
    model = build_model(cfg).eval()
    with torch.no_grad():
        out = model(*tiny_inputs(model, cfg, batch=1))
    assert out.bev.shape == (1, 256, 100, 100)


def test_map_head_resize_equals_grid_sample_on_the_same_square() -> None:
    from drive.models.heads.map_seg import MapSegHead

    torch.manual_seed(0)
    x = torch.randn(2, 8, 12, 12)
    for size in (48, 30, 12):  # 4x, non-integer and 1x upsampling
        head = MapSegHead(8, bev_range=30.0, map_size=size, map_range=30.0, hidden=8)
        assert head.same_extent
        torch.testing.assert_close(F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False),
                                   head.resample(x), atol=1e-5, rtol=1e-5)
    assert not MapSegHead(8, bev_range=30.0, map_size=40, map_range=20.0).same_extent
