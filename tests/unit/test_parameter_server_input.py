"""Asynchronous training with parameter servers (strategy parameter-server): bad input is one line, before any worker
starts. The runs: tests/frameworks/test_parameter_server.py."""

from __future__ import annotations

from tests.helpers.cli import assert_one_line_error, xfw_in_process


def test_bad_parameter_server_input():
    for sets, expected in (
        (["sync.parameter_servers=0"], "sync.parameter_servers"),
        (["sync.parameter_servers=99"], "sync.parameter_servers 99 is more than the model's"),
        (["data.pipeline=native"], "data.pipeline native: a parameter-server worker"),
        (["training.per_replica_batch=16"], "training.per_replica_batch (weak scaling)"),
    ):
        args = [a for s in sets for a in ("--set", s)]
        assert_one_line_error(xfw_in_process("compare", "--strategy", "parameter-server", *args), expected)
