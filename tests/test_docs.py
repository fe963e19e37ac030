"""The documentation: every Python block of the README and of ``docs/`` runs, the output
the pages show is what the code prints, and the mkdocs site builds without a warning."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]


def _python_blocks(page: Path) -> list[str]:
    return re.findall(r"```python\n(.*?)```", page.read_text(), flags=re.S)


def _run_page(page: Path) -> dict:
    """Run a page's Python blocks in order, in one namespace, as a reader would."""
    namespace: dict = {"__name__": f"docs_{page.stem}"}
    for block in _python_blocks(page):
        exec(compile(block, str(page), "exec"), namespace)
    return namespace


# what each page's code must leave behind, beyond running: (page, check)
def _readme(ns: dict, tmp: Path) -> None:
    shown = re.search(r"# (adderize: replaced.*?)\n(?!#)", _python_blocks(ROOT / "README.md")[0],
                      flags=re.S)  # fmt: skip
    assert shown, "the tour shows the summary it prints"
    text = " ".join(line.lstrip("# ").strip() for line in shown.group(1).splitlines())
    assert " ".join(ns["report"].summary().split()) == " ".join(text.split())
    assert (tmp / "runs/readme/resnet18-adder.safetensors").is_file()


CHECKS = {
    "README.md": _readme,
    "training.md": lambda ns, tmp: (tmp / "runs/readme/finetune/student.safetensors").is_file(),
    "deployment.md": lambda ns, tmp: tuple(ns["y"].shape) == (1, 10),
}


@pytest.mark.parametrize("page", [p for p in PAGES if _python_blocks(p)], ids=lambda p: p.name)
def test_page_examples_run(page, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    namespace = _run_page(page)
    check = CHECKS.get(page.name)
    if check is not None:
        assert check(namespace, tmp_path) is not False


def test_every_page_is_in_the_site_and_linked_from_the_readme():
    config = (ROOT / "mkdocs.yml").read_text()
    readme = (ROOT / "README.md").read_text()
    for page in PAGES[1:]:
        assert page.name in config, f"{page.name} is not in mkdocs.yml's nav"
        if page.name != "index.md":
            assert f"docs/{page.name}" in readme, f"the README does not link {page.name}"


def test_energy_output_is_what_the_command_prints(capsys):
    from adderize.cli import main

    page = (ROOT / "docs/energy.md").read_text()
    block = re.search(r"\$ adderize energy resnet50 --rows 8[^\n]*\n(.*?)```", page, flags=re.S)
    assert block, "docs/energy.md shows the output of adderize energy resnet50 --rows 8"
    assert main(["energy", "resnet50", "--rows", "8"]) == 0
    printed = capsys.readouterr().out
    assert printed.strip() == block.group(1).strip()


def test_site_builds(tmp_path):
    """``pip install -e '.[test]'`` installs mkdocs, Material and mkdocstrings."""
    proc = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(tmp_path)],
        cwd=ROOT, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert (tmp_path / "api" / "index.html").is_file()
