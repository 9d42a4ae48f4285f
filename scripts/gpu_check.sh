#!/usr/bin/env bash
# Every GPU check in one go, for a GPU machine held for minutes: the GPU tests (tests/gpu/test_gpu.py, their compares
# kept under OUT/pytest), the shared-device sweep, then OUT/gpu_check.md, a short summary. Usage:
#   bash scripts/gpu_check.sh [OUT]        (default runs/gpu_check; exit status: the tests')
# Runs in the project's .venv where there is one. Elsewhere (a GPU machine with its own Python and PyTorch but
# no network, see the README's "GPU" section) it runs from the source folders through a path shim, installing
# the wheels in XFW_WHEELS (default .whl) that its Python lacks; TensorFlow runs are then skipped as not
# installed, as on any machine without it.
set -uo pipefail
cd "$(dirname "$0")/.."
out=$(mkdir -p "${1:-runs/gpu_check}" && cd "${1:-runs/gpu_check}" && pwd)

if [ -x .venv/bin/xfw ]; then
  python=.venv/bin/python
else
  python=${XFW_PYTHON:-python3}
  shim=$(mktemp -d)
  wheels=${XFW_WHEELS:-.whl}
  if ! "$python" -c "import pydantic" 2>/dev/null && compgen -G "$wheels/*.whl" >/dev/null; then
    "$python" -m pip install -q --no-index --no-deps --no-compile --target "$shim/deps" "$wheels"/*.whl || exit 2
  fi
  # xfw/ links the top-level folders into the package: the checkout itself is importable.
  export PYTHONPATH="$PWD:$shim/deps${PYTHONPATH:+:$PYTHONPATH}"
fi
export PYTHONUNBUFFERED=1
xfw=("$python" -m xfw.cli.main)

{ nvidia-smi -L; "$python" -c "import sys, torch; print(sys.version.split()[0], 'torch', torch.__version__, \
'cuda', torch.version.cuda, torch.cuda.get_device_name(0) if torch.cuda.is_available() else 'no GPU')"; } \
  > "$out/machine.txt" 2>&1
"${xfw[@]}" list > "$out/list.txt" 2>&1

echo "== GPU tests" >&2
"$python" -m pytest -q -rs -p no:cacheprovider tests/gpu/test_gpu.py --basetemp "$out/pytest" \
  --junitxml "$out/gpu_tests.xml" 2>&1 | tee "$out/gpu_tests.log"
tests=${PIPESTATUS[0]}

echo "== shared-device sweep (two networks on one GPU: sequential, threads, CUDA streams, processes)" >&2
"${xfw[@]}" compare --strategy shared-device --config configs/shared_device.yaml --set training.steps=300 \
  --out "$out/shared_device" > "$out/shared_device.log" 2>&1

"$python" scripts/gpu_summary.py "$out" | tee "$out/gpu_check.md"
exit "$tests"
