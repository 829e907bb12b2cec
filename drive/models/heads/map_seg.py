"""Drivable-area segmentation head on a configurable map grid.

The BEV features are resampled onto the map grid (``map_size`` cells over ``±map_range``,
row = y, col = x) with a constant ``grid_sample`` grid, so the map grid may be finer than, or
cover a different range from, the BEV grid. When both grids coincide the resampling is exact.
When both cover the same square (the default) that resampling is exactly a bilinear resize
(``align_corners=False`` samples cell centres, its edge clamp is the border padding), which
exports as one ONNX ``Resize``: onnxruntime runs it several times faster than ``GridSample``.
"""
from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn

from drive.models.geometry import bev_cell_centers


class MapSegHead(nn.Module):
    """BEV (B, C, S, S) -> drivable logits (B, map_size, map_size)."""

    def __init__(self, in_channels: int = 64, bev_range: float = 51.2, map_size: int = 100,
                 map_range: float = 51.2, hidden: int = 32) -> None:
        super().__init__()
        self.map_size, self.map_range = map_size, map_range
        self.same_extent = abs(map_range - bev_range) < 1e-9
        self.reduce = nn.Sequential(
            nn.Conv2d(in_channels, hidden, 3, 1, 1, bias=False), nn.BatchNorm2d(hidden), nn.ReLU(inplace=True)
        )
        grid = bev_cell_centers(map_size, map_range) / bev_range
        self.register_buffer("grid_YX2", grid[None], persistent=False)
        self.refine = nn.Sequential(
            nn.Conv2d(hidden, hidden, 3, 1, 1, bias=False), nn.BatchNorm2d(hidden), nn.ReLU(inplace=True),
            nn.Conv2d(hidden, 1, 1),
        )

    def forward(self, bev_BCYX: Tensor) -> Tensor:
        x = self.reduce(bev_BCYX)
        if self.same_extent:  # a config constant: no data-dependent branch
            x = F.interpolate(x, size=(self.map_size, self.map_size), mode="bilinear", align_corners=False)
        else:
            x = self.resample(x)
        return self.refine(x)[:, 0]

    def resample(self, x_BCYX: Tensor) -> Tensor:
        """The general path: sample the map cell centres with ``grid_sample`` (border padding)."""
        grid = self.grid_YX2.expand(x_BCYX.shape[0], -1, -1, -1)
        return F.grid_sample(x_BCYX, grid, mode="bilinear", padding_mode="border", align_corners=False)
