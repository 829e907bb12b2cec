"""The clip execution engine: job order, one build per process, per-clip errors, and Ray == local on the
synthetic world (one Ray run on a local 2-CPU cluster)."""
import math

import pytest

from drive.labelling.engine import build_worker, run_clips
from drive.labelling.errors import LabellingError

from eval_fixtures import write_checkpoint

BUILDS = []


class Scale:
    """A spec: build() -> job fn; counts its builds."""

    def __init__(self, k):
        self.k = k

    def build(self):
        BUILDS.append(self.k)
        return lambda job: {"clip": job["clip"], "y": job["x"] * self.k}


def fails_on_b(job):
    if job["clip"] == "b":
        raise RuntimeError("boom in b")
    return {"clip": job["clip"]}


JOBS = [{"clip": c, "x": i} for i, c in enumerate("abcd")]


def test_local_results_in_job_order_and_built_once():
    BUILDS.clear()
    seen = []
    out = run_clips(Scale(3), JOBS, on_result=lambda i, r: seen.append((i, r["clip"])))
    assert out == [{"clip": c, "y": 3 * i} for i, c in enumerate("abcd")]
    assert BUILDS == [3]
    assert seen == [(0, "a"), (1, "b"), (2, "c"), (3, "d")]
    assert run_clips(Scale(3), []) == []


def test_worker_forms():
    assert build_worker(lambda: (lambda job: {"n": 1}))({}) == {"n": 1}  # factory
    assert build_worker(fails_on_b)({"clip": "a"}) == {"clip": "a"}  # the job function itself
    with pytest.raises(LabellingError, match="neither"):
        build_worker(42)


def test_failing_clip_is_named_and_the_others_still_delivered():
    seen = []
    with pytest.raises(LabellingError, match=r"1 of 4 clip jobs failed \(clip b\).*boom in b"):
        run_clips(fails_on_b, JOBS, on_result=lambda i, r: seen.append(r["clip"]))
    assert seen == ["a", "c", "d"]

    def names_itself(job):
        if job["clip"] == "c":
            raise LabellingError(f"clip {job['clip']}: corrupt image")
        return {}

    with pytest.raises(LabellingError, match=r"failed \(clip c\); clip c: corrupt image$"):  # named once
        run_clips(names_itself, JOBS)


def test_bad_inputs_and_non_json_results():
    with pytest.raises(LabellingError, match="engine must be one of"):
        run_clips(fails_on_b, JOBS, engine="spark")
    with pytest.raises(LabellingError, match="not JSON-able"):
        run_clips(fails_on_b, [{"clip": "a", "x": object()}])
    with pytest.raises(LabellingError, match="clip a: the worker's result is not JSON-able"):
        run_clips(lambda job: {"v": math.nan}, [{"clip": "a"}])
    with pytest.raises(LabellingError, match="clip a: the worker returned a list"):
        run_clips(lambda job: [1], [{"clip": "a"}])
    with pytest.raises(LabellingError, match="num_actors"):
        run_clips(fails_on_b, JOBS, engine="ray", num_actors=0)


def _close(a, b, path="result"):
    """Equal structure and strings, floats within 1e-5 (two processes, same weights, one thread each)."""
    if isinstance(a, dict):
        assert set(a) == set(b), path
        for k in a:
            _close(a[k], b[k], f"{path}.{k}")
    elif isinstance(a, list):
        assert len(a) == len(b), path
        for i, (x, y) in enumerate(zip(a, b)):
            _close(x, y, f"{path}[{i}]")
    elif isinstance(a, float):
        assert b == pytest.approx(a, rel=1e-5, abs=1e-6), path
    else:
        assert a == b, path


def test_ray_equals_local_on_the_synth_world(synth_world, tmp_path):
    pytest.importorskip("ray.data")
    import ray

    from drive.data.nusc import open_nuscenes
    from drive.labelling.miner import ClipMiner
    from drive.labelling.triggers import TriggerConfig

    scenes = [s["token"] for s in open_nuscenes(synth_world, "v1.0-mini").scene[:2]]
    miner = ClipMiner(synth_world, "v1.0-mini", ckpt_path=write_checkpoint(tmp_path / "tiny.ckpt"),
                      config=TriggerConfig(score_threshold=0.05, weights={"uncertainty": 1.0}), threads=1)
    jobs = [{"scene_token": t} for t in scenes]
    local = run_clips(miner, jobs, engine="local")
    assert [r["scene_token"] for r in local] == scenes

    # the same clips plus one unknown clip on Ray: the good ones arrive via on_result, the bad one is named
    got = {}
    with pytest.raises(LabellingError, match="clip nope: no such scene"):
        run_clips(miner, jobs[:1] + [{"scene_token": "nope"}] + jobs[1:], engine="ray", num_actors=2,
                  on_result=lambda i, r: got.setdefault(i, r))
    assert not ray.is_initialized()  # the engine shut down the Ray it started
    assert sorted(got) == [0, 2]
    for want, have in zip(local, (got[0], got[2])):
        want, have = dict(want), dict(have)
        want.pop("seconds"), have.pop("seconds")
        _close(want, have)
