"""An NNI trial: ``python -m adderize.search.trial OUT`` (started by the NNI experiment)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

from adderize._config import from_data
from adderize.search.evaluate import Evaluator
from adderize.search.settings import SearchSettings
from adderize.search.space import OpSpace
from adderize.train.recipe import Recipe

__all__ = ["main"]


def main(out: str) -> None:
    import nni

    from adderize import log_to_stdout

    log_to_stdout()  # into the trial's NNI log
    root = Path(out)
    path = root / "search.json"
    settings = from_data(SearchSettings, json.loads(path.read_text()), str(path))
    space = OpSpace.from_json((root / "space.json").read_text())
    evaluator = Evaluator(root, Recipe.load(root / "config.yaml"), settings, space)
    assignment = nni.get_next_parameter()
    row = evaluator(assignment, f"nni-{nni.get_trial_id()}")
    # Over budget: reported as accuracy 0 without training, so tuners learn to avoid it.
    nni.report_final_result(
        {
            "default": row["accuracy"] or 0.0,
            "energy_ratio": row["energy_ratio"],
            "feasible": row["feasible"],
        }
    )


if __name__ == "__main__":
    main(sys.argv[1])
