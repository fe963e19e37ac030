"""``adderize`` command line (also ``python -m adderize``)."""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

__all__ = ["main"]


def _mapping_arg(value: str | None) -> Any:
    """``--ops``: a YAML mapping file, or an op name applied to every layer."""
    from adderize.passes.mapping import OpMapping
    from adderize.passes.registry import op_names

    if value is None:
        return None
    if value in op_names():
        return value
    path = Path(value)
    if not path.is_file():
        ops = ", ".join(op_names())
        raise ValueError(f"--ops {value!r} is neither a mapping file nor an op name (ops: {ops})")
    return OpMapping.load(path)


def _model_kwargs(args: argparse.Namespace) -> dict[str, Any]:
    kwargs: dict[str, Any] = json.loads(args.model_kwargs) if args.model_kwargs else {}
    if not isinstance(kwargs, dict):
        raise ValueError(f"--model-kwargs must be a JSON object, got {args.model_kwargs!r}")
    if args.num_classes is not None:
        kwargs["num_classes"] = args.num_classes
    return kwargs


def _cmd_convert(args: argparse.Namespace) -> int:
    import adderize

    model, report = adderize.create_model(
        args.model,
        _mapping_arg(args.ops),
        keep=args.keep,
        pretrained_file=args.pretrained_file,
        strict=args.strict,
        return_report=True,
        **_model_kwargs(args),
    )
    if args.json:
        print(report.to_json())
    elif args.report:
        print(report)
    else:
        print(report.summary())
    if args.out:
        path = adderize.save(model, args.out)
        print(f"saved {path} (reload with adderize.load({str(path)!r}))", file=sys.stderr)
    return 0


def _input_size(value: str) -> tuple[int, ...]:
    """``224`` -> (1, 3, 224, 224); ``1,3,160,160`` -> as given."""
    try:
        parts = tuple(int(v) for v in value.split(","))
    except ValueError:
        raise ValueError(
            f"--input-size takes 224 or N,C,H,W (e.g. 1,3,224,224), got {value!r}"
        ) from None
    return (1, 3, parts[0], parts[0]) if len(parts) == 1 else parts


def _model_for(args: argparse.Namespace) -> Any:
    """A saved model file, or a timm model name converted with ``--ops`` / ``--keep``."""
    import adderize

    path = Path(args.model)
    if path.suffix == ".safetensors" or path.is_file():
        if args.ops or args.keep:
            raise ValueError("--ops/--keep apply to a timm model name, not a saved model")
        return adderize.load(path)
    return adderize.create_model(
        args.model, _mapping_arg(args.ops), keep=args.keep, **_model_kwargs(args)
    )


def _cmd_energy(args: argparse.Namespace) -> int:
    from adderize.energy import energy_report

    model = _model_for(args)
    bits = int(args.bits) if args.bits.isdigit() else args.bits
    report = energy_report(model, _input_size(args.input_size), table=args.table, bits=bits)
    if args.json:
        print(report.to_json())
    else:
        print(report.table_str(max_rows=args.rows))
        print()
        print(report.summary())
    if args.plot:
        print(f"plot written to {report.plot(args.plot)}", file=sys.stderr)
    return 0


def _cmd_tune(args: argparse.Namespace) -> int:
    import torch

    from adderize.kernels import tvm_l1

    if not tvm_l1.available():
        raise ValueError(f"tuning needs TVM, which is unavailable: {tvm_l1.unavailable_reason()}")
    if args.trials < 1:
        raise ValueError(f"--trials must be >= 1, got {args.trials}")
    size = _input_size(args.input_size)
    if args.train and size[0] < 2:
        raise ValueError(
            f"--train runs a training step: BatchNorm needs a batch of at least "
            f"2, got --input-size {','.join(map(str, size))}"
        )
    model = _model_for(args)
    x = torch.randn(*size)

    def run() -> None:
        if args.train:
            model.train()
            model(x).float().sum().backward()
        else:
            model.eval()
            with torch.no_grad():
                model(x)

    tasks = tvm_l1.workloads(run)
    todo = [t for t in tasks if args.retune or not tvm_l1.tuned(*t)]
    print(
        f"{len(tasks)} adder kernels ({'forward + backward' if args.train else 'forward'}, "
        f"input {size}); {len(tasks) - len(todo)} already tuned; database "
        f"{tvm_l1.tuning_dir()}"
    )
    deadline = None if args.minutes is None else time.monotonic() + 60 * args.minutes
    done = 0
    for i, task in enumerate(todo, 1):
        if deadline is not None and time.monotonic() > deadline:
            print(f"time budget of {args.minutes} min reached: run again to continue")
            break
        start = time.perf_counter()
        print(f"[{i}/{len(todo)}] {task[0]} {task[1:]} ...", end=" ", flush=True)
        tvm_l1.tune(*task, trials=args.trials)
        done += 1
        print(f"{time.perf_counter() - start:.0f} s", flush=True)
    print(f"tuned {done} kernel(s); later builds of them use the tuned schedules")
    return 0


def _cmd_demo(args: argparse.Namespace) -> int:
    import torch

    import adderize

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(0)
    print(f"converting timm {args.model} (random init, {args.image_size}px) ...")
    model, report = adderize.create_model(args.model, return_report=True)
    print(report)
    x = torch.randn(1, 3, args.image_size, args.image_size)
    model.eval()
    timings = []
    with torch.no_grad():
        for _ in range(3):
            start = time.perf_counter()
            y = model(x)
            timings.append(time.perf_counter() - start)
    print(
        f"\nforward of the converted model: output {tuple(y.shape)}; first call "
        f"{timings[0]:.2f} s (imports TVM and compiles the adder kernels, cached on disk), "
        f"then {min(timings[1:]) * 1e3:.1f} ms"
    )
    path = adderize.save(model, out / f"{args.model}-adder.safetensors")
    reloaded = adderize.load(path).eval()
    with torch.no_grad():
        same = torch.equal(reloaded(x), y)
    print(f"saved {path}; reloaded without pickle, identical output: {same}")
    (out / "report.json").write_text(report.to_json())
    print(f"report written to {out / 'report.json'}")
    return 0 if same else 1


def build_parser() -> argparse.ArgumentParser:
    from adderize._version import __version__

    parser = argparse.ArgumentParser(
        prog="adderize", description="Turn timm/PyTorch CNNs into multiplication-free networks."
    )
    parser.add_argument("--version", action="version", version=f"adderize {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)

    conv = sub.add_parser("convert", help="convert a timm model and report every layer")
    conv.add_argument("model", help="timm model name, e.g. resnet50")
    conv.add_argument(
        "--out",
        help="write the converted model here (safetensors format, whatever the suffix; no pickle)",
    )
    conv.add_argument(
        "--ops", help="op mapping YAML file, or one op for every layer (adder, binary, shift, conv)"
    )
    conv.add_argument(
        "--keep", nargs="+", default=[], metavar="NAME", help="module names to keep full precision"
    )
    conv.add_argument("--report", action="store_true", help="print the per-layer table")
    conv.add_argument("--json", action="store_true", help="print the report as JSON")
    conv.add_argument(
        "--strict",
        action="store_true",
        help="fail if a layer the mapping asks to convert cannot be",
    )
    conv.add_argument("--pretrained-file", help="local weights (safetensors or state dict)")
    conv.add_argument("--num-classes", type=int, help="classifier size passed to timm")
    conv.add_argument("--model-kwargs", help="extra timm.create_model kwargs as JSON")
    conv.set_defaults(func=_cmd_convert)

    energy = sub.add_parser("energy", help="op counts and energy per layer, vs all-conv")
    energy.add_argument(
        "model",
        help="timm model name (converted with --ops) or a file saved by adderize convert --out",
    )
    energy.add_argument("--ops", help="op mapping YAML file, or one op for every layer")
    energy.add_argument("--keep", nargs="+", default=[], metavar="NAME")
    energy.add_argument(
        "--bits",
        default="32",
        help="8, 16, 32 (int8, fp16, fp32) or a precision name: fp32, fp16, int32, int8",
    )
    energy.add_argument("--input-size", default="224", help="224 or N,C,H,W")
    energy.add_argument("--table", help="energy table YAML (default: Horowitz 45 nm)")
    energy.add_argument("--json", action="store_true", help="print the report as JSON")
    energy.add_argument("--plot", help="write a PNG of per-layer energy here")
    energy.add_argument("--rows", type=int, default=None, help="print at most this many rows")
    energy.add_argument("--num-classes", type=int)
    energy.add_argument("--model-kwargs", help="extra timm.create_model kwargs as JSON")
    energy.set_defaults(func=_cmd_energy)

    tune = sub.add_parser(
        "tune",
        help="tune a model's adder kernels with MetaSchedule "
        "(needs the 'tune' extra); later runs reuse the records",
    )
    tune.add_argument("model", help="timm model name (converted with --ops) or a saved file")
    tune.add_argument("--ops", help="op mapping YAML file, or one op for every layer")
    tune.add_argument("--keep", nargs="+", default=[], metavar="NAME")
    tune.add_argument("--input-size", default="1,3,224,224", help="224 or N,C,H,W")
    tune.add_argument(
        "--train", action="store_true", help="also tune the backward kernels (a training step)"
    )
    tune.add_argument("--trials", type=int, default=64, help="MetaSchedule trials per kernel")
    tune.add_argument("--minutes", type=float, help="stop starting new kernels after this")
    tune.add_argument("--retune", action="store_true", help="tune kernels already tuned")
    tune.add_argument("--num-classes", type=int)
    tune.add_argument("--model-kwargs", help="extra timm.create_model kwargs as JSON")
    tune.set_defaults(func=_cmd_tune)

    demo = sub.add_parser(
        "demo",
        help="the main job on an embedded default: convert, run, save and reload a timm model",
    )
    demo.add_argument("--model", default="resnet18")
    demo.add_argument("--image-size", type=int, default=224)
    demo.add_argument("--out", default="runs/demo", help="output folder")
    demo.set_defaults(func=_cmd_demo)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.func(args))
    except (ValueError, TypeError, FileNotFoundError) as e:
        print(f"adderize: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
