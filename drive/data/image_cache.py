"""Decoding keyframe JPEGs once: decoded + resized uint8 RGB images cached on disk as ``.npy``.

Layout: ``<cache_dir>/<H>x<W>[_top<crop>]/<sample_data_token>.npy`` (default ``cache_dir = <root>/.drive_cache``),
written to a unique temp file then ``os.replace``-d, so concurrent DataLoader workers never see a
partial file. An entry is used only when its shape is ``(H, W, 3)`` and it is newer than its
source image; otherwise the source is decoded again. An unwritable cache dir disables writing
with one warning.
"""
from __future__ import annotations

import logging
import os
import uuid
from typing import Optional

import cv2
import numpy as np
from PIL import Image

from .augment import crop_top_rows, resize_crop_matrix
from .errors import DataError
from .records import CameraRecord

log = logging.getLogger(__name__)


def decode_image(path: str) -> np.ndarray:
    """RGB uint8 ``(h, w, 3)``; a missing, truncated or corrupt file raises ``DataError`` naming it."""
    if not os.path.isfile(path):
        raise DataError(f"missing image file {path}", path)
    try:
        with Image.open(path) as im:
            im.load()
            return np.asarray(im.convert("RGB"))
    except Exception as e:  # noqa: BLE001 - PIL raises OSError, SyntaxError, ValueError, DecompressionBombError...
        raise DataError(f"corrupt image file {path}: {e}", path) from e


class ImageCache:
    """Loads a camera's keyframe image resized to ``(H, W)``, via an optional on-disk cache.

    ``crop_top`` > 0: resized to ``(H + top, W)`` and the ``top`` first rows dropped (``augment.crop_top_rows``).
    """

    def __init__(self, image_size: tuple[int, int], cache_dir: Optional[str] = None, crop_top: float = 0.0):
        self.image_size = (int(image_size[0]), int(image_size[1]))
        self.crop_top = float(crop_top)
        self.top = crop_top_rows(self.image_size, self.crop_top)
        self.cache_dir = cache_dir
        self._write_ok = cache_dir is not None

    @property
    def folder(self) -> Optional[str]:
        if self.cache_dir is None:
            return None
        crop = f"_top{self.crop_top:.4f}" if self.top else ""
        return os.path.join(self.cache_dir, f"{self.image_size[0]}x{self.image_size[1]}{crop}")

    def entry_path(self, sample_data_token: str) -> Optional[str]:
        return None if self.folder is None else os.path.join(self.folder, f"{sample_data_token}.npy")

    def load(self, cam: CameraRecord) -> tuple[np.ndarray, np.ndarray]:
        """``(image (H, W, 3) uint8, resize 3x3)`` where the 3x3 maps recorded pixels to resized pixels."""
        H, W = self.image_size
        src_wh = (cam.width, cam.height)
        entry = self.entry_path(cam.sample_data_token)
        if entry is not None and cam.width > 0 and cam.height > 0:
            img = self._read_entry(entry, cam.path)
            if img is not None:
                return img, resize_crop_matrix(src_wh, (H, W), self.crop_top)
        full = decode_image(cam.path)
        h, w = full.shape[:2]
        if cam.width > 0 and cam.height > 0 and (w, h) != src_wh:
            raise DataError(f"image file {cam.path} is {w}x{h} but sample_data {cam.sample_data_token} says "
                            f"{cam.width}x{cam.height}", cam.path)
        src_wh = (w, h)
        Hr = H + self.top
        interp = cv2.INTER_AREA if (W <= w and Hr <= h) else cv2.INTER_LINEAR
        img = full if (w, h) == (W, Hr) else cv2.resize(full, (W, Hr), interpolation=interp)
        img = np.ascontiguousarray(img[self.top:], dtype=np.uint8)
        if entry is not None:
            self._write_entry(entry, img)
        return img, resize_crop_matrix(src_wh, (H, W), self.crop_top)

    def _read_entry(self, entry: str, source: str) -> Optional[np.ndarray]:
        try:
            if os.stat(entry).st_mtime_ns < os.stat(source).st_mtime_ns:
                return None
            img = np.load(entry)
        except (OSError, ValueError):
            return None  # absent / stale / partial: decode again
        if img.shape != (*self.image_size, 3) or img.dtype != np.uint8:
            return None
        return img

    def _write_entry(self, entry: str, img: np.ndarray) -> None:
        if not self._write_ok:
            return
        tmp = f"{entry}.{uuid.uuid4().hex}.tmp"
        try:
            os.makedirs(os.path.dirname(entry), exist_ok=True)
            with open(tmp, "wb") as f:
                np.save(f, img)
            os.replace(tmp, entry)
        except OSError as e:
            self._write_ok = False
            log.warning("image cache %s is not writable (%s); decoding without a cache", self.folder, e)
            try:
                os.remove(tmp)
            except OSError:
                pass
