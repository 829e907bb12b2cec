"""ResNet-style image encoder in plain PyTorch (no torchvision).

``block="basic"`` gives the ResNet-18/34 layout, ``block="bottleneck"`` the ResNet-50 one;
``base_width`` scales every stage (64 is the classic width, 32 a slim edge variant).
The encoder returns the feature maps of the requested stages (strides 4, 8, 16, 32).
"""
from __future__ import annotations

from pathlib import Path
from typing import Optional

import torch
from torch import Tensor, nn

STAGE_STRIDES = (4, 8, 16, 32)


def make_norm(norm: str, channels: int, num_groups: int) -> nn.Module:
    if norm == "batch":
        return nn.BatchNorm2d(channels)
    if norm == "group":
        return nn.GroupNorm(min(num_groups, channels), channels)
    raise ValueError(f"unknown norm {norm!r} (expected 'batch' or 'group')")


class BasicBlock(nn.Module):
    expansion = 1

    def __init__(self, in_ch: int, width: int, stride: int, norm: str, num_groups: int) -> None:
        super().__init__()
        out_ch = width * self.expansion
        self.conv1 = nn.Conv2d(in_ch, width, 3, stride, 1, bias=False)
        self.bn1 = make_norm(norm, width, num_groups)
        self.conv2 = nn.Conv2d(width, out_ch, 3, 1, 1, bias=False)
        self.bn2 = make_norm(norm, out_ch, num_groups)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = _shortcut(in_ch, out_ch, stride, norm, num_groups)

    def forward(self, x: Tensor) -> Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + self.downsample(x))


class Bottleneck(nn.Module):
    expansion = 4

    def __init__(self, in_ch: int, width: int, stride: int, norm: str, num_groups: int) -> None:
        super().__init__()
        out_ch = width * self.expansion
        self.conv1 = nn.Conv2d(in_ch, width, 1, bias=False)
        self.bn1 = make_norm(norm, width, num_groups)
        self.conv2 = nn.Conv2d(width, width, 3, stride, 1, bias=False)
        self.bn2 = make_norm(norm, width, num_groups)
        self.conv3 = nn.Conv2d(width, out_ch, 1, bias=False)
        self.bn3 = make_norm(norm, out_ch, num_groups)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = _shortcut(in_ch, out_ch, stride, norm, num_groups)

    def forward(self, x: Tensor) -> Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return self.relu(out + self.downsample(x))


def _shortcut(in_ch: int, out_ch: int, stride: int, norm: str, num_groups: int) -> nn.Module:
    if stride == 1 and in_ch == out_ch:
        return nn.Identity()
    return nn.Sequential(nn.Conv2d(in_ch, out_ch, 1, stride, bias=False), make_norm(norm, out_ch, num_groups))


BLOCKS = {"basic": BasicBlock, "bottleneck": Bottleneck}


class ResNetBackbone(nn.Module):
    """ResNet encoder: stem (7x7/2 conv + 3x3/2 max-pool) and four stages.

    Args:
        block: ``"basic"`` (ResNet-18/34) or ``"bottleneck"`` (ResNet-50/101).
        layers: blocks per stage, e.g. ``(2, 2, 2, 2)`` for 18, ``(3, 4, 6, 3)`` for 34 / 50.
        base_width: width of the first stage; stage ``i`` has ``base_width * 2**i``.
        norm: ``"batch"`` or ``"group"``.
        out_indices: which stages to return (0..3 -> strides 4, 8, 16, 32).
        checkpoint: optional path of local weights loaded with ``load_checkpoint``.
    """

    def __init__(
        self,
        block: str = "basic",
        layers: tuple[int, ...] = (2, 2, 2, 2),
        base_width: int = 32,
        norm: str = "batch",
        num_groups: int = 32,
        out_indices: tuple[int, ...] = (1, 2, 3),
        in_channels: int = 3,
        checkpoint: Optional[str] = None,
    ) -> None:
        super().__init__()
        if block not in BLOCKS:
            raise ValueError(f"unknown block {block!r}, expected one of {sorted(BLOCKS)}")
        if len(layers) != 4 or not all(0 <= i < 4 for i in out_indices):
            raise ValueError("layers must have 4 entries and out_indices lie in 0..3")
        block_cls = BLOCKS[block]
        self.out_indices = tuple(out_indices)
        self.stem = nn.Sequential(
            nn.Conv2d(in_channels, base_width, 7, 2, 3, bias=False),
            make_norm(norm, base_width, num_groups),
            nn.ReLU(inplace=True),
            nn.MaxPool2d(3, 2, 1),
        )
        in_ch = base_width
        stages = []
        for i, n in enumerate(layers):
            width = base_width * 2**i
            blocks = []
            for j in range(n):
                blocks.append(block_cls(in_ch, width, 2 if (j == 0 and i > 0) else 1, norm, num_groups))
                in_ch = width * block_cls.expansion
            stages.append(nn.Sequential(*blocks))
        self.stages = nn.ModuleList(stages)
        self.stage_channels = tuple(base_width * 2**i * block_cls.expansion for i in range(4))
        self._init_weights()
        if checkpoint:
            self.load_checkpoint(checkpoint)

    @property
    def out_channels(self) -> tuple[int, ...]:
        return tuple(self.stage_channels[i] for i in self.out_indices)

    @property
    def out_strides(self) -> tuple[int, ...]:
        return tuple(STAGE_STRIDES[i] for i in self.out_indices)

    def _init_weights(self) -> None:
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, (nn.BatchNorm2d, nn.GroupNorm)):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
        # zero-init the last norm of each residual branch: blocks start as identity
        for m in self.modules():
            if isinstance(m, Bottleneck):
                nn.init.zeros_(m.bn3.weight)
            elif isinstance(m, BasicBlock):
                nn.init.zeros_(m.bn2.weight)

    def load_checkpoint(self, path: str | Path, strict: bool = False) -> tuple[list[str], list[str]]:
        """Load local weights (``torch.load(weights_only=True)``); returns (missing, unexpected) keys.

        Accepts a bare state dict or one nested under ``"state_dict"`` / ``"model"``, and strips a
        leading ``"backbone."`` / ``"module."`` prefix.
        """
        state = torch.load(str(path), map_location="cpu", weights_only=True)
        for key in ("state_dict", "model"):
            if isinstance(state, dict) and key in state and isinstance(state[key], dict):
                state = state[key]
        cleaned = {}
        for k, v in state.items():
            for prefix in ("module.", "backbone."):
                if k.startswith(prefix):
                    k = k[len(prefix):]
            cleaned[k] = v
        result = self.load_state_dict(cleaned, strict=strict)
        return list(result.missing_keys), list(result.unexpected_keys)

    def forward(self, images_BCHW: Tensor) -> list[Tensor]:
        x = self.stem(images_BCHW)
        outs = []
        for i, stage in enumerate(self.stages):
            x = stage(x)
            if i in self.out_indices:
                outs.append(x)
        return outs
