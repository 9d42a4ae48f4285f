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
  # A wheel built here before against exactly these versions (same Python, frameworks, flavour and build recipe)
  # is reused from the user's cache; a fresh machine builds it (a few minutes) and keeps it there.
  py=$("$venv/bin/python" -c 'import sys; print(f"cp{sys.version_info.major}{sys.version_info.minor}")')
  recipe=$(cat scripts/cxx17 "$0" | sha256sum | cut -c1-12)
  cache="${XDG_CACHE_HOME:-$HOME/.cache}/xfw/horovod-0.28.1-$py-$versions-$flavor-$recipe"
  "${pip[@]}" uninstall -q -y horovod >/dev/null 2>&1 || true
  wheel=$(compgen -G "$cache/horovod-*.whl" | head -n 1 || true)
  if [ -n "$wheel" ]; then
    log "installing horovod 0.28.1 built earlier for $versions ($cache)"
    "${pip[@]}" install -q --no-deps "$wheel"
  else
    log "building horovod 0.28.1 for $versions (a few minutes)"
    export HOROVOD_WITH_PYTORCH=1 HOROVOD_WITH_TENSORFLOW=1 HOROVOD_WITHOUT_MXNET=1 HOROVOD_WITHOUT_MPI=1 HOROVOD_WITH_GLOO=1
    if [ "$flavor" = gpu ]; then export HOROVOD_GPU_OPERATIONS=NCCL; fi
    export MAKEFLAGS="-j$(nproc)"
    export XFW_REAL_CXX=${CXX:-g++}
    export CXX="$root/scripts/cxx17"
    # --no-build-isolation: horovod's setup.py imports torch and tensorflow to find them.
    # --no-cache-dir: never reuse pip's own cache, which does not know which framework versions a wheel was built for.
    built=$(mktemp -d)
    "${pip[@]}" wheel -q --no-build-isolation --no-cache-dir --no-deps -w "$built" horovod==0.28.1
    wheel=$(compgen -G "$built/horovod-*.whl" | head -n 1)
    "${pip[@]}" install -q --no-deps "$wheel"
    mkdir -p "$cache" && cp "$wheel" "$cache/" || log "could not keep the wheel in $cache (building again next time)"
    rm -rf "$built"
  fi
  for fw in torch tensorflow; do
    if ! "$venv/bin/python" -c "import horovod.$fw"; then
      rm -rf "$cache"  # a wheel that does not import is never reused
      log "horovod.$fw does not import after the install"
      exit 1
    fi
  done
  rm -f "$venv"/.xfw-horovod-*
  touch "$hvd_stamp"
fi
log "ready: $venv ($flavor; $versions; horovod 0.28.1)"
