"""The l_p -> l_1 schedule (Universal Adder Neural Networks, section 4.2).

Training starts with the l2 AdderNet (p = 2, easy to optimise) and lowers p linearly to 1
(the multiplication-free l1 AdderNet); in the paper p reaches 1 at epoch 600 of 800.
"""

from __future__ import annotations

from typing import Any

from torch import nn

from adderize._errors import AdderizeError

__all__ = ["LpSchedule"]


class LpSchedule:
    """Sets ``p`` on every adder layer, decaying linearly from ``start`` to ``end``.

    Args:
        model: the model (or DDP wrapper) holding the adder layers.
        decay_steps: steps (call :meth:`step` once per step or per epoch, consistently) over
            which p goes from ``start`` to ``end``; p stays at ``end`` afterwards.
        start, end: the p range, within [1, 2] (defaults 2 -> 1).
    """

    def __init__(
        self, model: nn.Module, decay_steps: int, start: float = 2.0, end: float = 1.0
    ) -> None:
        if not isinstance(decay_steps, int) or decay_steps < 0:
            raise AdderizeError(f"decay_steps must be a non-negative int, got {decay_steps!r}")
        for label, v in (("start", start), ("end", end)):
            if not 1.0 <= v <= 2.0:
                raise AdderizeError(f"{label} must be in [1, 2], got {v}")
        from adderize.passes.registry import layers_with

        # the layers whose op declares the schedule (OpSpec.lp_schedule: the adder layers)
        self.layers = layers_with(model, "lp_schedule")
        if not self.layers:
            raise AdderizeError("the model has no adder layers (Adder2d / AdderLinear)")
        self.decay_steps, self.start, self.end = decay_steps, float(start), float(end)
        self.last_step = 0
        self._apply()

    @property
    def p(self) -> float:
        if self.decay_steps == 0:
            return self.end
        frac = min(self.last_step / self.decay_steps, 1.0)
        return self.start + (self.end - self.start) * frac

    def _apply(self) -> None:
        p = self.p
        for layer in self.layers:
            layer.p = p

    def step(self) -> float:
        """Advance one step, set the new p on every adder layer and return it."""
        self.last_step += 1
        self._apply()
        return self.p

    def state_dict(self) -> dict[str, Any]:
        return {
            "last_step": self.last_step,
            "decay_steps": self.decay_steps,
            "start": self.start,
            "end": self.end,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.last_step = int(state["last_step"])
        self.decay_steps = int(state["decay_steps"])
        self.start, self.end = float(state["start"]), float(state["end"])
        self._apply()
