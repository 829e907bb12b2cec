"""Benchmark: data loading throughput (samples/s per worker), cold (JPEG decode) and warm (image cache)."""
from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from benchlib import record  # noqa: E402

import torch  # noqa: E402

from drive.data.augment import AugmentConfig  # noqa: E402
from drive.data.dataset import NuScenesDrivingDataset, collate  # noqa: E402


def rate(ds, n: int) -> float:
    t0 = time.perf_counter()
    for i in range(n):
        ds[i % len(ds)]
    return n / (time.perf_counter() - t0)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--root", default="data/synth")
    p.add_argument("--version", default="v1.0-mini")
    p.add_argument("--split", default="mini_train")
    p.add_argument("--image-size", type=int, nargs=2, default=(128, 224))
    p.add_argument("--samples", type=int, default=120)
    a = p.parse_args()
    torch.set_num_threads(1)
    cache = tempfile.mkdtemp()
    t0 = time.perf_counter()
    ds = NuScenesDrivingDataset(a.root, a.version, a.split, image_size=a.image_size, cache_dir=cache,
                                augment=AugmentConfig(enabled=True, seed=0))
    index_s = time.perf_counter() - t0
    n = min(a.samples, len(ds))
    cold = rate(ds, n)
    warm = rate(ds, n)
    loader = torch.utils.data.DataLoader(ds, batch_size=4, num_workers=2, collate_fn=collate)
    t0 = time.perf_counter()
    seen = 0
    for batch in loader:
        seen += batch.features.images.shape[0]
    loader_rate = seen / (time.perf_counter() - t0)
    figures = {"index_seconds": round(index_s, 2), "cold_samples_per_s_1worker": round(cold, 1),
               "warm_samples_per_s_1worker": round(warm, 1), "loader_2workers_samples_per_s": round(loader_rate, 1),
               "samples": n, "image_size": list(a.image_size), "augment": True}
    print(figures)
    record("data", figures, f"{a.split} @ {a.image_size[0]}x{a.image_size[1]}, augment on: cold {figures['cold_samples_per_s_1worker']}"
           f" / warm {figures['warm_samples_per_s_1worker']} samples/s per worker; DataLoader(2 workers) "
           f"{figures['loader_2workers_samples_per_s']} samples/s")


if __name__ == "__main__":
    main()
