"""Real frames for INT8 calibration and parity: the training split of the checkpoint's data set,
in scene order, with the model's own previous BEV filled in (as a runtime loops the graph)."""
from __future__ import annotations

from typing import Callable, Iterator, Optional

import torch

from drive.data.dataset import NuScenesDrivingDataset
from drive.deploy.quantize import temporal_inputs


def data_settings(meta: dict, root: Optional[str], version: Optional[str],
                  split: Optional[str]) -> tuple[str, str, str]:
    """Root / version / split: explicit arguments win, then the training run's data config (``meta['data']``)."""
    data = (meta or {}).get("data", {}) or {}
    return (root or data.get("root") or "data/synth", version or data.get("version") or "v1.0-mini",
            split or data.get("train_split") or "mini_train")


def frame_source(load_model: Callable, ckpt_path: str, root: Optional[str] = None, version: Optional[str] = None,
                 split: Optional[str] = None) -> Callable[[], Iterator[dict]]:
    """A factory of batch-1 input dicts (``INPUT_NAMES``) over the split's keyframes in temporal order."""

    def factory() -> Iterator[dict]:
        model, config, meta = load_model(ckpt_path)
        r, v, s = data_settings(meta, root, version, split)
        ds = NuScenesDrivingDataset(r, v, s, image_size=tuple(config.image_hw), image_crop_top=config.image_crop_top,
                                    with_targets=False)

        def frames():
            for i in range(len(ds)):
                f, _, _ = ds[i]
                yield {"images": f.images[None], "ego2img": f.ego2img[None], "ego_status": f.ego_status[None],
                       "command": f.command.reshape(1), "prev_T_cur": f.prev_T_cur[None],
                       "has_prev": f.has_prev.reshape(1)}

        with torch.no_grad():
            yield from temporal_inputs(model, frames())

    return factory
