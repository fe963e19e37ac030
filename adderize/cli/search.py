"""`adderize search`: energy-constrained per-layer op search with NNI."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from adderize._errors import AdderizeError
from adderize.cli._common import (
    COUNT,
    POSITIVE,
    POSITIVE_INT,
)

__all__ = ["add_parser", "run"]


def add_parser(sub: Any) -> None:
    from adderize.search.settings import ENGINES, MODES, STRATEGIES  # names only, no NNI

    parser = sub.add_parser(
        "search",
        help="energy-constrained per-layer op search (conv/adder/binary/shift) with NNI",
        description="Trailing KEY=VALUE pairs override the recipe (as in finetune).",
    )
    parser.add_argument("model", help="timm model name")
    parser.add_argument(
        "--budget",
        type=POSITIVE,
        default=0.5,
        help="energy budget: a fraction of all-conv (<= 1) or pJ (> 1)",
    )
    parser.add_argument(
        "--mode",
        default="multi",
        choices=list(MODES),
        help="multi: fine-tune every candidate; oneshot: train one weight-sharing supernet "
        "(NNI RandomOneShot), then score sub-networks with its weights",
    )
    parser.add_argument(
        "--strategy",
        default="evolution",
        choices=list(STRATEGIES),
        help="multi: an NNI tuner; oneshot: evolution (NNI RegularizedEvolution) or random",
    )
    parser.add_argument(
        "--trials", type=POSITIVE_INT, default=20, help="candidates fine-tuned / scored"
    )
    parser.add_argument(
        "--supernet-epochs", type=POSITIVE_INT, default=6, help="oneshot: supernet training"
    )
    parser.add_argument(
        "--energy-levels",
        type=POSITIVE_INT,
        default=3,
        help="oneshot: sub-networks drawn under this many energy caps, cheapest to budget",
    )
    parser.add_argument(
        "--trial-epochs", type=POSITIVE_INT, default=3, help="fine-tune epochs per candidate"
    )
    parser.add_argument(
        "--op-set",
        default="conv,adder,binary,shift",
        help="comma-separated ops each layer chooses from",
    )
    parser.add_argument("--ops", help=argparse.SUPPRESS)  # an op mapping elsewhere: refused
    parser.add_argument(
        "--search-first-last",
        action="store_true",
        help="also search the first and last layers (kept by default)",
    )
    parser.add_argument("--data", default="digits", help="'digits' or an ImageFolder root")
    parser.add_argument("--recipe", help="recipe YAML for data/optimizer/distillation")
    parser.add_argument("--pretrained-file", help="local conv weights (else trained first)")
    parser.add_argument(
        "--engine",
        default="nni",
        choices=list(ENGINES),
        help="nni: a local NNI experiment; sequential: in this process",
    )
    parser.add_argument(
        "--concurrency", type=POSITIVE_INT, default=1, help="NNI trials run at once"
    )
    parser.add_argument("--port", type=COUNT, default=0, help="NNI portal port (0: a free one)")
    parser.add_argument(
        "--expose-portal",
        action="store_true",
        help="let the NNI portal listen on every interface (default: 127.0.0.1)",
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default="runs/search", help="output folder (must be new)")
    parser.add_argument("overrides", nargs="*", metavar="KEY=VALUE")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
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
        energy_levels=args.energy_levels,
        concurrency=args.concurrency,
        seed=args.seed,
        port=args.port,
        expose_portal=args.expose_portal,
    )
    search(recipe, settings, args.out)
    return 0
