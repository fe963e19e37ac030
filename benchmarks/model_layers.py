"""Every converted conv layer shape of real models, adder vs oneDNN conv, side by side.

The shapes are enumerated from the models (timm, ``--size`` input), not chosen: each model
is converted with ``adderize`` defaults and the input shape of every converted conv layer is
recorded; distinct shapes are timed at each ``--batch``. Each row pairs ``nn.Conv2d`` with
the ``Adder2d`` made from it, measured in alternation (``layers.paired``), forward and
forward+backward. The summary names the worst shapes against the targets (forward 2.0x,
forward+backward 3.0x).

    python benchmarks/model_layers.py [--models resnet18 resnet50 mobilenetv2_100
        efficientnet_b0] [--batch 1 32] [--size 224] [--no-backward] [--only REGEX]
"""

from __future__ import annotations

# isort: off
import adderize

# isort: on
import argparse
import json
import os
import re
import subprocess
import sys
from dataclasses import dataclass

import timm
import torch

sys.path.insert(0, os.path.dirname(__file__))
from layers import paired

from adderize.nn import Adder2d
from adderize.tvm_schedules.target import describe

MODELS = ("resnet18", "resnet50", "mobilenetv2_100", "efficientnet_b0")
FORWARD_TARGET, TRAIN_TARGET = 2.0, 3.0


@dataclass(frozen=True)
class Shape:
    cin: int
    cout: int
    k: tuple[int, int]
    stride: tuple[int, int]
    padding: tuple[int, int]
    dilation: tuple[int, int]
    groups: int
    h: int
    w: int

    def label(self) -> str:
        kind = "dw" if self.groups == self.cin == self.cout else f"g{self.groups}"
        kind = "" if self.groups == 1 else f" {kind}"
        return f"{self.cin}->{self.cout} {self.k[0]}x{self.k[1]} s{self.stride[0]}{kind} @{self.h}"


def model_shapes(name: str, size: int) -> list[Shape]:
    """Distinct input shapes of the conv layers ``adderize`` converts in model ``name``."""
    model = adderize.adderize(timm.create_model(name, num_classes=1000)).eval()
    found: dict[Shape, None] = {}

    def hook(mod: Adder2d, args: tuple[torch.Tensor, ...], _out: torch.Tensor) -> None:
        h, w = args[0].shape[-2:]
        pad = mod.padding if isinstance(mod.padding, tuple) else (0, 0)
        shape = Shape(mod.in_channels, mod.out_channels, mod.kernel_size, mod.stride,
                      pad, mod.dilation, mod.groups, h, w)  # fmt: skip
        found.setdefault(shape)

    handles = [m.register_forward_hook(hook) for m in model.modules() if isinstance(m, Adder2d)]
    with torch.no_grad():
        model(torch.randn(1, 3, size, size))
    for h in handles:
        h.remove()
    return list(found)


def _layers(shape: Shape, batch: int) -> tuple[torch.nn.Conv2d, Adder2d, torch.Tensor]:
    torch.manual_seed(0)
    conv = torch.nn.Conv2d(shape.cin, shape.cout, shape.k, shape.stride, shape.padding,
                           shape.dilation, shape.groups, bias=False)  # fmt: skip
    return conv, Adder2d.from_float(conv), torch.randn(batch, shape.cin, shape.h, shape.w)


def measure(shape: Shape, batch: int, backward: bool) -> tuple[float, float, float, float]:
    """(conv forward s, adder forward s, conv fwd+bwd s, adder fwd+bwd s), in alternation."""
    conv, adder, x = _layers(shape, batch)
    with torch.no_grad():
        c_f, a_f = paired(lambda: conv(x), lambda: adder(x))
    if not backward:
        return c_f, a_f, float("nan"), float("nan")
    xg = x.clone().requires_grad_()
    c_fb, a_fb = paired(lambda: conv(xg).sum().backward(), lambda: adder(xg).sum().backward())
    return c_f, a_f, c_fb, a_fb


def measure_conv(shape: Shape, batch: int, backward: bool) -> tuple[float, float]:
    """(conv forward s, conv fwd+bwd s) alone: the plain-PyTorch baseline's process."""
    conv, _, x = _layers(shape, batch)
    with torch.no_grad():
        c_f = min(paired(lambda: conv(x), lambda: conv(x)))
    if not backward:
        return c_f, float("nan")
    xg = x.clone().requires_grad_()
    return c_f, min(paired(lambda: conv(xg).sum().backward(), lambda: conv(xg).sum().backward()))


def plain_pytorch_conv(args: argparse.Namespace) -> dict[str, list[float]]:
    """Conv times of every shape in a child process that times the convs only (plain
    PyTorch), keyed by label and batch."""
    cmd = [sys.executable, __file__, "--conv-child", "--size", str(args.size), "--only",
           args.only, "--models", *args.models, "--batch", *map(str, args.batch)]  # fmt: skip
    if args.no_backward:
        cmd.append("--no-backward")
    out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
    return json.loads(out.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=list(MODELS))
    parser.add_argument("--batch", nargs="+", type=int, default=[1, 32])
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--no-backward", action="store_true", help="forward only")
    parser.add_argument(
        "--only", default="", help="time only shapes whose label matches this regex (' dw ', '@1$')"
    )
    parser.add_argument("--conv-child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    shapes: dict[Shape, list[str]] = {}
    for name in args.models:
        for s in model_shapes(name, args.size):
            if re.search(args.only, s.label()):
                shapes.setdefault(s, []).append(name)
    if args.conv_child:
        times = {f"{s.label()}/{b}": measure_conv(s, b, not args.no_backward)
                 for b in args.batch for s in shapes}  # fmt: skip
        print(json.dumps(times))
        return
    print(describe())
    print(f"torch {torch.__version__}; ratios are adder / oneDNN conv of the same shape, the "
          "conv's time the faster of\nthis process's (timed in alternation with the adder) "
          "and a plain-PyTorch process's")  # fmt: skip
    plain = plain_pytorch_conv(args)
    print(f"{len(shapes)} distinct converted conv shapes in {', '.join(args.models)}")
    header = f"{'layer':30s} {'batch':>5s} {'conv fwd':>9s} {'adder':>7s} {'conv f+b':>9s} {'adder':>7s}  models"  # noqa: E501
    print(header)
    print("-" * len(header))
    rows = []
    for batch in args.batch:
        for shape, models in shapes.items():
            c_f, a_f, c_fb, a_fb = measure(shape, batch, not args.no_backward)
            p_f, p_fb = plain[f"{shape.label()}/{batch}"]
            c_f, c_fb = min(c_f, p_f), min(c_fb, p_fb)
            r_f, r_fb = a_f / c_f, a_fb / c_fb
            rows.append((shape, batch, r_f, r_fb))
            print(f"{shape.label():30s} {batch:5d} {c_f * 1e3:7.2f}ms {r_f:6.2f}x "
                  f"{c_fb * 1e3:7.2f}ms {r_fb:6.2f}x  {','.join(models)}", flush=True)  # fmt: skip
    for batch in args.batch:
        sel = [r for r in rows if r[1] == batch]
        if not sel:
            continue
        fwd = sorted(sel, key=lambda r: -r[2])
        print(f"\nbatch {batch}: forward {min(r[2] for r in sel):.2f}-{fwd[0][2]:.2f}x "
              f"({sum(r[2] <= FORWARD_TARGET for r in sel)}/{len(sel)} within "
              f"{FORWARD_TARGET}x); worst: "
              + ", ".join(f"{r[0].label()} {r[2]:.2f}x" for r in fwd[:3]))  # fmt: skip
        if not args.no_backward:
            fb = sorted(sel, key=lambda r: -r[3])
            print(f"batch {batch}: fwd+bwd {min(r[3] for r in sel):.2f}-{fb[0][3]:.2f}x "
                  f"({sum(r[3] <= TRAIN_TARGET for r in sel)}/{len(sel)} within "
                  f"{TRAIN_TARGET}x); worst: "
                  + ", ".join(f"{r[0].label()} {r[3]:.2f}x" for r in fb[:3]))  # fmt: skip


if __name__ == "__main__":
    main()
