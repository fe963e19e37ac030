"""Recipes, distillation losses, the finetune loop, resume after kill, DDP."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml

from adderize.train.distill import FeatureTap, gaussian_kernel, kernel_loss, logit_kd
from adderize.train.recipe import Recipe, apply_overrides

ROOT = Path(__file__).resolve().parents[1]
RECIPES = sorted((ROOT / "recipes").glob("*.yaml"))
# A small, quick run of the digits recipe (16 px, few epochs) shared by the tests below.
QUICK = ["data.input_size=16", "teacher.epochs=2", "epochs=2", "anneal.refit_steps=5"]


def test_digits_recipe_file_equals_the_builtin_defaults():
    assert Recipe.load(ROOT / "recipes" / "digits.yaml") == Recipe()


@pytest.mark.parametrize("path", RECIPES, ids=lambda p: p.stem)
def test_every_recipe_parses(path):
    recipe = Recipe.load(path)
    assert recipe.model.name
    assert recipe.epochs > 0


def test_overrides_are_typed_and_nested():
    r = Recipe().override(["optim.lr=0.2", "distill.kind=kernel", "data.scale=[0.5, 1]"])
    assert r.optim.lr == 0.2 and r.distill.kind == "kernel" and r.data.scale == [0.5, 1]
    assert r.epochs == Recipe().epochs  # untouched keys keep their defaults
    r = Recipe().override(["optim.lr=1"])  # an int where a float is expected is fine
    assert isinstance(r.optim.lr, float)


def test_resolved_recipe_round_trips(tmp_path):
    r = Recipe().override(["seed=3", "ops={default: shift}"])
    assert Recipe.load(r.save(tmp_path / "c.yaml")) == r


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("optim.lrr=0.1", "unknown key 'lrr' (did you mean 'lr'?)"),
        ("bogus=1", "unknown key 'bogus'"),
        ("optim.lr=fast", "optim: lr must be a number, got 'fast'"),
        ("distill.kind=pkkd", "distill.kind must be one of none, logit, kernel; got 'pkkd'"),
        ("ops={default: multiply}", "multiply"),
        ("amp=fp8", "amp must be one of none, bf16"),
        ("epochs", "not KEY=VALUE"),
    ],
)
def test_bad_recipe_input_is_named(override, message):
    with pytest.raises(ValueError) as e:
        Recipe().override([override])
    assert message in str(e.value)


def test_unknown_key_in_a_recipe_file_names_the_file(tmp_path):
    path = tmp_path / "r.yaml"
    path.write_text(yaml.safe_dump({"optim": {"learning_rate": 0.1}}))
    with pytest.raises(ValueError, match=r"r\.yaml: optim: unknown key 'learning_rate'"):
        Recipe.load(path)


def test_apply_overrides_does_not_touch_its_input():
    data = {"optim": {"lr": 0.1}}
    apply_overrides(data, ["optim.lr=0.5"])
    assert data == {"optim": {"lr": 0.1}}


# ------------------------------------------------------------------------- distillation
def test_logit_kd_is_zero_for_equal_logits_and_matches_the_definition():
    s, t = torch.randn(4, 10), torch.randn(4, 10)
    assert logit_kd(t, t, 4.0).abs() < 1e-6
    T = 3.0
    pt = torch.softmax(t / T, 1)
    ref = (pt * (pt.log() - torch.log_softmax(s / T, 1))).sum(1).mean() * T * T
    torch.testing.assert_close(logit_kd(s, t, T), ref)


def test_kernel_loss_is_invariant_to_feature_scale_and_channel_order():
    f = torch.randn(6, 8, 4, 4)
    k = gaussian_kernel(f)
    assert k.shape == (6, 6)
    torch.testing.assert_close(k.diagonal(), torch.ones(6))
    permuted = 7.5 * f[:, torch.randperm(8)]
    assert kernel_loss([permuted], [f]) < 1e-10
    assert kernel_loss([torch.randn(6, 8, 4, 4)], [f]) > 1e-4


def test_feature_tap_records_named_outputs_in_order():
    model = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.ReLU(), torch.nn.Linear(4, 2))
    tap = FeatureTap(model, ["2", "0"])
    model(torch.randn(5, 3))
    out = tap.pop()
    assert [t.shape[-1] for t in out] == [2, 4]
    with pytest.raises(ValueError, match="no module 'head'"):
        FeatureTap(model, ["head"])


# ------------------------------------------------------------------------------ running
def _finetune(out: Path, *extra: str, **popen) -> subprocess.Popen:
    cmd = [sys.executable, "-m", "adderize", "finetune", "--no-progress", "--out", str(out)]
    return subprocess.Popen([*cmd, *QUICK, *extra], **popen)


def test_finetune_digits_end_to_end(tmp_path):
    from adderize.train.finetune import finetune

    out = tmp_path / "run"
    result = finetune(Recipe().override([*QUICK, "epochs=6", f"out={out}"]), progress=False)
    assert result.teacher_acc >= 0.8  # measured 0.95 (2 epochs at 16 px)
    assert result.student_acc >= 0.3  # measured 0.44 after 6 epochs; chance is 0.1
    for name in ("config.yaml", "metrics.csv", "metrics.json", "curves.png", "summary.json"):
        assert (out / name).is_file(), name
    history = json.loads((out / "metrics.json").read_text())
    assert [(r["phase"], r["epoch"]) for r in history] == [
        ("teacher", 1), ("teacher", 2), *(("student", i) for i in range(1, 7)),
    ]  # fmt: skip
    import adderize

    reloaded = adderize.load(result.student_file)
    assert sum(type(m).__name__ == "Adder2d" for m in reloaded.modules()) == result.replaced
    assert result.ops == {"Adder2d": result.replaced}  # what each converted layer became
    assert result.float_layers == ["conv1.0", "fc"]  # resnet10t's stem and classifier
    # The run directory is never overwritten by accident.
    with pytest.raises(ValueError, match="already holds a run"):
        finetune(Recipe().override([*QUICK, f"out={out}"]), progress=False)


def test_killed_run_resumes_to_the_same_result(tmp_path):
    """Kill after the first student epoch; --resume finishes with the uninterrupted metrics."""
    extra = ["epochs=3"]
    env = {**os.environ, "PYTHONHASHSEED": "0"}
    reference = _finetune(tmp_path / "ref", *extra, env=env)
    assert reference.wait(timeout=600) == 0
    victim = _finetune(tmp_path / "run", *extra, env=env)
    ckpt = tmp_path / "run" / "checkpoint-student.pt"
    deadline = time.monotonic() + 600
    while not ckpt.exists() and victim.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    victim.send_signal(signal.SIGKILL)
    victim.wait()
    assert ckpt.exists()
    done = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert sum(r["phase"] == "student" for r in done) < 3, "killed too late to test resume"
    resumed = _finetune(tmp_path / "run", *extra, "--resume", env=env)
    assert resumed.wait(timeout=600) == 0

    def final(run: str) -> list[tuple]:
        rows = json.loads((tmp_path / run / "metrics.json").read_text())
        return [(r["phase"], r["epoch"], r["val_acc"], round(r["train_loss"], 4)) for r in rows]

    assert final("run") == final("ref")


def test_finetune_cli_errors(tmp_path, capsys):
    from adderize.cli import main

    assert main(["finetune", "--recipe", str(tmp_path / "nope.yaml")]) == 2
    assert "recipe not found" in capsys.readouterr().err
    assert main(["finetune", "--data-dir", str(tmp_path / "missing")]) == 2
    assert "is not a directory" in capsys.readouterr().err
    assert main(["finetune", "model.name=resnet_nonexistent", f"out={tmp_path}/x"]) == 2
    assert "unknown timm model 'resnet_nonexistent'" in capsys.readouterr().err
    (tmp_path / "data").mkdir()
    args = ["finetune", "--recipe", str(ROOT / "recipes" / "resnet18.yaml")]
    assert main([*args, "--data-dir", str(tmp_path / "data"), "--out", str(tmp_path / "y")]) == 2
    assert "has no 'train' split" in capsys.readouterr().err


def test_two_process_ddp_step_matches_single_process_accumulation(tmp_path):
    """DDP over 2 CPU processes (gloo) == one process accumulating the same two shards.

    BatchNorm normalises each shard by its own statistics in both cases, so the reference is
    the mean of the per-shard gradients, and the adaptive LR must act on that mean (after the
    all-reduce), which the step's result checks.
    """
    import socket

    sys.path.insert(0, str(Path(__file__).parent))
    from ddp_worker import model_and_batch, optimizer_for

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    out = tmp_path / "ddp.pt"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2",
           "--master_addr", "127.0.0.1", "--master_port", str(port),
           str(Path(__file__).parent / "ddp_worker.py"), str(out)]  # fmt: skip
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    ddp = torch.load(out, weights_only=True)

    model, x, y = model_and_batch()
    opt = optimizer_for(model)
    model.train()
    for rank in range(2):
        loss = torch.nn.functional.cross_entropy(model(x[rank::2]), y[rank::2]) / 2
        loss.backward()
    opt.step()
    start, _, _ = model_and_batch()
    for name, value in model.state_dict().items():
        if "num_batches" in name or "running" in name:
            continue  # DDP keeps rank 0's own BN statistics
        torch.testing.assert_close(ddp[name], value, rtol=1e-4, atol=1e-5, msg=name)
        if name.endswith("weight") and value.dim() == 4:
            assert not torch.equal(value, start.state_dict()[name]), f"{name} did not move"
