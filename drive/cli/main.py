"""The `drive` command: thin entry points over the package (`drive synth | inspect | export | profile | label`)."""
from __future__ import annotations

import argparse
import json
import logging
import sys


def _synth(args) -> int:
    from drive.data.synth.scenario import WorldKnobs
    from drive.data.synth.world import generate_world

    knobs = WorldKnobs()
    for kv in args.knob or []:
        key, _, value = kv.partition("=")
        if not hasattr(knobs, key):
            raise SystemExit(f"drive synth: unknown knob {key!r}; known: {', '.join(vars(knobs))}")
        setattr(knobs, key, type(getattr(knobs, key))(value))
    summary = generate_world(args.out, scenes=args.scenes, seed=args.seed, width=args.width, height=args.height,
                             workers=args.workers, knobs=knobs, keyframes=args.keyframes, overwrite=args.overwrite)
    print(json.dumps(summary, indent=1))
    return 0


def _inspect(args) -> int:
    from drive.data.inspect import inspect_root

    inspect_root(args.root, version=args.version, sample_token=args.sample, out_png=args.out)
    return 0


def _load_model(path: str):
    """(model, config, meta dict) of a drive-train checkpoint, for the deploy commands."""
    from drive.evaluation.checkpoint import load_model

    model, config, meta = load_model(path)
    return model, config, {**meta.summary(), "data": (meta.hyper_parameters or {}).get("data", {})}


def _export(args) -> int:
    from drive.deploy.calibration import frame_source
    from drive.deploy.command import export_command

    source = frame_source(_load_model, args.checkpoint, args.data_root, args.data_version, args.calib_split)
    return export_command(args, _load_model, source)


def _profile(args) -> int:
    from drive.deploy.profile_cli import profile_command

    return profile_command(args, _load_model)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="drive", description=__doc__)
    sub = p.add_subparsers(dest="command", required=True)
    s = sub.add_parser("synth", help="generate a synthetic world as a nuScenes-format root")
    s.add_argument("--out", required=True, help="output data root (created atomically)")
    s.add_argument("--scenes", type=int, default=10)
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--width", type=int, default=800)
    s.add_argument("--height", type=int, default=450)
    s.add_argument("--keyframes", type=int, default=40, help="keyframes per scene (2 Hz)")
    s.add_argument("--workers", type=int, default=2, help="scenes generated in parallel")
    s.add_argument("--knob", action="append", metavar="NAME=VALUE", help="world knob, e.g. crossing_prob=0.8")
    s.add_argument("--overwrite", action="store_true", help="replace an existing output root")
    s.set_defaults(func=_synth)
    i = sub.add_parser("inspect", help="summarise a nuScenes-format root and draw a sample")
    i.add_argument("root")
    i.add_argument("--version", default="v1.0-mini")
    i.add_argument("--sample", default=None, help="sample token to draw (default: a val keyframe)")
    i.add_argument("--out", default=None, help="picture path (default: ROOT/inspect.png)")
    i.set_defaults(func=_inspect)
    from drive.deploy.command import add_export_arguments
    from drive.deploy.profile_cli import add_profile_arguments

    e = sub.add_parser("export", help="export a checkpoint to ONNX (fp32 / fp16 / int8) with parity and a model card")
    add_export_arguments(e)
    e.add_argument("--data-root", default=None, help="calibration / parity data (default: the run's data.root)")
    e.add_argument("--data-version", default=None)
    e.add_argument("--calib-split", default=None, help="default: the run's data.train_split")
    e.set_defaults(func=_export)
    f = sub.add_parser("profile", help="host latency, FLOPs per stage and chip roofline estimates")
    add_profile_arguments(f)
    f.set_defaults(func=_profile)
    from drive.labelling.cli import add_label_parser

    add_label_parser(sub)
    return p


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    for noisy in ("onnxscript", "onnx_ir", "torch.onnx"):  # exporter internals log every pass at INFO
        logging.getLogger(noisy).setLevel(logging.WARNING)
    args = build_parser().parse_args(argv)
    from drive.data.errors import DataError
    from drive.deploy.export import DeployError
    from drive.evaluation.errors import EvalError
    from drive.labelling.errors import LabellingError

    try:
        return args.func(args)
    except (DataError, DeployError, EvalError, LabellingError, FileExistsError, FileNotFoundError, ValueError) as e:
        print(f"drive {args.command}: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
