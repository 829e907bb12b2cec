"""BEV grid and camera geometry shared by the view transforms, temporal fusion and heads.

Conventions (see ``drive/types.py``): the BEV grid is square, ``size`` x ``size`` cells over
``[-bev_range, bev_range]`` metres, row = y, column = x, cell centres at
``-bev_range + (i + 0.5) * res``. Sampling grids for ``F.grid_sample`` use
``align_corners=False`` throughout, so a normalised coordinate of -1 / +1 is the outer *edge*
of the first / last cell (or pixel) and cell centres land exactly on sample centres.
Pixels follow OpenCV: pixel ``i`` has its centre at ``u = i``.
"""
from __future__ import annotations

import torch
from torch import Tensor


def bev_cell_centers(size: int, bev_range: float) -> Tensor:
    """(size, size, 2) ego-frame ``(x, y)`` of every BEV cell centre, indexed ``[row, col]``."""
    res = 2.0 * bev_range / size
    coords = -bev_range + (torch.arange(size, dtype=torch.float32) + 0.5) * res
    y, x = torch.meshgrid(coords, coords, indexing="ij")
    return torch.stack([x, y], dim=-1)


def pillar_points(size: int, bev_range: float, z_anchors: tuple[float, ...]) -> Tensor:
    """(size*size, Z, 3) ego-frame points: one pillar of ``Z`` heights above every BEV cell centre.

    The query index is ``row * size + col`` (row = y), the order of a flattened ``_BCYX`` map.
    """
    xy = bev_cell_centers(size, bev_range).reshape(-1, 1, 2)
    z = torch.tensor(z_anchors, dtype=torch.float32).view(1, -1, 1)
    q, nz = xy.shape[0], z.shape[1]
    return torch.cat([xy.expand(q, nz, 2), z.expand(q, nz, 1)], dim=-1)


def pixels_to_grid(uv: Tensor, image_hw: tuple[int, int]) -> Tensor:
    """Pixel coordinates (..., 2) of an ``H x W`` image -> ``grid_sample`` coordinates (align_corners=False)."""
    h, w = image_hw
    scale = uv.new_tensor([2.0 / w, 2.0 / h])
    return (uv + 0.5) * scale - 1.0


def project_to_cameras(
    points_P3: Tensor, ego2img_BN44: Tensor, image_hw: tuple[int, int], eps: float = 1e-5
) -> tuple[Tensor, Tensor]:
    """Project ego-frame points into every camera.

    Args:
        points_P3: (P, 3) ego-frame points (shared by the batch).
        ego2img_BN44: (B, N, 4, 4) ego -> ``(u*d, v*d, d, 1)`` in pixels of the image fed to the net.
        image_hw: size of that image.

    Returns:
        grid_BNP2: normalised image coordinates in [-1, 1] for ``grid_sample`` (clamped to
            [-2, 2] so invalid points stay finite), and
        valid_BNP: 1.0 where ``d > eps`` and the point lands inside the image, else 0.0.
        Validity is a weight, never a boolean index, so shapes stay static for export.
    """
    ones = points_P3.new_ones(points_P3.shape[0], 1)
    pts_P4 = torch.cat([points_P3, ones], dim=-1)
    cam_BNP4 = torch.matmul(ego2img_BN44, pts_P4.T).transpose(-1, -2)  # matmul, not einsum: friendlier to edge compilers
    depth = cam_BNP4[..., 2:3]
    uv = cam_BNP4[..., 0:2] / depth.clamp(min=eps)
    grid = pixels_to_grid(uv, image_hw)
    inside = (grid.abs() < 1.0).all(dim=-1)
    valid = ((depth[..., 0] > eps) & inside).to(points_P3.dtype)
    return grid.clamp(-2.0, 2.0), valid


def ego_motion_grid(prev_T_cur_B44: Tensor, size: int, bev_range: float) -> Tensor:
    """(B, size, size, 2) sampling grid into the previous BEV map for every current cell centre.

    The current cell centre (on the ground, z = 0) is moved into the previous ego frame with
    ``prev_T_cur`` and normalised by ``bev_range``; with ``align_corners=False`` a normalised
    coordinate of ``x / bev_range`` is exactly the ego coordinate ``x`` of the previous grid.
    """
    xy = bev_cell_centers(size, bev_range).to(prev_T_cur_B44).reshape(-1, 2)
    pts = torch.cat([xy, xy.new_zeros(xy.shape[0], 1), xy.new_ones(xy.shape[0], 1)], dim=-1)
    prev = torch.matmul(prev_T_cur_B44, pts.T).transpose(-1, -2)
    return (prev[..., 0:2] / bev_range).reshape(-1, size, size, 2)

