"""Saving and loading converted models without pickle."""

from __future__ import annotations

import json

import pytest
import timm
import torch
from safetensors.torch import save_file
from torch import nn

import adderize
from adderize import OpMapping
from adderize.nn import Adder2d, ShiftConv2d


def test_round_trip_rebuilds_the_same_model(tmp_path):
    torch.manual_seed(0)
    mapping = OpMapping().set_regex(r"layer4\..*", "shift")
    model = adderize.create_model("resnet18", mapping, keep=["layer1.0.conv1"], num_classes=3)
    path = adderize.save(model, tmp_path / "ann.safetensors")
    loaded = adderize.load(path)
    assert isinstance(loaded.layer4[0].conv1, ShiftConv2d)
    assert type(loaded.layer1[0].conv1) is torch.nn.Conv2d
    assert isinstance(loaded.layer2[0].conv1, Adder2d)
    x = torch.randn(1, 3, 32, 32)
    model.eval(), loaded.eval()
    with torch.no_grad():
        assert torch.equal(loaded(x), model(x))


def test_save_of_a_plain_adderized_timm_model_needs_its_name(tmp_path):
    ann = adderize.adderize(timm.create_model("resnet18", num_classes=4))
    with pytest.raises(ValueError, match="needs the timm model name"):
        adderize.save(ann, tmp_path / "x.safetensors")
    path = adderize.save(
        ann, tmp_path / "x.safetensors", model_name="resnet18", model_kwargs={"num_classes": 4}
    )
    assert isinstance(adderize.load(path).layer1[0].conv2, Adder2d)
    with pytest.raises(ValueError, match="not converted by adderize"):
        adderize.save(torch.nn.Linear(2, 2), tmp_path / "y.safetensors")


def test_pretrained_file_is_loaded_from_local_disk(tmp_path):
    torch.manual_seed(1)
    teacher = timm.create_model("resnet18", num_classes=3)
    weights = tmp_path / "resnet18.safetensors"
    save_file(teacher.state_dict(), str(weights))
    model = adderize.create_model("resnet18", num_classes=3, pretrained_file=weights)
    assert torch.equal(model.layer1[0].conv1.weight, teacher.layer1[0].conv1.weight)
    torch_file = tmp_path / "resnet18.pth"
    torch.save(teacher.state_dict(), torch_file)
    model = adderize.create_model("resnet18", num_classes=3, pretrained_file=torch_file)
    assert torch.equal(model.fc.weight, teacher.fc.weight)
    with pytest.raises(FileNotFoundError, match="pretrained file not found"):
        adderize.create_model("resnet18", pretrained_file=tmp_path / "missing.pth")


def test_untrusted_or_foreign_files_fail_cleanly(tmp_path):
    pickle_file = tmp_path / "model.pt"
    torch.save(torch.nn.Linear(2, 2), pickle_file)  # a pickled module
    with pytest.raises(ValueError, match="not a safetensors file"):
        adderize.load(pickle_file)
    plain = tmp_path / "plain.safetensors"
    save_file({"w": torch.zeros(2)}, str(plain))
    with pytest.raises(ValueError, match=r"was not saved by adderize\.save"):
        adderize.load(plain)
    with pytest.raises(FileNotFoundError):
        adderize.load(tmp_path / "nope.safetensors")


def test_future_format_and_tampered_tensors_are_refused(tmp_path):
    model = adderize.create_model("resnet18", num_classes=2)
    path = adderize.save(model, tmp_path / "a.safetensors")
    meta = adderize.io.read_metadata(path)
    assert meta["model_name"] == "resnet18" and meta["model_kwargs"] == {"num_classes": 2}
    state = {k: v.contiguous() for k, v in model.state_dict().items()}
    header = {
        "format": "adderize-model",
        "format_version": "99",
        "model_name": "resnet18",
        "model_kwargs": "{}",
        "ops": json.dumps(OpMapping().to_dict()),
    }
    save_file(state, str(tmp_path / "future.safetensors"), metadata=header)
    with pytest.raises(ValueError, match="format version '99'"):
        adderize.load(tmp_path / "future.safetensors")
    state.pop("fc.weight")
    header["format_version"] = "1"
    header["model_kwargs"] = json.dumps({"num_classes": 2})
    save_file(state, str(tmp_path / "cut.safetensors"), metadata=header)
    with pytest.raises(adderize.io.ModelFileError, match=r"missing tensor 'fc\.weight'"):
        adderize.load(tmp_path / "cut.safetensors")


def test_unknown_model_name_suggests_close_ones():
    with pytest.raises(
        ValueError, match=r"unknown timm model 'resnet1x'; close matches: .*resnet18"
    ):
        adderize.create_model("resnet1x")


def test_bad_pretrained_files_are_named(tmp_path):
    junk = tmp_path / "junk.safetensors"
    junk.write_bytes(b"\x00" * 64)
    with pytest.raises(ValueError, match=r"cannot load pretrained file .*junk.safetensors"):
        adderize.create_model("resnet10t", pretrained_file=junk)
    other = tmp_path / "other.pth"
    torch.save(nn.Linear(2, 2).state_dict(), other)
    with pytest.raises(ValueError, match=r"into resnet10t: Error\(s\) in loading state_dict"):
        adderize.create_model("resnet10t", pretrained_file=other)
