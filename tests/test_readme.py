"""The README's Python examples run, and the output they show is what they print."""

from __future__ import annotations

import re
from pathlib import Path

README = Path(__file__).resolve().parents[1] / "README.md"


def _python_blocks() -> list[str]:
    return re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.S)


def test_readme_examples_run(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    blocks = _python_blocks()
    assert len(blocks) >= 4
    namespace: dict = {}
    for block in blocks:
        exec(compile(block, str(README), "exec"), namespace)
    shown = re.search(r"# (adderize: replaced.*?)\n(?!#)", blocks[0], flags=re.S)
    assert shown, "the first example shows the summary it prints"
    text = " ".join(line.lstrip("# ").strip() for line in shown.group(1).splitlines())
    assert " ".join(namespace["report"].summary().split()) == " ".join(text.split())
    assert (tmp_path / "runs/readme/resnet18-adder.safetensors").is_file()
    assert (tmp_path / "runs/readme/finetune/student.safetensors").is_file()
    assert namespace["y"].shape == (1, 10)


def test_readme_energy_output_is_what_the_command_prints(capsys):
    from adderize.cli import main

    block = re.search(
        r"\$ adderize energy resnet50 --rows 8[^\n]*\n(.*?)```", README.read_text(), flags=re.S
    )
    assert block, "the README shows the output of adderize energy resnet50 --rows 8"
    assert main(["energy", "resnet50", "--rows", "8"]) == 0
    printed = capsys.readouterr().out
    assert printed.strip() == block.group(1).strip()
