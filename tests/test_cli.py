"""The command line, in-process and as `python -m adderize`."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

import adderize
from adderize.cli import main
from adderize.nn import BinaryConv2d


def test_convert_prints_summary_report_and_json(capsys, tmp_path):
    assert main(["convert", "resnet18", "--num-classes", "4"]) == 0
    assert "replaced 19 layer(s) (19 Adder2d); kept 2" in capsys.readouterr().out
    assert main(["convert", "resnet18", "--report"]) == 0
    out = capsys.readouterr().out
    assert "layer1.0.conv1" in out and "first layer" in out
    assert main(["convert", "resnet18", "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert sum(r["action"] == "replaced" for r in data["records"]) == 19


def test_convert_with_mapping_file_keep_and_out(capsys, tmp_path):
    ops = tmp_path / "ops.yaml"
    adderize.OpMapping(default="binary").set_name("layer1.0.conv2", "adder").save(ops)
    out = tmp_path / "ann.safetensors"
    code = main(
        [
            "convert",
            "resnet18",
            "--ops",
            str(ops),
            "--keep",
            "layer2.0.conv1",
            "--num-classes",
            "3",
            "--out",
            str(out),
        ]
    )
    assert code == 0
    model = adderize.load(out)
    assert isinstance(model.layer1[0].conv1, BinaryConv2d)
    assert type(model.layer2[0].conv1).__name__ == "Conv2d"
    assert "saved" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["convert", "resnet1x"], "unknown timm model 'resnet1x'"),
        (["convert", "resnet18", "--ops", "mul"], "neither a mapping file nor an op name"),
        (["convert", "resnet18", "--keep", "conv9"], "did you mean ['conv1']"),
        (["convert", "resnet18", "--model-kwargs", "[1]"], "must be a JSON object"),
        # 3 anti-aliasing blur filters: functional convs on fixed buffers, not weights
        (["convert", "tresnet_m", "--strict"], "strict=True: 3 layer(s)"),
        (["compile", "resnet18", "--input-size", "1,3,16"], "3 number(s), not 1 or 4"),
        (["compile", "resnet18", "--input-size", "1,3,0,16"], "every entry must be positive"),
    ],
)
def test_errors_exit_2_with_a_clear_message(capsys, argv, message):
    assert main(argv) == 2
    assert message in capsys.readouterr().err


def test_python_dash_m_entry_point():
    proc = subprocess.run(
        [sys.executable, "-m", "adderize", "--version"], capture_output=True, text=True, check=True
    )
    assert proc.stdout.strip() == f"adderize {adderize.__version__}"


def test_import_does_not_pull_optional_heavy_packages():
    code = "import sys, adderize; print(sorted(m for m in ('tvm', 'nni') if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_demo_runs_the_pipeline_and_reuses_its_run(capsys, tmp_path):
    args = ["demo", "--epochs", "1", "--no-progress", "--out", str(tmp_path), "teacher.epochs=2",
            "data.input_size=16", "anneal.refit_steps=5"]  # fmt: skip
    assert main(args) == 0
    out = capsys.readouterr().out
    assert "replaced 13 layer(s)" in out and "(same as trained: True)" in out
    for name in ("summary.json", "energy.png", "run/curves.png", "run/student.safetensors"):
        assert (tmp_path / name).is_file(), name
    first = json.loads((tmp_path / "summary.json").read_text())
    assert first["compute_energy_ratio"] < 0.6
    assert main(args) == 0  # a rerun reuses the finished run instead of training again
    assert "continuing / reusing the run" in capsys.readouterr().out
    assert json.loads((tmp_path / "summary.json").read_text()) == first


@pytest.mark.parametrize(
    ("command", "text", "message"),
    [
        ("finetune --recipe", "model:\n  name: [resnet\nepochs: 1\n", ":3:7: not valid YAML"),
        ("convert resnet18 --ops", "default: adder\n  bad: indent\n", ":2:6: not valid YAML"),
        (
            "convert resnet18 --ops",
            'default: !!python/object/apply:os.system ["echo pwned"]\n',
            ":1:10: not valid YAML: could not determine a constructor for the tag "
            "'tag:yaml.org,2002:python/object/apply:os.system' (only standard YAML tags",
        ),
        ("energy resnet18 --table", "mult: [1\n", ":2:1: not valid YAML"),
    ],
)
def test_bad_yaml_names_file_line_and_column(capsys, tmp_path, command, text, message):
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    assert main([*command.split(), str(path)]) == 2
    err = capsys.readouterr().err
    assert f"{path}{message}" in err, err
    assert "Traceback" not in err


def test_outputs_are_checked_before_work(capsys, tmp_path):
    out = tmp_path / "m.safetensors"
    assert main(["convert", "resnet10t", "--num-classes", "3", "--out", str(out)]) == 0
    assert "replacing" not in capsys.readouterr().err
    assert main(["convert", "resnet10t", "--num-classes", "3", "--out", str(out)]) == 0
    assert f"replacing the existing {out}" in capsys.readouterr().err
    assert main(["compile", str(out), "--out", str(out)]) == 2
    assert "is the input file" in capsys.readouterr().err
    assert main(["convert", "resnet10t", "--out", str(tmp_path)]) == 2
    assert "is a directory" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["compile", "resnet18", "--tune-trials", "-1"], "--tune-trials: must be >= 0, got -1"),
        (["run", "model.so", "--repeat", "0"], "--repeat: must be >= 1, got 0"),
        (["search", "resnet10t", "--budget", "-1"], "--budget: must be > 0, got -1"),
        (["tune", "resnet18", "--trials", "abc"], "--trials: expected a number, got 'abc'"),
        (["compile", "resnet18", "--tolerance", "-0.1"], "--tolerance: must be >= 0, got -0.1"),
    ],
)
def test_counts_and_sizes_are_checked_before_any_work(capsys, argv, message):
    assert main(argv) == 2
    assert message in capsys.readouterr().err


def test_search_names_its_op_set_apart_from_an_op_mapping(capsys):
    # --ops is an op mapping in convert/energy/tune/compile; search chooses from --op-set
    assert main(["search", "resnet10t", "--ops", "adder,conv", "--trials", "1"]) == 2
    err = capsys.readouterr().err
    assert "search takes --op-set adder,conv" in err and "--ops is an op mapping" in err


def test_model_source_options_are_the_same_in_every_command():
    from adderize.cli import build_parser

    parser = build_parser()
    sub = next(a for a in parser._actions if a.dest == "command")
    wanted = {"--ops", "--keep", "--pretrained-file", "--num-classes", "--model-kwargs"}
    for name in ("convert", "energy", "tune", "compile"):
        options = {o for a in sub.choices[name]._actions for o in a.option_strings}
        assert wanted <= options, f"{name} lacks {wanted - options}"
    for name in ("energy", "tune", "compile"):
        (size,) = [a for a in sub.choices[name]._actions if "--input-size" in a.option_strings]
        assert size.default == "224"


def test_user_errors_exit_2_and_bugs_keep_their_traceback(capsys, monkeypatch):
    from adderize import AdderizeError
    from adderize.cli import energy

    def fail(error):
        def cmd(args):
            raise error

        return cmd

    monkeypatch.setattr(energy, "run", fail(AdderizeError("bad --bits 7; valid: 16, 32")))
    assert main(["energy", "resnet18"]) == 2
    assert "adderize: error: bad --bits 7" in capsys.readouterr().err
    monkeypatch.setattr(energy, "run", fail(ValueError("an internal bug")))
    with pytest.raises(ValueError, match="an internal bug"):
        main(["energy", "resnet18"])
