"""Every config group option composes and instantiates; presets match; contracts are enforced; the schedule,
the sampler and the saved hyper-parameters behave."""
from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_dir
from omegaconf import DictConfig

from drive.data.datamodule import DrivingDataModule
from drive.models.build import cloud_config, edge_config, tiny_config
from drive.training import builders
from drive.training.optim import WarmupCosine, warmup_cosine
from drive.training.system import DrivingSystem
from drive.training.temporal import ResumableSampler, TemporalDataModule

CONFIGS = Path(__file__).resolve().parents[1] / "configs"
GROUPS = ("data", "model", "loss", "optimizer", "scheduler", "trainer", "logger", "callbacks", "experiment", "debug")


def make_cfg(tmp_path, overrides=()) -> DictConfig:
    with initialize_config_dir(config_dir=str(CONFIGS), version_base="1.3"):
        return compose("train", overrides=[f"paths.output_dir={tmp_path}", *overrides])


def options(group: str) -> list[str]:
    return sorted(p.stem for p in (CONFIGS / group).glob("*.yaml"))


@pytest.mark.parametrize("group,option", [(g, o) for g in GROUPS for o in options(g)])
def test_every_group_option_composes_and_instantiates(tmp_path, group, option):
    cfg = make_cfg(tmp_path, [f"{group}={option}"])
    if group == "data":
        dm = builders.build_datamodule(cfg)
        assert isinstance(dm, TemporalDataModule) and isinstance(dm.data, DrivingDataModule)
        assert tuple(dm.config.image_size) == tuple(cfg.model.image_hw)
    elif group == "model":
        model = builders.build_model(cfg)
        assert sum(p.numel() for p in model.parameters()) > 0
    elif group == "loss":
        builders.build_loss(cfg)
    elif group == "optimizer":
        opt = builders.build_optimizer(cfg)([torch.nn.Parameter(torch.zeros(2))])
        assert isinstance(opt, torch.optim.Optimizer)
    elif group == "scheduler":
        opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(2))], lr=1.0)
        sched = builders.build_scheduler(cfg)(opt, total_steps=100)
        assert isinstance(sched, torch.optim.lr_scheduler.LRScheduler)
    elif group == "trainer":
        trainer = builders.build_trainer(cfg, callbacks=[], loggers=[])
        assert trainer.max_epochs == cfg.trainer.max_epochs
    elif group == "logger":
        assert builders.build_loggers(cfg)
    elif group == "callbacks":
        assert builders.build_callbacks(cfg)
    else:  # experiment / debug: the whole run
        run = builders.build_run(cfg)
        assert isinstance(run.system, DrivingSystem)
        assert run.trainer.max_epochs == cfg.trainer.max_epochs


def test_optional_groups_can_be_deleted(tmp_path):
    cfg = make_cfg(tmp_path, ["~scheduler", "~logger", "~callbacks", "model=tiny"])
    assert builders.build_scheduler(cfg) is None
    assert builders.build_loggers(cfg) == [] and builders.build_callbacks(cfg) == []


@pytest.mark.parametrize("option,preset", [("edge", edge_config), ("tiny", tiny_config), ("cloud", cloud_config)])
def test_model_configs_are_the_presets(tmp_path, option, preset):
    assert builders.build_model_config(make_cfg(tmp_path, [f"model={option}"])) == preset()


def test_defaults_are_the_edge_run_of_the_issue(tmp_path):
    cfg = make_cfg(tmp_path)
    assert cfg.data.root == "data/synth" and cfg.data.version == "v1.0-mini"
    assert (cfg.data.train_split, cfg.data.val_split) == ("mini_train", "mini_val")
    assert list(cfg.data.image_size) == [128, 352] and cfg.data.image_crop_top == 0.35 and cfg.trainer.accelerator == "cpu"
    assert builders.build_model_config(cfg) == edge_config()
    edge = make_cfg(tmp_path, ["experiment=edge"])
    for key in ("data", "model", "trainer", "optimizer", "scheduler", "loss", "system", "temporal"):
        assert edge[key] == cfg[key], key


def test_contracts_are_checked_at_build_time(tmp_path):
    with pytest.raises(ValueError, match="image_size"):
        builders.build_run(make_cfg(tmp_path, ["model=tiny", "data.image_size=[128,224]"]))
    with pytest.raises(ValueError, match="map_size"):
        builders.build_run(make_cfg(tmp_path, ["model=tiny", "data.map_size=64"]))
    with pytest.raises(ValueError, match="use_distributed_sampler"):
        builders.build_run(make_cfg(tmp_path, ["model=tiny", "trainer.use_distributed_sampler=true"]))
    with pytest.raises(TypeError, match="_partial_"):
        builders.build_optimizer(make_cfg(tmp_path, ["optimizer._partial_=false"]))
    with pytest.raises(ValueError, match="bev_range"):
        builders.build_run(make_cfg(tmp_path, ["model=tiny", "loss.bev_range=40.0"]))


def test_saved_hyper_parameters_are_plain_types(tmp_path):
    plain = builders.plain_config(make_cfg(tmp_path, ["debug=fast"]))

    def check(x, where="cfg"):
        if isinstance(x, dict):
            for k, v in x.items():
                assert isinstance(k, str), where
                check(v, f"{where}.{k}")
        elif isinstance(x, list):
            for i, v in enumerate(x):
                check(v, f"{where}[{i}]")
        else:
            assert x is None or isinstance(x, (str, int, float, bool)), (where, type(x))

    check(plain)
    assert plain["paths"]["output_dir"] == str(tmp_path)


def test_warmup_cosine_schedule():
    f = WarmupCosine(warmup_steps=10, total_steps=110, min_factor=0.1, warmup_start_factor=0.0)
    assert f(0) == 0.0 and math.isclose(f(5), 0.5) and math.isclose(f(10), 1.0)
    assert math.isclose(f(60), 0.55) and math.isclose(f(110), 0.1) and math.isclose(f(500), 0.1)
    values = [f(s) for s in range(10, 111)]
    assert all(a >= b for a, b in zip(values, values[1:]))
    opt = torch.optim.AdamW([torch.nn.Parameter(torch.zeros(1))], lr=1e-3)
    sched = warmup_cosine(opt, total_steps=1000, warmup_steps=50, min_factor=0.05)
    lrs = []
    for _ in range(1000):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    assert lrs[0] < 1e-4 and max(lrs) == pytest.approx(1e-3) and lrs.index(max(lrs)) == 50
    assert lrs[-1] == pytest.approx(5e-5, rel=0.01)
    state = sched.state_dict()  # a callable object: its plain fields are saved (weights_only checkpoints)
    assert state["lr_lambdas"][0]["warmup_steps"] == 50


def test_resumable_sampler_order_shards_and_skip(monkeypatch):
    s = ResumableSampler(10, shuffle=True, seed=7)
    s.set_epoch(3)
    full = list(s)
    assert sorted(i for i, _ in full) == list(range(10)) and all(e == 3 for _, e in full)
    again = ResumableSampler(10, shuffle=True, seed=7)
    again.set_epoch(3)
    assert list(again) == full  # a function of (seed, epoch) only
    again.set_epoch(4)
    assert list(again) != full
    s.resume(epoch=3, skip=4)
    assert list(s) == full[4:]  # the resumed epoch starts after the consumed items
    assert list(s) == full  # ... once
    s.resume(epoch=2, skip=4)
    assert list(s) == full  # a stale resume point (other epoch) is ignored
    shards = []
    for rank in range(3):
        monkeypatch.setattr("drive.training.temporal._world", lambda r=rank: (3, r))
        r = ResumableSampler(10, shuffle=True, seed=7)
        r.set_epoch(3)
        assert len(r) == 4
        shards.append([i for i, _ in r])
    assert set(sum(shards, [])) == set(range(10)) and sum(map(len, shards)) == 12  # padded by wrapping


def test_sampler_needs_a_seed():
    with pytest.raises(ValueError):
        ResumableSampler(4, shuffle=True, seed=None)


def test_tensorboard_missing_falls_back_to_csv(tmp_path, monkeypatch):
    from lightning.pytorch.loggers import CSVLogger, TensorBoardLogger

    monkeypatch.setattr("lightning.fabric.loggers.tensorboard._TENSORBOARD_AVAILABLE", False)
    monkeypatch.setattr("lightning.fabric.loggers.tensorboard._TENSORBOARDX_AVAILABLE", False)
    loggers = builders.build_loggers(make_cfg(tmp_path, ["logger=tensorboard"]))
    assert len(loggers) == 1 and isinstance(loggers[0], CSVLogger) and not isinstance(loggers[0], TensorBoardLogger)
    assert loggers[0].log_dir.startswith(str(tmp_path))


def test_missing_default_world_is_generated_and_other_roots_are_not(tmp_path):
    cfg = make_cfg(tmp_path / "run", [f"paths.data_dir={tmp_path / 'data'}", "synth.scenes=1", "+synth.keyframes=2",
                                      "+synth.width=160", "+synth.height=90", "+synth.workers=1"])
    assert cfg.data.root == cfg.synth.out
    builders.ensure_world(cfg)
    assert (tmp_path / "data" / "synth" / "v1.0-mini" / "scene.json").exists()
    other = make_cfg(tmp_path / "run", [f"data.root={tmp_path / 'elsewhere'}"])
    builders.ensure_world(other)  # not the synthetic world's root: left to the data module to report
    assert not (tmp_path / "elsewhere").exists()


def test_resumable_sampler_repeats_items_with_their_own_augmentation_keys():
    stride = ResumableSampler.REPEAT_EPOCH_STRIDE
    s = ResumableSampler(5, shuffle=True, seed=7, repeats=[1, 3, 1, 2, 1])
    s.set_epoch(2)
    full = list(s)
    assert len(s) == len(full) == 8
    keys = sorted(full)
    assert keys == sorted([(0, 2), (1, 2), (1, 2 + stride), (1, 2 + 2 * stride), (2, 2), (3, 2), (3, 2 + stride),
                           (4, 2)])  # each copy of an item draws its own augmentation (its own epoch key)
    s.resume(epoch=2, skip=3)
    assert list(s) == full[3:]
    plain, ones = ResumableSampler(5, shuffle=True, seed=7), ResumableSampler(5, shuffle=True, seed=7, repeats=[1] * 5)
    assert list(plain) == list(ones)  # all-ones repeats = no repeats: the same order and keys
    for bad in ([1, 1], [1, 0, 1, 1, 1]):
        with pytest.raises(ValueError, match="repeats"):
            ResumableSampler(5, shuffle=True, seed=7, repeats=bad)
