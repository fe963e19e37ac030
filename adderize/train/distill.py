"""Distillation from the original conv model (the teacher is the model being converted).

* Logit KD (Hinton et al. 2015): ``alpha * T^2 * KL(softmax(t/T) || softmax(s/T))`` plus
  ``(1 - alpha)`` times the label loss.
* Kernel feature distillation, in the spirit of PKKD (Xu et al., NeurIPS 2020, whose code
  was never released): adder and conv features have different distributions (Laplacian vs
  Gaussian-like), so instead of matching features directly we match, at each chosen
  module, the Gaussian-kernel similarity between the samples of a batch,
  ``K_ij = exp(-||f_i - f_j||^2 / 2)`` over per-sample L2-normalised features. The kernel
  matrices are invariant to each layer's scale and channel order. PKKD's *progressive*
  part (training the teacher alongside) is not included: our teacher is frozen.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.hooks import RemovableHandle

from adderize._errors import AdderizeError

__all__ = [
    "FeatureTap",
    "default_feature_names",
    "gaussian_kernel",
    "kernel_loss",
    "logit_kd",
]


def logit_kd(student: torch.Tensor, teacher: torch.Tensor, temperature: float) -> torch.Tensor:
    """``T^2 * KL(softmax(teacher/T) || softmax(student/T))``, mean over the batch."""
    t = temperature
    return F.kl_div(
        F.log_softmax(student.float() / t, dim=1),
        F.log_softmax(teacher.float() / t, dim=1),
        reduction="batchmean",
        log_target=True,
    ) * (t * t)


def gaussian_kernel(features: torch.Tensor) -> torch.Tensor:
    """``B x B`` Gaussian kernel between the L2-normalised per-sample features."""
    f = F.normalize(features.float().flatten(1), dim=1)
    return torch.exp(-0.5 * torch.cdist(f, f).pow(2))


def kernel_loss(student: list[torch.Tensor], teacher: list[torch.Tensor]) -> torch.Tensor:
    """Mean squared difference of the kernel matrices, averaged over the tapped modules."""
    losses = [
        F.mse_loss(gaussian_kernel(s), gaussian_kernel(t))
        for s, t in zip(student, teacher, strict=True)
    ]
    return torch.stack(losses).mean()


class FeatureTap:
    """Records the outputs of named submodules on every forward (for feature KD)."""

    def __init__(self, model: nn.Module, names: list[str]) -> None:
        self.features: dict[int, torch.Tensor] = {}
        self.handles: list[RemovableHandle] = []
        for name in names:
            try:
                module = model.get_submodule(name)
            except AttributeError:
                raise AdderizeError(
                    f"distill.features: no module {name!r} in {type(model).__name__}"
                ) from None
            self.handles.append(module.register_forward_hook(self._hook(len(self.handles))))
        self.names = list(names)

    def _hook(self, i: int) -> Callable[..., None]:
        def hook(module: nn.Module, args: object, output: torch.Tensor) -> None:
            self.features[i] = output

        return hook

    def pop(self) -> list[torch.Tensor]:
        if len(self.features) != len(self.names):
            raise RuntimeError(
                f"expected outputs of {self.names}, recorded {len(self.features)}: "
                "are these modules called in the forward?"
            )
        out = [self.features[i] for i in range(len(self.names))]
        self.features = {}
        return out

    def remove(self) -> None:
        for h in self.handles:
            h.remove()


def default_feature_names(model: nn.Module) -> list[str]:
    """timm's ``feature_info`` modules (stage outputs) except the stem, else an error."""
    info = getattr(model, "feature_info", None)
    if not info:
        raise AdderizeError(
            "distill.kind=kernel: this model has no timm feature_info; list the modules "
            "to match in distill.features"
        )
    names = [f["module"] for f in info if f.get("module")]
    return names[1:] if len(names) > 1 else names
