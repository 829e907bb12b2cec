"""Feature pyramid (FPN) that maps backbone stages to one or two output strides with C channels."""
from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn


class FPN(nn.Module):
    """Top-down FPN: 1x1 lateral convs, nearest upsampling + add, 3x3 output convs.

    Args:
        in_channels: channels of the backbone maps, finest first.
        in_strides: their strides, finest first (e.g. ``(8, 16, 32)``).
        out_channels: C of every output map.
        out_strides: strides to return, finest first, a subset of ``in_strides``
            (e.g. ``(16,)`` or ``(8, 16)``).
    """

    def __init__(
        self,
        in_channels: tuple[int, ...],
        in_strides: tuple[int, ...],
        out_channels: int = 64,
        out_strides: tuple[int, ...] = (16,),
    ) -> None:
        super().__init__()
        if len(in_channels) != len(in_strides):
            raise ValueError("in_channels and in_strides must have the same length")
        missing = set(out_strides) - set(in_strides)
        if missing:
            raise ValueError(f"out_strides {sorted(missing)} not produced by the backbone {in_strides}")
        self.in_strides = tuple(in_strides)
        self.out_strides = tuple(out_strides)
        # levels finer than the finest output are not needed
        self.first = self.in_strides.index(min(out_strides))
        used = in_channels[self.first:]
        self.lateral = nn.ModuleList(nn.Conv2d(c, out_channels, 1) for c in used)
        self.output = nn.ModuleDict(
            {str(s): nn.Sequential(nn.Conv2d(out_channels, out_channels, 3, 1, 1)) for s in out_strides}
        )

    def forward(self, feats: list[Tensor]) -> list[Tensor]:
        feats = feats[self.first:]
        strides = self.in_strides[self.first:]
        x = self.lateral[-1](feats[-1])
        outs: dict[int, Tensor] = {}
        if strides[-1] in self.out_strides:
            outs[strides[-1]] = x
        for i in range(len(feats) - 2, -1, -1):
            x = self.lateral[i](feats[i]) + F.interpolate(x, size=feats[i].shape[-2:], mode="nearest")
            if strides[i] in self.out_strides:
                outs[strides[i]] = x
        return [self.output[str(s)](outs[s]) for s in self.out_strides]
