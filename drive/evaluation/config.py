"""From the composed ``drive-eval`` config (``configs/eval.yaml``) to typed ``EvalOptions``."""
from __future__ import annotations

from omegaconf import DictConfig, OmegaConf

from .errors import EvalError
from .runner import EvalOptions


def options_from_config(cfg: DictConfig) -> EvalOptions:
    from drive.training.builders import build_model_config

    d, e = cfg.data, cfg.get("eval") or {}
    try:
        model_config = build_model_config(cfg)
    except Exception as err:  # only the fallback geometry; a broken `model` group is still a config error
        raise EvalError(f"config 'model' does not build a ModelConfig: {err}") from err
    out_dir = cfg.paths.output_dir
    return EvalOptions(
        root=str(d.root), version=str(d.version), split=cfg.split, out_dir=str(out_dir),
        train_split=d.get("train_split"), backend=str(cfg.backend), ckpt_path=cfg.get("ckpt_path"),
        ego_ckpt_path=cfg.get("ego_ckpt_path"), onnx_path=cfg.get("onnx_path"), results_path=cfg.get("results_path"),
        random_init=bool(cfg.get("random_init", False)), model_config=model_config,
        max_objects=int(d.get("max_objects", 200)), cache_dir=d.get("cache_dir"),
        cache_images=bool(d.get("cache_images", True)), map_resolution=float(d.get("map_resolution", 0.25)),
        num_workers=int(d.get("num_workers", 0)), threads=cfg.get("threads"), seed=int(cfg.get("seed", 0)),
        motion_score_threshold=float(e.get("motion_score_threshold", 0.0)),
        match_distance=float(e.get("match_distance", 2.0)),
        plan_change_threshold=float(e.get("plan_change_threshold", 0.1)),
        map_threshold=float(e.get("map_threshold", 0.5)), ego_mlp_steps=int(e.get("ego_mlp_steps", 3000)),
        num_cases=int(e.get("num_cases", 2)), draw_score_threshold=float(e.get("draw_score_threshold", 0.3)),
        render_curves=bool(e.get("render_curves", True)), gif_frames=int(e.get("gif_frames", 0)),
        report=bool(e.get("report", True)), temporal=bool(e.get("temporal", True)),
        resolved_config=OmegaConf.to_container(cfg, resolve=True, throw_on_missing=False),
    )
