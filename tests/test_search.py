"""Energy-constrained op search: the space, the budget, the exported mapping, NNI runs."""

from __future__ import annotations

import json

import numpy as np
import pytest
import timm
import torch
from torch import nn

import adderize
from adderize.energy import energy_report
from adderize.search import OpSpace, SearchSettings, pareto_front, search
from adderize.train.recipe import Recipe

pytestmark = pytest.mark.nni
SIZE = (1, 3, 16, 16)
QUICK = ["data.input_size=16", "teacher.epochs=1"]


@pytest.fixture(scope="module")
def model() -> torch.nn.Module:
    torch.manual_seed(0)
    return timm.create_model("resnet10t", num_classes=10)


@pytest.fixture(scope="module")
def space(model) -> OpSpace:
    return OpSpace.from_model(model, SIZE, budget=0.5)


def test_space_has_one_choice_per_convertible_layer(model, space):
    convs = [n for n, m in model.named_modules() if isinstance(m, torch.nn.Conv2d)]
    assert len(space.layers) == len(convs) - 1  # every conv but the first (stem) is searched
    assert space.fixed == ("conv1.0", "fc")
    assert space.ops == ("conv", "adder", "binary", "shift")
    assert space.size() == 4 ** len(space.layers)
    nni_space = space.to_nni()
    assert sorted(nni_space.simplify()) == sorted(space.layers)  # one Categorical per layer
    assert "__energy_budget__" in nni_space  # plus the budget constraint
    wide = OpSpace.from_model(model, SIZE, budget=0.5, search_first_last=True)
    assert len(wide.layers) == len(space.layers) + 2 and wide.fixed == ()


def test_budget_constraint_and_feasible_fraction(space):
    all_conv = {n: "conv" for n in space.layers}
    all_binary = {n: "binary" for n in space.layers}
    assert space.energy(all_conv) == pytest.approx(space.conv_pj)
    assert not space.feasible(all_conv) and space.feasible(all_binary)
    nni_space = space.to_nni()
    assert nni_space.contains({**all_binary, "__energy_budget__": None}) is True
    assert nni_space.contains({**all_conv, "__energy_budget__": None}) is False
    frac = space.feasible_fraction(samples=4000)
    rng = np.random.default_rng(1)
    brute = np.mean([space.feasible(space.random(rng)) for _ in range(4000)])
    assert 0 < frac < 1 and abs(frac - brute) < 0.05


def test_exported_mapping_reproduces_the_energy_exactly(model, space, tmp_path):
    rng = np.random.default_rng(0)
    assignment = space.random(rng)
    path = tmp_path / "ops.yaml"
    space.mapping(assignment).save(path)
    built = adderize.adderize(model, adderize.OpMapping.load(path), strict=True)
    kinds = {n: type(m).__name__ for n, m in built.named_modules()}
    expect = {
        "conv": "Conv2d",
        "adder": "Adder2d",
        "binary": "BinaryConv2d",
        "shift": "ShiftConv2d",
    }
    assert all(kinds[n] == expect[op] for n, op in assignment.items())
    report = energy_report(built, SIZE)
    assert report.total_pj == pytest.approx(space.energy(assignment), rel=1e-12)


def test_bad_input_is_named(model):
    with pytest.raises(ValueError, match="unknown op"):
        OpSpace.from_model(model, SIZE, budget=0.5, ops=("adder", "multiply"))
    with pytest.raises(ValueError, match="budget must be > 0"):
        OpSpace.from_model(model, SIZE, budget=0)
    with pytest.raises(ValueError, match="strategy must be one of random, evolution"):
        SearchSettings(strategy="darts")


def test_pareto_front():
    rows = [
        {"trained": True, "energy_pj": 1.0, "accuracy": 0.5},
        {"trained": True, "energy_pj": 2.0, "accuracy": 0.4},  # dominated
        {"trained": True, "energy_pj": 3.0, "accuracy": 0.9},
        {"trained": False, "energy_pj": 0.5, "accuracy": None},
    ]
    assert [r["energy_pj"] for r in pareto_front(rows)] == [1.0, 3.0]


def test_sequential_search_never_trains_over_budget(tmp_path):
    out = tmp_path / "s"
    settings = SearchSettings(budget=0.35, strategy="evolution", trials=3, trial_epochs=1,
                              engine="sequential", population=2)  # fmt: skip
    summary = search(Recipe().override(QUICK), settings, out)
    rows = [json.loads(line) for line in (out / "trials.jsonl").read_text().splitlines()]
    assert len(rows) == 3 and all(r["trained"] and r["feasible"] for r in rows)
    space = OpSpace.from_json((out / "space.json").read_text())
    assert all(r["energy_pj"] <= space.budget_pj for r in rows)
    assert summary["best"]["energy_ratio"] <= 0.35
    for name in ("pareto.png", "trials.csv", "best_ops.yaml", "summary.json"):
        assert (out / name).is_file()


def test_nni_experiment_end_to_end(tmp_path):
    """A real NNI experiment (local training service, 2 trials at once) via the CLI, with its
    web portal bound to 127.0.0.1 (about 1.5 min here)."""
    import subprocess
    import sys

    out = tmp_path / "nni"
    cmd = [sys.executable, "-m", "adderize", "search", "resnet10t", "--budget", "0.4",
           "--strategy", "random", "--trials", "3", "--trial-epochs", "1", "--concurrency",
           "2", "--out", str(out), *QUICK]  # fmt: skip
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=1200)
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = [json.loads(line) for line in (out / "trials.jsonl").read_text().splitlines()]
    assert len(rows) == 3 and all(r["trained"] and r["energy_ratio"] <= 0.4 for r in rows)
    assert (out / "nni-experiments").is_dir() and (out / "pareto.png").is_file()


def test_supernet_candidates_share_one_weight_and_match_the_float_layer(model, space):
    """Each layer's candidates read one Parameter, except the adder's own weight, refit to
    the float layer's outputs; the fitted affine maps every op onto the conv's output
    scale; freezing a sample keeps the weights, over budget is refused."""
    from nni.mutable import SampleValidationError

    from adderize.search.oneshot import OpSupernet, layer_ops

    torch.manual_seed(0)
    batches = [torch.randn(4, 3, 16, 16) for _ in range(2)]
    everything = OpSpace.from_model(model, SIZE, budget=1.0)  # all-conv within budget
    net = OpSupernet(model, everything, batches, refit_steps=20)
    name = space.layers[3]
    choice = net.model.get_submodule(name)
    weights = {id(choice[op].weight) for op in space.ops if op != "adder"}
    assert len(weights) == 1 and choice["conv"].weight is not model.get_submodule(name).weight
    assert id(choice["adder"].weight) not in weights
    assert len({id(choice[op].bias) for op in space.ops}) == 1
    before, after = net.refit_residuals[f"{name}/adder"]
    assert after < 0.8 * before  # the float weight read as an l1 distance: unrelated
    x = torch.randn(4, 3, 16, 16)
    feats = {}
    hook = choice["conv"].register_forward_hook(lambda m, a, o: feats.setdefault("x", a[0]))
    with torch.no_grad():
        net.model.eval()
        sample = {n: "conv" for n in space.layers}
        frozen = net.freeze(sample)
        torch.testing.assert_close(frozen.eval()(x), model.eval()(x))  # all-conv: the model
        hook.remove()
        ref = choice["conv"](feats["x"])
        for op in ("adder", "shift"):  # the affine fit makes each op's output conv-like
            out = choice[op](feats["x"])
            assert abs(out.mean() - ref.mean()) < 0.5 * ref.std()
            assert 0.3 < out.std() / ref.std() < 3
    low = {n: "binary" for n in space.layers}
    assert layer_ops(net.freeze(low), space.layers) == low
    # the same sub-network as NNI's own freeze, whose modules outside the choices are
    # copies (scoring re-estimates BatchNorm in them, the supernet's stay as they were)
    from nni.mutable import Categorical
    from nni.nas.nn.pytorch import LayerChoice
    from nni.nas.nn.pytorch.base import recursive_freeze

    mixed = {n: ("binary", "shift", "adder")[i % 3] for i, n in enumerate(space.layers)}
    frozen, theirs = net.freeze(mixed), recursive_freeze(net, mixed, include_root=False)[0]
    assert not any(isinstance(m, (LayerChoice, Categorical)) for m in frozen.model.modules())
    with torch.no_grad():
        torch.testing.assert_close(frozen.eval()(x), theirs.eval()(x))
    bn = next(n for n, m in net.model.named_modules() if isinstance(m, nn.BatchNorm2d))
    frozen.get_submodule(f"model.{bn}").running_mean.add_(1.0)
    assert not torch.equal(
        frozen.get_submodule(f"model.{bn}").running_mean, net.model.get_submodule(bn).running_mean
    )
    with pytest.raises(SampleValidationError, match="over budget"):
        OpSupernet(model, space).freeze({n: "conv" for n in space.layers})


def test_oneshot_search_with_nni_strategies(tmp_path):
    """--mode oneshot: NNI's RandomOneShot trains the supernet, RegularizedEvolution scores
    sub-networks with inherited weights; every scored one is within budget."""
    out = tmp_path / "o"
    settings = SearchSettings(budget=0.4, strategy="evolution", trials=4, population=2,
                              mode="oneshot", supernet_epochs=1)  # fmt: skip
    summary = search(Recipe().override(QUICK), settings, out)
    rows = [json.loads(line) for line in (out / "trials.jsonl").read_text().splitlines()]
    assert len(rows) == 4 and all(r["feasible"] and r["energy_ratio"] <= 0.4 for r in rows)
    assert all(0 <= r["accuracy"] <= 1 for r in rows)
    assert summary["best"]["energy_ratio"] <= 0.4
    import adderize
    from adderize.passes.mapping import OpMapping

    best = adderize.load(out / "best_model.safetensors")  # the best, with its weights
    assert best.adderize_ops == OpMapping.load(out / "best_ops.yaml").to_dict()
    front = {p["trial"]: p["assignment"] for p in summary["front"]}  # each with its layers' ops
    assert front and all(front[r["trial"]] == r["assignment"] for r in rows if r["trial"] in front)
    assert (out / "best_ops.yaml").is_file() and (out / "pareto.png").is_file()
    with pytest.raises(ValueError, match="evolution or random"):
        SearchSettings(mode="oneshot", strategy="tpe")


def test_build_experiment_configures_nni_without_starting_it(tmp_path, space):
    from adderize.search.engines import build_experiment
    from adderize.search.settings import SearchSettings

    settings = SearchSettings(trials=7, concurrency=2, seed=3)
    exp = build_experiment(tmp_path, space, settings)
    c = exp.config
    assert c.trial_command.endswith(f"-m adderize.search.trial {tmp_path.resolve()}")
    assert c.search_space == space.hpo_search_space()
    assert c.tuner.class_name == "adderize.search.tuner.BudgetTuner"
    assert c.tuner.class_args["seed"] == 3
    assert (c.max_trial_number, c.trial_concurrency) == (7, 2)
    assert c.experiment_working_directory == str((tmp_path / "nni-experiments").resolve())
    assert c.training_service.platform == "local"  # callers may swap in a remote service


def test_scoring_batches_kept_in_memory_only_when_small():
    from adderize.search.oneshot_run import kept_in_memory

    loader = torch.utils.data.DataLoader(
        torch.utils.data.TensorDataset(torch.randn(10, 3), torch.arange(10)), batch_size=4
    )
    kept = kept_in_memory(loader)
    assert isinstance(kept, list) and len(kept) == 3
    assert all(torch.equal(a[0], b[0]) for a, b in zip(kept, loader, strict=True))
    assert kept_in_memory(loader, max_bytes=100) is loader  # 3 batches of 4 x 3 floats + labels


def test_exported_subnet_computes_what_was_scored_and_round_trips(model, space, tmp_path):
    """The scored sub-network as a plain converted model: its weights, its BatchNorm
    statistics and every op's output affine folded into them; saved and loaded, it gives
    the sub-network's outputs."""
    import adderize
    from adderize.search.oneshot import OpSupernet, export_subnet, layer_ops, score_subnet
    from adderize.train.anneal import BLEND_ATTR

    torch.manual_seed(0)
    batches = [torch.randn(8, 3, 16, 16) for _ in range(2)]
    everything = OpSpace.from_model(model, SIZE, budget=1.0)
    net = OpSupernet(model, everything, batches, refit_steps=5)
    sample = {n: ("binary", "shift", "conv", "adder")[i % 4] for i, n in enumerate(space.layers)}
    sub = net.freeze(sample).train()
    val = [(torch.randn(8, 3, 16, 16), torch.zeros(8, dtype=torch.long))]
    score_subnet(sub, batches, val)  # BatchNorm re-estimated, then eval mode
    exported = export_subnet(model, everything, sub)
    assert layer_ops(sub, space.layers) == sample
    assert not hasattr(exported, BLEND_ATTR)
    blendable = [m for m in exported.modules() if isinstance(m, adderize.nn.Blendable)]
    assert blendable and not any(m.blending for m in blendable)
    x = torch.randn(4, 3, 16, 16)
    with torch.no_grad():
        want = sub.eval()(x)
        torch.testing.assert_close(exported(x), want, rtol=1e-4, atol=1e-4)
        path = adderize.save(exported, tmp_path / "m.safetensors", model_name="resnet10t",
                             model_kwargs={"num_classes": 10})  # fmt: skip
        torch.testing.assert_close(adderize.load(path).eval()(x), want, rtol=1e-4, atol=1e-4)
    from adderize.io import read_metadata

    assert read_metadata(path)["ops"] == everything.mapping(sample).to_dict()


def test_energy_levels_spread_the_trials_from_the_cheapest_model_to_the_budget(space):
    from adderize.search.oneshot_run import energy_levels

    floor = space.min_energy()
    cheapest = {n: "binary" for n in space.layers}  # binary: the cheapest op on every layer
    assert floor == pytest.approx(space.energy(cheapest)) and floor < space.budget_pj
    levels = energy_levels(space, 10, 3)
    caps = [c for c, _ in levels]
    assert [n for _, n in levels] == [3, 3, 4] and caps == sorted(caps)
    assert caps[-1] == space.budget_pj and caps[0] == pytest.approx(floor + (caps[-1] - floor) / 3)
    assert energy_levels(space, 2, 3) == [(caps[1], 1), (space.budget_pj, 1)]  # none: left out
    assert energy_levels(space, 5, 1) == [(space.budget_pj, 5)]
    with pytest.raises(ValueError, match="energy_levels must be >= 1"):
        SearchSettings(energy_levels=0)
