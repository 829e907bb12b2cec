"""Drivable-area raster around the ego, sampled from the devkit map mask of the scene's log.

nuScenes map masks (``map.json`` -> ``maps/*.png``, devkit ``MapMask``) are global rasters at
0.1 m/px, foreground 255 = drivable, with global ``(x, y)`` -> ``col = x / 0.1, row = H - y / 0.1``.
Real masks are ~30000 x 20000 px, so each is downsampled ONCE (``INTER_AREA``, default 0.25 m/px),
kept in memory, and (with a ``cache_dir``) saved as ``.npy`` that worker processes memory-map.
The BEV raster follows ``drive/types.py``: row = y, column = x, ego frame, ``size`` x ``size`` cells
over ``[-range, range]``. A missing / unreadable / all-zero mask, or one whose extent does not
cover the ego position, yields zeros and ``map_valid = 0`` with one warning per map.
"""
from __future__ import annotations

import logging
import os
import uuid
from typing import Optional

import cv2
import numpy as np
from nuscenes.utils import map_mask as _devkit_map_mask  # noqa: F401 - lifts PIL's pixel limit for map PNGs
from PIL import Image

log = logging.getLogger(__name__)

NATIVE_RESOLUTION = 0.1  # m/px of the PNGs (devkit MapMask's native resolution)


def bev_cell_to_ego(bev_range: float, size: int) -> np.ndarray:
    """3x3 affine: BEV cell (col, row) -> ego (x, y) of the cell centre."""
    res = 2.0 * bev_range / size
    return np.array([[res, 0.0, -bev_range + 0.5 * res], [0.0, res, -bev_range + 0.5 * res], [0.0, 0.0, 1.0]])


class _Mask:
    """One downsampled map mask and the global -> pixel affine of its grid."""

    def __init__(self, pixels: np.ndarray, native_hw: tuple[int, int]):
        self.pixels = pixels
        H0, W0 = native_hw
        H1, W1 = pixels.shape
        sx, sy = W1 / W0, H1 / H0
        # devkit: native pixel index = (x / 0.1, H0 - y / 0.1) at pixel centres; resize keeps pixel edges aligned.
        self.px_from_global = np.array([
            [sx / NATIVE_RESOLUTION, 0.0, 0.5 * sx - 0.5],
            [0.0, -sy / NATIVE_RESOLUTION, (H0 + 0.5) * sy - 0.5],
            [0.0, 0.0, 1.0]])
        self.native_hw = native_hw

    def covers(self, xy_global: np.ndarray) -> bool:
        H0, W0 = self.native_hw
        return 0.0 <= xy_global[0] < W0 * NATIVE_RESOLUTION and 0.0 <= xy_global[1] < H0 * NATIVE_RESOLUTION


class DrivableMap:
    """Rasterises drivable area into the BEV grid; caches each map mask downsampled, once per process."""

    def __init__(self, resolution: float = 0.25, cache_dir: Optional[str] = None):
        if resolution < NATIVE_RESOLUTION:
            raise ValueError(f"map resolution {resolution} finer than the native {NATIVE_RESOLUTION} m/px")
        self.resolution = float(resolution)
        self.cache_dir = cache_dir
        self._masks: dict[str, Optional[_Mask]] = {}
        self._warned: set[str] = set()

    def __getstate__(self) -> dict:
        state = dict(self.__dict__)
        state["_masks"] = {}  # workers reload (memory-map) instead of receiving big arrays by pickle
        return state

    def _warn_once(self, map_file: str, why: str) -> None:
        if map_file not in self._warned:
            self._warned.add(map_file)
            log.warning("map %s %s: drivable area set to zeros, map_valid = 0", map_file or "<none>", why)

    def _cache_path(self, map_file: str, native_hw: tuple[int, int]) -> Optional[str]:
        if not self.cache_dir:
            return None
        st = os.stat(map_file)
        stem = os.path.splitext(os.path.basename(map_file))[0]
        name = f"{stem}_{native_hw[1]}x{native_hw[0]}_{st.st_size}_{int(st.st_mtime)}_{self.resolution:g}m.npy"
        return os.path.join(self.cache_dir, "maps", name)

    def mask(self, map_file: str) -> Optional[_Mask]:
        """The downsampled mask of a map file, or None (warned once) when missing / unreadable / empty."""
        if map_file in self._masks:
            return self._masks[map_file]
        m = self._load(map_file)
        self._masks[map_file] = m
        return m

    def _load(self, map_file: str) -> Optional[_Mask]:
        if not map_file or not os.path.isfile(map_file):
            self._warn_once(map_file, "is missing")
            return None
        try:
            with Image.open(map_file) as im:
                native_hw = (im.height, im.width)
        except Exception as e:  # noqa: BLE001 - any decoder failure means "unreadable"
            self._warn_once(map_file, f"is unreadable ({e})")
            return None
        cache = self._cache_path(map_file, native_hw)
        if cache and os.path.isfile(cache):
            try:
                return self._checked(map_file, np.load(cache, mmap_mode="r"), native_hw)
            except (OSError, ValueError):
                pass  # stale / partial cache: rebuild
        full = cv2.imread(map_file, cv2.IMREAD_GRAYSCALE)
        if full is None:
            self._warn_once(map_file, "is unreadable")
            return None
        f = NATIVE_RESOLUTION / self.resolution
        size = (max(1, round(full.shape[1] * f)), max(1, round(full.shape[0] * f)))
        small = full if f == 1.0 else cv2.resize(full, size, interpolation=cv2.INTER_AREA)
        del full
        if cache:
            try:
                os.makedirs(os.path.dirname(cache), exist_ok=True)
                tmp = f"{cache}.{uuid.uuid4().hex}.tmp"
                with open(tmp, "wb") as fh:
                    np.save(fh, small)
                os.replace(tmp, cache)
            except OSError as e:
                log.warning("could not write map cache %s (%s); keeping it in memory only", cache, e)
        return self._checked(map_file, small, native_hw)

    def _checked(self, map_file: str, pixels: np.ndarray, native_hw: tuple[int, int]) -> Optional[_Mask]:
        if pixels.ndim != 2 or not np.any(pixels):
            self._warn_once(map_file, "is empty (a placeholder)")
            return None
        return _Mask(pixels, native_hw)

    def prepare(self, map_file: str) -> None:
        """Load (and disk-cache) a map now, e.g. before DataLoader workers start."""
        self.mask(map_file)

    def is_valid(self, map_file: str, global_T_ego: np.ndarray) -> bool:
        """Whether ``rasterize`` would return ``map_valid = 1`` here (no raster computed)."""
        m = self.mask(map_file)
        if m is None:
            return False
        if not m.covers(global_T_ego[:2, 3]):
            self._warn_once(map_file, "does not cover the ego pose")
            return False
        return True

    def rasterize(self, map_file: str, global_T_ego: np.ndarray, bev_range: float, size: int
                  ) -> tuple[np.ndarray, float]:
        """``(size, size)`` float32 {0, 1} drivable raster (row = y, col = x) and ``map_valid``."""
        out = np.zeros((size, size), np.float32)
        if not self.is_valid(map_file, global_T_ego):
            return out, 0.0
        m = self.mask(map_file)
        # BEV cell -> ego xy (ground, z = 0) -> global xy -> mask pixel.
        ego_to_global = np.array([[global_T_ego[0, 0], global_T_ego[0, 1], global_T_ego[0, 3]],
                                  [global_T_ego[1, 0], global_T_ego[1, 1], global_T_ego[1, 3]],
                                  [0.0, 0.0, 1.0]])
        px_from_cell = m.px_from_global @ ego_to_global @ bev_cell_to_ego(bev_range, size)
        # Crop the mask to the window first (the mask may be a large memory map).
        corners = np.array([[-0.5, -0.5, 1], [size - 0.5, -0.5, 1], [-0.5, size - 0.5, 1], [size - 0.5, size - 0.5, 1]])
        uv = corners @ px_from_cell.T
        H, W = m.pixels.shape
        c0, r0 = max(int(np.floor(uv[:, 0].min())) - 2, 0), max(int(np.floor(uv[:, 1].min())) - 2, 0)
        c1, r1 = min(int(np.ceil(uv[:, 0].max())) + 3, W), min(int(np.ceil(uv[:, 1].max())) + 3, H)
        if c1 <= c0 or r1 <= r0:
            return out, 1.0
        crop = np.ascontiguousarray(m.pixels[r0:r1, c0:c1])
        shift = np.array([[1.0, 0.0, -c0], [0.0, 1.0, -r0], [0.0, 0.0, 1.0]])
        M = (shift @ px_from_cell)[:2]
        sampled = cv2.warpAffine(crop, M, (size, size), flags=cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP,
                                 borderMode=cv2.BORDER_CONSTANT, borderValue=0)
        out[sampled > 127] = 1.0
        return out, 1.0
