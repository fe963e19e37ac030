"""Running the one-shot search on NNI: train the supernet once (``RandomOneShot``, with
logit distillation from the teacher), then draw sub-networks under a few energy caps
(``RegularizedEvolution`` or ``Random``), each scored with the supernet's weights, and
write what the multi-trial search writes (:func:`run_oneshot`). The supernet itself is
:class:`adderize.search.oneshot.OpSupernet`."""

from __future__ import annotations

import itertools
import json
import logging
import time
from collections.abc import Iterable
from typing import Any

import nni
import torch
from nni.nas.evaluator.pytorch.lightning import ClassificationModule
from torch import nn

from adderize._errors import AdderizeError
from adderize.search.oneshot import (
    OpSupernet,
    energy_filter,
    export_subnet,
    layer_ops,
    score_subnet,
)
from adderize.search.results import choice_key
from adderize.search.space import OpSpace
from adderize.train.distill import logit_kd

__all__ = [
    "DistillingClassifier",
    "energy_levels",
    "kept_in_memory",
    "run_oneshot",
    "train_supernet",
]

log = logging.getLogger(__name__)


def kept_in_memory(loader: Iterable[Any], max_bytes: int = 1 << 30) -> Iterable[Any]:
    """``loader``'s batches as a list when their tensors take at most ``max_bytes`` (every
    sub-network is scored on them: decoding and transforming them once, not per score),
    else ``loader`` itself (re-iterable, as a ``DataLoader`` is)."""
    kept: list[Any] = []
    size = 0
    for batch in loader:
        size += sum(t.numel() * t.element_size() for t in batch if isinstance(t, torch.Tensor))
        if size > max_bytes:
            return loader
        kept.append(batch)
    return kept


def energy_levels(space: OpSpace, trials: int, levels: int) -> list[tuple[float, int]]:
    """``[(cap pJ, trials)]``: ``levels`` energy caps evenly spaced from the cheapest
    assignment to the budget, the last the budget itself, ``trials`` split evenly (levels
    with none left out). Searching under each cap in turn spreads the scored sub-networks
    over the energy range: an accuracy-maximising evolution under the budget alone drifts
    towards it and leaves the low-energy end of the Pareto front unexplored."""
    if levels < 1:
        raise AdderizeError(f"energy levels must be >= 1, got {levels}")
    floor, budget = space.min_energy(), space.budget_pj
    out = []
    for i in range(levels):
        n = trials * (i + 1) // levels - trials * i // levels
        cap = budget if i == levels - 1 else floor + (budget - floor) * (i + 1) / levels
        if n:
            out.append((cap, n))
    return out


def run_oneshot(ev: Any, settings: Any, out: Any) -> None:
    """The one-shot search behind ``adderize search --mode oneshot``: the supernet of
    ``ev.space`` over ``ev.teacher`` trained by NNI's ``RandomOneShot`` (uniform path
    sampling within the energy budget) for ``settings.supernet_epochs``, then
    ``settings.trials`` sub-networks drawn by NNI's ``RegularizedEvolution``
    (``settings.strategy == "evolution"``) or ``Random`` from the trained supernet, one
    search per energy level (:func:`energy_levels`, ``settings.energy_levels``), each
    scored with inherited weights after re-estimating its BatchNorm; one row per scored
    sub-network in ``out / "trials.jsonl"`` (as the multi-trial search writes them). The
    best (the most accurate, then the least energy: the one ``best_ops.yaml`` names) is
    saved with its weights as ``out / "best_model.safetensors"`` (:func:`export_subnet`;
    ``adderize.load`` reads it)."""
    from nni.nas.evaluator import FunctionalEvaluator
    from nni.nas.experiment import NasExperiment
    from nni.nas.strategy import Random as RandomStrategy
    from nni.nas.strategy import RegularizedEvolution

    torch.manual_seed(settings.seed)
    space = ev.space
    train, val = ev.loaders
    calibration = [x for x, _ in itertools.islice(train, settings.calibration_batches)]
    val = kept_in_memory(val)
    tic = time.perf_counter()
    supernet = OpSupernet(ev.teacher, space, calibration, settings.refit_steps, settings.refit_lr)
    train_supernet(supernet, ev, settings, out)
    trained_s = time.perf_counter() - tic
    log.info("supernet trained (%d epochs) in %.0f s", settings.supernet_epochs, trained_s)
    counter = itertools.count()
    best: dict[str, Any] = {}

    def score(model: nn.Module) -> None:
        start = time.perf_counter()
        model.train()
        assignment = layer_ops(model, space.layers)
        energy = space.energy(assignment)
        acc = score_subnet(model, calibration, val)
        row = {
            "trial": f"oneshot-{next(counter):04d}",
            "assignment": assignment,
            "energy_pj": energy,
            "energy_ratio": energy / space.conv_pj,
            "feasible": energy <= space.budget_pj,
            "trained": True,  # scored with the supernet's weights (no own training)
            "accuracy": acc,
            "seconds": time.perf_counter() - start,
        }
        with open(out / "trials.jsonl", "a") as f:
            f.write(json.dumps(row) + "\n")
        if not best or choice_key(row) > choice_key(best):
            best.update(row, model=model)
        nni.report_final_result(acc)

    for cap, trials in energy_levels(space, settings.trials, settings.energy_levels):
        supernet.energy_cap = cap
        if settings.strategy == "evolution":
            pop = min(settings.population, trials)
            strategy: Any = RegularizedEvolution(population_size=pop, sample_size=max(1, pop // 2))
        else:
            strategy = RandomStrategy()
        search = NasExperiment(supernet, FunctionalEvaluator(score), strategy)
        search.config.experiment_working_directory = str(out / "nni-experiments")
        search.config.max_trial_number = trials
        _run(search, "sub-network search")
    supernet.energy_cap = space.budget_pj
    if best:
        from adderize.io import save

        m = ev.recipe.model
        kwargs = {"num_classes": m.num_classes, **m.kwargs}
        model = export_subnet(ev.teacher, space, best["model"])
        save(model, out / "best_model.safetensors", model_name=m.name, model_kwargs=kwargs)
        log.info(
            "best sub-network %s with its weights (top-1 %.4f) -> %s",
            best["trial"],
            best["accuracy"],
            out / "best_model.safetensors",
        )


def train_supernet(supernet: OpSupernet, ev: Any, settings: Any, out: Any) -> None:
    """Train ``supernet`` with NNI's ``RandomOneShot`` (uniform path sampling within the
    energy budget) for ``settings.supernet_epochs`` on ``ev``'s training data, with
    logit distillation from ``ev.teacher`` (the recipe's temperature and weight), Adam at
    ``settings.supernet_lr``; NNI's files under ``out / "nni-experiments"``."""
    from nni.nas.evaluator.pytorch import DataLoader, Lightning, Trainer
    from nni.nas.experiment import NasExperiment
    from nni.nas.strategy import RandomOneShot

    train, val = ev.loaders
    recipe = ev.recipe
    module = DistillingClassifier(
        ev.teacher,
        recipe.distill.temperature,
        recipe.distill.alpha if recipe.distill.kind != "none" else 0.0,
        num_classes=recipe.model.num_classes,
        learning_rate=settings.supernet_lr,
    )
    trainer = Trainer(
        max_epochs=settings.supernet_epochs,
        enable_progress_bar=False,
        logger=False,
        enable_checkpointing=False,
    )
    evaluator = Lightning(
        module,
        trainer,
        train_dataloaders=DataLoader(train.dataset, batch_size=train.batch_size, shuffle=True),
        val_dataloaders=DataLoader(val.dataset, batch_size=val.batch_size),
    )
    pretrain = NasExperiment(supernet, evaluator, RandomOneShot(filter=energy_filter(ev.space)))
    pretrain.config.experiment_working_directory = str(out / "nni-experiments")
    _run(pretrain, "supernet training")


def _run(experiment: Any, what: str) -> None:
    """Run an NNI experiment in this process and stop it (NNI leaves that to atexit)."""
    try:
        ok = experiment.run()
    finally:
        experiment.stop()
    if ok is False:
        raise RuntimeError(
            f"the NNI {what} failed: see {experiment.config.experiment_working_directory}"
        )


@nni.trace
class DistillingClassifier(ClassificationModule):
    """NNI's classification module with logit distillation from the conv teacher in its
    training loss (in-place distillation: every sampled path learns the teacher's outputs,
    as the recipe's fine-tunes do)."""

    def __init__(
        self,
        teacher: nn.Module,
        temperature: float,
        alpha: float,
        num_classes: int,
        learning_rate: float,
    ) -> None:
        super().__init__(learning_rate=learning_rate, num_classes=num_classes)
        self._teacher = [teacher.eval()]  # a list: not a submodule, never trained
        self.temperature, self.alpha = temperature, alpha

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        x, y = batch
        y_hat = self(x)
        with torch.no_grad():
            t = self._teacher[0](x)
        kd = logit_kd(y_hat, t, self.temperature)
        loss = self.alpha * kd + (1 - self.alpha) * self.criterion(y_hat, y)
        self.log("train_loss", loss, prog_bar=True)
        return loss
