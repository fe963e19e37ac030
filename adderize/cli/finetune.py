"""`adderize finetune`: convert a trained conv model and fine-tune it by a recipe."""

from __future__ import annotations

import argparse
from typing import Any

from adderize._errors import AdderizeError
from adderize.cli._common import (
    POSITIVE,
    POSITIVE_INT,
    recipe_for,
)

__all__ = ["add_parser", "run"]


def add_parser(sub: Any) -> None:
    parser = sub.add_parser(
        "finetune",
        help="train/load the conv model, convert it and fine-tune it with distillation",
        description="Recipe keys are overridden by trailing KEY=VALUE pairs, e.g. "
        "optim.lr=0.1 distill.kind=kernel. Multi-process: torchrun --nproc_per_node N "
        "-m adderize finetune ...",
    )
    parser.add_argument("--recipe", help="recipe YAML (default: the built-in digits recipe)")
    parser.add_argument("--data-dir", help="ImageFolder root (sets data.data_dir)")
    parser.add_argument("--pretrained-file", help="local conv weights (sets model.pretrained_file)")
    parser.add_argument("--out", help="run directory (sets out)")
    parser.add_argument("--epochs", type=POSITIVE_INT, help="student epochs (sets epochs)")
    parser.add_argument(
        "--ops",
        choices=["auto"],
        help="auto: each layer's op from its measured sensitivity under --budget (sets "
        "auto_budget; per-layer mappings go in the recipe's ops)",
    )
    parser.add_argument(
        "--budget",
        type=POSITIVE,
        help="with --ops auto: energy budget, a fraction of the all-conv model's (default 0.5)",
    )
    parser.add_argument("--resume", action="store_true", help="continue the run in --out")
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")
    parser.add_argument("overrides", nargs="*", metavar="KEY=VALUE")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from adderize.train.finetune import finetune

    if args.budget is not None and args.ops != "auto":
        raise AdderizeError("--budget goes with --ops auto")
    if args.ops == "auto":
        args.overrides = [*args.overrides, f"auto_budget={args.budget or 0.5}"]
    recipe = recipe_for(args)
    result = finetune(recipe, resume=args.resume, progress=not args.no_progress)
    print(f"run directory: {result.run_dir}")
    return 0
