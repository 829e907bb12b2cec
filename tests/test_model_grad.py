"""Gradients reach every parameter, and a few optimiser steps fit one fixed tiny batch."""
from __future__ import annotations

import pytest
import torch

from drive.losses import LossConfig, check_loss_config, total_loss
from model_fixtures import synthetic_targets, tiny_inputs, tiny_model, tiny_view_transform

torch.set_num_threads(1)


def _loss_cfg(cfg) -> LossConfig:
    return LossConfig(bev_range=cfg.bev_range, map_range=cfg.map.map_range)


@pytest.mark.parametrize("view_transform", ["bevformer", "bilinear", "bevformer+conv_fusion",
                                            "bevformer+temporal_regression"])
def test_every_parameter_gets_a_finite_gradient(view_transform: str) -> None:
    model, cfg = tiny_model(**tiny_view_transform(view_transform))
    model.train()
    loss_cfg = _loss_cfg(cfg)
    check_loss_config(loss_cfg, model)
    targets = synthetic_targets(2, 6, cfg.map.map_size, cfg.bev_range)
    out = model(*tiny_inputs(model, cfg, batch=2), query_boxes=targets.boxes, query_labels=targets.labels,
                query_mask=targets.mask)
    losses = total_loss(out, targets, loss_cfg)
    assert all(torch.isfinite(v) for v in losses.values()), losses
    losses["loss"].backward()
    missing = [n for n, p in model.named_parameters() if p.requires_grad and p.grad is None]
    assert not missing, missing
    bad = [n for n, p in model.named_parameters() if p.grad is not None and not torch.isfinite(p.grad).all()]
    assert not bad, bad


def test_decoded_agent_matching_path_gives_gradients() -> None:
    """Without query boxes the motion loss matches decoded agents; still finite and differentiable."""
    model, cfg = tiny_model()
    model.train()
    targets = synthetic_targets(2, 6, cfg.map.map_size, cfg.bev_range)
    out = model(*tiny_inputs(model, cfg, batch=2))
    losses = total_loss(out, targets, _loss_cfg(cfg))
    losses["loss"].backward()
    assert torch.isfinite(losses["loss"])


def test_loss_falls_on_a_fixed_batch() -> None:
    model, cfg = tiny_model(seed=3)
    model.train()
    loss_cfg = _loss_cfg(cfg)
    inputs = tiny_inputs(model, cfg, batch=2, seed=3)
    targets = synthetic_targets(2, 6, cfg.map.map_size, cfg.bev_range, seed=3)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    history = []
    for _ in range(25):
        out = model(*inputs, query_boxes=targets.boxes, query_labels=targets.labels, query_mask=targets.mask)
        losses = total_loss(out, targets, loss_cfg)
        opt.zero_grad()
        losses["loss"].backward()
        opt.step()
        history.append({k: v.item() for k, v in losses.items()})
    first, last = history[0], history[-1]
    print({k: (round(first[k], 3), round(last[k], 3)) for k in first})
    assert last["loss"] < 0.5 * first["loss"], (first, last)
    for key in ("detection", "map", "motion", "plan_l1"):
        assert last[key] < first[key], (key, first[key], last[key])
