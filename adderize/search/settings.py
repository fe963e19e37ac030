"""What a search runs with: strategy, engine, mode, trial counts, budget, seed."""

from __future__ import annotations

from dataclasses import dataclass, field

from adderize._errors import AdderizeError
from adderize.search.space import DEFAULT_OPS

__all__ = ["ENGINES", "MODES", "STRATEGIES", "SearchSettings"]


# our name -> NNI tuner (HPO) name
STRATEGIES = {"random": "Random", "evolution": "Evolution", "tpe": "TPE", "grid": "GridSearch"}


ENGINES = ("nni", "sequential")


#: multi: every candidate fine-tuned (NNI HPO tuners or in process); oneshot: a
#: weight-sharing supernet trained once, sub-networks scored with its weights
MODES = ("multi", "oneshot")


@dataclass
class SearchSettings:
    budget: float = 0.5
    strategy: str = "evolution"
    trials: int = 20
    trial_epochs: int = 3
    ops: list[str] = field(default_factory=lambda: list(DEFAULT_OPS))
    search_first_last: bool = False
    engine: str = "nni"
    concurrency: int = 1
    population: int = 8
    seed: int = 0
    port: int = 0  # 0: a free port
    expose_portal: bool = False
    mode: str = "multi"
    supernet_epochs: int = 6
    supernet_lr: float = 1e-3  # Adam, as NNI's Classification evaluator trains
    calibration_batches: int = 4
    #: oneshot: Adam steps (cycling over the calibration batches) and learning rate of the
    #: adder candidates' refit to their conv layers' outputs: fewer, larger steps than the
    #: conversion's refit (100 at 0.04), as the supernet's build counts in the search time
    refit_steps: int = 30
    refit_lr: float = 0.2
    #: oneshot: the sub-networks are drawn in this many searches, each under an energy cap
    #: from the cheapest model up to the budget (adderize.search.oneshot_run.energy_levels)
    energy_levels: int = 3

    def __post_init__(self) -> None:
        if self.strategy not in STRATEGIES:
            raise AdderizeError(
                f"strategy must be one of {', '.join(STRATEGIES)}, got {self.strategy!r}"
            )
        if self.mode not in MODES:
            raise AdderizeError(f"mode must be one of {', '.join(MODES)}, got {self.mode!r}")
        if self.mode == "oneshot" and self.strategy not in ("evolution", "random"):
            raise AdderizeError(
                f"oneshot mode samples sub-networks with evolution or random, not {self.strategy!r}"
            )
        if self.engine not in ENGINES:
            raise AdderizeError(f"engine must be one of {', '.join(ENGINES)}, got {self.engine!r}")
        if self.trials < 1 or self.trial_epochs < 1 or self.concurrency < 1:
            raise AdderizeError("trials, trial_epochs and concurrency must be >= 1")
        if self.energy_levels < 1:
            raise AdderizeError(f"energy_levels must be >= 1, got {self.energy_levels}")
