"""The planner stage (``drive-train experiment=plan_stage``): the head's cached inputs are exactly what it sees,
only the head changes, bad configs fail clearly, and a run on a tiny world writes a checkpoint drive-eval reads."""
from __future__ import annotations

import json
from dataclasses import replace

import numpy as np
import pytest
import torch

from drive.data.dataset import NuScenesDrivingDataset, collate
from drive.evaluation.backends import TorchBackend
from drive.evaluation.checkpoint import load_model
from drive.evaluation.runner import BevStream
from drive.losses import LossConfig
from drive.models import build_model, tiny_config
from drive.data.datamodule import DataConfig
from drive.training.plan_stage import (HEAD, PlannerStage, PlanStageConfig, build_stage_model,
                                       collect_planner_inputs, holdout_rows, mirrored_split)
from drive.types import COMMANDS
from eval_fixtures import write_checkpoint
from test_training_cli import drive_train, tiny

torch.set_num_threads(1)


def tiny_dataset(root: str, split: str) -> NuScenesDrivingDataset:
    cfg = tiny_config()
    return NuScenesDrivingDataset(root, "v1.0-mini", split, image_size=cfg.image_hw, map_size=cfg.map.map_size)


def test_holdout_takes_whole_scenes_spread_over_the_split():
    scenes = [s for s in "abcdef" for _ in range(3)]
    rows = holdout_rows(scenes, 2)
    assert rows.sum() == 6 and set(np.array(scenes)[rows]) == {"a", "f"}
    assert not holdout_rows(scenes, 0).any()
    with pytest.raises(ValueError, match="holdout_scenes=6 leaves no training scene"):
        holdout_rows(scenes, 6)


def test_stage_model_keeps_every_weight_but_the_head():
    torch.manual_seed(0)
    cfg = tiny_config()
    source = build_model(cfg).eval()
    ego_cfg = replace(cfg, planning=replace(cfg.planning, use_ego_status=True))
    torch.manual_seed(1)
    model = build_stage_model(source, cfg, ego_cfg, "fresh", "src.ckpt")
    src, new = source.state_dict(), model.state_dict()
    assert all(torch.equal(v, src[k]) for k, v in new.items() if not k.startswith(HEAD))
    assert any(k.startswith(HEAD + "ego_status_embed") for k in new)  # the switched head
    same = build_stage_model(source, cfg, cfg, "checkpoint", "src.ckpt")
    assert all(torch.equal(v, src[k]) for k, v in same.state_dict().items())

    with pytest.raises(ValueError, match=r"beyond model.planning: model.embed_dim \(32 in the checkpoint, 48"):
        build_stage_model(source, cfg, replace(cfg, embed_dim=48), "fresh", "src.ckpt")
    with pytest.raises(ValueError, match="head_init=checkpoint needs the checkpoint's planning head.*use_ego_status"):
        build_stage_model(source, cfg, ego_cfg, "checkpoint", "src.ckpt")
    with pytest.raises(ValueError, match="head_init"):
        PlanStageConfig(head_init="warm")
    with pytest.raises(ValueError, match="plan_stage.max_minutes"):
        PlanStageConfig(max_minutes=0.0)


def test_cached_inputs_reproduce_the_models_plan(synth_world):
    torch.manual_seed(0)
    model = build_model(tiny_config()).eval()
    ds = tiny_dataset(synth_world, "mini_val")
    inputs, scenes = collect_planner_inputs(model, ds)
    assert len(inputs) == len(ds) == len(scenes) and len(set(scenes)) == 2

    # the same frames through the whole model, temporal stream as at inference
    stream, plans = BevStream(TorchBackend(model)), []
    for i in range(len(ds)):
        plans.append(stream(collate([ds[i]])).plan)
    expected = torch.cat(plans)
    with torch.no_grad():
        got = model.planning_head(inputs.bev.float(), inputs.command, inputs.ego_status, inputs.agent_tokens.float(),
                                  inputs.agent_scores)
    assert stream.linked == len(ds) - 2  # every frame but the scenes' first was given its predecessor's BEV
    scale = expected.abs().max().item()
    assert (got - expected).abs().max().item() <= 2e-3 * max(scale, 1.0)  # float16 storage of BEV and tokens
    assert torch.equal(inputs.ego_future, torch.stack([ds[i][1].ego_future for i in range(len(ds))]))


def test_mirrored_train_frames_are_the_recorded_ones_mirrored(synth_world):
    torch.manual_seed(0)
    cfg = tiny_config()
    model = build_model(cfg).eval()
    inputs, scenes = collect_planner_inputs(model, tiny_dataset(synth_world, "mini_val"))
    data_cfg = DataConfig(root=synth_world, image_size=cfg.image_hw, map_size=cfg.map.map_size, num_workers=0)
    mirrored, mirrored_scenes = collect_planner_inputs(model, mirrored_split(data_cfg, "mini_val"))
    assert mirrored_scenes == scenes
    flip = torch.tensor([1.0, -1.0])
    assert torch.allclose(mirrored.ego_future, inputs.ego_future * flip, atol=1e-5)
    assert torch.allclose(mirrored.ego_status, inputs.ego_status * torch.tensor([1.0, 1.0, -1.0]), atol=1e-6)
    left, right = COMMANDS.index("left"), COMMANDS.index("right")
    swapped = inputs.command.clone()
    swapped[inputs.command == left], swapped[inputs.command == right] = right, left
    assert torch.equal(mirrored.command, swapped)
    assert torch.equal(mirrored.drivable, torch.flip(inputs.drivable, dims=[1]))  # rows are y
    assert torch.allclose(mirrored.future, inputs.future * flip, atol=1e-5)
    assert not torch.allclose(mirrored.bev.float(), inputs.bev.float())  # the model saw mirrored cameras


def test_head_training_step_reaches_every_head_parameter_and_lowers_the_loss(synth_world):
    torch.manual_seed(0)
    cfg = tiny_config()
    model = build_model(replace(cfg, planning=replace(cfg.planning, use_ego_status=True))).eval()
    inputs, _ = collect_planner_inputs(model, tiny_dataset(synth_world, "mini_val"))
    head = model.planning_head.train()
    stage = PlannerStage(head, LossConfig(), PlanStageConfig(), [], None)
    opt = torch.optim.AdamW(head.parameters(), lr=3e-3)
    losses = []
    for step in range(40):
        opt.zero_grad()
        loss = stage.training_step(inputs.tensors(), step)
        loss.backward()
        if step == 0:
            missing = [n for n, p in head.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0]
            assert not missing, missing
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.7 * losses[0]


def test_drive_train_plan_stage_writes_a_checkpoint_drive_eval_reads(synth_world, tmp_path):
    src = write_checkpoint(tmp_path / "src.ckpt", seed=0)
    run = tmp_path / "stage"
    drive_train(*tiny(synth_world, run, "experiment=plan_stage", "model=tiny", f"init_from={src}",
                      "model.planning.use_ego_status=true", "plan_stage.epochs=6", "plan_stage.holdout_scenes=2",
                      "plan_stage.mirror_train=true",
                      "plan_stage.batch_size=16", "plan_stage.num_workers=0"))
    summary = json.loads((run / "plan_stage.json").read_text())
    metrics = json.loads((run / "metrics.json").read_text())
    assert summary["frames"] == {"train": 96, "holdout": 16, "val": 16}  # 48 recorded + 48 mirrored and len(summary["holdout_scenes"]) == 2
    assert len(summary["history"]) == 6 and 0 <= summary["best_epoch"] < 6
    best = summary["history"][summary["best_epoch"]]
    assert best["holdout/plan_l2_avg_averaged"] == min(r["holdout/plan_l2_avg_averaged"] for r in summary["history"])
    assert summary["history"][-1]["train/planning"] < summary["history"][0]["train/planning"]
    assert metrics["val/plan_l2_avg_averaged"] == pytest.approx(best["val/plan_l2_avg_averaged"])

    ckpt = torch.load(run / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    assert ckpt["plan_stage"]["source_checkpoint"]["sha256"] and ckpt["hyper_parameters"]["stage"] == "planning"
    model, cfg, _ = load_model(str(run / "checkpoints" / "last.ckpt"))
    source, _, _ = load_model(src)
    assert cfg.planning.use_ego_status
    src_state = source.state_dict()
    assert all(torch.equal(v, src_state[k]) for k, v in model.state_dict().items() if not k.startswith(HEAD))

    # a checkpoint of another model config is refused with the field named, and nothing is written
    bad = tmp_path / "bad"
    proc = drive_train(*tiny(synth_world, bad, "experiment=plan_stage", "model=tiny", f"init_from={src}",
                             "model.embed_dim=16"), check=False)
    assert proc.returncode != 0 and "model.embed_dim" in proc.stderr
    assert not (bad / "checkpoints" / "last.ckpt").exists()
