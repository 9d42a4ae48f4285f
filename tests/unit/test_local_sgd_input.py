"""Local SGD (strategy local-sgd): a bad sync.every_k_steps is refused in one line before any worker starts. The
runs: tests/frameworks/test_local_sgd.py."""

from __future__ import annotations

from tests.helpers.cli import assert_one_line_error, xfw_in_process


def test_local_sgd_refuses_bad_input():
    for bad in ("0", "-3", "two"):
        proc = xfw_in_process("compare", "--strategy", "local-sgd", "--set", f"sync.every_k_steps={bad}")
        assert_one_line_error(proc, "sync.every_k_steps")
