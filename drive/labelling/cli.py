"""``drive label STEP``: one step of a labelling round, on a loop directory written by ``drive-loop``.

    drive label mine    --loop outputs/loop --strategy triggers --round 2    # edge triggers over the fleet
    drive label teacher --loop outputs/loop --strategy triggers --round 2    # offboard auto-labels
    drive label queue-export --loop outputs/loop --strategy triggers --round 2 --out queue.json   # Scalabel
    drive label queue-import --loop outputs/loop --strategy triggers --round 2 --file queue.json --reviewer alice

The steps read ``<loop>/config.yaml`` (the resolved ``LoopConfig`` of the ``drive-loop`` run) and are cached
exactly like the loop's own, so running a step by hand and then ``drive-loop`` does not repeat it.
"""
from __future__ import annotations

import json
import os

STEPS = ("fleet", "reference", "mine", "select", "teacher", "review", "store", "train", "quality", "round", "report")


def load_loop(loop_dir: str):
    from omegaconf import OmegaConf

    from .config import LoopConfig
    from .errors import LabellingError
    from .loop import Loop

    path = os.path.join(loop_dir, "config.yaml")
    if not os.path.isfile(path):
        raise LabellingError(f"{path} not found: start the loop with drive-loop first (it writes its config there)")
    cfg = OmegaConf.to_object(OmegaConf.merge(OmegaConf.structured(LoopConfig), OmegaConf.load(path)))
    return Loop(cfg)


def add_label_parser(sub) -> None:
    p = sub.add_parser("label", help="one step of the labelling loop (see drive-loop)")
    p.add_argument("step", choices=STEPS + ("queue-export", "queue-import"))
    p.add_argument("--loop", required=True, help="loop directory (drive-loop's out_dir)")
    p.add_argument("--strategy", default="triggers")
    p.add_argument("--round", type=int, default=1)
    p.add_argument("--out", default=None, help="queue-export: Scalabel JSON to write")
    p.add_argument("--file", default=None, help="queue-import: Scalabel JSON to read")
    p.add_argument("--reviewer", default="human")
    p.set_defaults(func=label_command)


def label_command(args) -> int:
    from .errors import LabellingError

    loop = load_loop(args.loop)
    s, r = args.strategy, args.round
    if args.step in ("queue-export", "queue-import"):
        return _queue(loop, args)
    if args.step == "fleet":
        out = loop.step_fleet(r)
    elif args.step == "report":
        from .report import write_loop_report

        out = write_loop_report(loop)
    elif args.step == "round":
        loop.prepare()
        out = loop.run_round(s, r)
    else:
        if s not in loop.cfg.strategies:
            raise LabellingError(f"--strategy {s!r} is not one of the loop's {loop.cfg.strategies}")
        if r > 1 and not os.path.isfile(os.path.join(loop.paths.round_dir(s, r - 1), "export.json")):
            raise LabellingError(f"round {r - 1} of {s!r} has no exported model: run it first (drive label round)")
        out = getattr(loop, f"step_{args.step}")(s, r)
    print(json.dumps(_short(out), indent=1, default=str)[:4000])
    return 0


def _queue(loop, args) -> int:
    from drive.data.nusc import open_nuscenes

    from .errors import LabellingError
    from .loop import FLEET_VERSION, read_json
    from .queue import ReviewQueue
    from .records import LabelBox

    queue = ReviewQueue(loop.paths.queue)
    if args.step == "queue-export":
        if not args.out:
            raise LabellingError("queue-export needs --out FILE")
        teacher = read_json(os.path.join(loop.paths.round_dir(args.strategy, args.round), "teacher.json")) or {}
        pre = {tok: [LabelBox.from_dict(b) for b in boxes] for clip in teacher.get("clips", [])
               for tok, boxes in clip["boxes"].items()}
        nusc = open_nuscenes(loop.paths.fleet(args.round), FLEET_VERSION)
        queue.export_scalabel(args.out, args.strategy, args.round, nusc, pre_labels=pre)
        print(json.dumps(queue.summary(args.strategy, args.round)))
        return 0
    if not args.file:
        raise LabellingError("queue-import needs --file FILE")
    boxes = queue.import_scalabel(args.file, args.strategy, args.round, args.reviewer)
    print(json.dumps({"frames": len(boxes), "boxes": sum(len(v) for v in boxes.values())}))
    return 0


def _short(x):
    """Big per-box payloads shortened for the terminal (the step's JSON file has everything)."""
    if isinstance(x, dict):
        return {k: (f"<{len(v)} entries>" if k in ("labels", "boxes", "detections", "clips") and isinstance(v, (dict, list))
                    and len(json.dumps(v, default=str)) > 2000 else _short(v)) for k, v in x.items()}
    return x
