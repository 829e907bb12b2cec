"""Augmentations that keep every camera matrix and target consistent with the pixels.

Image side (per camera): the recorded image is always resized to the network size ``(H, W)``;
in training a random scale / crop / horizontal flip follows. Both are 3x3 pixel affines composed
into ``img_aug``, applied to the image AND folded into ``intrinsics`` / ``ego2img``.
Pixel coordinates use the OpenCV convention (pixel centres at integers), as the intrinsics do.

BEV side (per sample): ``A = flip_y^f @ rot_z(theta)`` re-expresses the scene in ``ego' = A ego``:
boxes (centre, yaw, velocity), agent past / future (+ yaw), ego past / future (+ yaw) and the
drivable raster move with it; ``ego_T_cam -> A ego_T_cam``, ``ego2img -> ego2img A^-1``,
``prev_T_cur -> A prev_T_cur A^-1``. A flip mirrors the world, so it also swaps the 'left' /
'right' command and negates the yaw rate (speed and acceleration are unchanged); the command is
otherwise the one of the unrotated scene (a navigation intention does not rotate with the scene).

A flip mirrors the pixels too (``BevAug.features``): every image is flipped horizontally (the flip
folded into ``intrinsics`` / ``ego2img``) and each camera moves to its mirror twin's slot
(``CAM_FRONT_LEFT`` <-> ``CAM_FRONT_RIGHT``, see ``mirrored_camera_order``), so the input is what a
mirrored rig would record in the mirrored world. Mirroring the labels alone
(or flipping single images) would leave every object's appearance facing one way and its labelled
heading the other, so the per-camera ``image_flip`` is off by default. A mirror still swaps the traffic
side (a right-hand world drives on the left), which costs heading accuracy while the detector leans on
road position (28-minute runs: mAOE 0.90 with no flip, 1.44 with this mirror) and buys planning accuracy
(ST-P3 L2 avg 1.67 vs 1.31 m); BENCHMARKS.md has the runs.
"""
from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Optional

import cv2
import numpy as np
import torch

from drive.types import CAMERAS, COMMANDS, Features

from .bev_map import bev_cell_to_ego
from .geometry import flip_y, rot_z
from .records import AnnotationRecord, EgoTrajectory


@dataclass
class AugmentConfig:
    """Training augmentation. ``enabled=False`` (validation) keeps only the resize."""

    enabled: bool = False
    image_scale: tuple[float, float] = (0.95, 1.05)  # extra zoom after the resize, then crop back to (H, W)
    image_flip: float = 0.0  # probability of a horizontal flip, per camera (breaks appearance vs heading)
    bev_rotation_deg: float = 22.5  # theta ~ U(-x, x)
    bev_flip: float = 0.5  # probability of mirroring the scene y -> -y: labels, map, images and camera slots
    seed: Optional[int] = None  # None: fresh randomness; else deterministic per (seed, epoch, index or anchor)


# --------------------------------------------------------------------------- image side

def resize_matrix(src_wh: tuple[int, int], dst_hw: tuple[int, int]) -> np.ndarray:
    """3x3 pixel map of ``cv2.resize`` from ``src_wh`` to ``dst_hw`` (edges aligned, centres at integers)."""
    sx, sy = dst_hw[1] / src_wh[0], dst_hw[0] / src_wh[1]
    return np.array([[sx, 0.0, 0.5 * sx - 0.5], [0.0, sy, 0.5 * sy - 0.5], [0.0, 0.0, 1.0]])


def crop_top_rows(dst_hw: tuple[int, int], crop_top: float) -> int:
    """Rows cut from the top: the network input ``(H, W)`` is the bottom ``H`` rows of the image resized
    to ``(round(H / (1 - crop_top)), W)`` (BEVDet-style: the sky and building tops carry no objects)."""
    if not 0.0 <= crop_top < 1.0:
        raise ValueError(f"image_crop_top must be in [0, 1), got {crop_top}")
    return int(round(dst_hw[0] / (1.0 - crop_top))) - int(dst_hw[0])


def resize_crop_matrix(src_wh: tuple[int, int], dst_hw: tuple[int, int], crop_top: float = 0.0) -> np.ndarray:
    """3x3 pixel map of resizing ``src_wh`` to ``(H + top, W)`` and dropping the ``top`` first rows."""
    top = crop_top_rows(dst_hw, crop_top)
    M = resize_matrix(src_wh, (dst_hw[0] + top, dst_hw[1]))
    M[1, 2] -= top
    return M


def sample_image_aug(rng: np.random.Generator, cfg: AugmentConfig, hw: tuple[int, int]) -> np.ndarray:
    """A random 3x3 scale -> crop -> flip on an ``(H, W)`` image that keeps the size ``(H, W)``."""
    H, W = hw
    s = float(rng.uniform(*cfg.image_scale))
    # The crop window (H, W) inside the scaled image (s H, s W); zero padding when s < 1.
    x0 = float(rng.uniform(min(0.0, s * W - W), max(0.0, s * W - W)))
    y0 = float(rng.uniform(min(0.0, s * H - H), max(0.0, s * H - H)))
    M = np.array([[s, 0.0, -x0], [0.0, s, -y0], [0.0, 0.0, 1.0]])
    if rng.random() < cfg.image_flip:
        M = hflip_matrix(W) @ M
    return M


def hflip_matrix(width: int) -> np.ndarray:
    """3x3 pixel map of a horizontal flip of an image ``width`` pixels wide (centres at integers)."""
    return np.array([[-1.0, 0.0, width - 1.0], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0]])


def mirrored_camera_order(channels: list[str]) -> list[int]:
    """Slot ``i`` of a left / right mirrored rig takes camera ``order[i]``: the mirror twin of channel ``i``
    (``LEFT`` <-> ``RIGHT`` in its name); a camera without a twin in the rig (``CAM_FRONT``) keeps its slot."""
    index = {c: i for i, c in enumerate(channels)}
    swap = {"LEFT": "RIGHT", "RIGHT": "LEFT"}
    twins = ["_".join(swap.get(part, part) for part in c.split("_")) for c in channels]
    return [index.get(t, i) for i, t in enumerate(twins)]


def mirror_pixels(f: Features) -> Features:
    """Every image flipped horizontally, the flip folded into its camera matrices, and each camera moved to
    its mirror twin's slot: one half of a scene mirror (``BevAug.features`` adds the other, ``ego' = A ego``)."""
    order = mirrored_camera_order(list(CAMERAS))
    F3 = torch.as_tensor(hflip_matrix(f.images.shape[-1]), dtype=torch.float32)
    F4 = torch.eye(4)
    F4[:3, :3] = F3
    return replace(f, images=torch.flip(f.images[order], dims=[-1]), intrinsics=F3 @ f.intrinsics[order],
                   ego2img=F4 @ f.ego2img[order], ego_T_cam=f.ego_T_cam[order])


def warp_image(image_HW3: np.ndarray, M: np.ndarray) -> np.ndarray:
    """Apply a 3x3 pixel affine to an image, keeping its size (bilinear, zero border)."""
    H, W = image_HW3.shape[:2]
    if np.allclose(M, np.eye(3)):
        return image_HW3
    return cv2.warpAffine(image_HW3, M[:2], (W, H), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT,
                          borderValue=0)


# --------------------------------------------------------------------------- BEV side

@dataclass
class BevAug:
    """``ego' = A ego`` with ``A = flip_y^flip @ rot_z(rotation)``."""

    rotation: float = 0.0  # radians
    flip: bool = False

    @property
    def matrix(self) -> np.ndarray:
        return (flip_y() if self.flip else np.eye(4)) @ rot_z(self.rotation)

    @classmethod
    def sample(cls, rng: np.random.Generator, cfg: AugmentConfig) -> "BevAug":
        theta = float(np.deg2rad(rng.uniform(-cfg.bev_rotation_deg, cfg.bev_rotation_deg)))
        return cls(theta, bool(rng.random() < cfg.bev_flip))

    def xy(self, xy: np.ndarray) -> np.ndarray:
        """Points / vectors ``(..., 2)``."""
        return (np.asarray(xy, np.float64) @ self.matrix[:2, :2].T).astype(np.asarray(xy).dtype)

    def yaw(self, yaw: np.ndarray) -> np.ndarray:
        """Headings: ``yaw + theta``, negated by the flip, wrapped to ``[-pi, pi)``."""
        y = np.asarray(yaw, np.float64) + self.rotation
        y = -y if self.flip else y
        return ((y + np.pi) % (2 * np.pi) - np.pi).astype(np.asarray(yaw).dtype)

    def global_T_ego(self, global_T_ego: np.ndarray) -> np.ndarray:
        """Pose of the augmented ego frame: ``global_T_ego A^-1``."""
        return global_T_ego @ self.matrix.T  # A is orthogonal

    def annotations(self, ann: AnnotationRecord) -> AnnotationRecord:
        boxes = ann.boxes.copy()
        boxes[:, 0:2] = self.xy(boxes[:, 0:2])
        boxes[:, 6] = self.yaw(boxes[:, 6])
        boxes[:, 7:9] = self.xy(boxes[:, 7:9])
        return replace(ann, boxes=boxes, past=self.xy(ann.past), future=self.xy(ann.future),
                       future_yaw=np.where(ann.future_mask, self.yaw(ann.future_yaw), 0).astype(np.float32))

    def trajectory(self, ego: EgoTrajectory) -> EgoTrajectory:
        return replace(ego, past=self.xy(ego.past), future=self.xy(ego.future),
                       future_yaw=np.where(ego.future_mask, self.yaw(ego.future_yaw), 0).astype(np.float32))

    def features(self, f: Features) -> Features:
        """Unbatched features (cameras in ``CAMERAS`` order) of the augmented scene."""
        A = torch.as_tensor(self.matrix, dtype=torch.float32)
        A_inv = torch.as_tensor(np.linalg.inv(self.matrix), dtype=torch.float32)
        command, status = f.command, f.ego_status
        if self.flip:
            swap = {COMMANDS.index("left"): COMMANDS.index("right"), COMMANDS.index("right"): COMMANDS.index("left")}
            command = torch.tensor(swap.get(int(command), int(command)), dtype=command.dtype)
            status = status * torch.tensor([1.0, 1.0, -1.0])
            f = mirror_pixels(f)
        return replace(f, ego_T_cam=A @ f.ego_T_cam, ego2img=f.ego2img @ A_inv, prev_T_cur=A @ f.prev_T_cur @ A_inv,
                       command=command, ego_status=status)

    def raster(self, raster_YX: np.ndarray, bev_range: float) -> np.ndarray:
        """Warp a BEV raster (row = y, col = x): ``out(p') = in(A^-1 p')`` (nearest)."""
        S = raster_YX.shape[0]
        C = bev_cell_to_ego(bev_range, S)
        A2 = np.eye(3)
        A2[:2, :2] = self.matrix[:2, :2]
        src_from_dst = np.linalg.inv(C) @ np.linalg.inv(A2) @ C
        return cv2.warpAffine(raster_YX, src_from_dst[:2], (S, S), flags=cv2.INTER_NEAREST | cv2.WARP_INVERSE_MAP,
                              borderMode=cv2.BORDER_CONSTANT, borderValue=0)
