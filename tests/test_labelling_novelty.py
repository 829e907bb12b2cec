"""The novelty trigger: Mahalanobis distances on hand-made features with known answers, the reference's fit,
file round trip and errors, and the miner end to end with a reference fitted on the synthetic world."""
import numpy as np
import pytest

from drive.labelling.errors import LabellingError
from drive.labelling.novelty import (NoveltyReference, descriptor, fit_base_reference, fit_reference,
                                     frame_novelty, frame_novelty_at, gaussian, mahalanobis2)
from drive.labelling.miner import ClipMiner
from drive.labelling.triggers import TriggerConfig, normalise

from eval_fixtures import write_checkpoint


def frame(rng, c=3, s=8, shift=None):
    """A (C, S, S) BEV whose channel means are drawn around 0 (or ``shift``) with unit spread."""
    mu = rng.normal(size=c) if shift is None else np.asarray(shift, float)
    return mu[:, None, None] + 0.1 * rng.normal(size=(c, s, s))


def test_descriptor_and_distance_known_answers():
    bev = np.zeros((2, 2, 2))
    bev[0] = [[1.0, 3.0], [1.0, 3.0]]  # mean 2, std 1
    bev[1] = 5.0  # mean 5, std 0
    assert descriptor(bev) == pytest.approx([2.0, 5.0, 1.0, 0.0])
    assert descriptor(bev[None]) == pytest.approx([2.0, 5.0, 1.0, 0.0])
    with pytest.raises(LabellingError, match=r"must be \(C, S, S\)"):
        descriptor(np.zeros((2, 4)))
    mean, precision = np.zeros(2), np.diag([1.0, 4.0])
    x = np.array([[3.0, 0.0], [0.0, 1.0], [1.0, 1.0]])
    assert mahalanobis2(x, mean, precision) == pytest.approx([9.0, 4.0, 5.0])
    with pytest.raises(LabellingError, match="descriptor of 3 numbers, the reference 2"):
        mahalanobis2(np.zeros(3), mean, precision)


def test_gaussian_shrinks_towards_the_mean_variance():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(500, 3)) @ np.array([[1.0, 0.0, 0.0], [0.5, 2.0, 0.0], [0.0, -1.0, 0.5]]).T
    mean, precision = gaussian(x, 0.25)
    cov = np.cov(x, rowvar=False)
    assert mean == pytest.approx(x.mean(0))
    assert np.linalg.inv(precision) == pytest.approx(0.75 * cov + 0.25 * np.trace(cov) / 3 * np.eye(3), rel=1e-6)


def test_reference_unit_is_a_typical_held_out_frame_and_outliers_score_high():
    rng = np.random.default_rng(1)
    frames = [frame(rng) for _ in range(200)]
    ref = fit_reference(frames, groups=[i // 5 for i in range(200)], shrinkage=0.05)
    assert ref.frames == 200 and ref.channels == 3 and ref.mean.shape == (6,)
    fresh = [frame(rng) for _ in range(200)]  # unseen frames of the same world: median novelty about 1
    assert 0.8 < np.median([frame_novelty(f, ref) for f in fresh]) < 1.25
    odd = frame(rng, shift=[4.0, -4.0, 4.0])  # a kind of scene the reference never saw
    busy = frame(rng, shift=[0.0, 0.0, 0.0]) * 1.0
    busy[:, :2, :2] += 3.0  # something unusual in a corner: the channel spreads jump
    assert frame_novelty(odd, ref) > 10 and frame_novelty(busy, ref) > 10
    assert np.mean([frame_novelty(f, ref) > frame_novelty(odd, ref) for f in fresh]) == 0.0
    ref.warmup = 2  # a clip's first two frames score nothing, the third as any frame
    assert [frame_novelty_at(odd, i, ref) for i in range(3)] == [0.0, 0.0, frame_novelty(odd, ref)]


def test_fit_errors():
    rng = np.random.default_rng(2)
    f = [frame(rng) for _ in range(6)]
    with pytest.raises(LabellingError, match="at least 4 frames"):
        fit_reference(f[:3])
    with pytest.raises(LabellingError, match="different channel counts"):
        fit_reference(f[:5] + [np.ones((4, 8, 8))])
    with pytest.raises(LabellingError, match="shrinkage"):
        fit_reference(f, shrinkage=0.0)
    with pytest.raises(LabellingError, match="5 groups for 6 frames"):
        fit_reference(f, groups=[0, 1, 2, 3, 4])
    with pytest.raises(LabellingError, match="at least two groups"):
        fit_reference(f, groups=[0] * 6)
    with pytest.raises(LabellingError, match="same features"):
        fit_reference([np.ones((3, 4, 4))] * 6)


def test_reference_file_round_trip_and_errors(tmp_path):
    rng = np.random.default_rng(3)
    ref = fit_reference([frame(rng, c=4) for _ in range(12)], model_sha256="ab" * 32, warmup=3)
    path = ref.save(str(tmp_path / "sub" / "ref.npz"))
    back = NoveltyReference.load(path)
    assert back.mean == pytest.approx(ref.mean) and back.precision == pytest.approx(ref.precision)
    assert (back.median, back.shrinkage, back.frames, back.model_sha256, back.warmup) == (ref.median, 0.05, 12,
                                                                                        "ab" * 32, 3)
    assert [p.name for p in (tmp_path / "sub").iterdir()] == ["ref.npz"]  # no temp file left behind
    bad = tmp_path / "bad.npz"
    bad.write_bytes(b"not an npz")
    with pytest.raises(LabellingError, match="bad.npz"):
        NoveltyReference.load(str(bad))
    np.savez(tmp_path / "partial.npz", mean=np.zeros(2))
    with pytest.raises(LabellingError, match="partial.npz: field 'precision' missing") as e:
        NoveltyReference.load(str(tmp_path / "partial.npz"))
    assert str(e.value).count("novelty reference") == 1  # said once, not re-wrapped


def test_novelty_signal_normalisation_and_config():
    base = {"uncertainty": 0.0, "flicker": 0.0, "disagreement": 0.0, "rare": 0.0}
    cfg = TriggerConfig(novelty_scale=2.0)
    assert normalise({**base, "novelty": 2.0}, cfg)["novelty"] == pytest.approx(0.5)  # the scale: 0.5
    assert normalise({**base, "novelty": 6.0}, cfg)["novelty"] == pytest.approx(0.75)
    assert normalise({**base, "novelty": 0.0}, cfg)["novelty"] == 0.0
    assert normalise(base, cfg)["novelty"] == 0.0  # a report from before the signal existed
    with pytest.raises(LabellingError, match="novelty_scale must be > 0"):
        TriggerConfig(novelty_scale=0.0)


def test_miner_needs_a_reference_for_a_weighted_novelty(synth_world, tmp_path):
    ckpt = write_checkpoint(tmp_path / "tiny.ckpt")
    with pytest.raises(LabellingError, match="novelty trigger has a weight but ClipMiner has no reference"):
        ClipMiner(synth_world, "v1.0-mini", ckpt_path=ckpt, config=TriggerConfig(weights={"novelty": 1.0})).check()
    with pytest.raises(LabellingError, match="reference not found: .*nope.npz"):
        ClipMiner(synth_world, "v1.0-mini", ckpt_path=ckpt, reference=str(tmp_path / "nope.npz")).check()
    wrong = fit_reference([np.random.default_rng(2).normal(size=(5, 4, 4)) for _ in range(6)])
    with pytest.raises(LabellingError, match="has 5 channels, the model's BEV"):
        ClipMiner(synth_world, "v1.0-mini", ckpt_path=ckpt,
                  reference=wrong.save(str(tmp_path / "wrong.npz"))).build()
    other = fit_reference([np.random.default_rng(3).normal(size=(32, 4, 4)) for _ in range(6)], model_sha256="0" * 64)
    spec = ClipMiner(synth_world, "v1.0-mini", ckpt_path=ckpt, reference=other.save(str(tmp_path / "other.npz")))
    # refused by the cheap check the engine runs in-process before any worker starts, and by the worker itself
    for call in (spec.check, spec.build):
        with pytest.raises(LabellingError, match="fitted with model 000000000000, this miner runs"):
            call()
    np.savez(tmp_path / "old.npz", **{k: v for k, v in np.load(spec.reference).items() if k != "warmup"})
    with pytest.raises(LabellingError, match="old.npz: field 'warmup' missing"):
        ClipMiner(synth_world, "v1.0-mini", ckpt_path=ckpt, reference=str(tmp_path / "old.npz")).check()


def test_reference_fitted_on_a_split_mines_that_split_at_median_one(synth_world, tmp_path):
    """The reference fitted on a split's frames after each clip's warm-up; mining that split reports no novelty
    inside the warm-up and, after it, novelty whose median lies below the held-out unit (the Gaussian has seen
    these frames), and its normalised value."""
    from drive.data.nusc import open_nuscenes, scenes_of_split

    ckpt = write_checkpoint(tmp_path / "tiny.ckpt")
    ref = fit_base_reference(synth_world, "v1.0-mini", "mini_train", ckpt_path=ckpt, keyframes=100, warmup=2)
    nusc = open_nuscenes(synth_world, "v1.0-mini")
    train = set(scenes_of_split(nusc, "mini_train"))
    assert ref.frames == sum(s["nbr_samples"] - 2 for s in nusc.scene if s["token"] in train) and ref.warmup == 2
    assert len(ref.model_sha256) == 64
    path = ref.save(str(tmp_path / "ref.npz"))
    cfg = TriggerConfig(weights={"novelty": 1.0}, score_threshold=0.0)
    run = ClipMiner(synth_world, "v1.0-mini", ckpt_path=ckpt, config=cfg, reference=path, split="mini_train").build()
    reports = [run({"scene_token": tok}) for tok in sorted(run.indices)]
    assert all(fr["signals"]["novelty"] == 0.0 for rep in reports for fr in rep["frames"][:2])
    nov = [fr["signals"]["novelty"] for rep in reports for fr in rep["frames"][2:]]
    assert len(nov) == ref.frames and min(nov) > 0.0 and np.median(nov) < 1.0
    for fr in (fr for rep in reports for fr in rep["frames"]):
        assert fr["normalised"]["novelty"] == pytest.approx(normalise(fr["signals"], cfg)["novelty"])
        assert fr["score"] == pytest.approx(fr["normalised"]["novelty"])  # the only weighted signal
    with pytest.raises(LabellingError, match="split 'nope'"):
        fit_base_reference(synth_world, "v1.0-mini", "nope", ckpt_path=ckpt)
    with pytest.raises(LabellingError, match="need 0 <= warmup < keyframes, got warmup 4, keyframes 4"):
        fit_base_reference(synth_world, "v1.0-mini", "mini_train", ckpt_path=ckpt, keyframes=4, warmup=4)
