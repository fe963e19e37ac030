"""Multi-trial engines: a local NNI experiment (its configuration public, for other
training services), or a sequential in-process loop."""

from __future__ import annotations

import logging
import os
import socket
import sys
from pathlib import Path
from typing import Any

import numpy as np

from adderize._errors import AdderizeError
from adderize.search.evaluate import Evaluator
from adderize.search.settings import STRATEGIES, SearchSettings
from adderize.search.space import OpSpace

__all__ = ["build_experiment", "run_nni", "sequential"]

log = logging.getLogger(__name__)


_BIND_LOCALHOST = Path(__file__).with_name("bind_localhost.js")


def sequential(ev: Evaluator, settings: SearchSettings) -> None:
    """Random sampling or regularized evolution (Real et al. 2019) in this process.
    Infeasible samples are redrawn, never trained (at most 1000 draws per trial)."""
    from tqdm.auto import tqdm

    space, rng = ev.space, np.random.default_rng(settings.seed)
    population: list[tuple[dict[str, str], float]] = []

    def propose() -> dict[str, str]:
        if settings.strategy != "evolution" or len(population) < settings.population:
            return space.random(rng)
        picks = rng.choice(len(population), size=min(3, len(population)), replace=False)
        parent = max((population[i] for i in picks), key=lambda p: p[1])[0]
        child = dict(parent)
        layer = space.layers[int(rng.integers(len(space.layers)))]
        child[layer] = space.ops[int(rng.integers(len(space.ops)))]
        return child

    rejected = 0
    for i in tqdm(range(settings.trials), desc="search", dynamic_ncols=True):
        for _ in range(1000):
            candidate = propose()
            if space.feasible(candidate):
                break
            rejected += 1
        else:
            raise AdderizeError("no feasible sample in 1000 draws: raise the budget")
        row = ev(candidate, f"seq-{i:04d}")
        population.append((candidate, row["accuracy"]))
        if len(population) > settings.population:
            population.pop(0)  # regularized evolution: the oldest dies
    log.info("%d over-budget samples rejected before training", rejected)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def build_experiment(out: Path, space: OpSpace, settings: SearchSettings) -> Any:
    """The NNI experiment of a multi-trial search in ``out`` (not started): trial command
    ``python -m adderize.search.trial OUT``, the op space as an HPO search space, the
    budget-checking tuner, trial counts and the experiment folder under ``out``. It runs
    trials on this machine; for other machines set ``experiment.config.training_service``
    to NNI's ``RemoteConfig`` / ``KubeflowConfig`` / ``FrameworkControllerConfig`` (every
    trial needs ``out``, with the teacher, ``space.json`` and ``config.yaml``, on a shared
    path), then ``experiment.run(port)``."""
    from nni.experiment import CustomAlgorithmConfig, Experiment

    exp = Experiment("local")
    c = exp.config
    c.experiment_name = f"adderize-search-{out.name}"
    c.trial_command = f"{sys.executable} -m adderize.search.trial {out.resolve()}"
    c.trial_code_directory = str(out.resolve())
    c.search_space = space.hpo_search_space()
    c.tuner = CustomAlgorithmConfig(
        class_name="adderize.search.tuner.BudgetTuner",
        code_directory=str(out.resolve()),
        class_args={
            "base": STRATEGIES[settings.strategy],
            "space_file": str((out / "space.json").resolve()),
            "seed": settings.seed,
            "population": settings.population,
        },
    )
    c.max_trial_number = settings.trials
    c.trial_concurrency = settings.concurrency
    c.experiment_working_directory = str((out / "nni-experiments").resolve())
    c.training_service.use_active_gpu = False
    return exp


def run_nni(out: Path, space: OpSpace, settings: SearchSettings) -> None:
    exp = build_experiment(out, space, settings)
    c = exp.config
    port = settings.port or _free_port()
    saved = os.environ.get("NODE_OPTIONS")
    if settings.expose_portal:
        log.warning("the NNI portal on port %d listens on every network interface", port)
    else:  # NNI 3.0 has no host option: bind its node.js servers to 127.0.0.1 ourselves
        os.environ["NODE_OPTIONS"] = f"{saved or ''} --require {_BIND_LOCALHOST}".strip()
    log.info(
        "NNI experiment: portal http://127.0.0.1:%d ; logs in %s", port,
        c.experiment_working_directory,
    )  # fmt: skip
    try:
        exp.run(port, wait_completion=True)
    finally:
        exp.stop()
        if saved is None:  # the caller's environment as it was
            os.environ.pop("NODE_OPTIONS", None)
        else:
            os.environ["NODE_OPTIONS"] = saved
