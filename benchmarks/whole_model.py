"""Whole timm model, conv vs adderized vs annealing, side by side in one run: a training step
at --batch and inference latency at batch 1.

"anneal" is a function-preserving conversion halfway through its anneal (every converted
layer runs its frozen conv and its adder, the local reconstruction loss included): the
training step of the conversion's first phase (``adderize.train.anneal``).

Each variant runs in a fresh subprocess so its peak resident memory is its own. Training
memory is the peak over the timed steps minus the resident memory before the first step
(model, data and, for adder variants, TVM's libraries already loaded): the peak is reset
(``/proc/self/clear_refs``) after the warm-up step, so it is what every step of a training
run holds, not the one-off cost of building and timing kernels in the first step, which is
printed apart ("first step"). Prints time and memory per variant and the adder/conv
ratios.

    python benchmarks/whole_model.py --model resnet18 --batch 32 --size 224
    python benchmarks/whole_model.py --model resnet18 resnet50 mobilenetv2_100 \
        efficientnet_b0 --batch 8 --size 160 --variants conv adder

Kernels are built (and their tiles selected) in a child run before the measured one (the
disk cache then holds them), and any left in a warm-up step that is not timed. adderize
changes no OpenMP setting (its kernels run on torch's OpenMP pool,
``adderize.tvm_schedules.pool``), so the conv baseline is what a plain torch user gets.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from adderize.tvm_schedules.target import describe

VARIANTS = ("conv", "adder", "anneal")


def _peak_gib() -> float:
    """The process's peak resident memory since start or since :func:`_reset_peak`."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 2**20  # kB
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20


def _reset_peak() -> None:
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")  # resets VmHWM to the current resident memory (Linux >= 4.0)


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
    if variant != "conv":  # TVM's libraries are loaded before the baseline: not training memory
        from adderize.kernels import tvm_l1

        tvm_l1.available()
    base = _peak_gib()
    times = []
    for i in range(steps + 1):  # the first step builds the kernels: not timed
        if i == 1:
            first = _peak_gib()
            _reset_peak()
        start = time.perf_counter()
        loss = torch.nn.functional.cross_entropy(model(x), y) + local()
        opt.zero_grad()
        loss.backward()
        opt.step()
        times.append(time.perf_counter() - start)
    times = times[1:]
    peak = _peak_gib()
    model.eval()
    one = x[:1]
    latencies = []
    with torch.no_grad():
        for _ in range(12):
            start = time.perf_counter()
            model(one)
            latencies.append(time.perf_counter() - start)
    latency = sorted(latencies[2:])[len(latencies[2:]) // 2]  # median after warm-up
    return {
        "seconds": min(times),
        "peak_gib": peak,
        "first_gib": first,
        "before_gib": base,
        "latency": latency,
    }


def _child(
    model: str, variant: str, args: argparse.Namespace, steps: int | None = None
) -> dict[str, float]:
    steps = steps or args.steps
    cmd = [sys.executable, __file__, "--child", variant, "--model", model, "--batch",
           str(args.batch), "--size", str(args.size), "--steps", str(steps)]  # fmt: skip
    out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
    return json.loads(out.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", nargs="+", default=["resnet18"])
    parser.add_argument("--variants", nargs="+", choices=VARIANTS, default=list(VARIANTS))
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--steps", type=int, default=2, help="timed training steps (min kept)")
    parser.add_argument("--child", choices=VARIANTS, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        (model,) = args.model
        print(json.dumps(_step(model, args.child, args.batch, args.size, args.steps)))
        return
    print(f"{describe()}, {os.cpu_count()} cores")
    variants = ["conv", *[v for v in args.variants if v != "conv"]]
    summary = []
    for model in args.model:
        results = {}
        for variant in variants:
            if variant != "conv":
                # a first child builds and selects the kernels into the disk cache: the
                # measured one loads them, so the heap that compiling leaves behind (0.1 GiB
                # on resnet18) is not counted as training memory
                _child(model, variant, args, steps=1)
            results[variant] = r = _child(model, variant, args)
            print(
                f"{model} {variant:6s} {args.size}px: train step (batch {args.batch}) "
                f"{r['seconds']:.3f} s, peak RSS {r['peak_gib']:.2f} GiB (training "
                f"{r['peak_gib'] - r['before_gib']:.2f} GiB, first step "
                f"{r['first_gib'] - r['before_gib']:.2f} GiB); inference (batch 1) "
                f"{r['latency'] * 1e3:.1f} ms",
                flush=True,
            )
        c = results["conv"]
        for variant in variants[1:]:
            a = results[variant]
            mem = (a["peak_gib"] - a["before_gib"]) / (c["peak_gib"] - c["before_gib"])
            line = (
                f"{model} {variant} / conv: train step {a['seconds'] / c['seconds']:.2f}x, "
                f"training memory {mem:.2f}x (peak RSS {a['peak_gib'] / c['peak_gib']:.2f}x), "
                "inference latency "
                f"{a['latency'] / c['latency']:.2f}x"
            )
            print(line, flush=True)
            summary.append(line)
    print("\n" + "\n".join(summary))


if __name__ == "__main__":
    main()
