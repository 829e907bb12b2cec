"""Distillation inside the training system on the tiny synthetic world: the adapter is trained with the model,
the distillation term falls, keyframes without teacher maps add nothing, and the exported model has no adapter."""
from __future__ import annotations

import os
import sys

import numpy as np
import pytest
import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from test_training_system import first_batches, tiny_cfg  # noqa: E402

from drive.data.dataset import index_samples  # noqa: E402
from drive.data.nusc import open_nuscenes  # noqa: E402
from drive.data.teacher_maps import TeacherMaps, write_teacher_maps  # noqa: E402
from drive.training import builders  # noqa: E402

torch.set_num_threads(1)


@pytest.fixture(scope="module")
def distill_run(synth_world, tmp_path_factory):
    """Teacher maps (8 channels on a 12-cell grid, the student's is 32 on 16) for every other keyframe."""
    maps_dir = str(tmp_path_factory.mktemp("maps"))
    nusc = open_nuscenes(synth_world, "v1.0-mini")
    records = index_samples(nusc, [s["token"] for s in nusc.scene], with_targets=False)
    rng = np.random.default_rng(0)
    with_maps = set()
    for i, rec in enumerate(records):
        if i % 2:
            continue
        heat = np.zeros((10, 12, 12), np.float32)
        heat[rng.integers(0, 10), 6, 3:9] = 0.9  # a "car" ahead
        write_teacher_maps(maps_dir, rec.sample_token,
                           TeacherMaps(bev=rng.normal(size=(8, 12, 12)).astype(np.float32), heatmap=heat,
                                       global_T_ego=rec.global_T_ego, bev_range=51.2, teacher="t",
                                       bev_mirror=rng.normal(size=(8, 12, 12)).astype(np.float32)))
        with_maps.add(rec.sample_token)
    cfg = tiny_cfg(tmp_path_factory.mktemp("run"), synth_world, "loss.distill.weight=1.0",
                   f"loss.distill.targets_dir={maps_dir}")
    run = builders.build_run(cfg)
    run.datamodule.setup("fit")
    return run, with_maps


@pytest.mark.filterwarnings("ignore:You are trying to")
def test_the_adapter_trains_with_the_model_and_the_distillation_term_falls(distill_run):
    run, with_maps = distill_run
    system = run.system
    system.train()
    assert system.distiller is not None and system.distiller.adapter.weight.shape[:2] == (8, 32)
    batch = next(b for b in first_batches(run, 16)
                 if all(m.sample_token in with_maps for m in b.current.meta) and bool(b.history[0].valid.any()))
    loss = system.training_step(batch, 0)
    loss.backward()
    missing = [n for n, p in system.named_parameters() if p.requires_grad and p.grad is None]
    assert not missing, missing
    assert float(system.distiller.adapter.weight.grad.abs().sum()) > 0
    opt = torch.optim.AdamW(system.parameters(), lr=2e-3)
    history = []
    for _ in range(10):
        opt.zero_grad()
        out = system(batch.current.features, *system.history_bev(batch))
        d = system.distiller(out.bev, out.det_heatmap, batch.current.meta)
        d["distill"].backward()
        opt.step()
        history.append((float(d["distill_feature"].detach()), float(d["distill_heatmap"].detach())))
    assert history[-1][0] < 0.8 * history[0][0] and history[-1][1] < 0.8 * history[0][1], history


def test_keyframes_without_maps_add_nothing(distill_run):
    run, with_maps = distill_run
    system = run.system
    batch = next(b for b in first_batches(run, 16) if not any(m.sample_token in with_maps for m in b.current.meta))
    system.zero_grad()
    out = system(batch.current.features, *system.history_bev(batch))
    d = system.distiller(out.bev, out.det_heatmap, batch.current.meta)
    d["distill"].backward()
    assert float(d["distill"]) == 0.0
    assert all(p.grad is None or float(p.grad.abs().sum()) == 0.0 for p in system.parameters())


def test_the_adapter_is_not_part_of_the_model(distill_run):
    run, _ = distill_run
    keys = run.system.state_dict().keys()
    assert any(k.startswith("distiller.adapter.") for k in keys)
    assert not any("adapter" in k for k in run.system.model.state_dict())
