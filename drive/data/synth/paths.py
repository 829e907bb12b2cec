"""Arc-length parametrised polylines: the geometry every lane, crossing and route is made of."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np


def resample(points: np.ndarray, step: float = 0.5) -> np.ndarray:
    """Resample a polyline (P, 2) to roughly uniform spacing ``step``."""
    points = np.asarray(points, dtype=np.float64)
    seg = np.linalg.norm(np.diff(points, axis=0), axis=1)
    keep = np.concatenate([[True], seg > 1e-9])
    points = points[keep]
    s = np.concatenate([[0.0], np.cumsum(np.linalg.norm(np.diff(points, axis=0), axis=1))])
    n = max(2, int(np.ceil(s[-1] / step)) + 1)
    t = np.linspace(0.0, s[-1], n)
    return np.stack([np.interp(t, s, points[:, 0]), np.interp(t, s, points[:, 1])], axis=1)


def bezier(p0, t0, p1, t1, n: int = 40) -> np.ndarray:
    """Cubic Bezier from p0 (tangent t0) to p1 (tangent t1), control length a third of the chord."""
    p0, p1 = np.asarray(p0, float), np.asarray(p1, float)
    d = np.linalg.norm(p1 - p0) / 2.5
    c0, c1 = p0 + np.asarray(t0) * d, p1 - np.asarray(t1) * d
    u = np.linspace(0, 1, n)[:, None]
    return (1 - u) ** 3 * p0 + 3 * (1 - u) ** 2 * u * c0 + 3 * (1 - u) * u**2 * c1 + u**3 * p1


@dataclass
class Path:
    """A polyline with cumulative arc length; position, heading and normal at any s."""

    points: np.ndarray  # (P, 2)

    def __post_init__(self):
        self.points = np.asarray(self.points, dtype=np.float64)
        d = np.diff(self.points, axis=0)
        self.s = np.concatenate([[0.0], np.cumsum(np.linalg.norm(d, axis=1))])
        heading = np.arctan2(d[:, 1], d[:, 0])
        self._heading = np.unwrap(np.concatenate([heading, heading[-1:]]))

    @property
    def length(self) -> float:
        return float(self.s[-1])

    def xy(self, s) -> np.ndarray:
        s = np.asarray(s, dtype=np.float64)
        return np.stack([np.interp(s, self.s, self.points[:, 0]), np.interp(s, self.s, self.points[:, 1])], -1)

    def heading(self, s) -> np.ndarray:
        return np.interp(np.asarray(s, dtype=np.float64), self.s, self._heading)

    def pose(self, s, d=0.0):
        """(x, y, heading) at arc length s and lateral offset d (positive to the left)."""
        h = self.heading(s)
        p = self.xy(s)
        normal = np.stack([-np.sin(h), np.cos(h)], -1)
        return p + np.asarray(d)[..., None] * normal, h

    def project(self, xy: np.ndarray, s_min: float | None = None, s_max: float | None = None):
        """Arc length and signed lateral offset (left positive) of points (K, 2) on this path.

        ``s_min`` / ``s_max`` restrict the search to a window of the path (much faster on long paths).
        """
        xy = np.atleast_2d(xy)
        i0 = 0 if s_min is None else max(0, int(np.searchsorted(self.s, s_min)) - 1)
        i1 = len(self.s) if s_max is None else min(len(self.s), int(np.searchsorted(self.s, s_max)) + 1)
        if i1 - i0 < 2:
            i0, i1 = max(0, i1 - 2), max(2, i1)
        pts, cum = self.points[i0:i1], self.s[i0:i1]
        ax, ay = pts[:-1, 0], pts[:-1, 1]
        abx, aby = pts[1:, 0] - ax, pts[1:, 1] - ay
        L2 = np.maximum(abx * abx + aby * aby, 1e-12)
        px, py = xy[:, :1] - ax[None], xy[:, 1:2] - ay[None]  # (K, S)
        t = np.clip((px * abx + py * aby) / L2, 0.0, 1.0)
        ex, ey = px - t * abx, py - t * aby
        dist2 = ex * ex + ey * ey
        i = dist2.argmin(1)
        k = np.arange(len(xy))
        s = cum[i] + t[k, i] * np.sqrt(L2[i])
        cross = abx[i] * py[k, i] - aby[i] * px[k, i]
        d = np.where(cross < 0, -1.0, 1.0) * np.sqrt(dist2[k, i])
        return s, d

    def offset(self, d: float) -> "Path":
        p, _ = self.pose(self.s, d)
        return Path(p)

    def reversed(self) -> "Path":
        return Path(self.points[::-1].copy())

    def sub(self, s0: float, s1: float, step: float = 0.5) -> "Path":
        n = max(2, int(np.ceil(abs(s1 - s0) / step)) + 1)
        return Path(self.xy(np.linspace(s0, s1, n)))

    @staticmethod
    def concat(paths: list["Path"]) -> "Path":
        pts = [paths[0].points]
        for p in paths[1:]:
            q = p.points
            if np.linalg.norm(q[0] - pts[-1][-1]) < 1e-6:
                q = q[1:]
            pts.append(q)
        return Path(np.concatenate(pts, 0))
