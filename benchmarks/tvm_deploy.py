"""TVM deployment, side by side in one run (batch 1, CPU, ratios to torch eager conv).

Whole model (timm resnet18, 224 px): torch eager conv, torch eager adder (our layers),
the adder model compiled whole by TVM Relax (adder layers as adderize kernels, the rest
lowered by TVM), the same model quantized to int8 (``quantize_model``, calibrated on random
inputs: this measures speed, ``int8_digits.py`` accuracy) and compiled on the byte-SAD
kernels, and the conv model compiled by TVM the same way (no tuning: TVM's default
lowering of conv2d, to show what an untuned TVM build costs).

Per layer (--tune-trials N > 0): MetaSchedule-tuned and hand-scheduled TVM fp32 adder
kernels at ResNet-50 3x3 shapes vs oneDNN fp32 conv2d, with the trials and minutes tuning
took; the records land in the tuning database, so a rerun measures without re-tuning. The
int8 and binary kernels are compared in ``benchmarks/int8_layers.py``.

    python benchmarks/tvm_deploy.py [--tune-trials 64]
"""

from __future__ import annotations

# isort: off
import adderize

# isort: on
import argparse
import copy
import time

import torch
import torch.nn.functional as F
from layers import paired  # benchmarks/ is on sys.path when run as a script

from adderize.deploy import compile_model
from adderize.deploy.quant import quantize_model
from adderize.kernels import tvm_l1
from adderize.train import recalibrate_bn
from adderize.tvm_schedules import build as tvm_build
from adderize.tvm_schedules.kinds import Workload, schedule
from adderize.tvm_schedules.target import llvm_target

LAYERS = [(c, h) for c, h in ((64, 56), (128, 28), (256, 14), (512, 7))]


def whole_model(size: int) -> None:
    import timm
    import tvm
    from tvm.relax.frontend.torch import from_exported_program

    torch.manual_seed(0)
    conv = timm.create_model("resnet18", num_classes=1000).eval()
    adder = adderize.adderize(copy.deepcopy(conv))
    recalibrate_bn(adder, [torch.randn(4, 3, size, size)])
    adder.eval()
    x = torch.randn(1, 3, size, size)
    compiled, report = compile_model(adder, (1, 3, size, size))
    print(f"adder resnet18: {report.summary()}")
    assert compiled is not None
    int8_model, quant = quantize_model(adder, [torch.randn(8, 3, size, size) for _ in range(2)])
    compiled8, report8 = compile_model(int8_model, (1, 3, size, size))
    print(f"int8 adder resnet18: {quant.summary()}; {report8.summary()} (vs int8 PyTorch)")
    assert compiled8 is not None
    tic = time.perf_counter()
    program = torch.export.export(conv, (x,))
    conv_tvm = tvm.relax.VirtualMachine(
        tvm.compile(from_exported_program(program, unwrap_unit_return_tuple=True),
                    target=llvm_target()).jit(),
        tvm.cpu(),
    )  # fmt: skip
    print(f"conv resnet18 TVM build (untuned): {time.perf_counter() - tic:.1f} s")
    xt = tvm.runtime.tensor(x.numpy())

    def eager(model):
        def run():
            with torch.no_grad():
                model(x)

        return run

    rows = [
        ("torch eager adder (adderize layers)", eager(adder)),
        ("TVM Relax adder (adderize kernels)", lambda: compiled(x)),
        ("TVM Relax int8 adder (byte-SAD kernels)", lambda: compiled8(x)),
        ("TVM Relax conv (untuned default lowering)", lambda: conv_tvm["main"](xt)),
    ]
    print(f"\nresnet18 batch 1 @{size}, ratio to torch eager conv (paired, best of 3):")
    for label, fn in rows:
        t_conv, t_other = paired(eager(conv), fn)
        print(f"  {label:44s} {t_other * 1e3:8.2f} ms  {t_other / t_conv:5.2f}x "
              f"(conv {t_conv * 1e3:.2f} ms)")  # fmt: skip


def per_layer(trials: int) -> None:
    import tvm

    print(f"\nper layer, batch 1, MetaSchedule {trials} trials per kernel, ratio to oneDNN conv:")
    for c, h in LAYERS:
        x = torch.randn(1, c, h + 2, h + 2)
        w = torch.randn(c, c, 3, 3)
        shape = (1, c, h + 2, h + 2, c, 3, 3, 1, 1, 1)
        tic = time.perf_counter()
        fresh = not tvm_l1.tuned(Workload.of("conv_forward", *shape))
        if fresh:
            tvm_l1.tune(Workload.of("conv_forward", *shape), trials=trials)
        minutes = (time.perf_counter() - tic) / 60
        tvm_build.forget(Workload.of("conv_forward", *shape))  # rebuild with the tuned schedule
        hand = schedule(Workload.of("conv_forward", *shape))
        hand_fn = tvm.compile(hand, target=llvm_target())["main"]
        out = x.new_empty(1, h, h, 1, c)
        wt = w.reshape(1, c, c, 3, 3).permute(0, 2, 3, 4, 1).contiguous()
        tuned_fn = tvm_build.kernel(Workload.of("conv_forward", *shape))

        def conv(x=x, w=w):
            F.conv2d(x, w)

        args = (x, wt, out)
        t_conv, t_tuned = paired(conv, lambda f=tuned_fn, a=args: f(*a))
        _, t_hand = paired(conv, lambda f=hand_fn, a=args: f(*a))
        spent = f"tuned in {minutes:.1f} min" if fresh else "tuned earlier (database)"
        print(
            f"  {c}x{c} 3x3 @{h}: fp32 tuned {t_tuned / t_conv:5.2f}x, fp32 hand "
            f"{t_hand / t_conv:5.2f}x; conv {t_conv * 1e3:.3f} ms ({spent})"
        )


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--tune-trials", type=int, default=0)
    args = parser.parse_args()
    tvm_l1.available()
    whole_model(args.size)
    if args.tune_trials:
        per_layer(args.tune_trials)
