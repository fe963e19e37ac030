"""Energy-constrained operator search: an NNI experiment (or a sequential in-process loop).

Layout of ``out``: ``config.yaml`` (the recipe trials fine-tune with), ``search.json`` (the
search settings trials read), ``teacher.safetensors``, ``trials.jsonl`` (one line per
sample: assignment, energy, accuracy, whether it was trained), ``trials.csv``,
``pareto.png``, ``best_ops.yaml`` (an OpMapping: ``adderize(model, OpMapping.load(...))``
rebuilds the chosen model), for one-shot runs ``best_model.safetensors`` (the chosen
sub-network with the supernet's weights: ``adderize.load``) and, for NNI runs,
``nni-experiments/``.
"""

from __future__ import annotations

import json
import logging
from dataclasses import asdict
from pathlib import Path
from typing import Any

from adderize._errors import AdderizeError
from adderize.search.engines import run_nni, sequential
from adderize.search.evaluate import Evaluator
from adderize.search.results import finish
from adderize.search.settings import SearchSettings
from adderize.train.recipe import Recipe

__all__ = ["search"]

log = logging.getLogger(__name__)


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
        from adderize.search.oneshot_run import run_oneshot

        run_oneshot(ev, settings, out)
    elif settings.engine == "sequential":
        sequential(ev, settings)
    else:
        del ev  # trials run in their own processes
        run_nni(out, space, settings)
    rows = [json.loads(line) for line in (out / "trials.jsonl").read_text().splitlines()]
    rejected = out / "rejected.jsonl"
    if rejected.is_file():  # NNI: over-budget samples the tuner turned away
        lines = rejected.read_text().splitlines()
        log.info("%d over-budget samples rejected before training", len(lines))
    return finish(out, rows, space)
