"""``adderize demo`` from a cold kernel cache, then warm: what a new user waits.

Runs the demo twice in fresh processes with their own ``XDG_CACHE_HOME`` (an empty folder:
no kernel built yet, as after ``pip install``), into two new output folders, and prints
the wall time of each, and each run's first and later fine-tuning epochs (the first
includes the refit and the anneal's two paths, and in the cold run the kernels' builds
and tile selection). Install time is not counted.

    python benchmarks/cold_start.py [--keep DIR]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from adderize.tvm_schedules.target import describe


def demo(cache: Path, out: Path) -> tuple[float, list[float]]:
    env = {**os.environ, "XDG_CACHE_HOME": str(cache)}
    cmd = [sys.executable, "-m", "adderize", "demo", "--out", str(out)]
    start = time.perf_counter()
    subprocess.run(cmd, env=env, check=True, capture_output=True, text=True)
    seconds = time.perf_counter() - start
    history = json.loads((out / "run" / "metrics.json").read_text())
    return seconds, [h["seconds"] for h in history if h["phase"] == "student"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--keep", default=None, help="keep the caches and runs in DIR")
    args = parser.parse_args()
    root = Path(args.keep or tempfile.mkdtemp(prefix="adderize-cold-"))
    cache = root / "cache"
    cache.mkdir(parents=True, exist_ok=True)
    cold = demo(cache, root / "cold")
    warm = demo(cache, root / "warm")
    print(describe())
    print("adderize demo (digits recipe: teacher, refit, 4 student epochs, energy, reload, "
          "TVM compile), install excluded")  # fmt: skip
    for name, (seconds, epochs) in (("cold kernel cache", cold), ("warm kernel cache", warm)):
        later = sum(epochs[1:]) / max(len(epochs) - 1, 1)
        print(f"{name}: {seconds:.0f} s ({seconds / 60:.1f} min); student epoch 1 "
              f"{epochs[0]:.1f} s, later epochs {later:.1f} s on average")  # fmt: skip
    print(
        f"cold first epoch / warm first epoch: {cold[1][0] / warm[1][0]:.2f}x; "
        f"cold first epoch / warm later epoch: {cold[1][0] / (sum(warm[1][1:]) / 3):.2f}x"
    )
    print(f"runs and cache: {root}")


if __name__ == "__main__":
    main()
