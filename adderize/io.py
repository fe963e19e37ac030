"""Creating, saving and loading converted models without executing pickled code.

A saved model is one safetensors file: the tensors of ``state_dict`` plus string metadata
saying how to rebuild the module (timm model name and kwargs, the op mapping, the adderize
version). :func:`load` rebuilds the timm model, re-applies the conversion and loads the
tensors strictly.

What loading guarantees for a file from an untrusted source: it can at worst fail to load,
with one :class:`ModelFileError` saying what was wrong. The file's metadata is data to
validate, never arguments passed on as they are:

* nothing is executed: no pickle (safetensors holds raw tensors), no code in the metadata;
* no other file is read: ``model_kwargs`` pass an allow-list (:data:`MODEL_KWARGS`) of
  constructor arguments with type and range checks: no paths, no ``pretrained*``, no hub
  ids; ``num_classes`` at most ``max_num_classes`` (100,000 by default; a caller who
  trusts the file raises it, or allows more keys with ``allow_kwargs``);
* the timm model name must be registered; the op mapping must name known ops, and its
  regexes are refused when longer than 256 characters or built to backtrack
  catastrophically (a quantified group holding another quantifier or an alternation);
* every tensor's name, shape and dtype must match the rebuilt model exactly, before any is
  copied.
"""

from __future__ import annotations

import difflib
import json
import re
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from torch import nn

from adderize._errors import AdderizeError, brief
from adderize._version import __version__
from adderize.nn import Blendable
from adderize.passes.convert import BLEND_ATTR, META_ATTR, RESOLVED_ATTR, adderize
from adderize.passes.mapping import OpMapping
from adderize.passes.report import RewriteReport

__all__ = [
    "MODEL_KWARGS",
    "ModelFileError",
    "check_model_kwargs",
    "create_float_model",
    "create_model",
    "load",
    "read_metadata",
    "save",
]

FORMAT = "adderize-model"
FORMAT_VERSION = 1
RECIPE_ATTR = "adderize_recipe"  # {"model_name": ..., "model_kwargs": ...} set by create_model
MAX_NUM_CLASSES = 100_000


class ModelFileError(AdderizeError):
    """A model file that cannot be loaded; the message says what was wrong and where."""


def _int_in(lo: int, hi_key: str | int) -> Callable[[Any, dict[str, int]], str]:
    def check(v: Any, limits: dict[str, int]) -> str:
        hi = limits[hi_key] if isinstance(hi_key, str) else hi_key
        if type(v) is not int or not lo <= v <= hi:
            return f"an integer in [{lo}, {hi}]"
        return ""

    return check


def _fraction(v: Any, limits: dict[str, int]) -> str:
    ok = type(v) in (int, float) and 0.0 <= v <= 1.0
    return "" if ok else "a number in [0, 1]"


def _pool(v: Any, limits: dict[str, int]) -> str:
    ok = isinstance(v, str) and re.fullmatch(r"[a-z]{0,12}", v) is not None
    return "" if ok else "a pooling name such as 'avg', 'max', 'avgmax' or ''"


#: the ``model_kwargs`` a model file may carry, each with its check (see the module doc)
MODEL_KWARGS: dict[str, Callable[[Any, dict[str, int]], str]] = {
    "num_classes": _int_in(0, "max_num_classes"),
    "in_chans": _int_in(1, 64),
    "global_pool": _pool,
    "drop_rate": _fraction,
    "drop_path_rate": _fraction,
    "drop_block_rate": _fraction,
    "img_size": _int_in(1, 4096),
}


def check_model_kwargs(
    kwargs: Any, *, max_num_classes: int = MAX_NUM_CLASSES, allow_kwargs: Iterable[str] = ()
) -> dict[str, Any]:
    """``kwargs`` if every entry is allowed and in range (module doc); ValueError naming
    the first bad entry otherwise. Keys in ``allow_kwargs`` pass unchecked."""
    if not isinstance(kwargs, dict):
        raise AdderizeError(f"model_kwargs must be a mapping, got {type(kwargs).__name__}")
    trusted = set(allow_kwargs)
    limits = {"max_num_classes": int(max_num_classes)}
    for key, value in kwargs.items():
        if key in trusted:
            continue
        check = MODEL_KWARGS.get(key)
        if check is None:
            raise AdderizeError(
                f"model_kwargs key {key!r} is not allowed from a file; allowed: "
                f"{sorted(MODEL_KWARGS)} (a caller who trusts the file passes "
                f"allow_kwargs=[{key!r}])"
            )
        want = check(value, limits)
        if want:
            raise AdderizeError(f"model_kwargs[{key!r}] = {value!r} must be {want}")
    return kwargs


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
        raise AdderizeError(
            f"unknown timm model {model_name!r}"
            + (f"; close matches: {close}" if close else "; see timm.list_models()")
        )
    model = timm.create_model(model_name, pretrained=False, **model_kwargs)
    if pretrained_file is not None:
        path = Path(pretrained_file)
        if not path.is_file():
            raise FileNotFoundError(f"pretrained file not found: {path}")
        try:
            load_checkpoint(model, str(path), weights_only=True)
        except Exception as e:  # not a state dict, damaged, or made for another model
            why = brief(e, lines=2, limit=300) or type(e).__name__
            raise AdderizeError(
                f"cannot load pretrained file {path} into {model_name}: {why}"
            ) from None
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
        raise AdderizeError("this model was not converted by adderize: nothing to rebuild it from")
    blending = [n for n, m in model.named_modules() if isinstance(m, Blendable) and m.blending]
    if blending:
        raise AdderizeError(
            f"{len(blending)} layer(s) (e.g. {blending[0]!r}) are still blending from their "
            "float layers (a function-preserving conversion before its anneal ended): save "
            "saves the finished op model; finish the anneal (adderize.train.anneal.Anneal) "
            "or keep a training checkpoint instead"
        )
    recipe = dict(getattr(model, RECIPE_ATTR, None) or {})
    if model_name is not None:
        recipe = {"model_name": model_name, "model_kwargs": dict(model_kwargs or {})}
    if "model_name" not in recipe:
        raise AdderizeError(
            "adderize.save needs the timm model name to rebuild this model: pass "
            "model_name=... (and model_kwargs=...), or create it with adderize.create_model"
        )
    try:
        kwargs_json = json.dumps(recipe["model_kwargs"], sort_keys=True)
    except TypeError as e:
        raise AdderizeError(f"model_kwargs must be JSON-serialisable to be saved: {e}") from None
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    metadata = {
        "format": FORMAT,
        "format_version": str(FORMAT_VERSION),
        "adderize_version": __version__,
        "model_name": recipe["model_name"],
        "model_kwargs": kwargs_json,
        "ops": json.dumps(ops, sort_keys=True),
        "resolved": json.dumps(getattr(model, RESOLVED_ATTR, None) or {}, sort_keys=True),
    }
    tmp = path.with_name(path.name + ".tmp")
    save_model(model, str(tmp), metadata=metadata)
    tmp.replace(path)  # atomic: an interrupted save never leaves a half-written file
    return path


def read_metadata(path: str | Path) -> dict[str, Any]:
    """The rebuild metadata of a saved model, parsed (not yet validated); no tensor is read."""
    from safetensors import safe_open

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"model file not found: {path}")
    try:
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
    except Exception as e:
        raise ModelFileError(
            f"{path} is not a safetensors file saved by adderize.save ({e})"
        ) from None
    if meta.get("format") != FORMAT:
        raise ModelFileError(f"{path} was not saved by adderize.save (no {FORMAT!r} metadata)")
    if meta.get("format_version") != str(FORMAT_VERSION):
        raise ModelFileError(
            f"{path} has format version {meta.get('format_version')!r}; this adderize "
            f"({__version__}) reads version {FORMAT_VERSION}"
        )
    out: dict[str, Any] = {"adderize_version": meta.get("adderize_version", "")}
    meta.setdefault("resolved", "{}")  # files before per-layer resolved parameters
    for key in ("model_name", "model_kwargs", "ops", "resolved"):
        if key not in meta:
            raise ModelFileError(f"{path}: metadata has no {key!r}")
        if key == "model_name":
            out[key] = meta[key]
            continue
        try:
            out[key] = json.loads(meta[key])
        except (ValueError, RecursionError) as e:
            raise ModelFileError(f"{path}: metadata {key!r} is not valid JSON ({e})") from None
    return out


def _check_tensors(path: Path, model: nn.Module) -> None:
    """Every tensor of the file has the name, shape and dtype of the rebuilt model's."""
    from safetensors import safe_open

    want = {k: (tuple(v.shape), v.dtype) for k, v in model.state_dict().items()}
    with safe_open(str(path), framework="pt") as f:
        names = set(f.keys())
        got = {}
        for k in names & set(want):
            sl = f.get_slice(k)
            got[k] = (tuple(sl.get_shape()), sl.get_dtype())
    problems = [f"missing tensor {k!r}" for k in sorted(set(want) - names)]
    problems += [f"unexpected tensor {k!r}" for k in sorted(names - set(want))]
    for k, (shape, dtype) in sorted(got.items()):
        w_shape, w_dtype = want[k]
        w_name = str(w_dtype).removeprefix("torch.")
        if shape != w_shape or not _same_dtype(dtype, w_name):
            problems.append(f"tensor {k!r} is {dtype} {list(shape)}, the model's {w_name} "
                            f"{list(w_shape)}")  # fmt: skip
    if problems:
        more = f" (and {len(problems) - 5} more)" if len(problems) > 5 else ""
        raise ModelFileError(
            f"{path}: the tensors do not match the model the metadata rebuilds: "
            + "; ".join(problems[:5])
            + more
        )


_ST_DTYPES = {"F64": "float64", "F32": "float32", "F16": "float16", "BF16": "bfloat16",
              "I64": "int64", "I32": "int32", "I16": "int16", "I8": "int8", "U8": "uint8",
              "BOOL": "bool"}  # fmt: skip


def _same_dtype(st_dtype: str, torch_name: str) -> bool:
    return _ST_DTYPES.get(st_dtype, st_dtype.lower()) == torch_name


def load(
    path: str | Path,
    *,
    max_num_classes: int = MAX_NUM_CLASSES,
    allow_kwargs: Iterable[str] = (),
) -> nn.Module:
    """Rebuild a model saved by :func:`save` and load its tensors (strictly).

    Safe for untrusted files (see the module docstring): any problem with the file raises
    :class:`ModelFileError`. ``max_num_classes`` and ``allow_kwargs`` relax the checks of
    the file's ``model_kwargs`` for a caller who trusts it.
    """
    from safetensors.torch import load_model

    path = Path(path)
    meta = read_metadata(path)
    name, kwargs, ops = meta["model_name"], meta["model_kwargs"], meta["ops"]
    try:
        if not isinstance(name, str) or len(name) > 200:
            raise AdderizeError(f"model_name must be a timm model name, got {name!r:.80}")
        check_model_kwargs(kwargs, max_num_classes=max_num_classes, allow_kwargs=allow_kwargs)
        mapping = OpMapping.coerce(ops if isinstance(ops, dict) else {"default": ops})
        resolved = meta["resolved"]
        if not isinstance(resolved, dict):
            raise AdderizeError(f"metadata 'resolved' must be a mapping, got {resolved!r:.80}")
        model = create_model(name, mapping.with_names(resolved), **kwargs)
        setattr(model, META_ATTR, mapping.to_dict())  # the mapping as it was saved
        if resolved:  # and saved again with the model
            setattr(model, RESOLVED_ATTR, dict(resolved))
    except (ValueError, TypeError, KeyError, RuntimeError) as e:
        raise ModelFileError(f"{path}: cannot rebuild the model it describes: {e}") from None
    assert isinstance(model, nn.Module)
    _check_tensors(path, model)
    try:
        load_model(model, str(path), strict=True)
    except Exception as e:  # the header was checked: what is left is a damaged payload
        raise ModelFileError(f"{path}: cannot read the tensors ({e})") from None
    # a saved model is a finished one: a preserve-mode rebuild starts its layers blended
    for m in model.modules():
        if isinstance(m, Blendable):
            m.blend = 0.0
    if hasattr(model, BLEND_ATTR):
        delattr(model, BLEND_ATTR)
    return model
