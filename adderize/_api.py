"""The public ``adderize.adderize``: the conversion pass, and ``ops="auto"`` (each layer's
op chosen from measured sensitivity under an energy budget, :mod:`adderize.train.auto`)."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

import torch
from torch import nn

from adderize._errors import AdderizeError
from adderize.passes import OpMapping, RewriteReport
from adderize.passes import adderize as convert

__all__ = ["adderize"]


def adderize(
    model: nn.Module,
    ops: OpMapping | str | dict[str, Any] | None = None,
    *,
    keep: Iterable[str] = (),
    strict: bool = False,
    inplace: bool = False,
    preserve: bool | None = None,
    return_report: bool = False,
    budget: float | None = None,
    calibrate: Iterable[torch.Tensor] | torch.Tensor | None = None,
    auto_ops: Sequence[str] | None = None,
) -> Any:
    """Replace the Conv2d / Linear layers of ``model`` with multiplication-free layers.

    As :func:`adderize.passes.adderize` (the arguments up to ``return_report``), and
    ``ops="auto"``: each convertible layer's op is chosen among ``auto_ops`` (default
    adder and shift; add ``"conv"`` to allow float layers) with the least measured output
    change under ``budget`` (a fraction of the all-conv energy, compute and memory, as
    the search prices it), measured on the
    ``calibrate`` batches (input tensors); the report's ``auto`` holds the per-layer
    scores and energies (:class:`adderize.train.auto.AutoChoice`). No training.

    Returns:
        The converted model, and the :class:`RewriteReport` if ``return_report``.
    """
    if ops == "auto":
        from adderize.train.auto import AUTO_OPS, choose_ops

        choice = choose_ops(model, 0.5 if budget is None else budget, calibrate,
                            auto_ops or AUTO_OPS)  # fmt: skip
        out, report = convert(model, choice.mapping(), keep=keep, strict=strict,
                              inplace=inplace, preserve=preserve, return_report=True)  # fmt: skip
        assert isinstance(report, RewriteReport)
        report.auto = choice
        return (out, report) if return_report else out
    given = [n for n, v in (("budget", budget), ("calibrate", calibrate), ("auto_ops", auto_ops))
             if v is not None]  # fmt: skip
    if given:
        raise AdderizeError(f"{', '.join(given)} go with ops='auto', not ops={ops!r}")
    return convert(model, ops, keep=keep, strict=strict, inplace=inplace, preserve=preserve,
                   return_report=return_report)  # fmt: skip
