"""Forward + backward of adder convs during the l_p -> l_1 schedule, TVM vs PyTorch kernels,
as ratios to conv2d of the same shape, side by side in one run.

    python benchmarks/lp_schedule.py
"""

from __future__ import annotations

# isort: off
import adderize  # noqa: F401

# isort: on
import time

import torch

from adderize.nn import Adder2d

SHAPES = [(32, 64, 56), (32, 256, 14)]  # (batch, channels, H): ResNet-50 3x3 layers


def train_time(layer: torch.nn.Module, x: torch.Tensor, repeats: int) -> float:
    """Best forward + backward time after a warm-up (which compiles kernels)."""
    times = []
    for _ in range(repeats + 1):
        start = time.perf_counter()
        layer(x).sum().backward()
        times.append(time.perf_counter() - start)
    return min(times[1:])


def main() -> None:
    print("forward + backward time / conv2d's; p = 1 is the l1 AdderNet, p = 1.5 mid-schedule")
    for n, c, h in SHAPES:
        conv = torch.nn.Conv2d(c, c, 3, 1, 1, bias=False)
        x = torch.randn(n, c, h, h, requires_grad=True)
        base = train_time(conv, x, 3)
        cells = []
        for backend in ("tvm", "torch"):
            for p in (1.0, 1.5):
                layer = Adder2d.from_float(conv, p=p, backend=backend)
                t = train_time(layer, x, 3 if backend == "tvm" else 1)
                cells.append(f"{backend} p={p:g} {t / base:5.1f}x")
        print(f"{n}x{c}x{h}x{h}: conv {base * 1e3:6.1f} ms | " + " | ".join(cells), flush=True)


if __name__ == "__main__":
    main()
