"""Typed model configs and the one builder that turns them into a ``DrivingModel``.

Every per-part config's fields are exactly the keyword arguments of that part's constructor
(checked in ``build_model``), so a Hydra ``_target_`` node for a part maps 1:1 to it. Values
shared by several parts (channels, BEV grid, cameras) live once in ``ModelConfig`` and are
passed down by the builder. Presets: ``edge_config()`` (trains on a 2-core CPU),
``cloud_config()`` (ResNet-50 layout, 100 x 100 BEV, 3 layers), ``tiny_config()`` (tests).
"""
from __future__ import annotations

import inspect
from dataclasses import asdict, dataclass, field, replace
from typing import Optional

from drive.models.backbone import ResNetBackbone
from drive.models.feasibility import FeasibilityLayer
from drive.models.heads.detection import CenterPointHead
from drive.models.heads.map_seg import MapSegHead
from drive.models.heads.motion import MotionHead
from drive.models.heads.planning import PlanningHead
from drive.models.model import DrivingModel
from drive.models.neck import FPN
from drive.models.view_transform_bevformer import BEVFormerViewTransform
from drive.models.view_transform_lss import BilinearLiftViewTransform


@dataclass
class BackboneConfig:
    block: str = "basic"
    layers: tuple[int, ...] = (2, 2, 2, 2)
    base_width: int = 32
    norm: str = "batch"
    num_groups: int = 32
    out_indices: tuple[int, ...] = (2, 3)
    checkpoint: Optional[str] = None


@dataclass
class NeckConfig:
    out_strides: tuple[int, ...] = (16,)


@dataclass
class BEVFormerConfig:
    num_layers: int = 2
    num_heads: int = 4
    z_anchors: tuple[float, ...] = (-0.5, 0.5, 1.5, 2.5)
    num_points: int = 2
    temporal_points: int = 4
    ffn_dim: Optional[int] = None
    cameras_per_query: Optional[int] = 2  # camera slots per BEV query (None: sample all cameras)
    conv_fusion: bool = False  # BEVDet4D concat + conv of the aligned previous map after the encoder


@dataclass
class BilinearLiftConfig:
    z_anchors: tuple[float, ...] = (-0.5, 0.25, 1.0, 1.75, 2.5, 3.25)
    num_res_blocks: int = 1


@dataclass
class DetectionConfig:
    head_channels: int = 64
    top_k: int = 100
    temporal_regression: bool = False  # the box branch also reads the aligned previous BEV (BEVDet4D-style pair)


@dataclass
class MapConfig:
    map_size: int = 200  # the data layer's default drivable raster (0.512 m cells over +-51.2 m)
    map_range: float = 51.2
    hidden: int = 16


@dataclass
class MotionConfig:
    num_modes: int = 6
    num_layers: int = 2
    num_heads: int = 4
    kv_stride: int = 1


@dataclass
class PlanningConfig:
    num_layers: int = 1
    num_heads: int = 4
    kv_stride: int = 1
    use_ego_status: bool = False


@dataclass
class FeasibilityConfig:
    iterations: int = 15
    step_size: float = 1.0
    max_step: float = 1.0
    w_jerk: float = 0.01
    w_curvature: float = 20.0
    max_curvature: float = 0.2
    w_collision: float = 10.0
    safety_radius: float = 2.0
    score_threshold: float = 0.3


@dataclass
class ModelConfig:
    embed_dim: int = 64
    bev_size: int = 50
    bev_range: float = 51.2
    num_cameras: int = 6
    image_hw: tuple[int, int] = (128, 352)  # documents the input size; the model reads H, W from the images
    image_crop_top: float = 0.35  # preprocessing: the image is resized to (H / (1 - crop), W) and its top rows cut
    view_transform: str = "bevformer"  # or "bilinear"
    backbone: BackboneConfig = field(default_factory=lambda: BackboneConfig(out_indices=(1, 2, 3)))
    neck: NeckConfig = field(default_factory=lambda: NeckConfig(out_strides=(8,)))
    bevformer: BEVFormerConfig = field(default_factory=BEVFormerConfig)
    bilinear: BilinearLiftConfig = field(default_factory=BilinearLiftConfig)
    detection: DetectionConfig = field(default_factory=DetectionConfig)
    map: MapConfig = field(default_factory=MapConfig)
    motion: MotionConfig = field(default_factory=MotionConfig)
    planning: PlanningConfig = field(default_factory=PlanningConfig)
    feasibility: FeasibilityConfig = field(default_factory=FeasibilityConfig)


def _make(cls: type, part_cfg: object, **shared: object) -> object:
    """``cls(**fields(part_cfg), **shared)`` after checking every key is a constructor argument."""
    kwargs = {**asdict(part_cfg), **shared}
    params = inspect.signature(cls).parameters
    unknown = sorted(set(kwargs) - set(params))
    if unknown:
        raise TypeError(f"{cls.__name__} has no arguments {unknown}")
    return cls(**kwargs)


def build_model(cfg: ModelConfig) -> DrivingModel:
    """Build and cross-check a ``DrivingModel`` from a typed config."""
    c, s, r = cfg.embed_dim, cfg.bev_size, cfg.bev_range
    h, w = cfg.image_hw
    backbone = _make(ResNetBackbone, cfg.backbone)
    if any(h % st or w % st for st in cfg.neck.out_strides):
        raise ValueError(f"image_hw {cfg.image_hw} must be divisible by every neck stride {cfg.neck.out_strides}")
    neck = _make(FPN, cfg.neck, in_channels=backbone.out_channels, in_strides=backbone.out_strides, out_channels=c)
    levels = len(cfg.neck.out_strides)
    if cfg.view_transform == "bevformer":
        vt = _make(BEVFormerViewTransform, cfg.bevformer, embed_dim=c, bev_size=s, bev_range=r,
                   num_cameras=cfg.num_cameras, num_levels=levels)
    elif cfg.view_transform == "bilinear":
        vt = _make(BilinearLiftViewTransform, cfg.bilinear, embed_dim=c, bev_size=s, bev_range=r, num_levels=levels)
    else:
        raise ValueError(f"unknown view_transform {cfg.view_transform!r} (expected 'bevformer' or 'bilinear')")
    det = _make(CenterPointHead, cfg.detection, in_channels=c, bev_size=s, bev_range=r)
    map_head = _make(MapSegHead, cfg.map, in_channels=c, bev_range=r)
    motion = _make(MotionHead, cfg.motion, embed_dim=c, bev_size=s, bev_range=r)
    planning = _make(PlanningHead, cfg.planning, embed_dim=c, bev_size=s, bev_range=r)
    feas = _make(FeasibilityLayer, cfg.feasibility)
    return DrivingModel(backbone, neck, vt, det, map_head, motion, planning, feas)


def edge_config(**overrides: object) -> ModelConfig:
    """Cheap enough to train on a 2-core CPU: 6 x 128 x 352 images (resized to 197 x 352, the top 35 %
    cut), ResNet-18 layout at width 32, FPN fused to stride-8 features (16 x 44 per camera), C = 64,
    50 x 50 BEV, 2 encoder layers."""
    return replace(ModelConfig(), **overrides)


def cloud_config(**overrides: object) -> ModelConfig:
    """ResNet-50 layout, strides 8 + 16, C = 256, 100 x 100 BEV, 3 encoder layers, 256 x 448 images."""
    cfg = ModelConfig(
        embed_dim=256, bev_size=100, image_hw=(256, 448), image_crop_top=0.0,
        backbone=BackboneConfig(block="bottleneck", layers=(3, 4, 6, 3), base_width=64, out_indices=(1, 2, 3)),
        neck=NeckConfig(out_strides=(8, 16)),
        bevformer=BEVFormerConfig(num_layers=3, num_heads=8, num_points=2),
        detection=DetectionConfig(head_channels=128, top_k=200),
        map=MapConfig(map_size=200, hidden=32),
        motion=MotionConfig(num_heads=8, kv_stride=2),
        planning=PlanningConfig(num_layers=2, num_heads=8, kv_stride=2),
    )
    return replace(cfg, **overrides)


def tiny_config(**overrides: object) -> ModelConfig:
    """For tests: 6 x 64 x 96 images, width-8 ResNet, C = 32, 16 x 16 BEV, 1 layer, K = 20, and a
    5-iteration feasibility layer that treats every agent as real (threshold 0) so all its terms run."""
    cfg = ModelConfig(
        embed_dim=32, bev_size=16, image_hw=(64, 96),
        image_crop_top=0.0,
        backbone=BackboneConfig(layers=(1, 1, 1, 1), base_width=8, num_groups=4, out_indices=(2, 3)),
        neck=NeckConfig(out_strides=(16,)),
        bevformer=BEVFormerConfig(num_layers=1, num_heads=4, num_points=2, temporal_points=2),
        detection=DetectionConfig(head_channels=32, top_k=20),
        map=MapConfig(map_size=32, hidden=16),
        motion=MotionConfig(num_layers=1),
        planning=PlanningConfig(num_layers=1),
        feasibility=FeasibilityConfig(iterations=5, score_threshold=0.0),
    )
    return replace(cfg, **overrides)
