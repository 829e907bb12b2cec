"""The cloud data-labelling loop: one round per strategy = fleet -> triggers -> upload -> teacher -> review
-> label store -> retrain -> export -> profile -> evaluate -> report.

Three strategies spend the same human-labelling budget every round and differ only in what they do with it:

* ``triggers`` (ours): the car's edge model scores its own clips (``drive.labelling.triggers``) and uploads the
  most informative ones; the offboard teacher auto-labels them; humans review the frames the teacher is
  least sure of.
* ``random``: the same, but the uploaded clips are chosen at random.
* ``human``: random clips, no teacher: humans label whole clips while the budget lasts.

``oracle`` (opt-in, synthetic fleets only) is ``triggers`` with a perfect trigger: the fleet's hidden truth
uploads the long-tail clips first. It bounds what any trigger could gain in this world.

Every step writes ``<out_dir>/rounds/<strategy>/rNN/<step>.json`` atomically when it finishes and is skipped
when that file exists, so a killed round resumes where it stopped: finished clips are not relabelled, the
review queue and the label store are idempotent (keyed by strategy, round and sample token), and training
resumes from its own ``last.ckpt``. The fleet drives of a round are shared by all strategies.

Layout of ``out_dir``: ``config.yaml``, ``longtail_val/`` (the fixed long-tail val world), ``fleet/rNN/``
(round N's drives: ``v1.0-mini`` = the hidden truth, ``v1.0-fleet`` = what the car uploads: no labels),
``store/<strategy>/`` (the label store: base data + accepted clips, one table version per round),
``review_queue.sqlite``, ``rounds/_r0/`` (the round-0 model's export and evaluation) and
``rounds/<strategy>/rNN/``; ``report.md`` / ``report.json`` / ``cost_vs_metric.png`` summarise everything.
"""
from __future__ import annotations

import json
import logging
import os
import time
from dataclasses import asdict
from typing import Any, Callable, Optional

from .config import STRATEGIES, LoopConfig
from .errors import LabellingError
from .records import FrameLabels, LabelBox, Provenance
from .scalabel import atomic_write_json

log = logging.getLogger(__name__)

FLEET_VERSION = "v1.0-fleet"
TRUTH_VERSION = "v1.0-mini"
LONGTAIL_SPLIT = "longtail_val"


write_json = atomic_write_json  # atomic JSON (temp file in the same folder, fsync, rename)


def read_json(path: str) -> Optional[Any]:
    if not os.path.isfile(path):
        return None
    with open(path) as f:
        return json.load(f)


class LoopPaths:
    def __init__(self, out_dir: str):
        self.root = os.path.abspath(out_dir)

    def fleet(self, r: int) -> str:
        return os.path.join(self.root, "fleet", f"r{r:02d}")

    @property
    def longtail(self) -> str:
        return os.path.join(self.root, "longtail_val")

    def store(self, strategy: str) -> str:
        return os.path.join(self.root, "store", strategy)

    @property
    def teacher_maps(self) -> str:
        """The teacher's maps of every keyframe it labelled (any strategy), for distillation."""
        return os.path.join(self.root, "teacher_maps")

    @property
    def queue(self) -> str:
        return os.path.join(self.root, "review_queue.sqlite")

    def round_dir(self, strategy: str, r: int) -> str:
        if r == 0:
            return os.path.join(self.root, "rounds", "_r0")
        return os.path.join(self.root, "rounds", strategy, f"r{r:02d}")


def step(directory: str, name: str, fn: Callable[[], Any]) -> Any:
    """Run ``fn`` once: its JSON result is kept in ``<directory>/<name>.json`` and returned on reruns."""
    path = os.path.join(directory, f"{name}.json")
    done = read_json(path)
    if done is not None:
        log.info("%s: %s already done", directory, name)
        return done
    t0 = time.time()
    result = fn()
    if isinstance(result, dict):
        result = {**result, "seconds": round(time.time() - t0, 2)}
    write_json(path, result)
    log.info("%s: %s done in %.1f s", directory, name, time.time() - t0)
    return result


class Loop:
    """Runs the loop described by a ``LoopConfig`` (``drive-loop``); each ``step_*`` is also a ``drive label`` step."""

    def __init__(self, cfg: LoopConfig):
        self.cfg = cfg
        self.paths = LoopPaths(cfg.out_dir)
        for what, path in (("student_ckpt", cfg.student_ckpt), ("teacher_ckpt", cfg.teacher_ckpt)):
            if not path or not os.path.isfile(path):
                raise LabellingError(f"{what}: checkpoint not found: {path!r}")
        unknown = [s for s in cfg.strategies if s not in STRATEGIES]
        if unknown or not cfg.strategies:
            raise LabellingError(f"strategies: unknown {unknown} (expected a subset of {list(STRATEGIES)})")
        if cfg.engine not in ("local", "ray"):
            raise LabellingError(f"engine must be 'local' or 'ray', got {cfg.engine!r}")
        if cfg.export.precision not in ("fp32", "fp16", "int8"):
            raise LabellingError(f"export.precision must be fp32, fp16 or int8, got {cfg.export.precision!r}")
        if cfg.round is not None and not 1 <= cfg.round <= max(cfg.rounds, cfg.round):
            raise LabellingError(f"round must be >= 1, got {cfg.round}")
        if cfg.threads:
            import torch

            torch.set_num_threads(int(cfg.threads))
        self._teacher_sha: Optional[str] = None

    # ------------------------------------------------------------------ whole loop

    def run(self) -> dict:
        self.prepare()
        last = self.cfg.round or self.cfg.rounds
        for r in range(1, last + 1):  # earlier rounds first: each starts from the one before (cached if done)
            self.step_fleet(r)
            for s in self.cfg.strategies:
                self.run_round(s, r)
        from .report import write_loop_report

        return write_loop_report(self)

    def prepare(self) -> None:
        """The long-tail val world, each strategy's round-0 label store, and the round-0 model's figures."""
        from .fleet import generate_longtail_val

        lt = self.cfg.longtail_val
        generate_longtail_val(self.paths.longtail, scenes=lt.scenes, seed=lt.seed, width=lt.width, height=lt.height,
                              keyframes=lt.keyframes, workers=lt.workers)
        for s in self.cfg.strategies:
            self.store(s).init_from_base(os.path.abspath(self.cfg.base.root), self.cfg.base.version, self.cfg.base.split)
        d = self.paths.round_dir("", 0)
        exp = step(d, "export", lambda: self._export(self.cfg.student_ckpt, d, None))
        step(d, "profile", lambda: self._profile("round0", exp, d))
        step(d, "eval", lambda: self._evaluate(self.cfg.student_ckpt, exp, d))

    def run_round(self, strategy: str, r: int) -> dict:
        d = self.paths.round_dir(strategy, r)
        self.step_mine(strategy, r)
        self.step_select(strategy, r)
        if strategy != "human":
            self.step_teacher(strategy, r)
        self.step_review(strategy, r)
        self.step_store(strategy, r)
        self.step_train(strategy, r)
        ckpt = self.checkpoint_of(strategy, r)
        exp = step(d, "export", lambda: self._export(ckpt, d, self.store_version(strategy, r)))
        step(d, "profile", lambda: self._profile(f"{strategy}_r{r}", exp, d))
        step(d, "eval", lambda: self._evaluate(ckpt, exp, d))
        self.step_quality(strategy, r)
        from .report import round_report

        return step(d, "report", lambda: round_report(self, strategy, r))

    # ------------------------------------------------------------------ helpers

    def store(self, strategy: str):
        from .store import LabelStore

        return LabelStore(self.paths.store(strategy), strategy)

    @staticmethod
    def store_version(strategy: str, r: int) -> str:
        return f"v1.0-r{r}"

    def checkpoint_of(self, strategy: str, r: int) -> str:
        """The checkpoint of a strategy's model after round r (round 0: the student)."""
        if r == 0:
            return self.cfg.student_ckpt
        return os.path.join(self.paths.round_dir(strategy, r), "train", "checkpoints", "last.ckpt")

    def model_of(self, strategy: str, r: int) -> tuple[str, str]:
        """(checkpoint, exported graph of the configured precision) of a strategy's model after round r."""
        d = self.paths.round_dir(strategy, r)
        ckpt = self.checkpoint_of(strategy, r)
        exp = read_json(os.path.join(d, "export.json"))
        if exp is None:
            raise LabellingError(f"round {r} of {strategy!r} has no exported model yet ({d}/export.json)")
        return ckpt, exp["graphs"][self.cfg.export.precision]

    def teacher_sha(self) -> str:
        if self._teacher_sha is None:
            from drive.hashing import sha256_file

            self._teacher_sha = sha256_file(self.cfg.teacher_ckpt)
        return self._teacher_sha

    def _run_clips(self, spec, scene_tokens: list[str], cache_dir: str) -> list[dict]:
        """Run a clip worker (miner / teacher) on the configured engine. Each finished clip is kept in
        ``cache_dir/<scene>.json`` as it completes, so a crashed step reruns only the clips not done yet."""
        from .engine import run_clips

        done = {t: read_json(os.path.join(cache_dir, f"{t}.json")) for t in scene_tokens}
        todo = [t for t in scene_tokens if done[t] is None]
        if todo:
            def keep(index: int, result: dict) -> None:
                write_json(os.path.join(cache_dir, f"{todo[index]}.json"), result)

            fresh = run_clips(spec, [{"scene_token": t} for t in todo], engine=self.cfg.engine,
                              num_actors=self.cfg.num_actors, on_result=keep)
            done.update(zip(todo, fresh))
        return [done[t] for t in scene_tokens]

    # ------------------------------------------------------------------ steps

    def step_fleet(self, r: int) -> dict:
        from .fleet import generate_fleet, list_clips

        f = self.cfg.fleet

        def run():
            info = generate_fleet(self.paths.fleet(r), round_index=r, scenes=f.scenes, seed=f.seed + r, width=f.width,
                                  height=f.height, keyframes=f.keyframes, knobs=dict(f.knobs) or None,
                                  workers=f.workers, longtail_frac=f.longtail_frac)
            clips = list_clips(self.paths.fleet(r), FLEET_VERSION)
            return {"root": self.paths.fleet(r), "info": _plain(info),
                    "clips": [{"scene_token": c.scene_token, "scene_name": c.scene_name, "samples": len(c.sample_tokens),
                               "bytes": c.bytes} for c in clips]}

        return step(os.path.join(self.paths.root, "fleet"), f"r{r:02d}", run)

    def step_reference(self, strategy: str, r: int) -> dict:
        """The novelty reference of the model that mines round r (the model after round r - 1): its BEV features
        on the base split it was trained on, each scene's first ``fleet.keyframes`` keyframes run as a clip.
        Kept beside that model (round 0's is shared by every strategy)."""
        from .novelty import fit_base_reference
        from .triggers import TriggerConfig

        d = self.paths.round_dir(strategy, r - 1)

        def run():
            _, graph = self.model_of(strategy, r - 1)
            b, trig = self.cfg.base, TriggerConfig(**dict(self.cfg.triggers))
            ref = fit_base_reference(b.root, b.version, b.split, onnx_path=graph, keyframes=self.cfg.fleet.keyframes,
                                     shrinkage=trig.novelty_shrinkage, warmup=trig.novelty_warmup,
                                     threads=self.cfg.threads or 1)
            return {"path": ref.save(os.path.join(d, "novelty_reference.npz")), "graph": graph, "frames": ref.frames,
                    "median": ref.median, "shrinkage": ref.shrinkage, "warmup": ref.warmup,
                    "model_sha256": ref.model_sha256}

        return step(d, "novelty_reference", run)

    def step_mine(self, strategy: str, r: int) -> dict:
        """The strategy's current edge model (exported graph) runs over every fleet clip: triggers + detections."""
        from .miner import ClipMiner
        from .triggers import TriggerConfig, signal_summary

        def run():
            _, graph = self.model_of(strategy, r - 1)
            fleet = self.step_fleet(r)
            spec = ClipMiner(root=self.paths.fleet(r), version=FLEET_VERSION, onnx_path=graph,
                             config=TriggerConfig(**dict(self.cfg.triggers)), threads=self.cfg.threads or 1,
                             reference=self.step_reference(strategy, r)["path"])
            tokens = [c["scene_token"] for c in fleet["clips"]]
            cache = os.path.join(self.paths.round_dir(strategy, r), "mine_clips")
            try:
                reports = self._run_clips(spec, tokens, cache)
                failed = {}
            except LabellingError as e:  # a clip the car cannot read is skipped, not the whole fleet
                log.warning("round %d %s: trigger mining failed on some clips: %s", r, strategy, e)
                reports = [rep for t in tokens if (rep := read_json(os.path.join(cache, f"{t}.json"))) is not None]
                failed = {t: str(e) for t in tokens if not os.path.isfile(os.path.join(cache, f"{t}.json"))}
                if tokens and not reports:  # not a malformed clip: the miner itself cannot run
                    raise LabellingError(f"round {r} {strategy}: no fleet clip could be mined: {e}") from e
            return {"graph": graph, "clips": reports, "failed": failed, "summary": signal_summary(reports)}

        return step(self.paths.round_dir(strategy, r), "mine", run)

    def step_select(self, strategy: str, r: int) -> dict:
        """Which clips the car uploads under the budget, and which uploads the cloud rejects as malformed."""
        from .fleet import validate_clip
        from .triggers import select_clips

        def run():
            fleet, mine = self.step_fleet(r), self.step_mine(strategy, r)
            size = {c["scene_token"]: c["bytes"] for c in fleet["clips"]}
            up = self.cfg.upload
            reports = _oracle_scores(fleet, mine["clips"]) if strategy == "oracle" else mine["clips"]
            chosen = select_clips(reports, size, budget_bytes=up.budget_bytes, budget_clips=up.budget_clips,
                                  strategy="triggers" if strategy in ("triggers", "oracle") else "random",
                                  seed=self.cfg.seed * 1000 + r)
            accepted, rejected = [], {}
            for tok in chosen:
                reasons = validate_clip(self.paths.fleet(r), FLEET_VERSION, tok)
                if reasons:
                    log.warning("round %d %s: upload %s rejected: %s", r, strategy, tok, "; ".join(reasons))
                    rejected[tok] = reasons
                else:
                    accepted.append(tok)
            return {"uploaded": chosen, "accepted": accepted, "rejected": rejected,
                    "bytes": int(sum(size[t] for t in chosen))}

        return step(self.paths.round_dir(strategy, r), "select", run)

    def step_teacher(self, strategy: str, r: int) -> dict:
        """Offboard auto-labels of the accepted clips (past + future frames, TTA, track refinement)."""
        from .teacher import TeacherConfig, TeacherSpec

        def run():
            sel = self.step_select(strategy, r)
            spec = TeacherSpec(ckpt_path=os.path.abspath(self.cfg.teacher_ckpt), root=self.paths.fleet(r),
                               version=FLEET_VERSION, config=TeacherConfig(**dict(self.cfg.teacher)),
                               threads=self.cfg.threads or 1, maps_dir=self.paths.teacher_maps)
            clips = self._run_clips(spec, sel["accepted"], os.path.join(self.paths.round_dir(strategy, r), "teacher_clips"))
            return {"teacher": self.cfg.teacher_ckpt, "teacher_sha256": self.teacher_sha(), "clips": clips}

        return step(self.paths.round_dir(strategy, r), "teacher", run)

    def annotator(self, r: int):
        from .annotator import LabelNoise, SimulatedAnnotator

        rv = self.cfg.review
        return SimulatedAnnotator(self.paths.fleet(r), TRUTH_VERSION, cost_per_box=rv.cost_per_box,
                                  cost_per_frame=rv.cost_per_frame, noise=LabelNoise(**asdict(rv.noise)),
                                  seed=self.cfg.seed * 1000 + r)

    def step_review(self, strategy: str, r: int) -> dict:
        """Human labels within the round's budget: the teacher's least sure frames (via the SQLite queue), or
        whole clips in upload order for the humans-only strategy."""

        def run():
            budget = self.review_budget(strategy, r)
            ann = self.annotator(r)
            if strategy == "human":
                return ann.label_whole_clips(self.step_select(strategy, r)["accepted"], budget)
            from .queue import QueueRequest, ReviewQueue

            queue = ReviewQueue(self.paths.queue)
            requests = [QueueRequest(tok, clip["scene_token"], rv["reason"], float(rv["score"]))
                        for clip in self.step_teacher(strategy, r)["clips"] for tok, rv in clip["review"].items()]
            queue.enqueue(strategy, r, requests)  # idempotent: a rerun after a crash adds nothing
            queue.release_stale(0.0)  # frames a crashed reviewer held: back to pending
            spent = queue.summary(strategy, r)["cost"]  # paid before a crash
            ann.resolve(queue, strategy, r, budget - spent)
            done = ann.replay(queue, strategy, r)  # every frame this reviewer finished, this run or before
            summary = queue.summary(strategy, r)
            return {"frames": done.frames, "boxes": done.boxes, "cost": summary["cost"], "budget": budget,
                    "queued": len(requests),
                    "labels": {k: [b.to_dict() for b in v.boxes] for k, v in done.labels.items()},
                    "reviewer": ann.reviewer, "queue": summary}

        return step(self.paths.round_dir(strategy, r), "review", run)

    def review_budget(self, strategy: str, r: int) -> float:
        """This round's human budget: ``review.budget`` per round, what earlier rounds left unspent carried over
        (so "equal budget" means the same cumulative cap for every strategy: humans labelling whole clips may
        need two rounds' budget for one clip)."""
        spent = sum(float((read_json(os.path.join(self.paths.round_dir(strategy, k), "review.json")) or {})
                          .get("cost", 0.0)) for k in range(1, r))
        return max(0.0, r * self.cfg.review.budget - spent)  # never a float-rounding -1e-15

    def step_store(self, strategy: str, r: int) -> dict:
        """Write the round's store version: earlier rounds + accepted clips with auto and human labels."""

        def run():
            review = self.step_review(strategy, r)
            labels: dict[str, FrameLabels] = {}
            clips = review.get("clips") if strategy == "human" else self.step_select(strategy, r)["accepted"]
            if strategy != "human":
                teacher = self.step_teacher(strategy, r)
                sha, floor = teacher["teacher_sha256"], self.cfg.auto_labels.min_confidence
                for clip in teacher["clips"]:
                    for tok, boxes in clip["boxes"].items():
                        keep = [LabelBox.from_dict(b) for b in boxes if b["score"] >= floor]
                        labels[tok] = FrameLabels(tok, keep, Provenance("auto", r, strategy, teacher=sha))
            reviewer = review.get("reviewer", "sim-annotator")
            for tok, boxes in review["labels"].items():  # human labels win over the teacher's on their frames
                labels[tok] = FrameLabels(tok, [LabelBox.from_dict(b) for b in boxes],
                                          Provenance("human", r, strategy, reviewer=reviewer))
            fleet = self.paths.fleet(r)
            stats = self.store(strategy).write_round(r, [(fleet, FLEET_VERSION, t) for t in clips], labels)
            return {"version": self.store_version(strategy, r), "clips": clips, "stats": _plain(stats)}

        return step(self.paths.round_dir(strategy, r), "store", run)

    def step_train(self, strategy: str, r: int) -> dict:
        from .retrain import finetune

        def run():
            self.step_store(strategy, r)
            prev_ckpt = self.checkpoint_of(strategy, r - 1)
            d = self.paths.round_dir(strategy, r)
            return finetune(self.cfg, prev_ckpt, self.paths.store(strategy), self.store_version(strategy, r),
                            os.path.join(d, "train"),
                            maps_dir=None if strategy == "human" else self.paths.teacher_maps)  # no teacher there

        return step(self.paths.round_dir(strategy, r), "train", run)

    def _export(self, ckpt: str, d: str, store_version: Optional[str]) -> dict:
        from .retrain import export

        root = self.paths.store(self.cfg.strategies[0]) if store_version is None else None
        return export(self.cfg, ckpt, os.path.join(d, "export"), calib_root=root or self._calib_root(d),
                      calib_version=store_version or "v1.0-r0")

    def _calib_root(self, d: str) -> str:
        strategy = os.path.basename(os.path.dirname(d))
        return self.paths.store(strategy)

    def _profile(self, name: str, exp: dict, d: str) -> dict:
        from .retrain import profile

        return profile(self.cfg, name, exp, os.path.join(d, "profile"))

    def _evaluate(self, ckpt: str, exp: dict, d: str) -> dict:
        from .retrain import evaluate_longtail

        return evaluate_longtail(self.cfg, ckpt, exp["graphs"][self.cfg.export.precision], self.paths.longtail,
                                 os.path.join(d, "eval"))

    def step_quality(self, strategy: str, r: int) -> dict:
        """Pseudo-label quality against the hidden truth: the teacher's labels and the edge model's own
        detections on the same uploaded frames, both scored by the devkit."""
        from .retrain import score_against_truth

        def run():
            sel = self.step_select(strategy, r)
            if not sel["accepted"]:
                return {"note": "no accepted clips"}
            mine = {c["scene_token"]: c for c in self.step_mine(strategy, r)["clips"]}
            edge = {tok: recs for t in sel["accepted"] for tok, recs in mine[t]["detections"].items()}
            out = {"edge": score_against_truth(self.paths.fleet(r), sel["accepted"], edge, f"upload_{strategy}_r{r}",
                                               os.path.join(self.paths.round_dir(strategy, r), "quality", "edge"))}
            if strategy != "human":
                teacher = {tok: [LabelBox.from_dict(b).to_result() for b in boxes]
                           for clip in self.step_teacher(strategy, r)["clips"] for tok, boxes in clip["boxes"].items()}
                out["teacher"] = score_against_truth(self.paths.fleet(r), sel["accepted"], teacher,
                                                     f"upload_{strategy}_r{r}",
                                                     os.path.join(self.paths.round_dir(strategy, r), "quality", "teacher"))
            return out

        return step(self.paths.round_dir(strategy, r), "quality", run)


def _oracle_scores(fleet: dict, reports: list[dict]) -> list[dict]:
    """The oracle's clip scores: 1 for the fleet's hidden long-tail clips, 0 for the rest (ties by token)."""
    from .report import longtail_flags

    is_lt = longtail_flags(fleet)
    if is_lt is None:
        raise LabellingError(f"strategy 'oracle' needs a fleet with hidden truth (fleet.json 'longtail_scenes'): "
                             f"{fleet.get('root')}")
    return [{"scene_token": c["scene_token"], "clip_score": float(is_lt.get(c["scene_token"], False))}
            for c in reports]


def _plain(x: Any) -> Any:
    """JSON-able copy of dataclasses / dicts / lists."""
    from dataclasses import is_dataclass

    if is_dataclass(x) and not isinstance(x, type):
        return _plain(asdict(x))
    if isinstance(x, dict):
        return {str(k): _plain(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_plain(v) for v in x]
    return x
