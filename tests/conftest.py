"""The tiers, one folder each, and the fixtures every tier may share. Helpers live in tests/helpers/ (imported as
`tests.helpers.x`); no test module imports another, nor this file (tests/unit/test_tiers.py checks both).

- unit/: no framework imported and no worker started (tests/unit/test_tiers.py holds it to that): `make test-fast`;
- frameworks/: TensorFlow or PyTorch, in the test process or as the workers of an `xfw` command;
- hosts/: network namespaces (virtual hosts) and mounts: root only, skipped elsewhere;
- gpu/: an NVIDIA GPU; skipped where none exists (scripts/gpu_check.sh runs them on one)."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from tests.helpers.cli import compare_once

TESTS = Path(__file__).resolve().parent
TIERS = ("unit", "frameworks", "hosts", "gpu")


def pytest_collection_modifyitems(config, items):
    """Each test is marked with its folder's tier (`-m unit`, `-m "not frameworks"`, ...)."""
    for item in items:
        path = Path(item.path).resolve()
        tier = path.relative_to(TESTS).parts[0] if path.is_relative_to(TESTS) else None
        if tier in TIERS:
            item.add_marker(getattr(pytest.mark, tier))


@pytest.fixture(scope="session")
def mirrored(tmp_path_factory) -> tuple[subprocess.CompletedProcess, dict, Path]:
    """`xfw compare --strategy mirrored` on the default config, run once for the whole session."""
    return compare_once(tmp_path_factory, "mirrored", "--strategy", "mirrored")
