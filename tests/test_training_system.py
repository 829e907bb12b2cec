"""The system on a tiny synthetic world, in process: temporal batches, gradients, loss falls, temporal
validation, EMA, metrics on hand-made outputs."""
from __future__ import annotations

from collections import Counter
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from hydra import compose, initialize_config_dir

from drive.data.augment import mirrored_camera_order
from drive.training import builders
from drive.training.temporal import ResumableSampler, TemporalDataModule, TemporalBatch, collate_history, relative_pose
from drive.types import CAMERAS

CONFIGS = Path(__file__).resolve().parents[1] / "configs"

torch.set_num_threads(1)


def tiny_cfg(tmp_path, root, *extra):
    with initialize_config_dir(config_dir=str(CONFIGS), version_base="1.3"):
        return compose("train", overrides=[f"paths.output_dir={tmp_path}", "debug=fast", f"data.root={root}",
                                           "data.num_workers=0", "metrics.detection_eval=false", *extra])


@pytest.fixture(scope="module")
def tiny_run(synth_world, tmp_path_factory):
    cfg = tiny_cfg(tmp_path_factory.mktemp("run"), synth_world, "loss.perspective.weight=1.0")
    run = builders.build_run(cfg)
    run.datamodule.setup("fit")
    return cfg, run


def first_batches(run, n):
    loader = run.datamodule.train_dataloader()
    loader.sampler.set_epoch(0)
    out = []
    for b in loader:
        out.append(b)
        if len(out) == n:
            return out
    return out


def test_training_batches_carry_the_previous_keyframe(tiny_run):
    cfg, run = tiny_run
    batches = first_batches(run, 6)
    assert all(isinstance(b, TemporalBatch) and len(b.history) == 1 for b in batches)
    ds = run.datamodule.train_set
    seen_first = seen_linked = 0
    for b in batches:
        hist, cur = b.history[0], b.current
        for i, meta in enumerate(cur.meta):
            if meta.prev_token:
                seen_linked += 1
                assert hist.valid[i] == 1 and cur.features.has_prev[i] == 1
            else:
                seen_first += 1
                assert hist.valid[i] == 0 and cur.features.has_prev[i] == 0
    assert seen_linked > 0
    # the history frame really is the previous keyframe of the same scene
    idx = next(i for i in range(len(ds)) if ds.prev_index[i] >= 0)
    history, current = ds[(idx, 0)]
    assert history[0][2].sample_token == current[2].prev_token
    assert history[0][2].scene_token == current[2].scene_token
    assert history[0][1] is None  # history frames are loaded without targets


def test_links_follow_the_augmented_frames(tiny_run):
    """Without augmentation the recomputed link is the data layer's prev_T_cur. With augmentation each item's
    meta.global_T_ego is the pose of the frame its features (hence its BEV) live in: cameras land at the same
    global place with or without augmentation (a mirrored frame holds each camera in its twin's slot), so the
    link built from those poses maps the current augmented frame into the frame the previous BEV was computed
    in. The history frame shares the current frame's scene augmentation. The collated batch uses that link."""
    _, run = tiny_run
    ds = run.datamodule.train_set
    idx = next(i for i in range(len(ds)) if ds.prev_index[i] >= 0)
    base = ds.base
    original = base.augment
    try:
        base.augment = ds.features_only.augment = replace(original, enabled=False)
        (prev_raw,), cur_raw = ds[(idx, 0)]
        # the default config rotates nothing (it would rotate the plan target): turn rotation on so the
        # augmented frame really differs from the raw one
        base.augment = ds.features_only.augment = replace(original, enabled=True, bev_rotation_deg=22.5)
        (prev_aug,), cur_aug = ds[(idx, 0)]
    finally:
        base.augment = ds.features_only.augment = original
    np.testing.assert_allclose(relative_pose(prev_raw[2], cur_raw[2]), cur_raw[0].prev_T_cur.numpy(), atol=1e-4)
    scene_aug = []
    for raw, aug in ((prev_raw, prev_aug), (cur_raw, cur_aug)):
        A = np.linalg.inv(np.asarray(aug[2].global_T_ego)) @ np.asarray(raw[2].global_T_ego)  # ego' = A ego
        scene_aug.append(A)
        twin = mirrored_camera_order(list(CAMERAS)) if np.linalg.det(A[:3, :3]) < 0 else list(range(6))
        cams_raw = np.asarray(raw[2].global_T_ego) @ raw[0].ego_T_cam.double().numpy()[twin]
        cams_aug = np.asarray(aug[2].global_T_ego) @ aug[0].ego_T_cam.double().numpy()
        np.testing.assert_allclose(cams_aug, cams_raw, atol=1e-3)
    np.testing.assert_allclose(scene_aug[0], scene_aug[1], atol=1e-6)  # the queue shares one scene augmentation
    assert not np.allclose(np.asarray(cur_aug[2].global_T_ego), np.asarray(cur_raw[2].global_T_ego))
    batch = collate_history([((prev_aug,), cur_aug)])
    np.testing.assert_allclose(batch.current.features.prev_T_cur[0].numpy(),
                               relative_pose(prev_aug[2], cur_aug[2]), atol=1e-5)
    assert batch.history[0].valid[0] == 1 and batch.history[0].features.has_prev[0] == 0  # oldest slot


@pytest.mark.filterwarnings("ignore:You are trying to")
def test_every_parameter_gets_a_gradient_and_the_loss_falls(tiny_run):
    _, run = tiny_run
    system = run.system
    system.train()
    batch = next(b for b in first_batches(run, 8) if bool(b.history[0].valid.any()))
    loss = system.training_step(batch, 0)
    loss.backward()
    assert system.perspective_head is not None  # the training-only auxiliary head is trained too
    missing = [n for n, p in system.named_parameters() if p.requires_grad and p.grad is None]
    assert not missing, missing
    bad = [n for n, p in system.named_parameters() if p.grad is not None and not torch.isfinite(p.grad).all()]
    assert not bad, bad
    opt = torch.optim.AdamW(system.parameters(), lr=2e-3)
    history = []
    for _ in range(12):
        opt.zero_grad()
        loss = system.training_step(batch, 0)
        loss.backward()
        opt.step()
        history.append(float(loss.detach()))
    assert history[-1] < 0.7 * history[0], history


def test_history_bev_is_computed_without_grad_and_in_eval_mode(tiny_run):
    _, run = tiny_run
    system = run.system
    system.train()
    batch = next(b for b in first_batches(run, 8) if bool(b.history[0].valid.any()))
    running = [m.running_mean.clone() for m in system.model.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    prev_bev, has_prev = system.history_bev(batch)
    after = [m.running_mean for m in system.model.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    assert all(torch.equal(a, b) for a, b in zip(running, after))  # eval mode: BN statistics untouched
    assert system.model.training and not prev_bev.requires_grad
    assert torch.equal(has_prev, batch.history[0].valid * batch.current.features.has_prev)
    assert torch.all(prev_bev[has_prev == 0] == 0) and prev_bev[has_prev == 1].abs().sum() > 0
    empty = TemporalBatch([], batch.current)
    bev0, has0 = system.history_bev(empty)
    assert torch.all(bev0 == 0) and torch.all(has0 == 0)


def test_validation_runs_in_temporal_order_carrying_the_bev(tiny_run):
    _, run = tiny_run
    system = run.system.eval()
    loader = run.datamodule.val_dataloader()
    system.on_validation_epoch_start()
    scenes, tokens = set(), []
    system.log = system.log_dict = lambda *a, **k: None  # no trainer attached
    with torch.no_grad():
        for i, batch in enumerate(loader):
            if batch.meta[0].prev_token:
                assert batch.meta[0].prev_token == tokens[-1]  # temporal order within the scene
            tokens.append(batch.meta[0].sample_token)
            scenes.add(batch.meta[0].scene_token)
            system.validation_step(batch, i)
    assert system._val_frames == len(tokens)
    assert system._val_linked == len(tokens) - len(scenes)  # every frame but a scene's first got a prev BEV
    values = system.metrics.compute()
    for key in ("map_iou", "plan_l2_1s_per_step", "plan_l2_1s_averaged", "plan_l2_avg_per_step",
                "plan_l2_avg_averaged", "minADE", "det_recall_2m"):
        assert key in values, key
    assert 0.0 <= values["map_iou"] <= 1.0 and np.isfinite(values["plan_l2_1s_per_step"])


def test_ema_tracks_the_model_and_is_used_for_validation(synth_world, tmp_path):
    cfg = tiny_cfg(tmp_path, synth_world, "system.ema_decay=0.5")
    system = builders.build_system(cfg)
    assert system.ema is not None and system.eval_model is system.ema.module
    assert not any(p.requires_grad for p in system.ema.parameters())
    with torch.no_grad():
        for p in system.model.parameters():
            p.add_(1.0)
    system.ema.update_parameters(system.model)  # first update copies
    p0 = next(system.model.parameters())
    assert torch.allclose(next(system.ema.module.parameters()), p0)
    with torch.no_grad():
        p0.add_(2.0)
    system.ema.update_parameters(system.model)
    d = 2.0 / 11.0  # update 1 after the copy: min(0.5, (1 + 1) / (10 + 1)), the decay's warm-up
    assert torch.allclose(next(system.ema.module.parameters()), p0 - 2.0 * d)  # d * old + (1 - d) * new
    from drive.training.ema import warmed_decay

    assert warmed_decay(0.999, 1000) == pytest.approx(1001 / 1010) and warmed_decay(0.999, 10**6) == 0.999
    from drive.training.optim import parameter_groups

    grouped = {id(p) for g in parameter_groups(system.model, 0.01) for p in g["params"]}
    assert grouped == {id(p) for p in system.model.parameters()}  # EMA weights never optimised


def test_datamodule_resume_state_points_at_the_next_batch(tiny_run):
    _, run = tiny_run
    dm = run.datamodule
    bs = dm.config.batch_size
    reference = ResumableSampler(len(dm.train_set), shuffle=True, seed=dm.config.augment.seed)
    reference.set_epoch(1)
    order_epoch1 = list(reference)
    reference.set_epoch(2)
    order_epoch2 = list(reference)

    dm.load_state_dict({"epoch": 1, "consumed_batches": 3, "epoch_done": False})  # killed mid-epoch 1
    sampler = dm.train_dataloader().sampler
    assert sampler.epoch == 1 and list(sampler) == order_epoch1[3 * bs:]
    dm.load_state_dict({"epoch": 1, "consumed_batches": 32, "epoch_done": True})  # saved at the end of epoch 1
    sampler = dm.train_dataloader().sampler
    assert sampler.epoch == 2 and list(sampler) == order_epoch2
    sampler = dm.train_dataloader().sampler  # no pending resume: a plain loader
    assert sampler.epoch == 0 and len(list(sampler)) == len(dm.train_set)


def test_repeat_scenes_oversamples_the_scenes_it_names(tiny_run):
    """temporal.repeat_scenes (the labelling loop's fleet_repeat): a scene-name prefix -> appearances per epoch."""
    _, run = tiny_run
    data = run.datamodule.data
    names = data.train_scene_names
    assert len(names) == len(data.train_set) and len(set(names)) >= 2
    first = names[0]
    dm = TemporalDataModule(data, history_frames=1, repeat_scenes={first: 3})
    dm.setup("fit")
    reps = dm.repeats()
    assert reps.tolist() == [3 if n == first else 1 for n in names]
    sampler = dm.train_dataloader().sampler
    counts = Counter(i for i, _ in sampler)
    assert all(counts[i] == (3 if n == first else 1) for i, n in enumerate(names))
    copy_key = next((i, e) for i, e in sampler if e >= ResumableSampler.REPEAT_EPOCH_STRIDE)
    history, current = dm.train_set[copy_key]  # a repeated copy loads, with its own augmentation draw
    assert current[0].images.shape == dm.train_set[(copy_key[0], 0)][1][0].images.shape
    assert TemporalDataModule(data, history_frames=1).repeats() is None
    with pytest.raises(ValueError, match="repeat_scenes"):
        TemporalDataModule(data, history_frames=1, repeat_scenes={first: 0})


def test_init_from_starts_from_the_checkpoint_weights(synth_world, tmp_path):
    """init_from copies a checkpoint's model weights (fine-tuning); a checkpoint of another model is refused."""
    import sys

    sys.path.insert(0, str(Path(__file__).parent))
    from eval_fixtures import write_checkpoint

    from drive.evaluation.errors import EvalError

    ckpt = write_checkpoint(tmp_path / "src.ckpt", seed=7)
    run = builders.build_run(tiny_cfg(tmp_path / "a", synth_world, f"+init_from={ckpt}"))
    src = torch.load(ckpt, weights_only=True)["state_dict"]
    got = run.system.model.state_dict()
    assert all(torch.equal(got[k[len("model."):]], v) for k, v in src.items() if k.startswith("model."))
    fresh = builders.build_run(tiny_cfg(tmp_path / "b", synth_world)).system.model.state_dict()
    assert not all(torch.equal(fresh[k], got[k]) for k in got if got[k].is_floating_point())
    other = write_checkpoint(tmp_path / "other.ckpt", seed=7, embed_dim=16)
    with pytest.raises(EvalError, match="other.ckpt"):
        builders.build_run(tiny_cfg(tmp_path / "c", synth_world, f"+init_from={other}"))
