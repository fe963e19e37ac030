"""Per-layer speed of Adder2d vs torch conv2d, side by side in one run (ratios to conv).

Each ratio pairs measurements taken in alternation (best of 3 rounds).

Columns: adder with the default kernels (TVM), adder with the PyTorch fallback kernels, and
two peer techniques re-implemented from the paper's math: the official AdderNet forward
(unfold + broadcast |X - W| + sum: a Cout x Cin*k*k x N*H*W temporary; skipped when that
temporary exceeds --max-gib) and torch.cdist(p=1) on the unfolded input.

    python benchmarks/layers.py            # ResNet-20 CIFAR (batch 64), ResNet-50 (batch 1, 32)
"""

from __future__ import annotations

# isort: off
import adderize  # noqa: F401

# isort: on
import argparse
import time
from collections.abc import Callable

import torch
import torch.nn.functional as F

from adderize.nn import Adder2d
from adderize.tvm_schedules.target import describe

# (label, batch, Cin, Cout, kernel, stride, H, groups)
SHAPES = [
    ("resnet20 s1 3x3", 64, 16, 16, 3, 1, 32, 1),
    ("resnet20 s2 3x3", 64, 32, 32, 3, 1, 16, 1),
    ("resnet20 s3 3x3", 64, 64, 64, 3, 1, 8, 1),
    *[
        (f"resnet50 {c}x{c} 3x3 @{h} b{b}", b, c, c, 3, 1, h, 1)
        for b in (1, 32)
        for c, h in ((64, 56), (128, 28), (256, 14), (512, 7))
    ],
    ("resnet50 256->64 1x1 @56 b32", 32, 256, 64, 1, 1, 56, 1),
    ("mobilenetv2 dw 96 3x3 @56 b32", 32, 96, 96, 3, 1, 56, 96),
    ("efficientnet dw 480 3x3 @14 b32", 32, 480, 480, 3, 1, 14, 480),
]


def bench(fn: Callable[[], object], min_time: float = 0.3) -> float:
    """Fastest call in ``min_time`` seconds (at least 3 calls) after a warm-up call, which
    also compiles kernels. The minimum is the measure least disturbed by other load."""
    fn()
    times: list[float] = []
    start = time.perf_counter()
    while time.perf_counter() - start < min_time or len(times) < 3:
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
        if len(times) >= 50:
            break
    return min(times)


def paired(
    conv: Callable[[], object], other: Callable[[], object], rounds: int = 3
) -> tuple[float, float]:
    """Times of ``conv`` and ``other`` measured in alternation, best of ``rounds``, so a
    burst of load on this shared machine hits both sides of a ratio."""
    pairs = [(bench(conv, 0.1), bench(other, 0.1)) for _ in range(rounds)]
    return min(p[0] for p in pairs), min(p[1] for p in pairs)


def official_forward(x: torch.Tensor, w: torch.Tensor, pad: int) -> torch.Tensor:
    """huawei-noah/AdderNet's technique: unfold, broadcast, |.|, sum."""
    n, _, h, width = x.shape
    cout, _, k, _ = w.shape
    cols = F.unfold(x, k, padding=pad)  # [N, K, L]
    w_col = w.reshape(cout, -1)
    x_col = cols.permute(1, 2, 0).reshape(cols.shape[1], -1)  # [K, L*N]
    out = -(w_col.unsqueeze(2) - x_col.unsqueeze(0)).abs().sum(1)  # [Cout, L*N]
    return out.reshape(cout, h, width, n).permute(3, 0, 1, 2)


def cdist_forward(x: torch.Tensor, w: torch.Tensor, pad: int) -> torch.Tensor:
    cols = F.unfold(x, w.shape[-1], padding=pad).transpose(1, 2)  # [N, L, K]
    return -torch.cdist(cols, w.reshape(w.shape[0], -1).unsqueeze(0), p=1.0)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--max-gib",
        type=float,
        default=3.0,
        help="skip the official technique above this temporary size",
    )
    parser.add_argument("--quick", action="store_true", help="only the first shapes")
    args = parser.parse_args()
    print(describe())
    print(
        f"torch {torch.__version__}, {torch.get_num_threads()} threads; times are ratios to "
        "torch conv2d of the same shape (forward; fwd+bwd = forward + backward)"
    )
    header = (
        f"{'layer':34s} {'conv fwd':>9s} {'adder':>7s} {'torch-kern':>10s} "
        f"{'official':>9s} {'cdist':>7s} | {'conv f+b':>9s} {'adder':>7s} "
        f"{'torch-kern':>10s}"
    )
    print(header)
    print("-" * len(header))
    for shape in SHAPES[: 3 if args.quick else None]:
        print(measure(*shape, max_gib=args.max_gib), flush=True)


def measure(
    label: str,
    n: int,
    cin: int,
    cout: int,
    k: int,
    stride: int,
    h: int,
    groups: int,
    max_gib: float,
) -> str:
    """One table row: times of conv, adder (default / fallback kernels) and peers."""
    torch.manual_seed(0)
    pad = k // 2
    conv = torch.nn.Conv2d(cin, cout, k, stride, pad, groups=groups, bias=False)
    adder = Adder2d.from_float(conv)
    fallback = Adder2d.from_float(conv, backend="torch")
    x = torch.randn(n, cin, h, h)
    xg = x.clone().requires_grad_()
    peers = groups == 1  # the peer re-implementations are for dense convs
    temp_gib = cout * cin * k * k * n * h * h * 4 / 2**30
    nan = float("nan")
    with torch.no_grad():
        c_f, a_f = paired(lambda: conv(x), lambda: adder(x))
        t_f = bench(lambda: fallback(x))
        o_f = (
            bench(lambda: official_forward(x, conv.weight, pad))
            if peers and temp_gib <= max_gib
            else nan
        )
        d_f = bench(lambda: cdist_forward(x, conv.weight, pad)) if peers else nan
    c_fb, a_fb = paired(lambda: conv(xg).sum().backward(), lambda: adder(xg).sum().backward())
    t_fb = bench(lambda: fallback(xg).sum().backward(), min_time=0.1)
    official = (
        f"{o_f / c_f:8.1f}x"
        if o_f == o_f
        else f"{'OOM>' + str(max_gib) if groups == 1 else 'n/a':>9s}"
    )
    cdist = f"{d_f / c_f:6.1f}x" if d_f == d_f else f"{'n/a':>7s}"
    return (
        f"{label:34s} {c_f * 1e3:7.2f}ms {a_f / c_f:6.2f}x {t_f / c_f:9.1f}x "
        f"{official} {cdist} | {c_fb * 1e3:7.2f}ms {a_fb / c_fb:6.2f}x "
        f"{t_fb / c_fb:9.1f}x"
    )


if __name__ == "__main__":
    main()
