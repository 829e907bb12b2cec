"""Model parts and the composed ``DrivingModel``; build one with ``drive.models.build.build_model``.

Pipeline (one file per stage): ``backbone`` (ResNet) -> ``neck`` (FPN, stride 16 or 8 + 16) ->
view transform (``view_transform_bevformer``: deformable spatial cross-attention + ``temporal``
self-attention, or ``view_transform_lss``: parameter-free bilinear lifting) -> BEV map ->
``heads/detection`` (CenterPoint, top-K decoding), ``heads/map_seg`` (drivable), ``heads/motion``
(agents x modes), ``heads/planning`` (ego query) -> ``feasibility`` (unrolled optimiser).
Everything is plain PyTorch with static shapes and exports to standard-domain ONNX (opset 18).
"""
from drive.models.build import ModelConfig, build_model, cloud_config, edge_config, tiny_config
from drive.models.model import INPUT_NAMES, DrivingModel, FlatOutputs, ModelOutputs

__all__ = ["ModelConfig", "build_model", "cloud_config", "edge_config", "tiny_config", "DrivingModel",
           "FlatOutputs", "ModelOutputs", "INPUT_NAMES"]
