"""Model parts and the composed ``DrivingModel``; build one with ``drive.models.build.build_model``."""
from drive.models.build import ModelConfig, build_model, cloud_config, edge_config, tiny_config
from drive.models.model import INPUT_NAMES, DrivingModel, FlatOutputs, ModelOutputs

__all__ = ["ModelConfig", "build_model", "cloud_config", "edge_config", "tiny_config", "DrivingModel",
           "FlatOutputs", "ModelOutputs", "INPUT_NAMES"]
