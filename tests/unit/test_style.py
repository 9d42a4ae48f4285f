"""Style kept by tools: the lint and format rules of pyproject.toml ([tool.ruff]) hold for the whole tree."""

import subprocess
import sys
from pathlib import Path

from tests.helpers.cli import ROOT

RUFF = str(Path(sys.executable).with_name("ruff"))


def test_ruff_lint():
    out = subprocess.run([RUFF, "check", "--no-cache", "."], cwd=ROOT, capture_output=True, text=True)
    assert out.returncode == 0, out.stdout + out.stderr


def test_ruff_format():
    out = subprocess.run([RUFF, "format", "--check", "--no-cache", "."], cwd=ROOT, capture_output=True, text=True)
    assert out.returncode == 0, out.stdout + out.stderr
