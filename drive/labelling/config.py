"""The labelling loop's typed configuration (``configs/loop.yaml`` is validated against it).

One ``LoopConfig`` describes a whole experiment: the human-labelled base data set and the round-0 edge
model, the teacher, the fleet that drives every round, the fixed long-tail validation world, the budgets
(upload and human labelling, equal for every strategy), and how each round retrains, exports, profiles
and evaluates the edge model.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional

STRATEGIES = ("triggers", "random", "human", "oracle")
DEFAULT_STRATEGIES = ("triggers", "random", "human")
STRATEGY_LABELS = {
    "triggers": "edge triggers + auto-labels (ours)",
    "random": "random clips + auto-labels",
    "human": "random clips, humans label everything",
    "oracle": "hidden truth picks the long tail + auto-labels (upper bound)",
}


@dataclass
class BaseData:
    root: str = "data/synth"
    version: str = "v1.0-mini"
    split: str = "mini_train"


@dataclass
class FleetConfig:
    """New drives of every round: ``scenes`` clips of ``keyframes`` at 2 Hz; ``longtail_frac`` of them with the
    long-tail knobs turned up, the rest ordinary driving (which ones is hidden truth the triggers must find)."""

    scenes: int = 6
    keyframes: int = 10
    width: int = 400
    height: int = 225
    seed: int = 1000  # round r drives with seed + r
    workers: int = 2
    knobs: dict = field(default_factory=dict)  # overrides on top of drive.labelling.fleet.LONGTAIL_KNOBS
    longtail_frac: float = 0.25  # 1.0: every clip long-tail, i.e. the same distribution as the long-tail val world


@dataclass
class LongtailValConfig:
    scenes: int = 10  # 3 scenes (48 keyframes) swung NDS by 0.025 under a fine-tune with no new data
    keyframes: int = 16
    width: int = 400
    height: int = 225
    seed: int = 4242
    workers: int = 2


@dataclass
class UploadConfig:
    budget_clips: Optional[int] = 2
    budget_bytes: Optional[int] = None


@dataclass
class NoiseConfig:
    position_sigma: float = 0.05
    size_sigma: float = 0.03
    yaw_sigma: float = 0.02
    miss_prob: float = 0.0
    class_flip_prob: float = 0.0


@dataclass
class ReviewConfig:
    """Human labelling: the same cost budget per round for every strategy."""

    budget: float = 120.0  # cost units per round (cost_per_frame + boxes x cost_per_box per frame); unspent carries over
    cost_per_box: float = 1.0
    cost_per_frame: float = 0.5
    noise: NoiseConfig = field(default_factory=NoiseConfig)


@dataclass
class AutoLabelConfig:
    min_confidence: float = 0.25  # teacher boxes below this are not written


@dataclass
class DistillConfig:
    """Distillation from the teacher's maps during the fine-tune; weight 0 = off. The fields of
    ``drive.losses.distill.DistillLossConfig`` but ``targets_dir`` (the loop's teacher maps), passed on by name."""

    weight: float = 0.0
    feature_weight: float = 1.0  # BEV feature imitation (1x1 adapter to the teacher's width)
    heatmap_weight: float = 1.0  # binary KL toward the teacher's class probabilities
    background_weight: float = 0.1  # cells the teacher calls empty count this much (its foreground: 1 + this)


@dataclass
class RetrainConfig:
    """Fine-tuning of the edge model on the round's store version (drive-train with init_from)."""

    steps: int = 120
    lr: float = 5.0e-5
    batch_size: int = 2
    warmup_steps: int = 10
    num_workers: int = 1
    fleet_repeat: int = 8  # each uploaded fleet keyframe appears this often per epoch (the base world once)
    overrides: list = field(default_factory=list)  # more drive-train overrides
    distill: DistillConfig = field(default_factory=DistillConfig)


@dataclass
class ExportConfig:
    precision: str = "fp32"  # fp32 | fp16 | int8 (int8 calibrates on the round's training split)
    calib_samples: int = 32


@dataclass
class ProfileConfig:
    targets: list = field(default_factory=lambda: ["orin-x", "journey5"])
    runs: int = 20
    warmup: int = 3


@dataclass
class LoopConfig:
    out_dir: str = "outputs/loop"
    student_ckpt: str = ""  # the round-0 edge model (a drive-train checkpoint)
    teacher_ckpt: str = ""  # the offboard teacher (any drive-train checkpoint; the larger the better)
    rounds: int = 3
    round: Optional[int] = None  # run only this round (earlier ones first if missing); None: 1..rounds
    strategies: list = field(default_factory=lambda: list(DEFAULT_STRATEGIES))
    engine: str = "local"  # local | ray (trigger mining and teacher labelling)
    num_actors: int = 2
    threads: Optional[int] = None
    seed: int = 0
    base: BaseData = field(default_factory=BaseData)
    fleet: FleetConfig = field(default_factory=FleetConfig)
    longtail_val: LongtailValConfig = field(default_factory=LongtailValConfig)
    upload: UploadConfig = field(default_factory=UploadConfig)
    review: ReviewConfig = field(default_factory=ReviewConfig)
    auto_labels: AutoLabelConfig = field(default_factory=AutoLabelConfig)
    teacher: dict = field(default_factory=dict)  # drive.labelling.teacher.TeacherConfig fields
    triggers: dict = field(default_factory=dict)  # drive.labelling.triggers.TriggerConfig fields
    retrain: RetrainConfig = field(default_factory=RetrainConfig)
    export: ExportConfig = field(default_factory=ExportConfig)
    profile: ProfileConfig = field(default_factory=ProfileConfig)
