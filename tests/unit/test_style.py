"""Style and types kept by tools: the lint and format rules of pyproject.toml ([tool.ruff]) hold for the whole tree,
and mypy ([tool.mypy]) finds no type error in common/ and cli/, resolving every import from the tree."""

import subprocess
import sys
from pathlib import Path

from tests.helpers.cli import ROOT

RUFF = str(Path(sys.executable).with_name("ruff"))
MYPY = str(Path(sys.executable).with_name("mypy"))


def test_ruff_lint():
    out = subprocess.run([RUFF, "check", "--no-cache", "."], cwd=ROOT, capture_output=True, text=True)
    assert out.returncode == 0, out.stdout + out.stderr


def test_ruff_format():
    out = subprocess.run([RUFF, "format", "--check", "--no-cache", "."], cwd=ROOT, capture_output=True, text=True)
    assert out.returncode == 0, out.stdout + out.stderr


def test_mypy():
    # The packages and the strictness come from [tool.mypy]; the cache (.mypy_cache) keeps a warm run under a second.
    out = subprocess.run([MYPY], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stdout + out.stderr
