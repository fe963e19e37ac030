"""AdderNet layers: ``Y = -sum |X - W|^p`` with the papers' training gradients.

Drop-ins for ``nn.Conv2d``, ``nn.Conv1d`` and ``nn.Linear``; the op itself, its routes to
the kernels and its gradients (eqs. 23, 26, 27 of Universal Adder Neural Networks) are
:mod:`adderize.kernels.adder_op`'s. The per-layer adaptive learning rate (eq. 33) is
applied at the optimizer level (:mod:`adderize.train`), never inside ``backward``.
"""

from __future__ import annotations

from typing import Any

import torch

from adderize.kernels import tvm_l1
from adderize.kernels.adder_op import adder2d, adder_linear, check_p, input_key, kept_call, records
from adderize.kernels.l1 import DEFAULT_MAX_TEMP_BYTES, check_backend
from adderize.nn._base import Conv1dLike, Conv2dLike, LinearLike

__all__ = [
    "Adder1d",
    "Adder2d",
    "AdderLinear",
    "adder2d",
    "adder_linear",
    "check_p",
]


class Adder2d(Conv2dLike):
    """Drop-in for ``nn.Conv2d`` computing ``-sum |X - W|^p`` over each patch.

    Args: as ``nn.Conv2d`` (all padding forms and modes, groups incl. depthwise), plus
        p: distance exponent in [1, 2]; 1 (default) is the multiplication-free l1 AdderNet,
            larger values are used early in training (:class:`adderize.train.LpSchedule`).
        max_temp_bytes: cap on the chunked temporary of the PyTorch kernels (see
            :mod:`adderize.kernels.l1` for the memory bound).
        backend: "auto" (TVM kernels when available, else PyTorch), "tvm" or "torch".
    """

    refit = True

    def __init__(
        self,
        *args: Any,
        p: float = 1.0,
        max_temp_bytes: int = DEFAULT_MAX_TEMP_BYTES,
        backend: str = "auto",
        **kwargs: Any,
    ) -> None:
        super().__init__(*args, **kwargs)
        self.p = check_p(p)
        self.max_temp_bytes = int(max_temp_bytes)
        self.backend = check_backend(backend)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # an inference call like the last one makes its resolved kernel call directly:
        # the module, blend, padding, dtype and plan checks between cost 7 us a call, more
        # than the kernel of a small layer (144 -> 6 1x1 @1: 12.1 -> 5.8 us; conv 7.0 us)
        fast = self.__dict__.get("_fast")
        weight, bias = self._parameters["weight"], self._parameters["bias"]  # no __getattr__
        if (
            fast is not None
            and fast[0] == input_key(x, weight)  # type: ignore[arg-type]
            and not records(x, weight)  # type: ignore[arg-type]
            and not torch.is_autocast_enabled("cpu")
        ):
            out = fast[1](x)
            return out if bias is None else out.add_(bias.view(1, -1, 1, 1))
        out = super().forward(x)
        self.__dict__["_fast"] = self._fast_call(x)
        return out

    def _fast_call(self, x: torch.Tensor) -> tuple[Any, ...] | None:
        """(input key, resolved call) of the inference call just made on ``x`` when it ran
        the plain op on a kept direct-kernel plan (:func:`~adderize.kernels.adder_op
        .kept_call`); setting any attribute of the layer drops it (:meth:`__setattr__`)."""
        weight = self.weight
        if self.padding_mode != "zeros" or self.blending or self.weight_std_eps is not None:
            return None
        if x.dtype != weight.dtype:
            return None
        call = kept_call(x, weight, self.stride, self.dilation, self.groups, self.p,  # type: ignore[arg-type]
                         tuple(self.input_pads(x)), self.backend)  # fmt: skip
        return None if call is None else (input_key(x, weight), call)

    def __setattr__(self, name: str, value: Any) -> None:
        self.__dict__["_fast"] = None
        super().__setattr__(name, value)

    def __getstate__(self) -> dict[str, Any]:
        state = super().__getstate__()  # type: ignore[no-untyped-call]
        state.pop("_fast", None)  # a compiled call: not picklable, and remade on use
        return state  # type: ignore[no-any-return]

    def op_forward(self, x: torch.Tensor) -> torch.Tensor:
        zeros = self.padding_mode == "zeros"
        return adder2d(
            x if zeros else self.pad_input(x),
            self.op_weight(),
            self.bias,
            self.stride,  # type: ignore[arg-type]
            self.dilation,  # type: ignore[arg-type]
            self.groups,
            self.p,
            self.max_temp_bytes,
            self.backend,
            self.input_pads(x) if zeros else tvm_l1.NO_PADS,
        )

    def extra_repr(self) -> str:
        return super().extra_repr() + f", p={self.p:g}"


class Adder1d(Conv1dLike, Adder2d):
    """Drop-in for ``nn.Conv1d`` (e.g. ECA attention): :class:`Adder2d` over ``[N, C, 1, L]``."""


class AdderLinear(LinearLike):
    """Drop-in for ``nn.Linear``: ``out[t] = -sum_k |x[k] - W[t, k]|^p (+ bias)``."""

    refit = True

    def __init__(
        self,
        in_features: int,
        out_features: int,
        bias: bool = True,
        device: Any = None,
        dtype: Any = None,
        *,
        p: float = 1.0,
        max_temp_bytes: int = DEFAULT_MAX_TEMP_BYTES,
        backend: str = "auto",
    ) -> None:
        super().__init__(in_features, out_features, bias, device=device, dtype=dtype)
        self.p = check_p(p)
        self.max_temp_bytes = int(max_temp_bytes)
        self.backend = check_backend(backend)

    def op_forward(self, x: torch.Tensor) -> torch.Tensor:
        return adder_linear(x, self.weight, self.bias, self.p, self.max_temp_bytes, self.backend)

    def extra_repr(self) -> str:
        return super().extra_repr() + f", p={self.p:g}"
