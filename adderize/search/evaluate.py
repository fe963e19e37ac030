"""One candidate of a multi-trial search: build the assignment's model from the teacher,
fine-tune it and score it (one row of ``trials.jsonl``)."""

from __future__ import annotations

import copy
import json
import shutil
import time
from pathlib import Path
from typing import Any

from adderize.search.settings import SearchSettings
from adderize.search.space import OpSpace
from adderize.train.recipe import Recipe

__all__ = ["Evaluator", "evaluate_assignment"]


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
