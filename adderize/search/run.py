"""Energy-constrained operator search: an NNI experiment (or a sequential in-process loop).

Layout of ``out``: ``config.yaml`` (the recipe trials fine-tune with), ``search.json`` (the
search settings trials read), ``teacher.safetensors``, ``trials.jsonl`` (one line per
sample: assignment, energy, accuracy, whether it was trained), ``trials.csv``,
``pareto.png``, ``best_ops.yaml`` (an OpMapping: ``adderize(model, OpMapping.load(...))``
rebuilds the chosen model) and, for NNI runs, ``nni-experiments/``.
"""

from __future__ import annotations

import copy
import csv
import json
import logging
import os
import shutil
import socket
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from adderize._errors import AdderizeError
from adderize.search.space import DEFAULT_OPS, OpSpace
from adderize.train.recipe import Recipe

__all__ = [
    "MODES",
    "STRATEGIES",
    "SearchSettings",
    "build_experiment",
    "evaluate_assignment",
    "pareto_front",
    "search",
]

log = logging.getLogger(__name__)

# our name -> NNI tuner (HPO) name
STRATEGIES = {"random": "Random", "evolution": "Evolution", "tpe": "TPE", "grid": "GridSearch"}
ENGINES = ("nni", "sequential")
#: multi: every candidate fine-tuned (NNI HPO tuners or in process); oneshot: a
#: weight-sharing supernet trained once, sub-networks scored with its weights
MODES = ("multi", "oneshot")
_BIND_LOCALHOST = Path(__file__).with_name("bind_localhost.js")


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


# ------------------------------------------------------------------------ one candidate
class Evaluator:
    """Fine-tunes candidates from the teacher's weights and scores them (one per process).

    With ``space`` given (an NNI trial: read from ``space.json``), the data and the teacher
    are loaded only when a candidate within budget needs training."""

    def __init__(
        self, out: Path, recipe: Recipe, settings: SearchSettings, space: OpSpace | None = None
    ) -> None:
        self.out, self.recipe, self.settings = out, recipe, settings
        self._parts: tuple[Any, Any] | None = None
        if space is None:
            size = (1, 3, recipe.data.input_size, recipe.data.input_size)
            space = OpSpace.from_model(
                self.teacher, size, settings.budget, settings.ops, settings.search_first_last
            )
        self.space = space

    def _load(self) -> tuple[Any, Any]:
        if self._parts is None:
            from adderize.train.data import build_loaders
            from adderize.train.distributed import Context
            from adderize.train.finetune import prepare_teacher

            loaders = build_loaders(self.recipe.data)
            teacher = prepare_teacher(self.recipe, loaders, self.out, Context(), [], resume=True)
            self._parts = (loaders, teacher)
        return self._parts

    @property
    def loaders(self) -> Any:
        return self._load()[0]

    @property
    def teacher(self) -> Any:
        return self._load()[1]

    def __call__(self, assignment: dict[str, str], trial: str) -> dict[str, Any]:
        return evaluate_assignment(self, assignment, trial)


def evaluate_assignment(ev: Evaluator, assignment: dict[str, str], trial: str) -> dict[str, Any]:
    """Energy from the cost table; over budget -> never trained; else a short fine-tune."""
    import torch

    from adderize.train.adaptive_lr import adder_weights
    from adderize.train.distributed import Context
    from adderize.train.loop import Phase, evaluate, run_phase

    energy = ev.space.energy(assignment)
    row: dict[str, Any] = {
        "trial": trial,
        "assignment": dict(assignment),
        "energy_pj": energy,
        "energy_ratio": energy / ev.space.conv_pj,
        "feasible": energy <= ev.space.budget_pj,
        "trained": False,
        "accuracy": None,
    }
    if row["feasible"]:
        tic = time.perf_counter()
        torch.manual_seed(ev.settings.seed)
        student = ev.space.build(copy.deepcopy(ev.teacher), assignment)
        work = ev.out / "trials" / trial
        work.mkdir(parents=True, exist_ok=True)
        recipe = ev.recipe
        phase = Phase(
            "student",
            ev.settings.trial_epochs,
            recipe.optim.lr,
            scheme=bool(adder_weights(student)),
        )
        teacher = ev.teacher if recipe.distill.kind != "none" else None
        student = run_phase(
            phase,
            student,
            recipe,
            ev.loaders,
            work,
            Context(),
            teacher=teacher,
            history=[],
            progress=False,
        )
        row["accuracy"] = evaluate(student, ev.loaders[1], Context())
        row["trained"] = True
        row["seconds"] = time.perf_counter() - tic
        shutil.rmtree(work, ignore_errors=True)  # checkpoints of a finished trial
    with open(ev.out / "trials.jsonl", "a") as f:  # one short O_APPEND write per trial
        f.write(json.dumps(row) + "\n")
    return row


# ------------------------------------------------------------------- sequential engine
def _sequential(ev: Evaluator, settings: SearchSettings) -> None:
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


# --------------------------------------------------------------------------- NNI engine
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


def _nni(out: Path, space: OpSpace, settings: SearchSettings) -> None:
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


# --------------------------------------------------------------------------- results
def pareto_front(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Trained rows no other trained row beats on both energy (lower) and accuracy."""
    done = sorted((r for r in rows if r["trained"]), key=lambda r: (r["energy_pj"], -r["accuracy"]))
    front, best = [], -1.0
    for r in done:
        if r["accuracy"] > best:
            front.append(r)
            best = r["accuracy"]
    return front


def _plot(
    rows: list[dict[str, Any]], front: list[dict[str, Any]], space: OpSpace, path: Path
) -> None:
    from matplotlib.figure import Figure  # no pyplot: no global backend or figure state

    fig = Figure(figsize=(6.5, 4.5))
    ax = fig.subplots()
    done = [r for r in rows if r["trained"]]
    ax.scatter(
        [r["energy_ratio"] for r in done],
        [r["accuracy"] for r in done],
        c="tab:gray",
        alpha=0.6,
        label="trained candidates",
    )
    ax.plot(
        [r["energy_ratio"] for r in front],
        [r["accuracy"] for r in front],
        "o-",
        c="tab:red",
        label="Pareto front",
    )
    ax.axvline(space.budget_pj / space.conv_pj, ls="--", c="k", alpha=0.5, label="budget")
    ax.set(xlabel="energy / all-conv energy", ylabel="validation top-1", title="energy vs accuracy")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def search(
    recipe: Recipe, settings: SearchSettings, out: str | Path | None = None
) -> dict[str, Any]:
    """Run the search and write the outputs listed in the module docstring."""
    out = Path(out or recipe.out)
    if (out / "trials.jsonl").exists():
        raise AdderizeError(f"{out} already holds a search (trials.jsonl): choose another --out")
    out.mkdir(parents=True, exist_ok=True)
    recipe = recipe.override([f"out={out}"])
    recipe.save(out / "config.yaml")
    (out / "search.json").write_text(json.dumps(asdict(settings), indent=1))
    ev = Evaluator(out, recipe, settings)
    space = ev.space
    (out / "space.json").write_text(space.to_json())
    frac = space.feasible_fraction()
    log.info(
        f"search space: {len(space.layers)} layers x {len(space.ops)} ops "
        f"({space.size():.3g} models; fixed: {', '.join(space.fixed) or 'none'}); budget "
        f"{space.budget_pj / 1e6:.3f} uJ = {space.budget_pj / space.conv_pj:.3f} of all-conv; "
        f"feasible fraction {frac:.3f} (estimate)"
    )
    if settings.mode == "oneshot":
        from adderize.search.oneshot import run_oneshot

        run_oneshot(ev, settings, out)
    elif settings.engine == "sequential":
        _sequential(ev, settings)
    else:
        del ev  # trials run in their own processes
        _nni(out, space, settings)
    rows = [json.loads(line) for line in (out / "trials.jsonl").read_text().splitlines()]
    rejected = out / "rejected.jsonl"
    if rejected.is_file():  # NNI: over-budget samples the tuner turned away
        lines = rejected.read_text().splitlines()
        log.info("%d over-budget samples rejected before training", len(lines))
    return _finish(out, rows, space)


def _finish(out: Path, rows: list[dict[str, Any]], space: OpSpace) -> dict[str, Any]:
    with open(out / "trials.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(
            ["trial", "energy_pj", "energy_ratio", "feasible", "trained", "accuracy", *space.layers]
        )
        for r in rows:
            w.writerow(
                [
                    r["trial"],
                    r["energy_pj"],
                    r["energy_ratio"],
                    r["feasible"],
                    r["trained"],
                    r["accuracy"],
                    *(r["assignment"][n] for n in space.layers),
                ]
            )
    front = pareto_front(rows)
    feasible = [r for r in rows if r["trained"]]
    if not feasible:
        raise AdderizeError("no candidate was within budget: raise --budget")
    best = max(feasible, key=lambda r: (r["accuracy"], -r["energy_pj"]))
    space.mapping(best["assignment"]).save(out / "best_ops.yaml")
    _plot(rows, front, space, out / "pareto.png")
    summary = {
        "trials": len(rows),
        "trained": len(feasible),
        "over_budget_not_trained": sum(not r["feasible"] for r in rows),
        "budget_ratio": space.budget_pj / space.conv_pj,
        "best": best,
        "front": [
            {"energy_ratio": r["energy_ratio"], "accuracy": r["accuracy"], "trial": r["trial"]}
            for r in front
        ],
    }
    (out / "summary.json").write_text(json.dumps(summary, indent=1))
    lines = [f"\n{len(rows)} trials, {len(feasible)} trained; Pareto front (energy/all-conv, acc):"]
    for r in front:
        ops = {op: sum(v == op for v in r["assignment"].values()) for op in space.ops}
        lines.append(f"  {r['energy_ratio']:.3f}  {r['accuracy']:.4f}  {r['trial']}  {ops}")
    log.info("%s", "\n".join(lines))
    log.info(
        f"chosen (best accuracy within budget): {best['trial']} energy "
        f"{best['energy_ratio']:.3f}x acc {best['accuracy']:.4f} -> {out / 'best_ops.yaml'}"
    )
    return summary
