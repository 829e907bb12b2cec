"""Distillation from teacher maps: the losses on hand-made cases, the alignment with the augmentation, the maps
file format, and the Distiller's choice of targets (mirrored maps for a flipped sample, none without a file)."""
from __future__ import annotations

import math
import os

import numpy as np
import pytest
import torch

from drive.data.augment import BevAug
from drive.data.errors import DataError
from drive.data.teacher_maps import (MapsAccumulator, TeacherMaps, maps_path, read_teacher_maps,
                                     write_teacher_maps)
from drive.losses.distill import (DistillLossConfig, align_teacher_maps, augmentation_of, binary_kl_with_logits,
                                  feature_distill_loss, heatmap_distill_loss)
from drive.training.distill import Distiller
from drive.types import SampleMeta


def test_binary_kl_known_values():
    logits = torch.tensor([0.0, 0.0, 0.0, math.log(3.0)])
    p = torch.tensor([0.5, 1.0, 0.25, 0.75])
    kl = binary_kl_with_logits(logits, p)
    expected = [0.0, math.log(2.0), 0.25 * math.log(0.5) + 0.75 * math.log(1.5), 0.0]  # sigmoid(log 3) = 0.75
    np.testing.assert_allclose(kl.numpy(), expected, atol=1e-6)


def test_weighted_losses_on_a_two_cell_map():
    # cells (0, 0) and (0, 1); weights 1 and 3; channel errors (1, 1) and (2, 0): per-cell MSE 1 and 2
    adapted = torch.tensor([[[[1.0, 2.0]], [[1.0, 0.0]]]])  # (1, 2, 1, 2)
    teacher = torch.zeros(1, 2, 1, 2)
    w = torch.tensor([[[[1.0, 3.0]]]])
    assert float(feature_distill_loss(adapted, teacher, w)) == pytest.approx((1 * 1 + 3 * 2) / 4)
    # heatmap: one class; cell 0 matches the teacher (KL 0), cell 1 is KL(1 || 0.5) = log 2
    logits = torch.tensor([[[[0.0, 0.0]]]])
    probs = torch.tensor([[[[0.5, 1.0]]]])
    assert float(heatmap_distill_loss(logits, probs, w)) == pytest.approx(3 * math.log(2.0) / 4, rel=1e-6)
    assert float(feature_distill_loss(adapted, teacher, torch.zeros_like(w))) == 0.0  # no maps: no loss


def test_alignment_follows_the_augmentation():
    S, R = 8, 8.0
    m = torch.arange(S * S, dtype=torch.float32).reshape(1, S, S)  # row = y, col = x
    same, valid = align_teacher_maps(m, torch.eye(4, dtype=torch.float64), R, S, R)
    torch.testing.assert_close(same, m)
    assert float(valid.min()) == 1.0
    flip = torch.as_tensor(BevAug(0.0, True).matrix)
    torch.testing.assert_close(align_teacher_maps(m, flip, R, S, R)[0], torch.flip(m, dims=[-2]))
    rot = torch.as_tensor(BevAug(math.pi / 2, False).matrix)  # ego' = rot90 ego: x' = -y, y' = x
    out = align_teacher_maps(m, rot, R, S, R)[0]
    # the teacher's cell at (x, y) lands at (-y, x): new[row r, col c] = old[row = S-1-c, col = r]
    expected = torch.stack([torch.stack([m[0, S - 1 - c, r] for c in range(S)]) for r in range(S)])[None]
    torch.testing.assert_close(out, expected, atol=1e-4, rtol=0)
    # a finer teacher grid resampled onto the student's: a constant map stays constant, coverage 1
    const, cov = align_teacher_maps(torch.full((2, 16, 16), 3.0), torch.eye(4, dtype=torch.float64), R, S, R)
    torch.testing.assert_close(const, torch.full((2, S, S), 3.0))
    assert float(cov.min()) == pytest.approx(1.0)
    # a teacher covering half the range: the outer student cells are not covered
    _, cov = align_teacher_maps(torch.ones(1, S, S), torch.eye(4, dtype=torch.float64), R / 2, S, R)
    assert float(cov[0, 0, 0]) == 0.0 and float(cov[0, S // 2, S // 2]) == 1.0


def test_augmentation_is_recovered_from_the_two_poses():
    rng = np.random.default_rng(0)
    G = np.eye(4)
    G[:3, :3] = BevAug(0.7, False).matrix[:3, :3]
    G[:3, 3] = rng.uniform(-500, 500, 3)
    aug = BevAug(-0.3, True)
    A = augmentation_of(torch.as_tensor(aug.global_T_ego(G)), torch.as_tensor(G))
    np.testing.assert_allclose(A.numpy(), aug.matrix, atol=1e-9)


def _maps(C=3, S=4, K=10, value=1.0, mirror_value=None, T=None):
    return TeacherMaps(bev=np.full((C, S, S), value, np.float32), heatmap=np.full((K, S, S), 0.5, np.float32),
                       global_T_ego=np.eye(4) if T is None else T, bev_range=8.0, teacher="abc", passes=4,
                       bev_mirror=None if mirror_value is None else np.full((C, S, S), mirror_value, np.float32))


def test_maps_file_round_trip_and_clear_errors(tmp_path):
    d = str(tmp_path / "maps")
    path = write_teacher_maps(d, "tok1", _maps(mirror_value=2.0))
    assert path == os.path.join(d, "tok1.npz") and os.listdir(d) == ["tok1.npz"]  # no temp file left
    back = read_teacher_maps(path)
    assert back.bev.dtype == np.float16 and back.teacher == "abc" and back.passes == 4
    np.testing.assert_array_equal(back.bev_mirror, 2.0)
    with pytest.raises(DataError, match="not a plain token"):
        maps_path(d, "../escape")
    np.savez(os.path.join(d, "tok2.npz"), bev=np.zeros((3, 4, 4)))
    with pytest.raises(DataError, match=r"tok2.npz: teacher maps without field\(s\) \['heatmap'"):
        read_teacher_maps(os.path.join(d, "tok2.npz"))
    with open(os.path.join(d, "tok3.npz"), "wb") as f:
        f.write(b"not a zip")
    with pytest.raises(DataError, match="tok3.npz: unreadable teacher maps"):
        read_teacher_maps(os.path.join(d, "tok3.npz"))
    with pytest.raises(DataError, match="'heatmap' must be"):
        write_teacher_maps(d, "tok4", TeacherMaps(np.zeros((3, 4, 4)), np.zeros((10, 5, 5)), np.eye(4), 8.0))
    assert not os.path.exists(os.path.join(d, "tok4.npz"))


def test_accumulator_averages_passes_and_flips_mirrored_heatmaps_back():
    acc = MapsAccumulator()
    logit = np.full((1, 4, 4), -20.0, np.float32)
    seen = logit.copy()
    seen[0, 0, 1] = 20.0  # the real pass sees the object at row 0 (y < 0)
    mirrored = logit.copy()
    mirrored[0, 3, 1] = 20.0  # the mirrored pass sees it at the mirrored row
    acc.add(np.ones((2, 4, 4)), seen, mirrored=False)
    acc.add(np.full((2, 4, 4), 3.0), mirrored, mirrored=True)
    acc.add(np.full((2, 4, 4), 5.0), seen, mirrored=False)
    m = acc.result(np.eye(4), 8.0, "sha")
    assert m.passes == 3 and float(m.heatmap[0, 0, 1]) == pytest.approx(1.0) and float(m.heatmap[0, 3, 1]) < 1e-6
    np.testing.assert_allclose(m.bev, 3.0)
    np.testing.assert_allclose(m.bev_mirror, 3.0)


def test_distiller_reads_targets_by_token_and_uses_mirrored_maps_for_flipped_samples(tmp_path):
    d = str(tmp_path / "maps")
    write_teacher_maps(d, "real", _maps(value=1.0, mirror_value=-1.0))
    write_teacher_maps(d, "nomirror", _maps(value=1.0))
    cfg = DistillLossConfig(weight=1.0, targets_dir=d)
    dist = Distiller(student_channels=2, bev_size=4, bev_range=8.0, num_classes=10, cfg=cfg)
    assert dist.teacher_channels == 3

    def meta(tok, aug):
        return SampleMeta(tok, "scene", "", 0, aug.global_T_ego(np.eye(4)).tolist())

    metas = [meta("real", BevAug(0.0, False)), meta("real", BevAug(0.0, True)), meta("missing", BevAug()),
             meta("nomirror", BevAug(0.0, True))]
    t = dist.targets(metas, torch.device("cpu"))
    np.testing.assert_allclose(t.bev[0].numpy(), 1.0)
    np.testing.assert_allclose(t.bev[1].numpy(), -1.0)  # flipped: the mirrored world's features
    assert t.feature_valid.tolist() == [1.0, 1.0, 0.0, 0.0]  # no file; flipped without mirrored maps
    assert float(t.weight[2].abs().sum()) == 0.0 and float(t.weight[3].min()) > 0  # heatmap still used on 3
    np.testing.assert_allclose(t.weight[0].numpy(), 0.1 + 0.5, rtol=1e-3)  # background + max class prob
    bev = torch.randn(4, 2, 4, 4, requires_grad=True)
    logits = torch.randn(4, 10, 4, 4, requires_grad=True)
    losses = dist(bev, logits, metas)
    losses["distill"].backward()
    assert set(losses) == {"distill", "distill_feature", "distill_heatmap"}
    assert all(p.grad is not None for p in dist.parameters()) and float(bev.grad[2].abs().sum()) == 0.0
    write_teacher_maps(d, "other", _maps(C=5))
    with pytest.raises(DataError, match="other.npz: teacher maps with 5 BEV channels"):
        dist.targets([meta("other", BevAug())], torch.device("cpu"))
    with pytest.raises(DataError, match="no directory of teacher maps"):
        Distiller(2, 4, 8.0, 10, DistillLossConfig(weight=1.0, targets_dir=str(tmp_path / "none")))
