"""Several-network configs a tired user might type: refused in one line before any worker starts (in-process). More
networks than cores running when oversubscription is asked for: tests/frameworks/test_network_input.py."""

import pytest

from tests.helpers.cli import assert_one_line_error, xfw_in_process
from xfw.common.plan.machine import this_machine


def test_more_networks_than_devices_is_refused_unless_oversubscribed(tmp_path):
    count = this_machine().devices + 1
    nets = "[" + ",".join(f"{{name: n{i}}}" for i in range(count)) + "]"
    proc = xfw_in_process("compare", "--strategy", "independent", "--set", f"networks={nets}", "--out", str(tmp_path))
    assert_one_line_error(proc, f"{count} networks, one device each, but this machine has {this_machine().devices}")
    proc = xfw_in_process(
        "run", "--framework", "torch", "--impl", "processes", "--set", f"networks={nets}", "--out", str(tmp_path)
    )
    assert_one_line_error(proc, "parallel.oversubscribe")


@pytest.mark.parametrize(
    "strategy, overrides, expected",
    [
        (
            "collaborative",
            ["networks=[{name: a}, {name: b, model: {kind: mlp, layers: [10, 8, 3]}}]"],
            "networks: b differs from a",
        ),
        ("shared-device", ["networks=[{name: only}]"], "needs at least 2 networks"),
        ("independent", ["networks=[{name: a}, {name: a}]"], "names must be unique"),
        ("independent", ["networks=[{name: 'a b'}]"], "networks.0.name"),
        ("shared-device", ["shared_device.hidden_widths=[0]"], "shared_device.hidden_widths.0"),
        ("collaborative", ["collaborative.chain_split=nope"], "collaborative.chain_split: no layer 'nope'"),
        (
            "independent",
            ["networks=[{name: a}, {name: b, data: {kind: digits}}]"],
            "networks[1] (b): data.kind digits is a classification set",
        ),
    ],
)
def test_bad_network_config(tmp_path, strategy, overrides, expected):
    args = [a for o in overrides for a in ("--set", o)]
    assert_one_line_error(xfw_in_process("compare", "--strategy", strategy, *args, "--out", str(tmp_path)), expected)


def test_sweep_needs_mlp_networks(tmp_path):
    proc = xfw_in_process(
        "compare",
        "--strategy",
        "shared-device",
        "--config",
        "configs/cnn_digits.yaml",
        "--set",
        "shared_device.hidden_widths=[32]",
        "--out",
        str(tmp_path),
    )
    assert_one_line_error(proc, "shared_device.hidden_widths resizes mlp networks only")
