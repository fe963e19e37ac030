"""What the commands share: argument types and groups, the model and recipe a command
works on, input sizes and output paths."""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

from adderize._errors import AdderizeError

__all__ = [
    "COUNT",
    "MAX_BATCH",
    "MAX_CHANNELS",
    "MAX_SIDE",
    "NON_NEGATIVE",
    "POSITIVE",
    "POSITIVE_INT",
    "add_input_size",
    "add_model_source",
    "input_size",
    "mapping_arg",
    "model_for",
    "model_kwargs",
    "number",
    "output_path",
    "recipe_for",
    "tune_kernels",
]


def mapping_arg(value: str | None) -> Any:
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
        raise AdderizeError(
            f"--ops {value!r} is neither a mapping file nor an op name (ops: {ops})"
        )
    return OpMapping.load(path)


def model_kwargs(args: argparse.Namespace) -> dict[str, Any]:
    kwargs: dict[str, Any] = json.loads(args.model_kwargs) if args.model_kwargs else {}
    if not isinstance(kwargs, dict):
        raise AdderizeError(f"--model-kwargs must be a JSON object, got {args.model_kwargs!r}")
    if args.num_classes is not None:
        kwargs["num_classes"] = args.num_classes
    return kwargs


def number(kind: type, low: float, inclusive: bool = True) -> Any:
    """An argparse ``type``: a ``kind`` number >= ``low`` (> ``low`` if not inclusive),
    so a bad count or size is refused before any work starts."""

    def parse(text: str) -> Any:
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
        if value < low or (not inclusive and value == low):
            raise argparse.ArgumentTypeError(
                f"must be {'>=' if inclusive else '>'} {low:g}, got {text}"
            )
        return value

    parse.__name__ = kind.__name__  # argparse names the type in its messages
    return parse


POSITIVE_INT = number(int, 1)


COUNT = number(int, 0)


NON_NEGATIVE = number(float, 0.0)


POSITIVE = number(float, 0.0, inclusive=False)


MAX_SIDE, MAX_BATCH, MAX_CHANNELS = 8192, 4096, 64


def input_size(value: str) -> tuple[int, ...]:
    """``224`` -> (1, 3, 224, 224); ``1,3,160,160`` -> as given; anything else is refused."""
    usage = f"--input-size takes 224 or N,C,H,W (e.g. 1,3,224,224), got {value!r}"
    try:
        parts = tuple(int(v) for v in value.split(","))
    except ValueError:
        raise AdderizeError(usage) from None
    if len(parts) not in (1, 4):
        raise AdderizeError(f"{usage}: {len(parts)} number(s), not 1 or 4")
    size = (1, 3, parts[0], parts[0]) if len(parts) == 1 else parts
    n, c, h, w = size
    if min(size) < 1 or n > MAX_BATCH or c > MAX_CHANNELS or max(h, w) > MAX_SIDE:
        raise AdderizeError(
            f"{usage}: every entry must be positive, N <= {MAX_BATCH}, C <= {MAX_CHANNELS}, "
            f"H, W <= {MAX_SIDE}"
        )
    return size


def output_path(out: str, *inputs: str | None) -> Path:
    """``out`` checked before any work: not one of the inputs; says when it replaces a file."""
    path = Path(out)
    for inp in inputs:
        if inp and Path(inp).exists() and path.exists() and path.samefile(inp):
            raise AdderizeError(f"--out {out} is the input file {inp}: choose another output")
    if path.is_dir():
        raise AdderizeError(f"--out {out} is a directory; give a file name")
    if path.exists():
        print(f"adderize: replacing the existing {out}", file=sys.stderr)
    return path


def model_for(args: argparse.Namespace) -> Any:
    """The model of :func:`add_model_source`'s options: a saved model file, or a timm model
    name (with ``--pretrained-file``) converted with ``--ops`` / ``--keep``."""
    import adderize

    path = Path(args.model)
    if path.suffix == ".safetensors" or path.is_file():
        given = [o for o, v in (("--ops", args.ops), ("--keep", args.keep),
                 ("--pretrained-file", args.pretrained_file)) if v]  # fmt: skip
        if given:
            raise AdderizeError(f"{'/'.join(given)} apply to a timm model name, not a saved model")
        return adderize.load(path)
    return adderize.create_model(
        args.model,
        mapping_arg(args.ops),
        keep=args.keep,
        pretrained_file=args.pretrained_file,
        **model_kwargs(args),
    )


def add_model_source(p: argparse.ArgumentParser, saved: bool = True) -> None:
    """The options that say which model a command works on, the same in every command."""
    p.add_argument(
        "model",
        help="timm model name, e.g. resnet50"
        + (" (converted with --ops), or a file saved by adderize convert --out" if saved else ""),
    )
    p.add_argument(
        "--ops",
        help="op mapping YAML file, one op for every layer (adder, binary, shift, conv), or "
        "auto (convert --calibrate: each layer's op from measured sensitivity)",
    )
    p.add_argument(
        "--keep", nargs="+", default=[], metavar="NAME", help="module names to keep full precision"
    )
    p.add_argument("--pretrained-file", help="local weights (safetensors or state dict)")
    p.add_argument("--num-classes", type=COUNT, help="classifier size passed to timm")
    p.add_argument("--model-kwargs", help="extra timm.create_model kwargs as JSON")


def add_input_size(p: argparse.ArgumentParser) -> None:
    p.add_argument("--input-size", default="224", help="224 (1,3,224,224) or N,C,H,W")


def recipe_for(args: argparse.Namespace) -> Any:
    """The recipe file (or the built-in digits recipe) with the command-line overrides."""
    from adderize.train.recipe import Recipe

    overrides = list(args.overrides)
    for flag, key in (
        ("data_dir", "data.data_dir"),
        ("pretrained_file", "model.pretrained_file"),
        ("out", "out"),
        ("epochs", "epochs"),
    ):
        value = getattr(args, flag, None)
        if value is not None:
            overrides.append(f"{key}={value}")
    if args.data_dir is not None and not Path(args.data_dir).is_dir():
        raise FileNotFoundError(f"--data-dir {args.data_dir} is not a directory")
    if args.recipe is None:
        return Recipe().override(overrides)
    return Recipe.load(args.recipe, overrides)


def tune_kernels(run: Any, trials: int, minutes: float | None, retune: bool, what: str) -> None:
    """Tune (MetaSchedule) every adder kernel ``run()`` uses that is not tuned yet."""
    from adderize.kernels import tvm_l1

    tasks = tvm_l1.workloads(run)
    todo = [t for t in tasks if retune or not tvm_l1.tuned(t)]
    print(
        f"{len(tasks)} adder kernels ({what}); {len(tasks) - len(todo)} already tuned; "
        f"database {tvm_l1.tuning_dir()}"
    )
    deadline = None if minutes is None else time.monotonic() + 60 * minutes
    done = 0
    for i, task in enumerate(todo, 1):
        if deadline is not None and time.monotonic() > deadline:
            print(f"time budget of {minutes} min reached: run again to continue")
            break
        start = time.perf_counter()
        print(f"[{i}/{len(todo)}] {task} ...", end=" ", flush=True)
        tvm_l1.tune(task, trials=trials)
        done += 1
        print(f"{time.perf_counter() - start:.0f} s", flush=True)
    print(f"tuned {done} kernel(s); later builds of them use the tuned schedules")
