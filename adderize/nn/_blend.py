"""The function-preserving blend every multiplication-free layer inherits (``Blendable``)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import nn

__all__ = ["Blendable"]


class Blendable(nn.Module):
    """The function-preserving conversion of a float layer into its multiplication-free op.

    Every replacement layer can compute both the float layer it replaced
    (``float_forward``: the conv / linear, with the original weight kept frozen in
    ``float_weight`` while blending) and its own op (``op_forward``, with the trainable
    ``weight``). ``blend`` (lambda) moves between them::

        y = lambda * float(x) + (1 - lambda) * (blend_scale * op(x) + blend_shift)

    per output channel. ``blend = 1`` is the original layer exactly (the start of a
    function-preserving conversion); ``blend = 0`` without scale/shift is the plain op (the
    default, and the end of the anneal). ``blend_scale`` / ``blend_shift`` are the
    least-squares fit of the float output by the op output, per channel: fitted on data by
    :func:`adderize.train.anneal.calibrate`, tracked as running averages while training (as
    BatchNorm tracks its statistics), and folded into the following BatchNorm when the
    anneal ends. While blending in training mode each forward also leaves
    ``blend_loss``: the op's local reconstruction error of the float output (normalised by
    its variance), which the fine-tuning objective adds so that every op learns to compute
    what its float layer computed from the first step on.

    All of this is training state, not model parameters: nothing of it is in the
    ``state_dict`` (the anneal's own ``state_dict`` saves it), so a converted model has the
    same tensors with or without the anneal.
    """

    blend: float = 0.0
    #: weight of the newest batch in the running scale/shift (as BatchNorm's momentum)
    blend_momentum: float = 0.1
    blend_scale: torch.Tensor | None
    blend_shift: torch.Tensor | None
    float_weight: torch.Tensor | None
    blend_loss: torch.Tensor | None = None
    channel_dim: int = 1
    weight: nn.Parameter
    #: whether the op's weight is refit to the float layer's outputs before the anneal
    #: (:func:`adderize.train.refit.reconstruct`): true where the float weight, read by the
    #: op as it is, computes something unrelated (an l1 distance to conv weights)
    refit: bool = False

    def _init_blend(self) -> None:
        self.register_buffer("blend_scale", None, persistent=False)
        self.register_buffer("blend_shift", None, persistent=False)
        self.register_buffer("float_weight", None, persistent=False)

    def float_forward(self, x: torch.Tensor) -> torch.Tensor:
        """The float layer this one replaces (``float_weight`` if set, else ``weight``)."""
        raise NotImplementedError

    def op_forward(self, x: torch.Tensor) -> torch.Tensor:
        """The layer's own (multiplication-free) computation."""
        raise NotImplementedError

    @property
    def blending(self) -> bool:
        """Whether the layer computes anything but its plain op."""
        return self.blend != 0.0 or self.blend_scale is not None

    def op_weight(self) -> torch.Tensor:
        """The weight the op computes with (``weight``, standardised where the layer is)."""
        return self.weight

    def transformed_weight(self, fn: Callable[..., torch.Tensor], *args: Any) -> torch.Tensor:
        """``fn(op_weight(), *args)`` (the op's quantised weight). With gradients off it is
        kept and reused while the layer's parameters and ``args`` are unchanged (keyed by
        their storage and version counters, as the adder's kernel plans are), so inference
        and sub-network scoring do not re-quantise every batch; in-place edits through
        ``.data``, which bypass the version counter, are not seen."""
        if torch.is_grad_enabled():
            return fn(self.op_weight(), *args)
        key = (
            args,
            *((p.data_ptr(), p._version, p.dtype, p.device) for p in self.parameters(False)),
        )
        kept = self.__dict__.get("_transformed")
        if kept is None or kept[0] != key:
            kept = (key, fn(self.op_weight(), *args))
            self.__dict__["_transformed"] = kept
        return kept[1]

    def _float_weight(self) -> torch.Tensor:
        return self.weight if self.float_weight is None else self.float_weight

    def channels_first(self, y: torch.Tensor) -> torch.Tensor:
        """``y`` as [channels, everything else] (per-channel statistics of an output)."""
        return y.movedim(self.channel_dim, 0).flatten(1)

    def _affine(self, y: torch.Tensor) -> torch.Tensor:
        shape = [1] * y.dim()
        shape[self.channel_dim] = -1
        assert self.blend_scale is not None and self.blend_shift is not None
        return torch.addcmul(
            self.blend_shift.view(shape).to(y.dtype), y, self.blend_scale.view(shape).to(y.dtype)
        )

    def _reduce_dims(self, y: torch.Tensor) -> list[int]:
        return [d for d in range(y.dim()) if d != self.channel_dim % y.dim()]

    @torch.no_grad()
    def _track_fit(self, f: torch.Tensor, o: torch.Tensor) -> None:
        """Move scale/shift towards this batch's least-squares fit of ``f`` by ``o``.

        Per-channel moments reduced in place (no channels-first copy): the blend's
        bookkeeping is a few passes over the output, next to a conv and an adder layer.
        """
        dims = self._reduce_dims(o)
        mf, mo = f.mean(dims, keepdim=True), o.mean(dims, keepdim=True)
        oc = o - mo  # centred: adder outputs sit far from 0, E[o^2] - E[o]^2 would cancel
        var = oc.square().mean(dims, dtype=torch.float32)
        cov = (f * oc).mean(dims, dtype=torch.float32)
        mf, mo = mf.flatten().float(), mo.flatten().float()
        scale = cov / var.clamp_min(1e-12)
        shift = mf - scale * mo
        assert self.blend_scale is not None and self.blend_shift is not None
        m = self.blend_momentum
        self.blend_scale.lerp_(scale.to(self.blend_scale.dtype), m)
        self.blend_shift.lerp_(shift.to(self.blend_shift.dtype), m)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        lam = self.blend
        if lam == 0.0 and self.blend_scale is None:
            return self.op_forward(x)
        if lam == 1.0:
            return self.float_forward(x)
        if self.blend_scale is None:
            raise RuntimeError(
                f"{type(self).__name__} has blend={lam:g} but no calibrated blend_scale: call "
                "adderize.train.anneal.calibrate(model, batches) before lowering the blend"
            )
        o = self.op_forward(x)
        if lam == 0.0:
            return self._affine(o)
        if self.training:
            # the float path is the frozen target: no gradient through it (its input
            # gradient would cost a conv backward per layer); the task loss reaches the
            # layers upstream through the op path, which is what remains after the anneal
            with torch.no_grad():
                f = self.float_forward(x).to(o.dtype)
            self._track_fit(f, o.detach())
            y = self._affine(o)
            self.blend_loss = (y - f).square().mean() / f.var().clamp_min(1e-12)
        else:
            f = self.float_forward(x).to(o.dtype)
            y = self._affine(o)
        return torch.lerp(y, f, lam)
