"""``drive profile`` command line: arguments, ``--eval`` parsing, report names of the models, and the command.

The profiling and the report live in ``drive.deploy.report``; this is the glue the ``drive`` CLI wires in.
"""
from __future__ import annotations

import os
from typing import Callable, Sequence

from drive.deploy.export import DeployError
from drive.deploy.report import ProfileSubject, render_markdown, run_profile


def add_profile_arguments(parser) -> None:
    """``drive profile MODEL_OR_CKPT [MODEL_OR_CKPT ...] [--targets orin-x,journey5] [--report DIR] [--runs 100]``."""
    parser.add_argument("models", nargs="+", help="checkpoint(s) or exported .onnx graph(s); several are compared")
    parser.add_argument("--targets", default="orin-x", help="comma-separated chip keys (configs/deploy/chips.yaml)")
    parser.add_argument("--report", default=None, help="report directory (profile.json, profile.md, plots)")
    parser.add_argument("--runs", type=int, default=100)
    parser.add_argument("--warmup", type=int, default=10)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--precisions", default="fp32,int8", help="host variants to time (fp32 always)")
    parser.add_argument("--eval", action="append", default=[], metavar="[NAME:]PREC=PATH",
                        help="drive-eval output (dir or metrics.json) of a precision, for the accuracy-vs-latency "
                             "plot; NAME (the model's report name: its file stem, or run/stem when two stems "
                             "collide) defaults to the first model; repeat per precision / model")


def eval_accuracy(specs: Sequence[str], names: Sequence[str]) -> dict[str, dict[str, dict]]:
    """``--eval [NAME:]PREC=PATH`` arguments -> ``{subject: {precision: summarised drive-eval figures}}``."""
    from drive.evaluation.errors import EvalError
    from drive.evaluation.summary import load_eval_summary

    out: dict[str, dict[str, dict]] = {}
    for spec in specs:
        head, sep, path = spec.partition("=")
        name, _, prec = head.rpartition(":")
        name = name or (names[0] if names else "")
        if not sep or not path or prec not in ("fp32", "fp16", "int8"):
            raise DeployError(f"--eval {spec!r}: expected [NAME:]PREC=PATH with PREC fp32, fp16 or int8")
        if name not in names:
            raise DeployError(f"--eval {spec!r}: no profiled model is called {name!r} (models: {', '.join(names)})")
        try:
            figures = load_eval_summary(path)
        except EvalError as e:
            raise DeployError(f"--eval {spec!r}: {e}") from None
        out.setdefault(name, {})[prec] = {k: v for k, v in figures.items() if isinstance(v, (int, float))}
    return out


def subject_names(paths: Sequence[str]) -> list[str]:
    """A report name per model path: the file stem, or, where stems collide (two runs' ``last.ckpt``), the stem
    with as many parent directories as make it unique (``checkpoints`` folders skipped): ``edge30/last``."""
    parts = [[p for p in os.path.normpath(os.path.abspath(path)).split(os.sep)[:-1] if p and p != "checkpoints"]
             for path in paths]
    stems = [os.path.splitext(os.path.basename(path))[0] for path in paths]
    names = list(stems)
    depth = 0
    while len(set(names)) < len(names) and depth < max(len(p) for p in parts):
        depth += 1
        names = [stem if stems.count(stem) == 1 else "/".join(p[-depth:] + [stem]) for stem, p in zip(stems, parts)]
    if len(set(names)) < len(names):
        raise DeployError(f"the same model is given twice: {sorted(paths)}")
    return names


def profile_command(args, load_model: Callable[[str], tuple]) -> int:
    """Run ``drive profile`` from parsed ``args``. ``.onnx`` arguments are profiled as graphs (a sibling
    ``model_int8.onnx`` / ``model_fp16.onnx`` is picked up); anything else goes through the injected
    ``load_model(path) -> (model, config, meta)``. Returns 0, or 2 on ``DeployError``."""
    import sys

    try:
        subjects = []
        for path, name in zip(args.models, subject_names(args.models)):
            if path.endswith(".onnx"):
                graphs = {"fp32": path}
                for prec in ("fp16", "int8"):
                    sibling = path.replace("fp32", prec)
                    if sibling != path and os.path.exists(sibling):
                        graphs[prec] = sibling
                subjects.append(ProfileSubject(name=name, onnx=graphs))
            else:
                model, config, _ = load_model(path)
                subjects.append(ProfileSubject(name=name, model=model.eval(), config=config))
        accuracy = eval_accuracy(getattr(args, "eval", []), [s.name for s in subjects])
        result = run_profile(subjects, args.targets, args.report, args.runs, args.warmup, args.threads,
                             [p for p in args.precisions.split(",") if p], accuracy=accuracy or None)
    except DeployError as e:
        print(f"drive profile: error: {e}", file=sys.stderr)
        return 2
    print(render_markdown(result))
    return 0
