"""``drive-train``: the Hydra app that trains a ``DrivingModel`` (configs in ``configs/``, root ``train.yaml``).

    drive-train                                   # edge model, synthetic world at data/synth, CPU
    drive-train experiment=quick                  # a few minutes
    drive-train debug=fast                        # tiny model, a few steps
    drive-train trainer.max_steps=100 optimizer.lr=1e-3 hydra.run.dir=outputs/mine
    drive-train ckpt_path=outputs/mine/checkpoints/last.ckpt hydra.run.dir=outputs/mine   # resume
    drive-train -m optimizer.lr=1e-3,3e-4         # sweep
    drive-train trainer=ddp                       # 2 processes, gloo on CPU
    drive-train experiment=plan_stage init_from=RUN/checkpoints/last.ckpt   # retrain the planning head only
"""
from __future__ import annotations

import logging
import os
import sys

import hydra
from omegaconf import DictConfig

CONFIG_DIR = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", "..", "configs"))
log = logging.getLogger("drive.train")


@hydra.main(version_base="1.3", config_path=CONFIG_DIR, config_name="train")
def main(cfg: DictConfig) -> float:
    from drive.data.errors import DataError
    from drive.evaluation.errors import EvalError
    from drive.training.run import objective, train

    try:
        return objective(cfg, train(cfg))
    except (DataError, EvalError) as e:  # bad data root / tables, unreadable init_from checkpoint: one line, exit 2
        log.error("%s", e)
        print(f"drive-train: error: {e}", file=sys.stderr)
        raise SystemExit(2) from None


if __name__ == "__main__":
    main()
