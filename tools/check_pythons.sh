#!/usr/bin/env bash
# Import adderize and run a smoke conversion on each Python that pyproject's requires-python
# claims (pyenv's 3.10-3.13 on these machines), each in a fresh venv under $VENVS
# (default /tmp/adderize-pythons). Too slow for CI: off this machine's 3.11, pip fetches
# torch's CUDA build (about 1 GB each). Usage: tools/check_pythons.sh [3.10 3.12 ...]
set -uo pipefail
cd "$(dirname "$0")/.."
root=${VENVS:-/tmp/adderize-pythons}
versions=("$@")
[ ${#versions[@]} -gt 0 ] || versions=(3.10 3.11 3.12 3.13)
status=0
for v in "${versions[@]}"; do
  py=$(ls -d "$(pyenv root)"/versions/"$v".*/bin/python 2>/dev/null | tail -n 1)
  if [ -z "$py" ]; then echo "python $v: not installed (pyenv versions)"; status=1; continue; fi
  venv="$root/$v"
  [ -x "$venv/bin/python" ] || "$py" -m venv "$venv"
  if ! "$venv/bin/pip" install -q -e . > "$venv.install.log" 2>&1; then
    echo "python $v: install failed (see $venv.install.log)"; status=1; continue
  fi
  out=$("$venv/bin/python" - <<'PY' 2>&1
import sys, timm, torch, adderize
from adderize.train.anneal import Anneal, calibrate
model = timm.create_model("resnet10t", num_classes=4).eval()
ann, report = adderize.adderize(model, "shift", preserve=True, return_report=True)
x = torch.randn(4, 3, 32, 32)
calibrate(ann, [x])
Anneal(ann, 1).finalize()
with torch.no_grad():
    y = ann.eval()(x)
assert torch.isfinite(y).all() and y.shape == (4, 4)
print(f"{sys.version.split()[0]}: torch {torch.__version__}, {report.summary().split('.')[0]}")
PY
)
  if [ $? -eq 0 ]; then echo "python $v: ok ($out)"; else echo "python $v: FAILED"; echo "$out" | tail -n 5; status=1; fi
done
exit $status
