"""Untrusted model files: every crafted or damaged file fails fast with ModelFileError,
reads no other file and executes nothing (the probes of the untrusted-files issue, plus a
seeded fuzz of the safetensors header)."""

from __future__ import annotations

import json
import random
import re
import signal
import struct
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

import adderize
from adderize.io import ModelFileError

MODEL = "test_resnet"  # timm's tiny test model: a load takes ~0.1 s
REPO = Path(__file__).resolve().parents[1]
ALLOWED_PREFIXES = tuple(
    str(Path(p).resolve()) for p in {sys.prefix, sys.base_prefix, sys.exec_prefix, REPO}
)
DANGEROUS = ("os.system", "subprocess.Popen", "pickle.find_class", "os.posix_spawn", "os.exec")

_events: list[tuple[str, tuple]] | None = None


def _audit(event: str, args: tuple) -> None:
    if _events is not None and (event == "open" or event.startswith(DANGEROUS)):
        _events.append((event, args))


sys.addaudithook(_audit)  # audit hooks cannot be removed: it records only inside _guarded


def _guarded(path: Path) -> tuple[BaseException | None, list[tuple[str, tuple]]]:
    """``adderize.load(path)`` with a 20 s hang guard; (its exception, audit events)."""
    global _events

    def hang(signum, frame):
        raise TimeoutError(f"loading {path.name} took more than 20 s")

    old = signal.signal(signal.SIGALRM, hang)
    signal.alarm(20)
    _events = []
    try:
        adderize.load(path)
        error = None
    except Exception as e:
        error = e
    finally:
        events, _events = _events, None
        signal.alarm(0)
        signal.signal(signal.SIGALRM, old)
    return error, events


def _check_contained(path: Path, events: list[tuple[str, tuple]]) -> None:
    for event, args in events:
        assert not event.startswith(DANGEROUS), (event, args)
        target = args[0]
        if isinstance(target, int):  # an already open file descriptor
            continue
        opened = str(Path(str(target)).resolve()) if target else ""
        assert opened == str(path.resolve()) or opened.startswith(ALLOWED_PREFIXES), (
            f"loading {path.name} opened {target!r}"
        )


@pytest.fixture(scope="module")
def good(tmp_path_factory) -> Path:
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("files") / "good.safetensors"
    adderize.save(adderize.create_model(MODEL, num_classes=3), path)
    error, events = _guarded(path)  # also imports whatever a load imports lazily
    assert error is None
    _check_contained(path, events)
    return path


def _header(path: Path) -> tuple[dict, bytes]:
    raw = path.read_bytes()
    (n,) = struct.unpack("<Q", raw[:8])
    return json.loads(raw[8 : 8 + n]), raw[8 + n :]


def _write(path: Path, header: dict, data: bytes) -> Path:
    blob = json.dumps(header).encode()
    path.write_bytes(struct.pack("<Q", len(blob)) + blob + data)
    return path


def _with_metadata(good: Path, tmp: Path, **changes: str) -> Path:
    header, data = _header(good)
    header["__metadata__"].update(changes)
    return _write(tmp / "crafted.safetensors", header, data)


def _expect_refused(path: Path, match: str) -> None:
    error, events = _guarded(path)
    assert isinstance(error, ModelFileError), repr(error)
    assert path.name in str(error)
    assert re.search(match, str(error)), str(error)
    _check_contained(path, events)


PICKLE = "gASVIQAAAAAAAACMBXBvc2l4lIwGc3lzdGVtlJOUjAJpZJSFlFKULg=="  # os.system("id"), base64
METADATA_PROBES = [
    ({"model_kwargs": '{"checkpoint_path": "/etc/passwd"}'}, r"'checkpoint_path' is not allowed"),
    ({"model_kwargs": '{"checkpoint_path": "/dev/zero"}'}, r"'checkpoint_path' is not allowed"),
    ({"model_kwargs": '{"num_classes": 1000000000}'}, r"num_classes.*integer in \[0, 100000\]"),
    ({"model_kwargs": '{"pretrained": true}'}, r"'pretrained' is not allowed"),
    ({"model_kwargs": '{"num_classes": "3"}'}, r"num_classes.*'3' must be an integer"),
    ({"model_kwargs": '{"num_classes": true}'}, r"num_classes.*True must be an integer"),
    ({"model_kwargs": '{"pretrained_cfg_overlay": {"file": "/etc/passwd"}}'}, r"not allowed"),
    ({"model_kwargs": '{"global_pool": "../../etc/passwd"}'}, r"a pooling name"),
    ({"model_kwargs": '["num_classes"]'}, r"model_kwargs must be a mapping"),
    ({"model_kwargs": PICKLE}, "not valid JSON"),
    ({"model_kwargs": "[" * 100000}, "not valid JSON"),
    ({"model_name": "../../../etc/passwd"}, r"unknown timm model"),
    ({"model_name": "resnet18"}, r"do not match the model"),
    (
        {"ops": '{"default": "adder", "regex": {"(.*)*(.*)*(.*)*(.*)*(.*)*(.*)*(.*)*Q": "conv"}}'},
        r"nests a repetition",
    ),
    ({"ops": '{"default": "adder", "regex": {"' + "a" * 300 + '": "conv"}}'}, r"limited to 256"),
    ({"ops": '{"default": "os.system"}'}, r"unknown op 'os.system'"),
    ({"ops": '{"default": "adder", "evil": 1}'}, r"valid OpMapping keys"),
    ({"ops": '{"default": ["adder"]}'}, r"cannot rebuild"),
    ({"format_version": "2"}, r"format version '2'"),
    ({"format": "other"}, r"not saved by adderize.save"),
]


@pytest.mark.parametrize(("changes", "match"), METADATA_PROBES)
def test_crafted_metadata_is_refused(good, tmp_path, changes, match):
    _expect_refused(_with_metadata(good, tmp_path, **changes), match)


def test_missing_metadata_entries_are_refused(good, tmp_path):
    header, data = _header(good)
    del header["__metadata__"]["ops"]
    _expect_refused(_write(tmp_path / "no-ops.safetensors", header, data), r"has no 'ops'")


def _tensors(good: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(good)


@pytest.mark.parametrize(
    ("edit", "match"),
    [
        (lambda t: t.pop(next(iter(t))), r"missing tensor"),
        (lambda t: t.__setitem__("evil", torch.zeros(3)), r"unexpected tensor 'evil'"),
        (lambda t: t.__setitem__("fc.weight", t["fc.weight"].double()), r"F64.*float32"),
        (lambda t: t.__setitem__("fc.weight", torch.zeros(4, 2)), r"'fc.weight' is F32 \[4, 2\]"),
    ],
)
def test_tensors_must_match_the_rebuilt_model(good, tmp_path, edit, match):
    from safetensors import safe_open

    with safe_open(str(good), framework="pt") as f:
        meta = f.metadata()
    tensors = _tensors(good)
    edit(tensors)
    path = tmp_path / "tensors.safetensors"
    save_file(tensors, str(path), metadata=meta)
    _expect_refused(path, match)


@pytest.mark.parametrize(
    ("damage", "match"),
    [
        (lambda raw: raw[: len(raw) // 2], r"not a safetensors file"),
        (lambda raw: raw[:5], r"not a safetensors file"),
        (lambda raw: struct.pack("<Q", 2**62) + raw[8:], r"not a safetensors file"),
        (lambda raw: struct.pack("<Q", len(raw)) + raw[8:], r"not a safetensors file"),
        (lambda raw: b"", r"not a safetensors file"),
        (lambda raw: b"\x80\x04\x95" + raw, r"not a safetensors file"),  # a pickle prefix
    ],
)
def test_damaged_files_are_refused(good, tmp_path, damage, match):
    path = tmp_path / "damaged.safetensors"
    path.write_bytes(damage(good.read_bytes()))
    _expect_refused(path, match)


def test_lying_data_offsets_are_refused(good, tmp_path):
    header, data = _header(good)
    name = next(k for k in header if k != "__metadata__")
    start, end = header[name]["data_offsets"]
    header[name]["data_offsets"] = [start, end + 10**9]
    _expect_refused(_write(tmp_path / "offsets.safetensors", header, data), "not a safetensors")


def test_fuzzed_headers_fail_cleanly(good, tmp_path):
    """Random byte edits of the header (seeded): a clean ModelFileError or a good load."""
    raw = good.read_bytes()
    (n,) = struct.unpack("<Q", raw[:8])
    rng = random.Random(0)
    outcomes = {"refused": 0, "loaded": 0}
    for i in range(40):
        blob = bytearray(raw)
        for _ in range(rng.randint(1, 4)):
            blob[8 + rng.randrange(n)] = rng.randrange(256)
        path = tmp_path / f"fuzz{i}.safetensors"
        path.write_bytes(bytes(blob))
        error, events = _guarded(path)
        assert error is None or isinstance(error, ModelFileError), (i, repr(error))
        _check_contained(path, events)
        outcomes["refused" if error else "loaded"] += 1
    assert outcomes["refused"] >= 20, outcomes  # most edits break the header


def test_a_trusting_caller_can_relax_the_kwarg_checks(good, tmp_path):
    path = _with_metadata(good, tmp_path, model_kwargs='{"num_classes": 3, "drop_rate": 0.1}')
    assert adderize.load(path) is not None
    big = _with_metadata(good, tmp_path, model_kwargs='{"num_classes": 200000}')
    with pytest.raises(ModelFileError, match="integer in"):
        adderize.load(big)
    with pytest.raises(ModelFileError, match="do not match"):  # allowed; then the head differs
        adderize.load(big, max_num_classes=200_000)
    odd = _with_metadata(good, tmp_path, model_kwargs='{"num_classes": 3, "stem_width": 32}')
    with pytest.raises(ModelFileError, match="'stem_width' is not allowed"):
        adderize.load(odd)
    with pytest.raises(ModelFileError, match="do not match"):
        adderize.load(odd, allow_kwargs=["stem_width"])
