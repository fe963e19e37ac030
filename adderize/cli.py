"""``adderize`` command line (also ``python -m adderize``)."""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from adderize._errors import AdderizeError

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
        raise AdderizeError(
            f"--ops {value!r} is neither a mapping file nor an op name (ops: {ops})"
        )
    return OpMapping.load(path)


def _model_kwargs(args: argparse.Namespace) -> dict[str, Any]:
    kwargs: dict[str, Any] = json.loads(args.model_kwargs) if args.model_kwargs else {}
    if not isinstance(kwargs, dict):
        raise AdderizeError(f"--model-kwargs must be a JSON object, got {args.model_kwargs!r}")
    if args.num_classes is not None:
        kwargs["num_classes"] = args.num_classes
    return kwargs


def _number(kind: type, low: float, inclusive: bool = True) -> Any:
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


POSITIVE_INT = _number(int, 1)
COUNT = _number(int, 0)
NON_NEGATIVE = _number(float, 0.0)
POSITIVE = _number(float, 0.0, inclusive=False)


def _cmd_convert(args: argparse.Namespace) -> int:
    import adderize

    out = _output_path(args.out, args.pretrained_file) if args.out else None
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
    if out is not None:
        path = adderize.save(model, out)
        print(f"saved {path} (reload with adderize.load({str(path)!r}))", file=sys.stderr)
    return 0


MAX_SIDE, MAX_BATCH, MAX_CHANNELS = 8192, 4096, 64


def _input_size(value: str) -> tuple[int, ...]:
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


def _output_path(out: str, *inputs: str | None) -> Path:
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


def _model_for(args: argparse.Namespace) -> Any:
    """The model of :func:`_add_model_source`'s options: a saved model file, or a timm model
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
        _mapping_arg(args.ops),
        keep=args.keep,
        pretrained_file=args.pretrained_file,
        **_model_kwargs(args),
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
        raise AdderizeError(
            f"tuning needs TVM, which is unavailable: {tvm_l1.unavailable_reason()}"
        )
    size = _input_size(args.input_size)
    if args.train and size[0] < 2:
        raise AdderizeError(
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

    _tune_kernels(
        run,
        args.trials,
        args.minutes,
        args.retune,
        what=(f"{'forward + backward' if args.train else 'forward'}, input {size}"),
    )
    return 0


def _tune_kernels(run: Any, trials: int, minutes: float | None, retune: bool, what: str) -> None:
    """Tune (MetaSchedule) every adder kernel ``run()`` uses that is not tuned yet."""
    from adderize.kernels import tvm_l1

    tasks = tvm_l1.workloads(run)
    todo = [t for t in tasks if retune or not tvm_l1.tuned(*t)]
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
        print(f"[{i}/{len(todo)}] {task[0]} {task[1:]} ...", end=" ", flush=True)
        tvm_l1.tune(*task, trials=trials)
        done += 1
        print(f"{time.perf_counter() - start:.0f} s", flush=True)
    print(f"tuned {done} kernel(s); later builds of them use the tuned schedules")


def _cmd_compile(args: argparse.Namespace) -> int:
    import torch

    from adderize.tvm_schedules import compile_model

    size = _input_size(args.input_size)
    _output_path(args.out, args.model)
    model = _model_for(args).eval()
    if args.tune_trials:
        x = torch.randn(*size)

        def run() -> None:
            with torch.no_grad():
                model(x)

        _tune_kernels(run, args.tune_trials, args.tune_minutes, False, f"forward, input {size}")
    if args.precision == "int8":
        from adderize.tvm_schedules.quant import quantize_model

        if args.target != "cpu":
            raise AdderizeError(f"--precision int8 compiles for --target cpu, not {args.target}")

        model, quant = quantize_model(model, _calibration_batches(args.calibrate, size))
        print(quant.summary())
    _, report = compile_model(model, size, target=args.target, out=args.out)
    print(report.summary())
    print(f"wrote {args.out} (run it with: adderize run {args.out})")
    if report.max_abs_error is not None and report.max_abs_error > args.tolerance:
        print(
            f"adderize: error: TVM output differs from PyTorch by {report.max_abs_error:.3g}"
            f" > --tolerance {args.tolerance}",
            file=sys.stderr,
        )
        return 1
    return 0


def _calibration_batches(path: str | None, size: tuple[int, ...]) -> list[Any]:
    """Inputs for int8 calibration: a ``.npy`` file of inputs [N, C, H, W] (loaded without
    pickle), in batches of 32; without one, 4 batches of 8 random normal inputs (fine for
    timing, not for accuracy)."""
    import numpy as np
    import torch

    if path is None:
        print("int8 calibration on random inputs: pass --calibrate INPUTS.npy for accuracy")
        return [torch.randn(8, *size[1:]) for _ in range(4)]
    try:
        data = np.load(path, allow_pickle=False)
    except (OSError, ValueError) as e:
        raise AdderizeError(f"--calibrate {path}: not a readable .npy array ({e})") from e
    if data.ndim != 4 or tuple(data.shape[1:]) != tuple(size[1:]) or data.shape[0] < 1:
        raise AdderizeError(
            f"--calibrate {path}: inputs of shape (N, {', '.join(map(str, size[1:]))}) "
            f"expected (the --input-size), got {data.shape}"
        )
    if not np.issubdtype(data.dtype, np.floating):
        raise AdderizeError(f"--calibrate {path}: float inputs expected, got {data.dtype}")
    x = torch.from_numpy(data.astype(np.float32))
    return list(x.split(32))


def _cmd_run(args: argparse.Namespace) -> int:
    import statistics

    from adderize.tvm_schedules import CompiledModel

    compiled = CompiledModel.load(args.library)
    if args.input_size is not None and _input_size(args.input_size) != compiled.input_size:
        raise AdderizeError(
            f"{args.library} was compiled for input {compiled.input_size}, not "
            f"{_input_size(args.input_size)}: recompile with adderize compile --input-size"
        )
    times = compiled.latency(repeat=args.repeat)
    print(
        f"{args.library}: input {compiled.input_size}, {args.repeat} runs: median "
        f"{statistics.median(times) * 1e3:.2f} ms, min {min(times) * 1e3:.2f} ms"
    )
    return 0


def _recipe_for(args: argparse.Namespace) -> Any:
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


def _cmd_finetune(args: argparse.Namespace) -> int:
    from adderize.train.finetune import finetune

    recipe = _recipe_for(args)
    result = finetune(recipe, resume=args.resume, progress=not args.no_progress)
    print(f"run directory: {result.run_dir}")
    return 0


def _cmd_search(args: argparse.Namespace) -> int:
    from adderize.search import SearchSettings, search
    from adderize.train.recipe import Recipe

    if args.ops is not None:
        raise AdderizeError(
            f"search takes --op-set {args.ops} (the ops each layer chooses from); --ops is an "
            "op mapping in convert, energy, tune and compile"
        )
    overrides = [f"model.name={args.model}", *args.overrides]
    if args.data != "digits":
        if not Path(args.data).is_dir():
            raise FileNotFoundError(f"--data {args.data}: not 'digits' nor a directory")
        overrides += ["data.dataset=folder", f"data.data_dir={args.data}"]
    if args.pretrained_file:
        overrides.append(f"model.pretrained_file={args.pretrained_file}")
    base = Recipe.load(args.recipe) if args.recipe else Recipe()
    recipe = base.override(overrides)
    settings = SearchSettings(
        budget=args.budget,
        strategy=args.strategy,
        trials=args.trials,
        trial_epochs=args.trial_epochs,
        ops=args.op_set.split(","),
        search_first_last=args.search_first_last,
        engine=args.engine,
        mode=args.mode,
        supernet_epochs=args.supernet_epochs,
        concurrency=args.concurrency,
        seed=args.seed,
        port=args.port,
        expose_portal=args.expose_portal,
    )
    search(recipe, settings, args.out)
    return 0


def _cmd_demo(args: argparse.Namespace) -> int:
    from adderize.demo import run_demo

    ok = run_demo(args.out, args.epochs, args.overrides, progress=not args.no_progress)
    return 0 if ok else 1


def _add_model_source(p: argparse.ArgumentParser, saved: bool = True) -> None:
    """The options that say which model a command works on, the same in every command."""
    p.add_argument(
        "model",
        help="timm model name, e.g. resnet50"
        + (" (converted with --ops), or a file saved by adderize convert --out" if saved else ""),
    )
    p.add_argument(
        "--ops", help="op mapping YAML file, or one op for every layer (adder, binary, shift, conv)"
    )
    p.add_argument(
        "--keep", nargs="+", default=[], metavar="NAME", help="module names to keep full precision"
    )
    p.add_argument("--pretrained-file", help="local weights (safetensors or state dict)")
    p.add_argument("--num-classes", type=COUNT, help="classifier size passed to timm")
    p.add_argument("--model-kwargs", help="extra timm.create_model kwargs as JSON")


def _add_input_size(p: argparse.ArgumentParser) -> None:
    p.add_argument("--input-size", default="224", help="224 (1,3,224,224) or N,C,H,W")


def build_parser() -> argparse.ArgumentParser:
    from adderize._version import __version__
    from adderize.search.run import ENGINES, MODES, STRATEGIES  # no NNI import: names only

    parser = argparse.ArgumentParser(
        prog="adderize", description="Turn timm/PyTorch CNNs into multiplication-free networks."
    )
    parser.add_argument("--version", action="version", version=f"adderize {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)

    conv = sub.add_parser("convert", help="convert a timm model and report every layer")
    _add_model_source(conv, saved=False)
    conv.add_argument(
        "--out",
        help="write the converted model here (safetensors format, whatever the suffix; no pickle)",
    )
    conv.add_argument("--report", action="store_true", help="print the per-layer table")
    conv.add_argument("--json", action="store_true", help="print the report as JSON")
    conv.add_argument(
        "--strict",
        action="store_true",
        help="fail if a layer the mapping asks to convert cannot be",
    )
    conv.set_defaults(func=_cmd_convert)

    energy = sub.add_parser("energy", help="op counts and energy per layer, vs all-conv")
    _add_model_source(energy)
    energy.add_argument(
        "--bits",
        default="32",
        help="8, 16, 32 (int8, fp16, fp32) or a precision name: fp32, fp16, int32, int8",
    )
    _add_input_size(energy)
    energy.add_argument("--table", help="energy table YAML (default: Horowitz 45 nm)")
    energy.add_argument("--json", action="store_true", help="print the report as JSON")
    energy.add_argument("--plot", help="write a PNG of per-layer energy here")
    energy.add_argument(
        "--rows", type=POSITIVE_INT, default=None, help="print at most this many rows"
    )
    energy.set_defaults(func=_cmd_energy)

    tune = sub.add_parser(
        "tune",
        help="tune a model's adder kernels with MetaSchedule "
        "(needs the 'tune' extra); later runs reuse the records",
    )
    _add_model_source(tune)
    _add_input_size(tune)
    tune.add_argument(
        "--train", action="store_true", help="also tune the backward kernels (a training step)"
    )
    tune.add_argument(
        "--trials", type=POSITIVE_INT, default=64, help="MetaSchedule trials per kernel"
    )
    tune.add_argument("--minutes", type=NON_NEGATIVE, help="stop starting new kernels after this")
    tune.add_argument("--retune", action="store_true", help="tune kernels already tuned")
    tune.set_defaults(func=_cmd_tune)

    fine = sub.add_parser(
        "finetune",
        help="train/load the conv model, convert it and fine-tune it with distillation",
        description="Recipe keys are overridden by trailing KEY=VALUE pairs, e.g. "
        "optim.lr=0.1 distill.kind=kernel. Multi-process: torchrun --nproc_per_node N "
        "-m adderize finetune ...",
    )
    fine.add_argument("--recipe", help="recipe YAML (default: the built-in digits recipe)")
    fine.add_argument("--data-dir", help="ImageFolder root (sets data.data_dir)")
    fine.add_argument("--pretrained-file", help="local conv weights (sets model.pretrained_file)")
    fine.add_argument("--out", help="run directory (sets out)")
    fine.add_argument("--epochs", type=POSITIVE_INT, help="student epochs (sets epochs)")
    fine.add_argument("--resume", action="store_true", help="continue the run in --out")
    fine.add_argument("--no-progress", action="store_true", help="no progress bars")
    fine.add_argument("overrides", nargs="*", metavar="KEY=VALUE")
    fine.set_defaults(func=_cmd_finetune)

    srch = sub.add_parser(
        "search",
        help="energy-constrained per-layer op search (conv/adder/binary/shift) with NNI",
        description="Trailing KEY=VALUE pairs override the recipe (as in finetune).",
    )
    srch.add_argument("model", help="timm model name")
    srch.add_argument(
        "--budget",
        type=POSITIVE,
        default=0.5,
        help="energy budget: a fraction of all-conv (<= 1) or pJ (> 1)",
    )
    srch.add_argument(
        "--mode",
        default="multi",
        choices=list(MODES),
        help="multi: fine-tune every candidate; oneshot: train one weight-sharing supernet "
        "(NNI RandomOneShot), then score sub-networks with its weights",
    )
    srch.add_argument(
        "--strategy",
        default="evolution",
        choices=list(STRATEGIES),
        help="multi: an NNI tuner; oneshot: evolution (NNI RegularizedEvolution) or random",
    )
    srch.add_argument(
        "--trials", type=POSITIVE_INT, default=20, help="candidates fine-tuned / scored"
    )
    srch.add_argument(
        "--supernet-epochs", type=POSITIVE_INT, default=6, help="oneshot: supernet training"
    )
    srch.add_argument(
        "--trial-epochs", type=POSITIVE_INT, default=3, help="fine-tune epochs per candidate"
    )
    srch.add_argument(
        "--op-set",
        default="conv,adder,binary,shift",
        help="comma-separated ops each layer chooses from",
    )
    srch.add_argument("--ops", help=argparse.SUPPRESS)  # an op mapping elsewhere: refused
    srch.add_argument(
        "--search-first-last",
        action="store_true",
        help="also search the first and last layers (kept by default)",
    )
    srch.add_argument("--data", default="digits", help="'digits' or an ImageFolder root")
    srch.add_argument("--recipe", help="recipe YAML for data/optimizer/distillation")
    srch.add_argument("--pretrained-file", help="local conv weights (else trained first)")
    srch.add_argument(
        "--engine",
        default="nni",
        choices=list(ENGINES),
        help="nni: a local NNI experiment; sequential: in this process",
    )
    srch.add_argument("--concurrency", type=POSITIVE_INT, default=1, help="NNI trials run at once")
    srch.add_argument("--port", type=COUNT, default=0, help="NNI portal port (0: a free one)")
    srch.add_argument(
        "--expose-portal",
        action="store_true",
        help="let the NNI portal listen on every interface (default: 127.0.0.1)",
    )
    srch.add_argument("--seed", type=int, default=0)
    srch.add_argument("--out", default="runs/search", help="output folder (must be new)")
    srch.add_argument("overrides", nargs="*", metavar="KEY=VALUE")
    srch.set_defaults(func=_cmd_search)

    comp = sub.add_parser(
        "compile",
        help="compile a converted model with TVM (Relax) into a shared library",
    )
    _add_model_source(comp)
    comp.add_argument(
        "--target",
        default="cpu",
        choices=["cpu", "cuda"],
        help="cpu: this machine (LLVM); cuda: sm_80 (compile only without a GPU)",
    )
    _add_input_size(comp)
    comp.add_argument("--out", default="model.so", help="shared library to write")
    comp.add_argument(
        "--tune-trials",
        type=COUNT,
        default=0,
        help="MetaSchedule trials per adder kernel before compiling (0: none)",
    )
    comp.add_argument("--tune-minutes", type=NON_NEGATIVE, help="time budget for tuning")
    comp.add_argument(
        "--precision",
        default="fp32",
        choices=["fp32", "int8"],
        help="int8: adder layers quantized (one uint8 grid per layer) on the byte-SAD kernel "
        "(binary layers use the packed kernel either way)",
    )
    comp.add_argument(
        "--calibrate",
        metavar="INPUTS.npy",
        help="int8 calibration inputs, float [N, C, H, W] (default: random inputs)",
    )
    comp.add_argument(
        "--tolerance",
        type=NON_NEGATIVE,
        default=1e-3,
        help="max |TVM - PyTorch| accepted by the CPU check (int8: vs the int8 model)",
    )
    comp.set_defaults(func=_cmd_compile)

    run = sub.add_parser("run", help="run a compiled library in the Relax VM and time it")
    run.add_argument("library", help="a .so written by adderize compile")
    run.add_argument("--input-size", help="check the compiled input size: 224 or N,C,H,W")
    run.add_argument("--repeat", type=POSITIVE_INT, default=20)
    run.set_defaults(func=_cmd_run)

    demo = sub.add_parser(
        "demo",
        help="the whole pipeline on offline digits data: train conv, convert, distil, "
        "report energy, save",
    )
    demo.add_argument("--out", default="runs/demo", help="output folder (reused when rerun)")
    demo.add_argument(
        "--epochs", type=POSITIVE_INT, help="student epochs (default: the digits recipe)"
    )
    demo.add_argument("--no-progress", action="store_true", help="no progress bars")
    demo.add_argument(
        "overrides", nargs="*", metavar="KEY=VALUE", help="digits recipe overrides (as finetune)"
    )
    demo.set_defaults(func=_cmd_demo)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; returns the exit status (2 for a usage error, as argparse)."""
    parser = build_parser()
    try:
        args, extra = parser.parse_known_args(argv)
        # KEY=VALUE overrides may follow options (argparse keeps positionals contiguous)
        if extra and hasattr(args, "overrides") and all("=" in e and e[0] != "-" for e in extra):
            args.overrides = [*args.overrides, *extra]
        elif extra:
            parser.error(f"unrecognized arguments: {' '.join(extra)}")
    except SystemExit as exit_:  # argparse's usage errors and --help
        return exit_.code if isinstance(exit_.code, int) else 2
    from adderize._log import log_to_stdout

    log_to_stdout()
    try:
        return int(args.func(args))
    except (AdderizeError, FileNotFoundError) as e:
        print(f"adderize: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
