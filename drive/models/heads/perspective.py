"""Perspective (image-view) auxiliary head: per-camera object-centre heatmaps and depth, training only.

BEVFormer v2 (Yang et al., CVPR 2023) adds a perspective 3D head on the image features and reports
that this supervision is what lets a BEV detector adapt its image backbone quickly. A backbone
trained from scratch on a CPU budget gets very little signal through the sparse BEV heatmap (a few
dozen positive cells per sample behind a view transform); a per-camera heatmap of projected object
centres gives it dense, direct supervision. The head lives in the training system, not in
``DrivingModel``: it is never exported and never runs at inference.

Outputs on the stride-s feature map of every camera: class-centre heatmap logits (num_classes) and
log-depth of the centre along the camera axis (1 channel), see ``drive/losses/perspective.py``.
"""
from __future__ import annotations

from torch import Tensor, nn

from drive.types import CLASSES


class PerspectiveHead(nn.Module):
    """Args: in_channels: C of the image feature map; hidden: width of the shared 3x3 conv."""

    def __init__(self, in_channels: int, hidden: int = 64, num_classes: int = len(CLASSES)) -> None:
        super().__init__()
        self.num_classes = num_classes
        self.shared = nn.Sequential(nn.Conv2d(in_channels, hidden, 3, 1, 1, bias=False), nn.BatchNorm2d(hidden),
                                    nn.ReLU(inplace=True))
        self.heatmap = nn.Conv2d(hidden, num_classes, 1)
        self.depth = nn.Conv2d(hidden, 1, 1)
        nn.init.constant_(self.heatmap.bias, -2.19)  # CenterNet prior: sigmoid = 0.1

    def forward(self, feats_BNChw: Tensor) -> tuple[Tensor, Tensor]:
        """(B, N, C, h, w) -> heatmap logits (B, N, K, h, w), log-depth (B, N, 1, h, w)."""
        b, n = feats_BNChw.shape[:2]
        x = self.shared(feats_BNChw.flatten(0, 1))
        return (self.heatmap(x).unflatten(0, (b, n)), self.depth(x).unflatten(0, (b, n)))
