"""Benchmark: time and disk size of `drive synth` for the default world (10 scenes x 20 s, 800x450)."""
from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from benchlib import record  # noqa: E402

from drive.data.synth.world import generate_world  # noqa: E402


def du(path: str) -> int:
    return sum(os.path.getsize(os.path.join(d, f)) for d, _, fs in os.walk(path) for f in fs)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--scenes", type=int, default=10)
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--out", default=None, help="keep the world here (default: a temp dir, removed)")
    a = p.parse_args()
    tmp = tempfile.mkdtemp()
    out = a.out or os.path.join(tmp, "world")
    t0 = time.time()
    summary = generate_world(out, scenes=a.scenes, workers=a.workers, overwrite=True)
    seconds = time.time() - t0
    size = du(out)
    parts = {d: du(os.path.join(out, "samples", d)) for d in sorted(os.listdir(os.path.join(out, "samples")))}
    figures = {"seconds": round(seconds, 1), "size_mb": round(size / 1e6, 1), "samples": summary["samples"],
               "annotations": summary["annotations"], "images": 6 * summary["samples"],
               "size_mb_by_sensor": {k: round(v / 1e6, 1) for k, v in parts.items()}}
    print(figures)
    record("synth", figures, f"{a.scenes} scenes: {figures['seconds']} s, {figures['size_mb']} MB, "
           f"{summary['samples']} samples, {summary['annotations']} boxes")
    shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
