"""Shared helpers: every test drives xfw the way a user does, through the installed `xfw` command."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
XFW = str(Path(sys.executable).with_name("xfw"))


def run_xfw(
    *args: str, env: dict | None = None, timeout: float = 600, cwd: Path | None = None
) -> subprocess.CompletedProcess:
    return subprocess.run(
        [XFW, *args], capture_output=True, text=True, timeout=timeout, cwd=cwd or ROOT, env=os.environ | (env or {})
    )


def load_summary(out: Path) -> dict:
    return json.loads((out / "summary.json").read_text())


@pytest.fixture(scope="session")
def mirrored(tmp_path_factory) -> tuple[subprocess.CompletedProcess, dict, Path]:
    """`xfw compare --strategy mirrored` on the default config, run once for the whole session."""
    out = tmp_path_factory.mktemp("compare-mirrored")
    proc = run_xfw("compare", "--strategy", "mirrored", "--out", str(out))
    assert (out / "summary.json").exists(), proc.stderr
    return proc, load_summary(out), out
