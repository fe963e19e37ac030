"""Low-bit layers side by side in one run: every 3x3 conv shape of resnet18 (224 px).

Per shape and batch, the time of one layer, as a ratio to the fp32 oneDNN conv measured in
alternation with it:

* int8 oneDNN conv: PyTorch's quantized CPU backend (``x86``), quint8 input in
  channels-last memory, qint8 weights;
* fp32 adder: ``Adder2d`` (the adderize TVM kernels);
* int8 adder: the uint8 byte-SAD kernel (``psadbw`` where the CPU has it);
* binary: the bit-packed XNOR + popcount kernel.

The low-bit rows time the kernels on data already quantized / packed (as in a compiled
int8 model, where the previous layer writes it); the fp32 rows take fp32 NCHW tensors.
Prints the CPU, the int8 kernel's instruction check and tile per shape, and a summary
against the targets (int8 adder <= 0.5x fp32 conv, <= 2x int8 conv).

    python benchmarks/int8_layers.py [--batches 1 32]
"""

from __future__ import annotations

# isort: off
import adderize  # noqa: F401

# isort: on
import argparse
import warnings
from typing import Any

import torch
from layers import paired  # benchmarks/ is on sys.path when run as a script
from model_layers import model_shapes

from adderize.nn import Adder2d
from adderize.tvm_schedules import build as tvm_build
from adderize.tvm_schedules import int8
from adderize.tvm_schedules.kinds import Workload, schedule
from adderize.tvm_schedules.target import describe, llvm_target

FP32_TARGET, INT8_TARGET = 0.5, 2.0


def sad_check(group: int) -> str:
    """Which instructions the int8 kernel's inner loop compiles to (a small shape)."""
    import tvm

    shape = (1, 10, 10, 8 * group, 8, 3, 3, 1, 1, group)
    asm = tvm.compile(schedule(Workload.of("int8_conv_forward", *shape)), target=llvm_target())
    text = asm.mod.inspect_source("asm")
    return f"vpsadbw: {text.count('psadbw')} in the kernel's assembly"


def measure(cin: int, cout: int, stride: int, h: int, batch: int) -> dict[str, Any]:
    torch.manual_seed(0)
    conv = torch.nn.Conv2d(cin, cout, 3, stride, 1, bias=False).eval()
    x = torch.randn(batch, cin, h, h)
    adder = Adder2d.from_float(conv).eval()

    # int8 oneDNN conv (PyTorch's quantized backend)
    torch.backends.quantized.engine = "x86"
    qconv = torch.ao.nn.quantized.Conv2d(cin, cout, 3, stride, 1, bias=False)
    qconv.set_weight_bias(torch.quantize_per_tensor(conv.weight, 0.01, 0, torch.qint8), None)
    xq = torch.quantize_per_tensor(x, 0.05, 128, torch.quint8)
    xq = xq.contiguous(memory_format=torch.channels_last)

    # int8 adder: uint8 NHWC, channels padded to SAD chunks
    group = int8.sad_group() or 4
    c = -(-cin // (8 * group)) * (8 * group)
    hp = h + 2
    oh = (hp - 3) // stride + 1
    shape = (batch, hp, hp, c, cout, 3, 3, stride, 1, group)
    sad = tvm_build.kernel(Workload.of("int8_conv_forward", *shape))
    sad_args = (
        torch.randint(0, 256, (batch, hp, hp, c), dtype=torch.uint8),
        torch.randint(0, 256, (cout, 3, 3, c), dtype=torch.uint8),
        torch.empty(batch, oh, oh, cout, dtype=torch.int32),
    )

    # binary: 32 channels per word
    words = -(-cin // 32)
    bshape = (batch, hp, hp, words, cout, 3, 3, stride, 1)
    binary = tvm_build.kernel(Workload.of("binary_conv_forward", *bshape))
    bin_args = (
        torch.randint(-(2**31), 2**31 - 1, (batch, hp, hp, words), dtype=torch.int32),
        torch.full((batch, hp, hp, words), -1, dtype=torch.int32),
        torch.randint(-(2**31), 2**31 - 1, (cout, 3, 3, words), dtype=torch.int32),
        torch.rand(cout),
        torch.empty(batch, oh, oh, cout),
    )

    with torch.no_grad():
        rows = {
            "int8 conv": lambda: qconv(xq),
            "fp32 adder": lambda: adder(x),
            "int8 adder": lambda: sad(*sad_args),
            "binary": lambda: binary(*bin_args),
        }
        out: dict[str, Any] = {"conv": float("inf")}
        for label, fn in rows.items():
            t_conv, t = paired(lambda: conv(x), fn)
            out[label] = t / t_conv
            out["conv"] = min(out["conv"], t_conv)
    out["tile"] = tvm_build.chosen(Workload.of("int8_conv_forward", *shape))
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 32])
    parser.add_argument("--size", type=int, default=224)
    args = parser.parse_args()
    warnings.filterwarnings("ignore", message=".*quantized tensor creation functions")
    tvm_build.available()
    print(describe())
    print(f"torch {torch.__version__}; ratios are time / oneDNN fp32 conv of the same shape")
    group = int8.sad_group()
    print(f"int8 adder: byte-SAD groups of {group or 'none (portable)'}; {sad_check(group or 4)}")
    shapes = [s for s in model_shapes("resnet18", args.size) if s.k == (3, 3) and s.groups == 1]
    head = f"{'layer':28s} {'batch':>5s} {'fp32 conv':>10s} {'int8 conv':>9s} "
    head += f"{'fp32 adder':>10s} {'int8 adder':>10s} {'binary':>7s}  int8 tile"
    print(head)
    print("-" * len(head))
    results = []
    for batch in args.batches:
        for s in shapes:
            r = measure(s.cin, s.cout, s.stride[0], s.h, batch)
            results.append(r)
            print(f"{s.label():28s} {batch:5d} {r['conv'] * 1e3:8.2f}ms {r['int8 conv']:8.2f}x "
                  f"{r['fp32 adder']:9.2f}x {r['int8 adder']:9.2f}x {r['binary']:6.2f}x  "
                  f"{r['tile']}", flush=True)  # fmt: skip
    fp32_ok = sum(r["int8 adder"] <= FP32_TARGET for r in results)
    int8_ok = sum(r["int8 adder"] <= INT8_TARGET * r["int8 conv"] for r in results)
    worst = max(r["int8 adder"] for r in results)
    vs_q = max(r["int8 adder"] / r["int8 conv"] for r in results)
    print(
        f"\nint8 adder <= {FP32_TARGET}x fp32 conv: {fp32_ok}/{len(results)} (worst {worst:.2f}x)"
    )
    print(f"int8 adder <= {INT8_TARGET}x int8 conv: {int8_ok}/{len(results)} (worst {vs_q:.2f}x)")


if __name__ == "__main__":
    main()
