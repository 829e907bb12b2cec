"""BEVFormer-style view transform: BEV queries gather image features by deformable attention.

A ``bev_size`` x ``bev_size`` grid of learned queries; above each cell a pillar of ``z_anchors``
reference heights is projected into every camera with ``ego2img``. Spatial cross-attention
samples learned offsets around each projected point (per query, head, camera, level, height,
point) with ``F.grid_sample`` and averages over the cameras that see the pillar. Points behind
a camera or outside its image get weight 0 (a multiplicative mask, never a boolean index).
Each encoder layer is: temporal self-attention -> spatial cross-attention -> FFN, post-LayerNorm.

Interface shared with ``view_transform_lss.BilinearLiftViewTransform``:
``forward(feats, ego2img, image_hw, prev_bev, prev_T_cur, has_prev) -> bev_BCYX``.
"""
from __future__ import annotations

from typing import Optional

import torch
from einops import rearrange
import torch.nn.functional as F
from torch import Tensor, nn

from drive.models.attention import FFN, BEVPositionalEmbedding, deformable_sample, init_sampling_offsets
from drive.models.geometry import pillar_points, project_to_cameras
from drive.models.temporal import TemporalConvFusion, TemporalSelfAttention, mix_first_frame, warp_prev_bev


class SpatialCrossAttention(nn.Module):
    """Deformable cross-attention from BEV queries to multi-camera, multi-level image features.

    A pillar is seen by one or two of the six cameras, so sampling all of them wastes two thirds of
    the work (BEVFormer gathers the visible queries per camera instead, a data-dependent shape that
    does not export). Here each query keeps a fixed number ``cameras_per_query`` of camera *slots*:
    the cameras that see most of its pillar (``topk`` with a static ``k``, an ONNX ``TopK``). The
    cameras' feature maps sit side by side in one atlas with a zero column between them, and one
    ``grid_sample`` per level reads every slot: a camera-local x is clamped to the zero columns
    around its tile (exactly what per-camera zero padding gives) and shifted into that tile. With
    ``cameras_per_query = num_cameras`` this is the all-camera formulation, value for value.
    """

    def __init__(
        self, embed_dim: int, num_cameras: int, num_levels: int, num_z: int, num_heads: int = 4, num_points: int = 2,
        cameras_per_query: Optional[int] = None,
    ) -> None:
        super().__init__()
        self.n, self.h, self.l, self.z, self.p = num_cameras, num_heads, num_levels, num_z, num_points
        self.k = min(cameras_per_query or num_cameras, num_cameras)
        self.shape = (num_cameras, num_heads, num_levels, num_z, num_points)
        count = num_cameras * num_heads * num_levels * num_z * num_points
        self.sampling_offsets = nn.Linear(embed_dim, count * 2)
        init_sampling_offsets(self.sampling_offsets, self.shape + (2,), head_axis=1, point_axis=4)
        self.attention_weights = nn.Linear(embed_dim, count)
        nn.init.zeros_(self.attention_weights.weight)
        nn.init.zeros_(self.attention_weights.bias)
        self.value_proj = nn.Linear(embed_dim, embed_dim)
        self.output_proj = nn.Linear(embed_dim, embed_dim)

    def camera_slots(self, ref_valid_BNQZ: Tensor) -> Tensor:
        """(B, Q, k) camera index of every slot: the ``k`` cameras that see most heights of the pillar."""
        seen_BQN = rearrange(ref_valid_BNQZ, "b n q z -> b q n z").sum(dim=-1)
        if self.k == self.n:
            return torch.arange(self.n, device=seen_BQN.device).expand(seen_BQN.shape).contiguous()
        return seen_BQN.topk(self.k, dim=-1).indices

    def forward(self, query_BQC: Tensor, values_BNChw: list[Tensor], ref_grid_BNQZ2: Tensor, ref_valid_BNQZ: Tensor) -> Tensor:
        b, q, c = query_BQC.shape
        n, h, nl, z, p = self.shape
        k = self.k
        cam_BQK = self.camera_slots(ref_valid_BNQZ)

        def pick(x_BQN: Tensor) -> Tensor:  # (B, Q, N, ...) -> (B, Q, k, ...): the slots' cameras
            idx = cam_BQK.view(b, q, k, *([1] * (x_BQN.dim() - 3))).expand(b, q, k, *x_BQN.shape[3:])
            return torch.gather(x_BQN, 2, idx)

        off = pick(self.sampling_offsets(query_BQC).view(b, q, n, h * nl * z * p * 2)).view(b, q, k, h, nl, z, p, 2)
        w = pick(self.attention_weights(query_BQC).view(b, q, n, h * nl * z * p))
        valid_BQKZ = pick(rearrange(ref_valid_BNQZ, "b n q z -> b q n z"))
        w = w.view(b, q, k, h, nl * z * p).softmax(dim=-1).view(b, q, k, h, nl, z, p)
        w = w * rearrange(valid_BQKZ, "b q k z -> b q k 1 1 z 1")
        ref = pick(rearrange(ref_grid_BNQZ2, "b n q z t -> b q n (z t)")).view(b, q, k, 1, z, 1, 2)
        tile = cam_BQK.to(query_BQC.dtype).view(b, q, k, 1, 1, 1)
        out = 0.0
        for lvl, feat in enumerate(values_BNChw):
            fh, fw = feat.shape[-2:]
            value = self.value_proj(rearrange(feat, "b n c y x -> b n y x c"))
            atlas = rearrange(value, "b n y x (h d) -> (b h) d y n x", h=h)
            atlas = F.pad(atlas, (1, 0)).flatten(-2)  # a zero column left of every camera tile ...
            atlas = F.pad(atlas, (0, 1))  # ... and one at the right end: width n * (fw + 1) + 1
            width = n * (fw + 1) + 1
            grid = ref + off[:, :, :, :, lvl] * off.new_tensor([2.0 / fw, 2.0 / fh])  # camera-local, (B,Q,k,h,z,p,2)
            u = ((grid[..., 0] + 1.0) * fw - 1.0) * 0.5  # camera pixel x (align_corners=False)
            u_atlas = tile * (fw + 1) + 1.0 + u.clamp(-1.0, float(fw))  # beyond the image: the zero columns
            gx = (2.0 * u_atlas + 1.0) / width - 1.0
            grid = torch.stack([gx, grid[..., 1]], dim=-1)
            grid = rearrange(grid, "b q k h z p t -> (b h) q (k z p) t")
            w_l = rearrange(w[:, :, :, :, lvl], "b q k h z p -> (b h) q (k z p)")
            out = out + deformable_sample(atlas, grid, w_l)
        out = rearrange(out, "(b h) d q -> b q (h d)", b=b, h=h)
        count = valid_BQKZ.amax(dim=-1).sum(dim=-1).clamp(min=1.0)  # slots whose camera sees the pillar
        return self.output_proj(out / count[..., None])


class BEVFormerEncoderLayer(nn.Module):
    def __init__(self, embed_dim: int, bev_size: int, bev_range: float, num_cameras: int, num_levels: int,
                 num_z: int, num_heads: int, num_points: int, temporal_points: int, ffn_dim: int,
                 cameras_per_query: Optional[int] = None) -> None:
        super().__init__()
        self.temporal_attn = TemporalSelfAttention(embed_dim, bev_size, bev_range, num_heads, temporal_points)
        self.spatial_attn = SpatialCrossAttention(embed_dim, num_cameras, num_levels, num_z, num_heads, num_points,
                                                  cameras_per_query)
        self.ffn = FFN(embed_dim, ffn_dim)
        self.norm1, self.norm2, self.norm3 = nn.LayerNorm(embed_dim), nn.LayerNorm(embed_dim), nn.LayerNorm(embed_dim)

    def forward(self, query_BQC: Tensor, pos_QC: Tensor, aligned_prev_BQC: Tensor, has_prev_B: Tensor,
                values_BNChw: list[Tensor], ref_grid_BNQZ2: Tensor, ref_valid_BNQZ: Tensor) -> Tensor:
        prev = mix_first_frame(aligned_prev_BQC, query_BQC, has_prev_B)
        x = self.norm1(query_BQC + self.temporal_attn(query_BQC, pos_QC, prev))
        x = self.norm2(x + self.spatial_attn(x + pos_QC, values_BNChw, ref_grid_BNQZ2, ref_valid_BNQZ))
        return self.norm3(x + self.ffn(x))


class BEVFormerViewTransform(nn.Module):
    """BEVFormer encoder: multi-camera image features -> BEV map (B, C, S, S).

    Args:
        embed_dim: C of image features and BEV map.
        bev_size, bev_range: the BEV grid (see ``drive/types.py``).
        num_layers: encoder layers.
        num_cameras, num_levels: number of cameras / feature levels the model is given.
        z_anchors: reference heights (m, ego frame) of each query pillar.
        num_points: sampling points per (camera, head, level, height) in cross-attention.
        temporal_points: sampling points per (queue, head) in temporal self-attention.
        cameras_per_query: camera slots each query samples (the cameras seeing most of its pillar);
            None = all cameras.
        conv_fusion: after the encoder, also fuse the aligned previous map by concat + 3 x 3 conv
            (BEVDet4D), which shows the detection head an object's displacement between frames.
    """

    def __init__(
        self,
        embed_dim: int = 64,
        bev_size: int = 50,
        bev_range: float = 51.2,
        num_layers: int = 2,
        num_heads: int = 4,
        num_cameras: int = 6,
        num_levels: int = 1,
        z_anchors: tuple[float, ...] = (-0.5, 0.5, 1.5, 2.5),
        num_points: int = 2,
        temporal_points: int = 4,
        ffn_dim: Optional[int] = None,
        cameras_per_query: Optional[int] = 2,
        conv_fusion: bool = False,
        eps: float = 1e-5,
    ) -> None:
        super().__init__()
        self.embed_dim, self.bev_size, self.bev_range, self.eps = embed_dim, bev_size, bev_range, eps
        self.bev_queries = nn.Parameter(torch.randn(bev_size * bev_size, embed_dim) * 0.02)
        self.bev_pos = BEVPositionalEmbedding(embed_dim, bev_size, bev_range)
        self.camera_embed = nn.Parameter(torch.randn(num_cameras, embed_dim) * 0.02)
        self.level_embed = nn.Parameter(torch.randn(num_levels, embed_dim) * 0.02)
        self.register_buffer("pillars_QZ3", pillar_points(bev_size, bev_range, tuple(z_anchors)), persistent=False)
        self.layers = nn.ModuleList(
            BEVFormerEncoderLayer(embed_dim, bev_size, bev_range, num_cameras, num_levels, len(z_anchors),
                                  num_heads, num_points, temporal_points, ffn_dim or 4 * embed_dim, cameras_per_query)
            for _ in range(num_layers)
        )
        self.fusion = TemporalConvFusion(embed_dim, bev_range) if conv_fusion else None

    def reference_points(self, ego2img_BN44: Tensor, image_hw: tuple[int, int]) -> tuple[Tensor, Tensor]:
        """Project every query pillar into every camera: grid (B, N, Q, Z, 2) and valid (B, N, Q, Z)."""
        q, z, _ = self.pillars_QZ3.shape
        grid, valid = project_to_cameras(self.pillars_QZ3.reshape(-1, 3), ego2img_BN44, image_hw, self.eps)
        b, n = ego2img_BN44.shape[:2]
        return grid.view(b, n, q, z, 2), valid.view(b, n, q, z)

    def forward(self, feats_BNChw: list[Tensor], ego2img_BN44: Tensor, image_hw: tuple[int, int],
                prev_bev_BCYX: Tensor, prev_T_cur_B44: Tensor, has_prev_B: Tensor) -> Tensor:
        b, s = ego2img_BN44.shape[0], self.bev_size
        values = [f + self.camera_embed[None, :, :, None, None] + self.level_embed[i][None, None, :, None, None]
                  for i, f in enumerate(feats_BNChw)]
        ref_grid, ref_valid = self.reference_points(ego2img_BN44, image_hw)
        aligned = warp_prev_bev(prev_bev_BCYX, prev_T_cur_B44, self.bev_range)
        aligned_BQC = rearrange(aligned, "b c y x -> b (y x) c")
        pos = self.bev_pos()
        x = self.bev_queries.unsqueeze(0).expand(b, -1, -1)
        for layer in self.layers:
            x = layer(x, pos, aligned_BQC, has_prev_B, values, ref_grid, ref_valid)
        bev = rearrange(x, "b (y x) c -> b c y x", y=s, x=s)
        return bev if self.fusion is None else self.fusion.fuse_aligned(bev, aligned, has_prev_B)
