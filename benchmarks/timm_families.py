"""Conversion sweep: one model of every timm model family, converted with the defaults.

A family is a timm model module (``timm.list_modules()``); its model is the one with the
fewest parameters among the family's smallest-named models (counted on the meta device,
``pretrained=False``). Each is converted by ``adderize(model)`` and run forward and backward
(batch 2, 64 px where the float model accepts it, else its own input size). Checked per
family: at least one layer converted, the first and last layers kept, every skipped layer
reported with a reason, forward and backward finite.

    python benchmarks/timm_families.py [--only resnet convnext [--merge]]
        [--json runs/timm-families.json]

Prints one line per family and a summary (families tried / passed, skipped layers by
reason); exits 1 if any family fails. ``tests/test_timm.py`` runs it in the slow set.
"""

from __future__ import annotations

# isort: off
import adderize

# isort: on
import argparse
import json
import re
import sys
import time
import traceback
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path

import timm
import torch

from adderize import log_to_stdout

SMALL = re.compile(
    r"atto|femto|pico|nano|tiny|xxs|xs|small|mini|micro|lite|_b0|_050|_035|_10|18|_s\b|_t\b"
)


@dataclass
class FamilyResult:
    family: str
    model: str = ""
    ok: bool = False
    input_size: int = 0
    replaced: int = 0
    kept: int = 0
    skipped: dict[str, int] = field(default_factory=dict)  # reason -> count
    error: str = ""
    seconds: float = 0.0


def _params_on_meta(name: str) -> int:
    try:
        with torch.device("meta"):
            model = timm.create_model(name, pretrained=False)
    except Exception:  # a model that cannot be built is not a candidate
        return sys.maxsize
    return sum(p.numel() for p in model.parameters())


def pick_model(family: str) -> str:
    """The smallest model of ``family`` (by parameters among its small-named models)."""
    names = timm.list_models(module=family)
    candidates = [n for n in names if SMALL.search(n)] or names
    return min(candidates, key=lambda n: (_params_on_meta(n), n))


def _runs(model: torch.nn.Module, size: int) -> bool:
    try:
        with torch.no_grad():
            model.eval()(torch.randn(1, 3, size, size))
        return True
    except Exception:
        return False


def _small_model(name: str, size: int = 64) -> tuple[torch.nn.Module, int]:
    """The model at 64 px: as built, else built for 64 px (``img_size``: ViT-like models
    with a fixed size), else at its own input size."""
    torch.manual_seed(0)
    model = timm.create_model(name, pretrained=False, num_classes=7)
    if _runs(model, size):
        return model, size
    try:
        torch.manual_seed(0)
        small = timm.create_model(name, pretrained=False, num_classes=7, img_size=size)
        if _runs(small, size):
            return small, size
    except Exception:  # the constructor takes no img_size
        pass
    return model, int(model.pretrained_cfg.get("input_size", (3, 224, 224))[-1])


def _reason_key(reason: str) -> str:
    """A skip reason without the layer-specific parts (class names stay)."""
    return re.sub(r"\b\d+\b", "N", reason)


def check(family: str, model_name: str | None = None) -> FamilyResult:
    """Convert one model of ``family`` and run it forward and backward."""
    res = FamilyResult(family)
    start = time.perf_counter()
    try:
        res.model = model_name or pick_model(family)
        model, size = _small_model(res.model)
        res.input_size = size
        conv, report = adderize.adderize(model.train(), inplace=True, return_report=True)
        acts = Counter(r.action for r in report.records)
        res.replaced, res.kept = acts["replaced"], acts["kept"]
        res.skipped = dict(Counter(_reason_key(r.reason) for r in report.records
                                   if r.action == "skipped"))  # fmt: skip
        problems = []
        if res.replaced == 0:
            problems.append("no layer converted")
        if any(r.action == "skipped" and not r.reason for r in report.records):
            problems.append("a skipped layer has no reason")
        kept = [r for r in report.records if r.action == "kept"]
        for end in ("first", "last"):
            if not any(end in r.reason for r in kept):
                problems.append(f"no {end} layer kept")
        y = conv(torch.randn(2, 3, size, size))
        y.float().square().mean().backward()
        grads = [p.grad for p in conv.parameters() if p.grad is not None]
        if not torch.isfinite(y).all() or not grads:
            problems.append("non-finite output or no gradient")
        elif not all(torch.isfinite(g).all() for g in grads):
            problems.append("non-finite gradient")
        res.error = "; ".join(problems)
        res.ok = not problems
    except Exception as e:  # reported per family, the sweep goes on
        res.error = f"{type(e).__name__}: {e}".splitlines()[0][:300]
        if "--verbose" in sys.argv:
            traceback.print_exc()
    res.seconds = time.perf_counter() - start
    return res


def summarize(results: list[FamilyResult]) -> str:
    ok = [r for r in results if r.ok]
    reasons: Counter[str] = Counter()
    for r in results:
        reasons.update(r.skipped)
    lines = [
        f"timm {timm.__version__}: {len(ok)}/{len(results)} families convert, run forward "
        "and backward, keep first/last and report every skip",
        f"layers: {sum(r.replaced for r in results)} replaced, "
        f"{sum(r.kept for r in results)} kept, {sum(reasons.values())} skipped",
    ]
    if reasons:
        lines.append("skipped layers by reason:")
        lines += [f"  {n:5d}  {reason}" for reason, n in reasons.most_common()]
    failed = [r for r in results if not r.ok]
    if failed:
        lines.append("failed:")
        lines += [f"  {r.family} ({r.model}): {r.error}" for r in failed]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", nargs="+", help="families (timm modules) to check")
    parser.add_argument("--json", default="runs/timm-families.json")
    parser.add_argument("--verbose", action="store_true", help="print tracebacks")
    parser.add_argument(
        "--merge",
        action="store_true",
        help="rerun --only's families into the existing --json and summarise all of it",
    )
    args = parser.parse_args()
    log_to_stdout()
    torch.set_num_threads(max(1, torch.get_num_threads()))
    families = args.only or timm.list_modules()
    results = []
    for i, family in enumerate(families, 1):
        r = check(family)
        results.append(r)
        status = "ok  " if r.ok else "FAIL"
        print(f"[{i:3d}/{len(families)}] {status} {family:24s} {r.model:32s} "
              f"{r.replaced:4d} replaced {sum(r.skipped.values()):3d} skipped "
              f"{r.seconds:6.1f} s {r.error}", flush=True)  # fmt: skip
    out = Path(args.json)
    if args.merge and out.is_file():
        fresh = {r.family: r for r in results}
        old = [FamilyResult(**d) for d in json.loads(out.read_text())]
        results = [fresh.pop(r.family, r) for r in old] + list(fresh.values())
    print()
    print(summarize(results))
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps([asdict(r) for r in results], indent=1))
    sys.exit(0 if all(r.ok for r in results) else 1)


if __name__ == "__main__":
    main()
