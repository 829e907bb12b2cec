"""The offboard teacher: pass fusion and track refinement on hand-made boxes, the mirror and backward-pass
geometry, and the whole teacher on the synthetic world (the ground-truth oracle must score mAP > 0.9 through
every pass; a tiny random checkpoint must run every pass and label every keyframe)."""
from __future__ import annotations

import json
import math
import os

import numpy as np
import pytest
import torch

from drive.data.augment import BevAug, mirrored_camera_order
from drive.data.dataset import NuScenesDrivingDataset, collate, index_samples
from drive.data.geometry import pose_to_matrix
from drive.data.nusc import open_nuscenes, scenes_of_split
from drive.data.teacher_maps import read_teacher_maps
from drive.evaluation.backends import GroundTruthBackend, TorchBackend
from drive.evaluation.checkpoint import load_model, sha256_of
from drive.labelling.errors import LabellingError
from drive.labelling.fusion import Detections, associate, fuse_passes, refine_tracks
from drive.labelling.records import LabelBox
from drive.labelling.teacher import (ClipLabels, OffboardTeacher, TeacherConfig, TeacherSpec, backward_prev_T_cur,
                                     mirror_boxes, mirror_features, mirror_targets)
from drive.metrics.detection import evaluate_detection, write_results
from drive.types import CAMERAS, CLASSES, COMMANDS, Features
from eval_fixtures import write_checkpoint

VERSION = "v1.0-mini"
CAR, PED = CLASSES.index("car"), CLASSES.index("pedestrian")


def dets(rows, source=None):
    """Hand-made boxes: rows of (x, y, yaw, score, label); size (2, 4, 1.5), velocity (1, 0)."""
    rows = np.asarray(rows, np.float64).reshape(-1, 5)
    n = len(rows)
    return Detections(np.c_[rows[:, :2], np.zeros(n)], np.tile([2.0, 4.0, 1.5], (n, 1)), rows[:, 2],
                      np.tile([1.0, 0.0], (n, 1)), rows[:, 3], rows[:, 4].astype(int), [""] * n,
                      np.zeros(n, int) if source is None else source)


# ------------------------------------------------------------------------------------------ fusion

def test_two_passes_fuse_to_the_score_weighted_mean():
    d = dets([(10.0, 0.0, 0.1, 0.8, CAR), (10.3, 0.0, 0.3, 0.4, CAR)], source=[0, 1])
    f = fuse_passes(d, num_passes=2, fuse_distance=1.0)
    assert len(f) == 1
    assert f.center[0, 0] == pytest.approx((0.8 * 10.0 + 0.4 * 10.3) / 1.2)
    assert f.yaw[0] == pytest.approx(math.atan2(0.8 * math.sin(0.1) + 0.4 * math.sin(0.3),
                                                0.8 * math.cos(0.1) + 0.4 * math.cos(0.3)))
    assert f.score[0] == pytest.approx((0.8 + 0.4) / 2) and f.source[0] == 2


def test_fused_confidence_is_member_scores_over_passes_and_classes_never_fuse():
    d = dets([(10.0, 0.0, 0.0, 0.8, CAR), (10.2, 0.0, 0.0, 0.9, PED), (30.0, 5.0, 0.0, 0.6, CAR),
              (30.1, 5.0, 0.0, 0.6, CAR), (30.0, 5.1, 0.0, 0.4, CAR)], source=[0, 1, 0, 1, 2])
    f = fuse_passes(d, num_passes=4, fuse_distance=1.0)
    assert len(f) == 3  # the pedestrian 0.2 m from the car stays its own box
    rows = sorted((int(lab), round(float(s), 9), int(n)) for lab, s, n in zip(f.label, f.score, f.source))
    assert rows == [(CAR, 0.2, 1), (CAR, 0.4, 3), (PED, 0.225, 1)]  # (0.6 + 0.6 + 0.4) / 4; 0.9 / 4: a quarter
    assert f.center[f.source == 3][0, :2] == pytest.approx([(0.6 * 30 + 0.6 * 30.1 + 0.4 * 30) / 1.6,
                                                            (0.6 * 5 + 0.6 * 5 + 0.4 * 5.1) / 1.6])


def test_one_box_per_pass_per_cluster_and_far_boxes_stay_apart():
    d = dets([(0.0, 0.0, 0.0, 0.9, CAR), (0.3, 0.0, 0.0, 0.5, CAR), (5.0, 0.0, 0.0, 0.7, CAR)], source=[0, 0, 1])
    f = fuse_passes(d, num_passes=2, fuse_distance=1.0)
    assert len(f) == 3 and sorted(f.source.tolist()) == [1, 1, 1]


def test_heading_flips_do_not_average_to_a_right_angle():
    d = dets([(0.0, 0.0, 0.2, 0.9, CAR), (0.1, 0.0, 0.2 + math.pi, 0.3, CAR), (0.0, 0.1, 3.1, 0.5, PED),
              (0.0, 0.1, -3.1, 0.5, PED)], source=[0, 1, 0, 1])
    f = fuse_passes(d, num_passes=2)
    yaw = dict(zip(f.label.tolist(), f.yaw.tolist()))
    assert yaw[CAR] == pytest.approx(0.2, abs=1e-9)
    assert abs(abs(yaw[PED]) - math.pi) < 1e-9  # the circular mean of 3.1 and -3.1 is pi, not 0


# ------------------------------------------------------------------------------------------ track refinement

def _noisy_track(seed=0):
    """A car at 5 m/s forward, 1 m/s left, 10 keyframes at 2 Hz, centre noise 0.25 m, velocity noise 0.5 m/s,
    frame 4 missing, one
    flipped heading, noisy sizes; plus a one-frame low-score spurious car 40 m away."""
    rng = np.random.default_rng(seed)
    t = np.arange(10) * 0.5
    truth = np.c_[100.0 + 5.0 * t, 50.0 + 1.0 * t]
    heading = math.atan2(1.0, 5.0)
    frames, raw = [], {}
    for f in range(10):
        if f == 4:
            frames.append(Detections.empty())
            continue
        xy = truth[f] + rng.normal(0.0, 0.25, 2)
        yaw = heading + (math.pi if f == 6 else 0.0) + rng.normal(0.0, 0.05)
        size = np.array([2.0, 4.5, 1.6]) + rng.normal(0.0, 0.15, 3)
        vel = np.array([5.0, 1.0]) + rng.normal(0.0, 0.5, 2)  # the model's own (noisy) velocity estimate
        rows = [Detections([[*xy, 1.0]], [size], [yaw], [vel], [0.8], [CAR], ["vehicle.parked"], [4])]
        if f == 7:
            rows.append(Detections([[140.0, 90.0, 1.0]], [[2, 4, 1.5]], [0.0], [[0, 0]], [0.1], [CAR], [""], [1]))
        frames.append(Detections.concat(rows))
        raw[f] = xy
    return frames, t, truth, heading, raw


def test_track_refinement_smooths_fills_and_drops():
    frames, t, truth, heading, raw = _noisy_track()
    tracks = associate(frames, t, max_gap=2)
    assert sorted(len(tr.obs) for tr in tracks) == [1, 9]  # the gap did not split the car's track
    boxes, stats = refine_tracks(frames, t, tracks, window=5, min_len=2, min_score=0.3, blend=0.5)
    assert stats == {"tracks": 1, "tracks_dropped": 1, "boxes_filled": 1}
    assert len({b.track for b in boxes}) == 1 and len(boxes) == 10
    assert len({tuple(b.size) for b in boxes}) == 1  # one size per track
    by_frame = {b.frame: b for b in boxes}
    raw_err = np.mean([np.linalg.norm(raw[f] - truth[f]) for f in raw])
    smooth_err = np.mean([np.linalg.norm(by_frame[f].center[:2] - truth[f]) for f in raw])
    assert smooth_err < 0.85 * raw_err
    gap = by_frame[4]
    assert gap.filled and np.linalg.norm(gap.center[:2] - truth[4]) < 0.4 and gap.own_score == pytest.approx(0.8)
    v = np.array([b.velocity for b in boxes])
    assert np.abs(np.median(v, axis=0) - [5.0, 1.0]).max() < 0.5
    yaw_err = [abs((b.yaw - heading + math.pi) % (2 * math.pi) - math.pi) for b in boxes]
    assert max(yaw_err) < 0.15  # the flipped heading of frame 6 was turned back
    assert all(b.score == pytest.approx(0.8) for b in boxes if not b.filled)


def test_association_keeps_passing_cars_and_classes_apart():
    """Two cars on lanes 3 m apart driving towards each other at 10 m/s, and a pedestrian standing by one lane:
    three tracks, each of one object, even where the cars pass each other."""
    t = np.arange(8) * 0.5
    frames = []
    for tt in t:
        a, b = (-20.0 + 10.0 * tt, 0.0), (20.0 - 10.0 * tt, 3.0)
        frames.append(Detections([[*a, 0], [*b, 0], [0.0, 1.5, 0]], np.tile([2, 4, 1.5], (3, 1)), [0, math.pi, 0],
                                 [[10, 0], [-10, 0], [0, 0]], [0.9, 0.8, 0.7], [CAR, CAR, PED]))
    tracks = associate(frames, t, max_gap=2)
    assert len(tracks) == 3
    for tr in tracks:
        assert len(tr.obs) == 8 and len({i for _, i in tr.obs}) == 1  # always the same row: the same object


# ------------------------------------------------------------------------------------------ pass geometry

def test_mirror_is_an_involution_on_boxes_and_features():
    rng = np.random.default_rng(1)
    b = rng.normal(size=(7, 9))
    m = mirror_boxes(b)
    kept, negated = [0, 2, 3, 4, 5, 7], [1, 6, 8]
    assert np.allclose(m[:, kept], b[:, kept]) and np.allclose(m[:, negated], -b[:, negated])
    assert np.array_equal(mirror_boxes(m), b)
    ego2img = torch.as_tensor(rng.normal(size=(6, 4, 4)), dtype=torch.float32)
    p_T_c = torch.as_tensor(pose_to_matrix([2.0, 0.3, 0.0], [math.cos(0.1), 0, 0, math.sin(0.1)]), dtype=torch.float32)
    images = torch.as_tensor(rng.normal(size=(6, 3, 4, 5)), dtype=torch.float32)
    f = Features(images=images, intrinsics=torch.as_tensor(rng.normal(size=(6, 3, 3)), dtype=torch.float32),
                 ego_T_cam=torch.eye(4).repeat(6, 1, 1), ego2img=ego2img, ego_status=torch.tensor([5.0, 0.5, 0.2]),
                 command=torch.tensor(COMMANDS.index("left")), prev_T_cur=p_T_c, has_prev=torch.tensor(1.0))
    fm = mirror_features(f)
    p = torch.tensor([12.0, 3.0, 1.0, 1.0])
    p_mirrored = p * torch.tensor([1.0, -1.0, 1.0, 1.0])
    twin = mirrored_camera_order(list(CAMERAS))
    flip_u = torch.tensor([[-1.0, 0, 4.0, 0], [0, 1, 0, 0], [0, 0, 1, 0], [0, 0, 0, 1]])  # u -> W - 1 - u, W = 5
    for n in range(6):  # slot n: the flipped image of camera twin[n]; a query at (x, -y) samples where (x, y) shows
        assert torch.allclose(fm.ego2img[n] @ p_mirrored, flip_u @ ego2img[twin[n]] @ p, atol=1e-5)
        assert torch.equal(fm.images[n], torch.flip(images[twin[n]], dims=[-1]))
    assert int(fm.command) == COMMANDS.index("right") and torch.allclose(fm.ego_status, torch.tensor([5.0, 0.5, -0.2]))
    assert torch.allclose(fm.prev_T_cur @ p_mirrored, (p_T_c @ p) * torch.tensor([1.0, -1.0, 1.0, 1.0]), atol=1e-5)
    back = mirror_features(fm)
    for name in ("images", "intrinsics", "ego2img", "ego_T_cam", "ego_status", "command", "prev_T_cur"):
        assert torch.allclose(getattr(back, name).float(), getattr(f, name).float(), atol=1e-6), name


def test_backward_prev_T_cur_for_two_known_poses():
    cur = pose_to_matrix([0.0, 0.0, 0.0], [1.0, 0.0, 0.0, 0.0])
    nxt = pose_to_matrix([5.0, 0.0, 0.0], [math.cos(math.pi / 4), 0.0, 0.0, math.sin(math.pi / 4)])  # 5 m on, left 90
    T = backward_prev_T_cur(cur, nxt)
    assert np.allclose(T @ [10.0, 0.0, 0.0, 1.0], [0.0, -5.0, 0.0, 1.0])  # 5 m ahead of the next ego, on its right
    assert np.allclose(T @ [0.0, 0.0, 0.0, 1.0], [0.0, 5.0, 0.0, 1.0])


def test_config_errors_are_named():
    with pytest.raises(LabellingError, match="backward_velocity"):
        TeacherConfig(backward_velocity="reverse")
    with pytest.raises(LabellingError, match="review_band"):
        TeacherConfig(review_band=(0.8, 0.2))


# ------------------------------------------------------------------------------------------ on the synthetic world

@pytest.fixture(scope="module")
def val(synth_world):
    """The mini_val scenes and their targets (for the oracle only)."""
    nusc = open_nuscenes(synth_world, VERSION)
    ds = NuScenesDrivingDataset(synth_world, VERSION, "mini_val", image_size=(64, 96), with_targets=True,
                                augment={"enabled": False}, nusc=nusc, cache_images=False)
    targets = {}
    for i in range(len(ds)):
        _, t, meta = ds[i]
        targets[meta.sample_token] = t
    return nusc, scenes_of_split(nusc, "mini_val"), targets


def test_oracle_mirrored_then_unmirrored_boxes_equal_the_originals(synth_world, val):
    nusc, _, targets = val
    ds = NuScenesDrivingDataset(synth_world, VERSION, "mini_val", image_size=(64, 96), with_targets=True,
                                augment={"enabled": False}, nusc=nusc, cache_images=False)
    f, t, meta = ds[3]
    gt = GroundTruthBackend()
    plain = gt(collate([(f, t, meta)]), torch.zeros(1, 1, 1, 1), torch.ones(1))
    mirrored = gt(collate([(mirror_features(f), mirror_targets(t), meta)]), torch.zeros(1, 1, 1, 1), torch.ones(1))
    real = plain.scores[0] > 0
    assert real.sum() > 0
    assert not np.allclose(mirrored.boxes[0][real].numpy(), plain.boxes[0][real].numpy())
    assert np.allclose(mirror_boxes(mirrored.boxes[0][real].numpy()), plain.boxes[0][real].numpy(), atol=1e-6)
    # and the training augmentation's flip of the annotations is the same mirror
    assert np.allclose(BevAug(flip=True).yaw(np.array([0.3])), -0.3)


def test_oracle_pseudo_labels_score_high_with_the_devkit(synth_world, val, tmp_path):
    nusc, scenes, targets = val
    teacher = OffboardTeacher(GroundTruthBackend(), TeacherConfig(), image_hw=(64, 96), targets=targets,
                              cache_dir=str(tmp_path / "cache"))
    results, clips = {}, []
    for scene in scenes:
        clip = teacher.label_clip(synth_world, VERSION, scene)
        clips.append(clip)
        assert clip.stats["passes"] == ["forward", "forward_mirror", "backward", "backward_mirror"]
        raw = clip.stats["raw_boxes"]
        assert len(set(raw.values())) == 1 and raw["forward"] > 0  # the oracle sees the same boxes in every pass
        for tok in clip.samples:
            results[tok] = [b.to_result() for b in clip.boxes[tok]]
            assert clip.review[tok][0] == pytest.approx(0.0)  # all four passes agree, every box is confident
            assert all(b.score == pytest.approx(1.0) and b.track_id for b in clip.boxes[tok])
            assert all(b.num_lidar_pts >= 0 for b in clip.boxes[tok])
    assert sum(b.num_lidar_pts > 0 for c in clips for v in c.boxes.values() for b in v) > 0.9 * sum(
        len(v) for c in clips for v in c.boxes.values())
    path = write_results(str(tmp_path / "pseudo.json"), results)
    metrics = evaluate_detection(nusc, path, "mini_val", str(tmp_path / "eval"))
    assert metrics["mAP"] > 0.9 and metrics["NDS"] > 0.9, metrics
    # a JSON round trip keeps everything
    again = ClipLabels.from_dict(json.loads(json.dumps(clips[0].to_dict())))
    assert again.boxes == clips[0].boxes and again.review == clips[0].review


class _Recorder:
    """A backend wrapper that remembers what every call was fed."""

    def __init__(self, backend):
        self.backend, self.name, self.calls = backend, "recorder", []

    @property
    def bev_shape(self):
        return self.backend.bev_shape

    def __call__(self, batch, prev_bev, has_prev):
        out = self.backend(batch, prev_bev, has_prev)
        self.calls.append({"token": batch.meta[0].sample_token, "prev_bev": prev_bev.clone(),
                           "has_prev": float(has_prev),
                           "prev_T_cur": batch.features.prev_T_cur[0].double().numpy(),
                           "ego2img": batch.features.ego2img[0].clone(), "bev": out.bev.clone(),
                           "heat": torch.sigmoid(out.det_heatmap[0])})
        return out


def test_random_checkpoint_runs_every_pass_with_the_right_inputs(synth_world, val, tmp_path):
    nusc, scenes, _ = val
    ckpt = write_checkpoint(tmp_path / "tiny.ckpt", seed=1)
    model, _, _ = load_model(ckpt)
    rec = _Recorder(TorchBackend(model))
    teacher = OffboardTeacher(rec, TeacherConfig(min_box_score=0.0, lidar_count=False), image_hw=(64, 96),
                              cache_dir=str(tmp_path / "cache"))
    maps_dir = str(tmp_path / "maps")
    clip = teacher.label_clip(synth_world, VERSION, scenes[0], maps_dir=maps_dir)
    n = len(clip.samples)
    assert n == 8 and len(rec.calls) == 4 * n
    fwd, fwd_m, bwd, bwd_m = (rec.calls[0:2 * n:2], rec.calls[1:2 * n:2], rec.calls[2 * n::2], rec.calls[2 * n + 1::2])
    assert [c["token"] for c in fwd] == clip.samples and [c["token"] for c in bwd] == clip.samples[::-1]
    assert [c["has_prev"] for c in bwd] == [0.0] + [1.0] * (n - 1)  # the last keyframe has no next
    poses = {s: np.array(nusc.get("ego_pose", nusc.get("sample_data", nusc.get("sample", s)["data"]["LIDAR_TOP"])
                                  ["ego_pose_token"])["translation"]) for s in clip.samples}
    for k in range(1, n):  # backward: prev_bev is the next keyframe's BEV, warped by inv(G_next) G_cur
        cur, nxt = clip.samples[n - 1 - k], clip.samples[n - k]
        assert torch.equal(bwd[k]["prev_bev"], bwd[k - 1]["bev"]) and torch.equal(fwd[k]["prev_bev"], fwd[k - 1]["bev"])
        assert torch.equal(bwd_m[k]["prev_bev"], bwd_m[k - 1]["bev"])  # the mirrored stream carries its own BEV
        moved = bwd[k]["prev_T_cur"][:3, 3]  # the current ego origin seen from the next ego frame
        assert np.linalg.norm(moved) == pytest.approx(np.linalg.norm(poses[cur][:2] - poses[nxt][:2]), abs=1e-3)
    flip = torch.diag(torch.tensor([1.0, -1.0, 1.0, 1.0]))
    flip_u = torch.tensor([[-1.0, 0, 95.0, 0], [0, 1, 0, 0], [0, 0, 1, 0], [0, 0, 0, 1]])  # u -> W - 1 - u, W = 96
    twin = mirrored_camera_order(list(CAMERAS))  # the mirrored pass sees flipped images in twin slots
    assert torch.allclose(fwd_m[0]["ego2img"], flip_u @ fwd[0]["ego2img"][twin] @ flip, atol=1e-4)
    assert all(clip.stats["raw_boxes"][p] > 0 for p in clip.stats["passes"])
    assert set(clip.boxes) == set(clip.samples) and all(isinstance(b, LabelBox) for v in clip.boxes.values() for b in v)
    # the teacher maps for distillation: features averaged over the time directions, the mirrored world's apart,
    # class probabilities over all four passes with the mirrored ones flipped back (row = y)
    assert clip.stats["maps_written"] == n and sorted(os.listdir(maps_dir)) == sorted(f"{t}.npz" for t in clip.samples)
    for k in (0, n - 1):
        m = read_teacher_maps(os.path.join(maps_dir, f"{clip.samples[k]}.npz"))
        b = bwd[n - 1 - k]
        np.testing.assert_allclose(m.bev, ((fwd[k]["bev"] + b["bev"]) / 2)[0].numpy(), atol=2e-3, rtol=2e-3)
        np.testing.assert_allclose(m.bev_mirror, ((fwd_m[k]["bev"] + bwd_m[n - 1 - k]["bev"]) / 2)[0].numpy(),
                                   atol=2e-3, rtol=2e-3)
        heat = (fwd[k]["heat"] + b["heat"] + fwd_m[k]["heat"].flip(-2) + bwd_m[n - 1 - k]["heat"].flip(-2)) / 4
        np.testing.assert_allclose(m.heatmap, heat.numpy(), atol=1e-3)
        assert m.passes == 4 and m.bev_range == pytest.approx(51.2)
        np.testing.assert_allclose(m.global_T_ego, next(r.global_T_ego for r in index_samples(nusc, [scenes[0]], False)
                                                        if r.sample_token == clip.samples[k]))

    # the engine's picklable spec: model loaded once, JSON-able rows, the checkpoint hash as provenance
    import pickle

    spec = pickle.loads(pickle.dumps(TeacherSpec(ckpt, synth_world, VERSION, TeacherConfig(min_box_score=0.0), 1,
                                                 maps_dir=str(tmp_path / "spec_maps"))))
    job = spec.build()
    row = json.loads(json.dumps(job({"scene_token": scenes[1]})))
    assert sorted(os.listdir(tmp_path / "spec_maps")) == sorted(f"{t}.npz" for t in row["samples"])
    assert row["teacher_sha256"] == sha256_of(ckpt) and job.teacher_sha256 == row["teacher_sha256"]
    assert len(row["samples"]) == 8 and set(row["boxes"]) == set(row["samples"]) == set(row["review"])
    labels = ClipLabels.from_dict(row).frame_labels(round=2, strategy="ours")
    assert all(fl.provenance.teacher == sha256_of(ckpt) and fl.provenance.round == 2 for fl in labels)
    with pytest.raises(LabellingError, match="not-a-scene"):
        job({"scene_token": "not-a-scene"})


def test_absent_lidar_file_gives_minus_one(synth_world, val, tmp_path, monkeypatch):
    nusc, scenes, targets = val
    import drive.labelling.teacher as teacher_mod

    real = os.path.isfile
    monkeypatch.setattr(teacher_mod.os.path, "isfile", lambda p: "LIDAR_TOP" not in str(p) and real(p))
    teacher = OffboardTeacher(GroundTruthBackend(), TeacherConfig(tta_mirror=False, bidirectional=False),
                              image_hw=(64, 96), targets=targets, cache_dir=str(tmp_path / "cache"))
    clip = teacher.label_clip(synth_world, VERSION, scenes[0])
    boxes = [b for v in clip.boxes.values() for b in v]
    assert boxes and all(b.num_lidar_pts == -1 for b in boxes)
    assert clip.stats["lidar_missing_frames"] == len(clip.samples)
