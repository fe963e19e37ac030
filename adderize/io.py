"""Creating, saving and loading converted models without executing pickled code.

A saved model is one safetensors file: the tensors of ``state_dict`` plus string metadata
saying how to rebuild the module (timm model name and kwargs, the op mapping, the adderize
version). :func:`load` rebuilds the timm model, re-applies the conversion and loads the
tensors strictly, so a file from an untrusted source can at worst fail to load.
"""

from __future__ import annotations

import difflib
import json
from pathlib import Path
from typing import Any

from torch import nn

from adderize._version import __version__
from adderize.nn import Blendable
from adderize.passes.convert import BLEND_ATTR, META_ATTR, adderize
from adderize.passes.mapping import OpMapping
from adderize.passes.report import RewriteReport

__all__ = ["create_float_model", "create_model", "load", "save"]

FORMAT = "adderize-model"
FORMAT_VERSION = 1
RECIPE_ATTR = "adderize_recipe"  # {"model_name": ..., "model_kwargs": ...} set by create_model


def create_float_model(
    model_name: str, *, pretrained_file: str | Path | None = None, **model_kwargs: Any
) -> nn.Module:
    """``timm.create_model(model_name, **model_kwargs)``, weights from a local file if given.

    ``pretrained_file`` is a safetensors or ``torch.save`` state dict (read with
    ``weights_only=True``); there is no download.
    """
    import timm
    from timm.models import load_checkpoint

    if not timm.is_model(model_name):
        close = difflib.get_close_matches(model_name, timm.list_models(), n=5)
        raise ValueError(
            f"unknown timm model {model_name!r}"
            + (f"; close matches: {close}" if close else "; see timm.list_models()")
        )
    model = timm.create_model(model_name, pretrained=False, **model_kwargs)
    if pretrained_file is not None:
        path = Path(pretrained_file)
        if not path.is_file():
            raise FileNotFoundError(f"pretrained file not found: {path}")
        load_checkpoint(model, str(path), weights_only=True)
    return model


def create_model(
    model_name: str,
    ops: OpMapping | str | dict[str, Any] | None = None,
    *,
    keep: list[str] | tuple[str, ...] = (),
    pretrained_file: str | Path | None = None,
    strict: bool = False,
    return_report: bool = False,
    **model_kwargs: Any,
) -> nn.Module | tuple[nn.Module, RewriteReport]:
    """Create a timm model and convert it; the result remembers how, for :func:`save`."""
    float_model = create_float_model(model_name, pretrained_file=pretrained_file, **model_kwargs)
    model, report = adderize(
        float_model, ops, keep=keep, strict=strict, inplace=True, return_report=True
    )
    setattr(model, RECIPE_ATTR, {"model_name": model_name, "model_kwargs": dict(model_kwargs)})
    return (model, report) if return_report else model


def save(
    model: nn.Module,
    path: str | Path,
    *,
    model_name: str | None = None,
    model_kwargs: dict[str, Any] | None = None,
) -> Path:
    """Save a converted model as safetensors with the metadata :func:`load` rebuilds it from.

    ``model_name`` / ``model_kwargs`` are needed only for models not made by
    :func:`create_model` (e.g. ``adderize(timm.create_model(...))``).
    """
    from safetensors.torch import save_model

    ops = getattr(model, META_ATTR, None)
    if ops is None:
        raise ValueError("this model was not converted by adderize: nothing to rebuild it from")
    blending = [n for n, m in model.named_modules() if isinstance(m, Blendable) and m.blending]
    if blending:
        raise ValueError(
            f"{len(blending)} layer(s) (e.g. {blending[0]!r}) are still blending from their "
            "float layers (a function-preserving conversion before its anneal ended): save "
            "saves the finished op model; finish the anneal (adderize.train.anneal.Anneal) "
            "or keep a training checkpoint instead"
        )
    recipe = dict(getattr(model, RECIPE_ATTR, None) or {})
    if model_name is not None:
        recipe = {"model_name": model_name, "model_kwargs": dict(model_kwargs or {})}
    if "model_name" not in recipe:
        raise ValueError(
            "adderize.save needs the timm model name to rebuild this model: pass "
            "model_name=... (and model_kwargs=...), or create it with adderize.create_model"
        )
    try:
        kwargs_json = json.dumps(recipe["model_kwargs"], sort_keys=True)
    except TypeError as e:
        raise ValueError(f"model_kwargs must be JSON-serialisable to be saved: {e}") from None
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    metadata = {
        "format": FORMAT,
        "format_version": str(FORMAT_VERSION),
        "adderize_version": __version__,
        "model_name": recipe["model_name"],
        "model_kwargs": kwargs_json,
        "ops": json.dumps(ops, sort_keys=True),
    }
    tmp = path.with_name(path.name + ".tmp")
    save_model(model, str(tmp), metadata=metadata)
    tmp.replace(path)  # atomic: an interrupted save never leaves a half-written file
    return path


def read_metadata(path: str | Path) -> dict[str, Any]:
    """The rebuild metadata of a saved model, validated; no tensor is read."""
    from safetensors import safe_open

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"model file not found: {path}")
    try:
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
    except Exception as e:
        raise ValueError(f"{path} is not a safetensors file saved by adderize.save ({e})") from e
    if meta.get("format") != FORMAT:
        raise ValueError(f"{path} was not saved by adderize.save (no {FORMAT!r} metadata)")
    if meta.get("format_version") != str(FORMAT_VERSION):
        raise ValueError(
            f"{path} has format version {meta.get('format_version')!r}; this adderize "
            f"({__version__}) reads version {FORMAT_VERSION}"
        )
    return {
        "model_name": meta["model_name"],
        "model_kwargs": json.loads(meta["model_kwargs"]),
        "ops": json.loads(meta["ops"]),
        "adderize_version": meta.get("adderize_version", ""),
    }


def load(path: str | Path) -> nn.Module:
    """Rebuild a model saved by :func:`save` and load its tensors (strictly)."""
    from safetensors.torch import load_model

    meta = read_metadata(path)
    model = create_model(meta["model_name"], meta["ops"], **meta["model_kwargs"])
    assert isinstance(model, nn.Module)
    load_model(model, str(path), strict=True)
    # a saved model is a finished one: a preserve-mode rebuild starts its layers blended
    for m in model.modules():
        if isinstance(m, Blendable):
            m.blend = 0.0
    if hasattr(model, BLEND_ATTR):
        delattr(model, BLEND_ATTR)
    return model
