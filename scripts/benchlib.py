"""Shared by the scripts/bench_*.py benchmarks: machine facts, JSON output, a line in BENCHMARKS.md."""
from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def machine() -> str:
    cpu = platform.processor() or "cpu"
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    mem = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    load = os.getloadavg()[0]
    return f"{os.cpu_count()} cores {cpu}, {mem:.0f} GiB, load {load:.1f} at start"


def commit() -> str:
    try:
        return subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True,
                              text=True).stdout.strip()
    except OSError:
        return "?"


def record(name: str, figures: dict, summary: str, path: str | None = None) -> str:
    """Write ``path`` (default benchmarks/<name>.json) and append one line to BENCHMARKS.md."""
    out = {"name": name, "date": time.strftime("%Y-%m-%d %H:%M"), "machine": machine(), "commit": commit(),
           "command": " ".join(["python"] + sys.argv), "figures": figures}
    os.makedirs(os.path.join(ROOT, "benchmarks"), exist_ok=True)
    path = path or os.path.join(ROOT, "benchmarks", f"{name}.json")
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        json.dump(out, f, indent=1)
    os.replace(tmp, path)
    md = os.path.join(ROOT, "BENCHMARKS.md")
    if not os.path.exists(md):
        with open(md, "w") as f:
            f.write("# Benchmarks\n\nOne line per run: date, machine, commit, command, figures "
                    "(full numbers in `benchmarks/*.json`).\n\n| date | bench | machine | commit | command | figures |\n"
                    "|---|---|---|---|---|---|\n")
    with open(md, "a") as f:
        f.write(f"| {out['date']} | {name} | {out['machine']} | {out['commit']} | `{out['command']}` | {summary} |\n")
    return path
