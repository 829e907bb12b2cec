"""``drive-loop``: the Hydra app that runs the labelling loop (``configs/loop.yaml``, ``drive.labelling.loop``).

    drive-loop student_ckpt=outputs/main/train/checkpoints/last.ckpt teacher_ckpt=outputs/teacher/last.ckpt
    drive-loop ... round=2 strategies=[triggers]
    drive-loop ... engine=ray

Bad input (a missing checkpoint, an unknown strategy or engine) -> one line on stderr, exit code 2.
Malformed uploads do not stop a round: they are rejected with their reason in the round report.
"""
from __future__ import annotations

import logging
import os
import sys
from typing import Optional

import hydra
from omegaconf import DictConfig, OmegaConf

CONFIG_DIR = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", "..", "configs"))
log = logging.getLogger("drive.loop")


def loop_config(cfg: DictConfig):
    """The typed ``LoopConfig`` of a composed config (unknown or mistyped keys -> LabellingError)."""
    from omegaconf.errors import OmegaConfBaseException

    from drive.labelling.config import LoopConfig
    from drive.labelling.errors import LabellingError

    plain = OmegaConf.to_container(cfg, resolve=True)
    plain.pop("hydra", None)
    try:
        return OmegaConf.to_object(OmegaConf.merge(OmegaConf.structured(LoopConfig), plain))
    except OmegaConfBaseException as e:
        raise LabellingError(f"configs/loop.yaml: {e}".splitlines()[0]) from e


@hydra.main(version_base="1.3", config_path=CONFIG_DIR, config_name="loop")
def _app(cfg: DictConfig) -> None:
    from drive.data.errors import DataError
    from drive.deploy.export import DeployError
    from drive.evaluation.errors import EvalError
    from drive.labelling.errors import LabellingError
    from drive.labelling.loop import Loop, write_json

    try:
        typed = loop_config(cfg)
        loop = Loop(typed)
        os.makedirs(loop.paths.root, exist_ok=True)
        OmegaConf.save(OmegaConf.structured(typed), os.path.join(loop.paths.root, "config.yaml"))
        loop.run()
    except (LabellingError, DataError, EvalError, DeployError) as e:
        log.error("%s", e)
        print(f"drive-loop: error: {e}", file=sys.stderr)
        raise SystemExit(2) from None
    write_json(os.path.join(loop.paths.root, "done.json"), {"rounds": typed.round or typed.rounds})
    print(f"report: {os.path.join(loop.paths.root, 'report.md')}")
    return None


def main(argv: Optional[list[str]] = None) -> None:
    if argv is not None:
        sys.argv = [sys.argv[0] if sys.argv else "drive-loop", *argv]
    _app()


if __name__ == "__main__":
    main()
