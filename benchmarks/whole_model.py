"""Whole timm model, conv vs adderized vs annealing, side by side in one run: a training step
at --batch and inference latency at batch 1.

"anneal" is a function-preserving conversion halfway through its anneal (every converted
layer runs its frozen conv and its adder, the local reconstruction loss included): the
training step of the conversion's first phase (``adderize.train.anneal``).

Each variant runs in a fresh subprocess so its peak resident memory (ru_maxrss) is its own.
Prints time and peak memory per variant and the adder/conv ratios.

    python benchmarks/whole_model.py --model resnet18 --batch 32 --size 224
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from typing import Any

sys.path.insert(0, os.path.dirname(__file__))
from anneal_curves import cpu_model

VARIANTS = ("conv", "adder", "anneal")


def _step(model_name: str, variant: str, batch: int, size: int, steps: int) -> dict[str, float]:
    import timm
    import torch

    import adderize

    torch.manual_seed(0)
    model = timm.create_model(model_name, num_classes=1000)
    x = torch.randn(batch, 3, size, size)
    y = torch.randint(0, 1000, (batch,))
    local: Any = lambda: 0.0  # noqa: E731
    if variant == "adder":
        model = adderize.adderize(model, inplace=True)
    elif variant == "anneal":
        from adderize.train.anneal import Anneal, calibrate

        model = adderize.adderize(model, inplace=True, preserve=True)
        calibrate(model, [x[:4]])
        anneal = Anneal(model, steps=2)
        anneal.step()  # blend 0.5: both paths of every converted layer run
        local = anneal.loss
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # GiB (ru_maxrss in KiB)
    times = []
    for _ in range(steps):
        start = time.perf_counter()
        loss = torch.nn.functional.cross_entropy(model(x), y) + local()
        opt.zero_grad()
        loss.backward()
        opt.step()
        times.append(time.perf_counter() - start)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
    model.eval()
    one = x[:1]
    latencies = []
    with torch.no_grad():
        for _ in range(12):
            start = time.perf_counter()
            model(one)
            latencies.append(time.perf_counter() - start)
    latency = sorted(latencies[2:])[len(latencies[2:]) // 2]  # median after warm-up
    return {"seconds": min(times), "peak_gib": peak, "before_gib": base, "latency": latency}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="resnet18")
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--steps", type=int, default=2, help="training steps (min is kept)")
    parser.add_argument("--child", choices=VARIANTS, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(_step(args.model, args.child, args.batch, args.size, args.steps)))
        return
    results = {}
    print(f"{cpu_model()}, {os.cpu_count()} cores")
    for variant in VARIANTS:
        cmd = [
            sys.executable,
            __file__,
            "--child",
            variant,
            "--model",
            args.model,
            "--batch",
            str(args.batch),
            "--size",
            str(args.size),
            "--steps",
            str(args.steps),
        ]
        out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
        results[variant] = json.loads(out.strip().splitlines()[-1])
        r = results[variant]
        print(
            f"{args.model} {variant:5s} {args.size}px: train step (batch {args.batch}) "
            f"{r['seconds']:.2f} s, peak RSS {r['peak_gib']:.2f} GiB; inference (batch 1) "
            f"{r['latency'] * 1e3:.1f} ms",
            flush=True,
        )
    c = results["conv"]
    for variant in VARIANTS[1:]:
        a = results[variant]
        print(
            f"{variant} / conv: train step {a['seconds'] / c['seconds']:.2f}x, peak memory "
            f"{a['peak_gib'] / c['peak_gib']:.2f}x, inference latency "
            f"{a['latency'] / c['latency']:.1f}x"
        )


if __name__ == "__main__":
    main()
