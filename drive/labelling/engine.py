"""Where per-clip work runs: in this process, or on Ray (Ray Data batch inference with an actor pool).

Trigger mining on the fleet's drives and offboard teacher labelling have the same shape: a model runs over
every keyframe of one clip in temporal order (the previous BEV is carried from frame to frame, and the teacher
also runs backwards), so a **clip is the unit of work** and is never split between workers. ``run_clips`` maps
a worker over a list of clip jobs and returns one JSON-able result dict per job, in job order:

* ``engine="local"`` (the default): a plain loop in this process; the worker is built once.
* ``engine="ray"``: ``ray.data.from_items(jobs).map_batches(<actor class>, batch_size=1,
  compute=ActorPoolStrategy(size=num_actors), num_cpus=1, fn_constructor_kwargs=...)`` (``concurrency=`` is
  deprecated since Ray 2.51). Each actor builds the worker once (loads
  its model once) and then processes clips one by one. Jobs and results cross Ray Data as single JSON
  string columns, so clips with different keys never meet Arrow's schema inference. A local Ray (``num_cpus``,
  default ``num_actors``, no dashboard) is started when none is running and ``ray_address`` is not given, and is
  shut down again afterwards; a running Ray (or ``ray_address``) is used as it is and left running.

The worker is described by a **picklable spec**, so it can be shipped to actors and built there:

* an object with a ``build()`` method returning a callable ``job -> dict`` (a dataclass such as
  ``drive.labelling.miner.ClipMiner`` or the teacher's spec): the preferred form; an optional ``check()``
  method is run in the calling process first (e.g. input files exist), so bad arguments fail at once instead
  of inside every actor;
* a zero-argument factory returning such a callable;
* or the ``job -> dict`` callable itself (must be picklable: a module-level function or class instance).

Jobs are JSON-able dicts naming their clip (``scene_token``, else ``clip``). A failing job does not stop the
other jobs: every result that succeeded is delivered (to ``on_result`` as it arrives), then one
``LabellingError`` names every failed clip with the first failure's error.
"""
from __future__ import annotations

import inspect
import json
import logging
import time
import traceback
from typing import Any, Callable, Optional, Protocol, Union, runtime_checkable

from .errors import LabellingError

log = logging.getLogger(__name__)

ENGINES = ("local", "ray")

ClipFn = Callable[[dict], dict]


@runtime_checkable
class WorkerSpec(Protocol):
    """A picklable description of a clip worker; ``build()`` is called once per process (per Ray actor)."""

    def build(self) -> ClipFn:
        ...


Worker = Union[WorkerSpec, Callable[[], ClipFn], ClipFn]


def clip_name(job: Any, index: int) -> str:
    """How errors name a job: its ``scene_token`` (or ``clip``), else its position."""
    if isinstance(job, dict):
        for key in ("scene_token", "clip"):
            if job.get(key):
                return f"clip {job[key]}"
    return f"job #{index}"


def build_worker(worker: Worker) -> ClipFn:
    """The ``job -> dict`` callable of a spec / factory / callable (see the module doc)."""
    if hasattr(worker, "build") and callable(worker.build):
        fn = worker.build()
    elif callable(worker) and _is_factory(worker):
        fn = worker()
    elif callable(worker):
        fn = worker
    else:
        raise LabellingError(f"worker {type(worker).__name__} is neither a spec with build(), a factory, "
                             f"nor a callable job -> dict")
    if not callable(fn):
        raise LabellingError(f"worker {type(worker).__name__} built a {type(fn).__name__}, not a callable job -> dict")
    return fn


def _is_factory(fn: Callable) -> bool:
    """True when ``fn`` takes no required argument (a factory), False when it takes the job."""
    try:
        params = inspect.signature(fn).parameters.values()
    except (TypeError, ValueError):
        return False
    return not any(p.default is p.empty and p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD) for p in params)


def _to_json(result: Any, name: str) -> str:
    """The result as strict JSON (a dict; no NaN / inf, no numpy / tensors): ``LabellingError`` otherwise."""
    if not isinstance(result, dict):
        raise LabellingError(f"{name}: the worker returned a {type(result).__name__}, not a dict")
    try:
        return json.dumps(result, allow_nan=False)
    except (TypeError, ValueError) as e:
        raise LabellingError(f"{name}: the worker's result is not JSON-able ({e})") from e


def _run_one(fn: ClipFn, job: dict, index: int) -> dict:
    """``{"ok": True, "result": <json str>}`` or ``{"ok": False, "error": ..., "traceback": ...}``."""
    name = clip_name(job, index)
    try:
        return {"ok": True, "result": _to_json(fn(job), name)}
    except Exception as e:  # noqa: BLE001 - reported per clip, raised once at the end
        error = str(e) if isinstance(e, LabellingError) else f"{type(e).__name__}: {e}"
        return {"ok": False, "error": error, "traceback": traceback.format_exc()}


def run_clips(worker: Worker, jobs: list[dict], engine: str = "local", num_actors: int = 2,
              ray_address: Optional[str] = None,
              on_result: Optional[Callable[[int, dict], None]] = None,
              num_cpus: Optional[int] = None) -> list[dict]:
    """Run ``worker`` on every clip job; results (JSON-round-tripped dicts) in job order.

    engine: ``local`` or ``ray``; num_actors: Ray actor-pool size (1 CPU each); ray_address: an existing Ray
    cluster to join; num_cpus: CPUs of a Ray started here (default ``num_actors``). on_result(index, result):
    called as each clip finishes (Ray: in completion order), e.g. to persist finished clips so a crashed round
    resumes without redoing them. A spec's optional ``check()`` runs first, in this process (cheap input
    checks, so a missing file fails before Ray and the actors start).
    Raises ``LabellingError`` for a bad engine / job list / worker, and after all jobs ran if any job failed.
    """
    if engine not in ENGINES:
        raise LabellingError(f"engine must be one of {', '.join(ENGINES)}, got {engine!r}")
    if not isinstance(jobs, (list, tuple)) or not all(isinstance(j, dict) for j in jobs):
        raise LabellingError("jobs must be a list of dicts (one per clip)")
    jobs = list(jobs)
    for i, job in enumerate(jobs):
        try:
            json.dumps(job, allow_nan=False)
        except (TypeError, ValueError) as e:
            raise LabellingError(f"{clip_name(job, i)}: the job is not JSON-able ({e})") from e
    if not jobs:
        return []
    check = getattr(worker, "check", None)
    if callable(check):
        check()
    t0 = time.time()
    if engine == "local":
        outcomes = _run_local(worker, jobs, on_result)
    else:
        if int(num_actors) < 1:
            raise LabellingError(f"num_actors must be >= 1, got {num_actors}")
        outcomes = _run_ray(worker, jobs, int(num_actors), ray_address, on_result, num_cpus)
    failed = [(i, o) for i, o in enumerate(outcomes) if not o["ok"]]
    if failed:
        i, first = failed[0]
        log.error("%s failed:\n%s", clip_name(jobs[i], i), first.get("traceback", ""))
        names = ", ".join(clip_name(jobs[k], k) for k, _ in failed)
        name = clip_name(jobs[i], i)
        error = first["error"] if first["error"].startswith(name) else f"{name}: {first['error']}"
        raise LabellingError(f"{len(failed)} of {len(jobs)} clip jobs failed ({names}); {error}")
    log.info("%d clips on engine=%s in %.1f s", len(jobs), engine, time.time() - t0)
    return [json.loads(o["result"]) for o in outcomes]


def _deliver(outcome: dict, index: int, on_result: Optional[Callable[[int, dict], None]]) -> None:
    if outcome["ok"] and on_result is not None:
        on_result(index, json.loads(outcome["result"]))


def _run_local(worker: Worker, jobs: list[dict], on_result) -> list[dict]:
    fn = build_worker(worker)
    outcomes = []
    for i, job in enumerate(jobs):
        outcome = _run_one(fn, job, i)
        _deliver(outcome, i, on_result)
        outcomes.append(outcome)
    return outcomes


class RayClipActor:
    """The Ray Data callable class: builds the worker once per actor, then runs one clip per batch row."""

    def __init__(self, worker: Worker):
        self.fn = build_worker(worker)

    def __call__(self, batch: dict) -> dict:
        import numpy as np

        results = []
        for index, job_json in zip(batch["index"], batch["job"]):
            results.append(json.dumps(_run_one(self.fn, json.loads(str(job_json)), int(index))))
        return {"index": np.asarray(batch["index"], dtype=np.int64), "outcome": np.asarray(results, dtype=object)}


def _init_ray(ray, address: Optional[str], num_cpus: int, attempts: int = 2) -> None:
    """Join ``address`` or start a local Ray. Ray gives its raylet a fixed 30 s to register; on a machine busy
    with other work that can run out, so a local start is tried ``attempts`` times before giving up."""
    kwargs = dict(include_dashboard=False, log_to_driver=False, configure_logging=False)
    for attempt in range(1, attempts + 1):
        try:
            if address:
                ray.init(address=address, **kwargs)
            else:
                ray.init(num_cpus=num_cpus, **kwargs)
            return
        except Exception as e:  # noqa: BLE001 - Ray raises a bare Exception on a startup timeout
            ray.shutdown()
            if address or attempt == attempts:
                where = f"Ray at {address}" if address else f"a local Ray ({num_cpus} CPUs)"
                raise LabellingError(f"engine=ray: cannot start or join {where}: {type(e).__name__}: {e}") from e
            log.warning("starting a local Ray failed (%s); retrying", e)


def _run_ray(worker: Worker, jobs: list[dict], num_actors: int, ray_address: Optional[str],
             on_result, num_cpus: Optional[int] = None) -> list[dict]:
    try:
        import ray
        import ray.data
    except ImportError as e:
        raise LabellingError(f"engine=ray needs Ray Data (pip install 'ray[data]'): {e}") from e
    started = False
    if not ray.is_initialized():
        _init_ray(ray, ray_address, int(num_cpus or num_actors))
        started = True
    try:
        ctx = ray.data.DataContext.get_current()
        ctx.enable_progress_bars = False
        ctx.verbose_stats_logs = False
        items = [{"index": i, "job": json.dumps(job)} for i, job in enumerate(jobs)]
        ds = ray.data.from_items(items, override_num_blocks=len(items)).map_batches(
            RayClipActor, batch_size=1, compute=ray.data.ActorPoolStrategy(size=num_actors), num_cpus=1,
            fn_constructor_kwargs={"worker": worker}, batch_format="numpy")
        outcomes: list[Optional[dict]] = [None] * len(jobs)
        rows = iter(ds.iter_rows())
        while True:
            try:
                row = next(rows)
            except StopIteration:
                break
            except Exception as e:  # an actor that cannot build its worker, a lost node, ...
                text = str(e).strip()
                raise LabellingError(f"engine=ray: the actor pool failed ({type(e).__name__}: "
                                     f"{text.splitlines()[-1] if text else ''})") from e
            i = int(row["index"])
            outcomes[i] = json.loads(str(row["outcome"]))
            _deliver(outcomes[i], i, on_result)
        missing = [clip_name(jobs[i], i) for i, o in enumerate(outcomes) if o is None]
        if missing:
            raise LabellingError(f"engine=ray returned no result for {', '.join(missing)}")
        return outcomes  # type: ignore[return-value]
    finally:
        if started:
            ray.shutdown()
