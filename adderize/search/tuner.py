"""An NNI tuner that keeps over-budget samples from ever becoming trials.

``BudgetTuner`` wraps one of NNI's built-in HPO tuners. Each sample the inner tuner
proposes is priced from the cost table (a sum); an over-budget sample is fed straight back
to the inner tuner with reward 0, so it learns to avoid the region, and logged to
``rejected.jsonl``; the first sample within budget becomes the trial. NNI loads this class
in its dispatcher process (``CustomAlgorithmConfig``).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from nni.tuner import Tuner

from adderize._errors import AdderizeError
from adderize.search.space import OpSpace

__all__ = ["BudgetTuner"]


def _inner(name: str, seed: int, population: int) -> Tuner:
    if name == "Random":
        from nni.algorithms.hpo.random_tuner import RandomTuner

        return RandomTuner(seed=seed)
    if name == "Evolution":
        from nni.algorithms.hpo.evolution_tuner import EvolutionTuner

        return EvolutionTuner(optimize_mode="maximize", population_size=population)
    if name == "TPE":
        from nni.algorithms.hpo.tpe_tuner import TpeTuner

        return TpeTuner(optimize_mode="maximize", seed=seed)
    if name == "GridSearch":
        from nni.algorithms.hpo.gridsearch_tuner import GridSearchTuner

        return GridSearchTuner()
    raise AdderizeError(f"unknown inner tuner {name!r}")


class BudgetTuner(Tuner):
    def __init__(
        self,
        base: str,
        space_file: str,
        seed: int = 0,
        population: int = 8,
        max_draws: int = 1000,
    ) -> None:
        self.inner = _inner(base, seed, population)
        self.space = OpSpace.from_json(Path(space_file).read_text())
        self.log = Path(space_file).with_name("rejected.jsonl")
        self.max_draws = max_draws
        self._next_fake = -1  # inner-tuner ids of rejected samples
        self._ids: dict[int, int] = {}  # NNI parameter id -> inner id

    def update_search_space(self, search_space: dict[str, Any]) -> None:
        self.inner.update_search_space(search_space)

    def generate_parameters(self, parameter_id: int, **kwargs: Any) -> dict[str, Any]:
        for _ in range(self.max_draws):
            inner_id = self._next_fake
            self._next_fake -= 1
            params = self.inner.generate_parameters(inner_id, **kwargs)
            assignment = {n: params[n] for n in self.space.layers}
            energy = self.space.energy(assignment)
            if energy <= self.space.budget_pj:
                self._ids[parameter_id] = inner_id
                return params
            self.inner.receive_trial_result(inner_id, params, 0.0)
            with open(self.log, "a") as f:
                f.write(json.dumps({"assignment": assignment, "energy_pj": energy}) + "\n")
        raise AdderizeError(f"no sample within budget in {self.max_draws} draws: raise the budget")

    def receive_trial_result(
        self, parameter_id: int, parameters: dict[str, Any], value: Any, **kwargs: Any
    ) -> None:
        inner_id = self._ids.pop(parameter_id, parameter_id)
        self.inner.receive_trial_result(inner_id, parameters, value, **kwargs)

    def trial_end(self, parameter_id: int, success: bool, **kwargs: Any) -> None:
        inner_id = self._ids.get(parameter_id, parameter_id)
        if not success:
            self._ids.pop(parameter_id, None)
        self.inner.trial_end(inner_id, success, **kwargs)
