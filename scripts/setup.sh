#!/usr/bin/env bash
# Makes the project-local virtual environment .venv with pinned frameworks and a Horovod built against
# exactly those versions. Idempotent: what is already installed and stamped is not redone.
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD
venv=${XFW_VENV:-$root/.venv}
python=${XFW_PYTHON:-python3}

log() { printf 'xfw setup: %s\n' "$*" >&2; }

if [ ! -x "$venv/bin/python" ]; then
  log "creating $venv"
  "$python" -m venv "$venv"
fi
pip=("$venv/bin/python" -m pip --disable-pip-version-check)

flavor=cpu
if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; then flavor=gpu; fi

deps_hash=$(cat requirements/common.txt "requirements/$flavor.txt" pyproject.toml | sha256sum | cut -c1-16)
deps_stamp="$venv/.xfw-deps-$flavor-$deps_hash"
if [ ! -f "$deps_stamp" ]; then
  log "installing pinned packages (requirements/$flavor.txt)"
  "${pip[@]}" install -q -r "requirements/$flavor.txt"
  "${pip[@]}" install -q --no-deps -e .
  rm -f "$venv"/.xfw-deps-*
  touch "$deps_stamp"
fi

# Horovod 0.28.1 is a source distribution compiled against the installed torch and TensorFlow; it refuses
# to import if either changes version afterwards, so the stamp names both versions.
versions=$("$venv/bin/python" - <<'PY'
from importlib.metadata import version, PackageNotFoundError
def v(*names):
    for n in names:
        try:
            return version(n)
        except PackageNotFoundError:
            pass
    return "none"
print(f"torch{v('torch')}-tf{v('tensorflow-cpu', 'tensorflow')}")
PY
)
hvd_stamp="$venv/.xfw-horovod-0.28.1-$versions"
if [ ! -f "$hvd_stamp" ]; then
  log "building horovod 0.28.1 for $versions (a few minutes)"
  export HOROVOD_WITH_PYTORCH=1 HOROVOD_WITH_TENSORFLOW=1 HOROVOD_WITHOUT_MXNET=1 HOROVOD_WITHOUT_MPI=1 HOROVOD_WITH_GLOO=1
  if [ "$flavor" = gpu ]; then export HOROVOD_GPU_OPERATIONS=NCCL; fi
  export MAKEFLAGS="-j$(nproc)"
  export XFW_REAL_CXX=${CXX:-g++}
  export CXX="$root/scripts/cxx17"
  # --no-build-isolation: horovod's setup.py imports torch and tensorflow to find them.
  # --no-cache-dir: never reuse a wheel built against other framework versions.
  "${pip[@]}" uninstall -q -y horovod >/dev/null 2>&1 || true
  "${pip[@]}" install -q --no-build-isolation --no-cache-dir horovod==0.28.1
  for fw in torch tensorflow; do
    "$venv/bin/python" -c "import horovod.$fw" || { log "horovod.$fw does not import after the build"; exit 1; }
  done
  rm -f "$venv"/.xfw-horovod-*
  touch "$hvd_stamp"
fi
log "ready: $venv ($flavor; $versions; horovod 0.28.1)"
