"""Parameter-free bilinear lifting (SimpleBEV) as a second view transform.

Every BEV voxel centre (``bev_size`` x ``bev_size`` x ``len(z_anchors)``) is projected into every
camera, the image features are bilinearly sampled there, averaged over the cameras that see
the voxel, and the height axis is folded into channels and compressed with a conv. Temporal
fusion is the cheap concat + conv (``TemporalConvFusion``). Same interface as
``BEVFormerViewTransform``; much cheaper, no attention, useful as the speed / accuracy baseline.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import Tensor, nn

from drive.models.geometry import pillar_points, project_to_cameras
from drive.models.temporal import TemporalConvFusion


class BilinearLiftViewTransform(nn.Module):
    """SimpleBEV-style lifting: (B, N, C, h, w) feature levels -> BEV map (B, C, S, S)."""

    def __init__(
        self,
        embed_dim: int = 64,
        bev_size: int = 50,
        bev_range: float = 51.2,
        num_levels: int = 1,
        z_anchors: tuple[float, ...] = (-0.5, 0.25, 1.0, 1.75, 2.5, 3.25),
        num_res_blocks: int = 1,
        eps: float = 1e-5,
    ) -> None:
        super().__init__()
        self.embed_dim, self.bev_size, self.bev_range, self.eps = embed_dim, bev_size, bev_range, eps
        self.num_levels = num_levels
        self.register_buffer("pillars_QZ3", pillar_points(bev_size, bev_range, tuple(z_anchors)), persistent=False)
        nz = len(z_anchors)
        self.compress = nn.Sequential(
            nn.Conv2d(embed_dim * nz, embed_dim, 3, 1, 1, bias=False), nn.BatchNorm2d(embed_dim), nn.ReLU(inplace=True)
        )
        self.blocks = nn.ModuleList(
            nn.Sequential(
                nn.Conv2d(embed_dim, embed_dim, 3, 1, 1, bias=False), nn.BatchNorm2d(embed_dim), nn.ReLU(inplace=True),
                nn.Conv2d(embed_dim, embed_dim, 3, 1, 1, bias=False), nn.BatchNorm2d(embed_dim),
            )
            for _ in range(num_res_blocks)
        )
        self.temporal = TemporalConvFusion(embed_dim, bev_range)

    def lift(self, feats_BNChw: list[Tensor], ego2img_BN44: Tensor, image_hw: tuple[int, int]) -> Tensor:
        """Sample every voxel centre in every camera and level: (B, C * Z, S, S)."""
        q, z, _ = self.pillars_QZ3.shape
        b, n = ego2img_BN44.shape[:2]
        grid, valid = project_to_cameras(self.pillars_QZ3.reshape(-1, 3), ego2img_BN44, image_hw, self.eps)
        grid = rearrange(grid, "b n p t -> (b n) p 1 t")
        vox = 0.0
        for feat in feats_BNChw:
            sampled = F.grid_sample(feat.flatten(0, 1), grid, mode="bilinear", padding_mode="zeros", align_corners=False)
            vox = vox + sampled[..., 0]
        vox = rearrange(vox, "(b n) c p -> b n c p", b=b, n=n) * valid[:, :, None, :]
        vox = vox.sum(dim=1) / valid.sum(dim=1).clamp(min=1.0)[:, None, :] / len(feats_BNChw)
        s = self.bev_size
        return rearrange(vox, "b c (y x z) -> b (c z) y x", y=s, x=s, z=z)

    def forward(self, feats_BNChw: list[Tensor], ego2img_BN44: Tensor, image_hw: tuple[int, int],
                prev_bev_BCYX: Tensor, prev_T_cur_B44: Tensor, has_prev_B: Tensor) -> Tensor:
        x = self.compress(self.lift(feats_BNChw, ego2img_BN44, image_hw))
        for block in self.blocks:
            x = F.relu(x + block(x))
        return self.temporal(x, prev_bev_BCYX, prev_T_cur_B44, has_prev_B)
