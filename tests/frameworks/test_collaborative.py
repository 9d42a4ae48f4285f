"""Collaborating networks through the real CLI: TF vs PyTorch parity, the exchange changes nothing across
devices or processes and is accounted in bytes, mutual learning's divergence is the KL it claims."""

import numpy as np
import pytest

from tests.helpers.cli import ROOT
from tests.helpers.curves import max_rel
from tests.helpers.several_networks import STEPS, compare, curves
from tests.helpers.work_split import assert_network_trained_on_its_batches
from xfw.common.spec.config import load_config


@pytest.fixture(scope="session")
def collaborative(tmp_path_factory):
    return compare(tmp_path_factory, "collaborative", "configs/collaborative.yaml")


def test_collaborative_runs_and_tf_torch_parity(collaborative):
    proc, summary, _ = collaborative
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    runs = {r["id"]: r for r in summary["runs"]}
    assert all(r["status"] == "ok" for r in runs.values()), [r.get("error") for r in runs.values()]
    config = load_config(ROOT / "configs/collaborative.yaml", [f"training.steps={STEPS}"])
    for run in runs.values():  # the partners (or the chain's two parts) trained on the same batches
        for n in run["networks"]:
            assert_network_trained_on_its_batches(n, config, run["id"])
    pairs = [
        ("tf-mutual", "torch-mutual"),
        ("tf-chain", "torch-chain"),
        ("tf-mutual-placed", "torch-mutual-distributed"),
        ("tf-chain-placed", "torch-chain-send-recv"),
    ]
    for a, b in pairs:
        ca, cb = curves(runs[a]), curves(runs[b])
        assert ca.keys() == cb.keys() and ca, (a, b)
        for name in ca:
            assert max_rel(ca[name], cb[name]) <= 1e-5, (a, b, name)
    # Across devices or processes, the exchange changes nothing.
    for a, b in (
        ("tf-mutual-placed", "tf-mutual"),
        ("torch-mutual-distributed", "torch-mutual"),
        ("tf-chain-placed", "tf-chain"),
        ("torch-chain-send-recv", "torch-chain"),
    ):
        for name, curve in curves(runs[a]).items():
            assert max_rel(curve, curves(runs[b])[name]) <= 1e-5, (a, b, name)
    assert all(c["within_tolerance"] for c in summary["comparisons"])


def test_mutual_learning_learns_from_the_partner(collaborative):
    _, summary, _ = collaborative
    runs = {r["id"]: r for r in summary["runs"]}
    mutual = curves(runs["tf-mutual"])
    assert set(mutual) == {"net-a", "net-b"}
    for curve in mutual.values():
        assert curve[-1] < 0.5 * curve[0]  # it trained
    for r in runs.values():
        for n in r["networks"]:
            assert n["busy_s_per_step"] > 0 and n["wait_s_per_step"] >= 0, (r["id"], n["name"])
            if n["loss"] is not None:
                assert n["eval"]["test_accuracy"] > 0.8, (r["id"], n["name"])


def test_collaborative_bytes_exchanged(collaborative):
    _, summary, _ = collaborative
    runs = {r["id"]: r for r in summary["runs"]}
    batch = summary["config"]["training"]["global_batch"]
    # Mutual: each of 2 networks sends its (batch x 10) fp32 logits to the other. Chain split at dense1:
    # the encoder's 128-wide output forward, its gradient back.
    assert runs["torch-mutual-distributed"]["exchange"]["bytes_per_step"] == 2 * batch * 10 * 4
    assert runs["tf-chain-placed"]["exchange"]["bytes_per_step"] == 2 * batch * 128 * 4
    assert runs["tf-chain"]["exchange"]["split"] == [["dense0"], ["dense1", "dense2"]]
    assert [n["device"] for n in runs["tf-chain-placed"]["networks"]] == ["/device:CPU:0", "/device:CPU:1"]


@pytest.mark.parametrize("framework", ["tf", "torch"])
def test_divergence_is_the_kl_of_the_partner_from_mine(framework):
    rng = np.random.default_rng(0)
    partner, mine = rng.normal(size=(5, 4)).astype(np.float32), rng.normal(size=(5, 4)).astype(np.float32)
    p = np.exp(partner) / np.exp(partner).sum(1, keepdims=True)
    q = np.exp(mine) / np.exp(mine).sum(1, keepdims=True)
    expected = float(np.mean(np.sum(p * (np.log(p) - np.log(q)), axis=1)))
    run = type("Run", (), {"config": load_config(ROOT / "configs/collaborative.yaml")})()
    if framework == "tf":
        import tensorflow as tf

        from xfw.tf_impl.collaborative import divergence

        value = float(divergence(run, tf.constant(partner), tf.constant(mine)))
    else:
        import torch

        from xfw.torch_impl.collaborative import divergence

        value = float(divergence(run, torch.from_numpy(partner), torch.from_numpy(mine)))
    assert value == pytest.approx(expected, rel=1e-5)
