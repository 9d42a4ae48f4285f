"""Several networks: more networks than cores run when oversubscription is asked for (the configs refused in one
line: tests/unit/test_network_config.py)."""

import os

from tests.helpers.cli import run_xfw
from xfw.common.plan.machine import this_machine


def test_oversubscribed_networks_run(tmp_path):
    count = min(os.cpu_count() or 2, this_machine().devices) + 1
    nets = "[" + ",".join(f"{{name: n{i}}}" for i in range(count)) + "]"
    proc = run_xfw(
        "run",
        "--framework",
        "torch",
        "--impl",
        "processes",
        "--set",
        f"networks={nets}",
        "--set",
        "parallel.oversubscribe=true",
        "--set",
        "training.steps=30",
        "--out",
        str(tmp_path),
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.count("final loss") == count
