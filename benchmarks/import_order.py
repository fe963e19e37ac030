"""Adder layers at the same speed whatever the import order: torch first, adderize first.

Each configuration runs in fresh processes (the import order and libgomp's spin count are
fixed when a process loads torch), in alternation, best of ``--processes`` processes:

* ``torch first`` / ``adderize first``: ``import torch`` before or after ``import adderize``;
* pool ``openmp`` (the default: the kernels' parallel loops on torch's OpenMP pool,
  ``adderize.tvm_schedules.pool``) or ``tvm`` (``ADDERIZE_TVM_POOL=tvm``: TVM's own pool,
  the previous releases' behaviour).

Workloads: the issue's converted block (adder conv, BatchNorm, ReLU, adder conv; 96
channels at 28x28, batch 4) and whole converted models (inference, batch 1); each next to
the same float network in the same process, so the conv baseline is what a plain torch
user gets (adderize no longer changes any OpenMP setting).

    python benchmarks/import_order.py [--processes 3] [--models resnet18 mobilenetv2_100]
        [--size 160]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys

CHILD = r"""
import json, sys, time
order, models, size = sys.argv[1], sys.argv[2].split(","), int(sys.argv[3])
if order == "torch":
    import torch, adderize
else:
    import adderize, torch
import timm
from torch import nn
from adderize.nn import Adder2d
from adderize.tvm_schedules import pool

def best(fn, x, reps):
    with torch.no_grad():
        for _ in range(3):
            fn(x)
        out = float("inf")
        for _ in range(reps):
            t = time.perf_counter(); fn(x); out = min(out, time.perf_counter() - t)
    return out * 1e3

torch.manual_seed(0)
net = nn.Sequential(nn.Conv2d(96, 96, 3, padding=1), nn.BatchNorm2d(96), nn.ReLU(),
                    nn.Conv2d(96, 96, 3, padding=1)).eval()
block = nn.Sequential(Adder2d.from_float(net[0]), net[1], net[2], Adder2d.from_float(net[3]))
x = torch.randn(4, 96, 28, 28)
rows = {"block": (best(net, x, 30), best(block.eval(), x, 30))}
for name in models:
    conv = timm.create_model(name, num_classes=10).eval()
    ann = adderize.adderize(conv).eval()
    x = torch.randn(1, 3, size, size)
    rows[name] = (best(conv, x, 20), best(ann, x, 20))
print(json.dumps({"pool": pool.status(), "rows": rows}))
"""


def run(order: str, pool: str, models: list[str], size: int) -> dict:
    env = dict(os.environ)
    env.pop("ADDERIZE_TVM_POOL", None)
    if pool == "tvm":
        env["ADDERIZE_TVM_POOL"] = "tvm"
    args = [sys.executable, "-c", CHILD, order, ",".join(models), str(size)]
    out = subprocess.run(args, env=env, capture_output=True, text=True, check=True).stdout
    return json.loads(out.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--processes", type=int, default=3)
    parser.add_argument("--models", nargs="*", default=["resnet18", "mobilenetv2_100"])
    parser.add_argument("--size", type=int, default=160)
    args = parser.parse_args()
    from adderize.tvm_schedules.target import describe

    configs = [(o, p) for p in ("openmp", "tvm") for o in ("torch", "adderize")]
    best: dict[tuple[str, str], dict[str, list[float]]] = {}
    pools: dict[tuple[str, str], str] = {}
    for _ in range(args.processes):  # in alternation: load bursts hit every configuration
        for cfg in configs:
            r = run(*cfg, args.models, args.size)
            pools[cfg] = r["pool"]
            mine = best.setdefault(cfg, {})
            for name, (conv, adder) in r["rows"].items():
                old = mine.get(name, [float("inf")] * 2)
                mine[name] = [min(old[0], conv), min(old[1], adder)]
    print(describe())
    print(
        f"best of {args.processes} processes per configuration; ms; ratio adder / conv (the "
        f"same process's float network); models: inference, batch 1, {args.size} px"
    )
    names = list(next(iter(best.values())))
    print(f"{'workload':18s}{'pool':8s}{'import first':14s}{'conv':>9s}{'adder':>9s}{'ratio':>7s}")
    for name in names:
        for cfg in configs:
            conv, adder = best[cfg][name]
            print(f"{name:18s}{cfg[1]:8s}{cfg[0]:14s}{conv:9.2f}{adder:9.2f}{adder / conv:7.2f}x")
    for cfg in configs:
        print(f"pool {cfg[1]}, {cfg[0]} first: {pools[cfg]}")


if __name__ == "__main__":
    main()
