"""``drive-eval``: the Hydra app that evaluates a checkpoint over a split (configs in ``configs/``, root ``eval.yaml``).

    drive-eval ckpt_path=outputs/edge/RUN/checkpoints/last.ckpt
    drive-eval ckpt_path=... split=mini_train data.root=/data/nuscenes data.version=v1.0-mini
    drive-eval ckpt_path=... backend=onnx onnx_path=model.onnx
    drive-eval backend=gt hydra.run.dir=outputs/oracle      # pipeline check: scores the ground truth

Bad input (checkpoint, ONNX file, results file, split, data root) -> one line on stderr, exit code 2,
and no partial results in the output directory.
"""
from __future__ import annotations

import logging
import os
import sys
from typing import Optional

import hydra
from omegaconf import DictConfig

CONFIG_DIR = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", "..", "configs"))
log = logging.getLogger("drive.eval")


@hydra.main(version_base="1.3", config_path=CONFIG_DIR, config_name="eval")
def _app(cfg: DictConfig) -> Optional[float]:
    from drive.data.errors import DataError
    from drive.evaluation.config import options_from_config
    from drive.evaluation.errors import EvalError
    from drive.evaluation.runner import evaluate

    try:
        metrics = evaluate(options_from_config(cfg))
    except (EvalError, DataError) as e:
        log.error("%s", e)
        print(f"drive-eval: error: {e}", file=sys.stderr)
        raise SystemExit(2) from None
    return (metrics.get("detection") or {}).get("NDS")


def main(argv: Optional[list[str]] = None) -> None:
    """Console entry point; ``argv`` (Hydra overrides) replaces ``sys.argv[1:]`` when given (tests)."""
    if argv is not None:
        sys.argv = [sys.argv[0] if sys.argv else "drive-eval", *argv]
    _app()


if __name__ == "__main__":
    main()
