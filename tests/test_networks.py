"""Several networks through the real CLI: independent (each network's curve equals its solo run exactly,
ensemble through an all-gather), collaborative (TF vs PyTorch parity, the exchange accounted), and
shared-device (concurrency never changes the arithmetic; verdicts follow from the measured throughputs).
Curves are re-diffed here from the raw per-step lists, not through xfw's comparison code."""

import os

import numpy as np
import pytest
import yaml
from conftest import ROOT, assert_one_line_error, load_summary, run_xfw, xfw_in_process
from work_split import assert_network_trained_on_its_batches

from xfw.common.config import load_config, network_config
from xfw.common.registry import this_machine

pytestmark = pytest.mark.frameworks
STEPS = 200


def max_rel(a, b):
    a, b = np.asarray(a), np.asarray(b)
    return float((np.abs(a - b) / np.maximum(np.abs(a), np.abs(b))).max())


# The verdict logic itself is tested on known inputs in test_judgements.py; here, that a verdict was given.
VERDICTS = {"helps", "hurts", "no clear difference"}
WIDTH = 16  # one end-to-end point of the shared-device sweep (the sweep's logic: test_judgements.py)


def curves(run: dict) -> dict[str, list[float]]:
    return {n["name"]: n["loss"] for n in run["networks"] if n["loss"] is not None}


def compare(tmp_path_factory, strategy: str, config: str, *overrides: str):
    out = tmp_path_factory.mktemp(strategy)
    args = [a for o in (f"training.steps={STEPS}", *overrides) for a in ("--set", o)]
    proc = run_xfw("compare", "--strategy", strategy, "--config", config, *args, "--out", str(out))
    assert (out / "summary.json").exists(), proc.stderr[-3000:]
    return proc, load_summary(out), out


@pytest.fixture(scope="session")
def independent(tmp_path_factory):
    return compare(tmp_path_factory, "independent", "configs/independent.yaml")


@pytest.fixture(scope="session")
def collaborative(tmp_path_factory):
    return compare(tmp_path_factory, "collaborative", "configs/collaborative.yaml")


@pytest.fixture(scope="session")
def shared(tmp_path_factory):
    return compare(
        tmp_path_factory, "shared-device", "configs/shared_device.yaml", f"shared_device.hidden_widths=[{WIDTH}]"
    )


# ---- independent ------------------------------------------------------------------------------------


def test_independent_runs_and_networks_match_their_solo_runs(independent, tmp_path):
    proc, summary, _ = independent
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    runs = {r["id"]: r for r in summary["runs"]}
    assert set(runs) == {"tf-sequential", "tf-placed", "tf-processes", "torch-sequential", "torch-processes"}
    assert all(r["status"] == "ok" for r in runs.values()), [r.get("error") for r in runs.values()]
    config = load_config(ROOT / "configs/independent.yaml", [f"training.steps={STEPS}"])
    for run in runs.values():  # each network trained on its own batches, each sample once
        for n in run["networks"]:
            assert_network_trained_on_its_batches(n, network_config(config, n["index"]), run["id"])
    for fw in ("tf", "torch"):
        for i, net in enumerate(config.networks):
            # The network's solo run: its own config, through the single-device implementation.
            solo_cfg = tmp_path / f"{fw}-{net.name}.yaml"
            solo_cfg.write_text(yaml.safe_dump(network_config(config, i).model_dump(mode="json")))
            proc = run_xfw(
                "run",
                "--framework",
                fw,
                "--impl",
                "single",
                "--config",
                str(solo_cfg),
                "--out",
                str(tmp_path / f"{fw}-{net.name}"),
            )
            assert proc.returncode == 0, proc.stderr[-3000:]
            import json

            solo = json.loads((tmp_path / f"{fw}-{net.name}" / "result.json").read_text())["loss"]
            for run in (r for r in runs.values() if r["framework"] == fw):
                assert curves(run)[net.name] == solo, (run["id"], net.name)  # exactly, not within a tolerance


def test_independent_networks_trained_concurrently(independent):
    _, summary, _ = independent
    for r in summary["runs"]:
        if r["implementation"] == "sequential":
            assert r["overlap"] == 0.0
        else:
            assert r["overlap"] > 0.3, (r["id"], r["overlap"])  # the timed steps ran at the same time
        assert r["processes"] == (2 if r["implementation"] == "processes" else 1)
        assert len({n["device"] for n in r["networks"]}) == (1 if r["implementation"] == "sequential" else 2), r["id"]


def test_independent_ensemble_is_gathered_and_agrees(independent):
    _, summary, _ = independent
    runs = {r["id"]: r for r in summary["runs"]}
    ensembles = {k: r["ensemble"] for k, r in runs.items()}
    for e in ensembles.values():
        assert e["members"] == ["wide", "deep"]
        assert 0.8 < e["test_accuracy"] <= 1.0
    # The processes' all-gather of predictions gives the same ensemble as the one-process runs.
    for fw in ("tf", "torch"):
        assert ensembles[f"{fw}-processes"]["test_accuracy"] == ensembles[f"{fw}-sequential"]["test_accuracy"]
        assert ensembles[f"{fw}-processes"]["test_loss"] == pytest.approx(
            ensembles[f"{fw}-sequential"]["test_loss"], rel=1e-12
        )
    best = max(n["eval"]["test_accuracy"] for n in runs["tf-sequential"]["networks"])
    assert ensembles["tf-sequential"]["gain_over_best_member"] == pytest.approx(
        ensembles["tf-sequential"]["test_accuracy"] - best
    )


def test_independent_comparisons_and_report(independent):
    proc, summary, out = independent
    runs = {r["id"]: r for r in summary["runs"]}
    for fw in ("tf", "torch"):
        for name, curve in curves(runs[f"{fw}-sequential"]).items():
            assert max_rel(curve, curves(runs["tf-sequential" if fw == "torch" else "torch-sequential"])[name]) <= 1e-5
    identical = [c for c in summary["comparisons"] if c["kind"] == "identical"]
    assert {(c["a"], c["b"]) for c in identical} == {
        ("tf-placed", "tf-sequential"),
        ("tf-processes", "tf-sequential"),
        ("torch-processes", "torch-sequential"),
    }
    for c in identical:
        assert c["tolerance"] == 0.0 and c["max_rel_loss_diff"] == 0.0 and c["within_tolerance"]
        a, b = runs[c["a"]], runs[c["b"]]
        assert c["throughput_ratio"] == pytest.approx(
            a["combined_throughput_samples_per_s"] / b["combined_throughput_samples_per_s"]
        )
        assert c["verdict"] in VERDICTS and c["verdict_band"] == 0.05
    for text in ("tf-placed vs", "identical", "ensemble accuracy", "combined samples/s"):
        assert text in proc.stdout, text
    report = (out / "report.md").read_text()
    assert "bit-identical" in report and "Slowdown" in report
    for name in ("loss.png", "loss_diff.png", "throughput.png"):
        assert (out / name).stat().st_size > 0


# ---- collaborative ------------------------------------------------------------------------------------


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


# ---- shared-device ------------------------------------------------------------------------------------


def test_shared_device_runs_are_bit_identical_to_sequential(shared):
    proc, summary, _ = shared
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    runs = {r["id"]: r for r in summary["runs"]}
    config = load_config(ROOT / "configs/shared_device.yaml", [f"training.steps={STEPS}"])
    for width in (WIDTH,):
        for fw in ("tf", "torch"):
            ref = runs[f"{fw}-shared-sequential@h{width}"]
            assert ref["status"] == "ok", ref.get("error")
            for impl in ("shared-threads", "shared-processes"):
                r = runs[f"{fw}-{impl}@h{width}"]
                assert r["status"] == "ok", r.get("error")
                assert curves(r) == curves(ref), r["id"]
                assert r["overlap"] > 0.3, (r["id"], r["overlap"])
                for n in r["networks"]:
                    assert_network_trained_on_its_batches(n, network_config(config, n["index"]), r["id"])
        cuda = runs[f"torch-shared-cuda-streams@h{width}"]
        if this_machine().gpus == 0:
            assert cuda["status"] == "skipped" and cuda["reason"] == "needs a GPU, this machine has none"


def test_shared_device_verdicts_follow_from_the_throughputs(shared):
    _, summary, _ = shared
    runs = {r["id"]: r for r in summary["runs"]}
    band = summary["config"]["shared_device"]["verdict_band"]
    checked = 0
    for c in summary["comparisons"]:
        if c["kind"] != "identical" or c["status"] != "ok":
            continue
        a, b = runs[c["a"]], runs[c["b"]]
        ratio = a["combined_throughput_samples_per_s"] / b["combined_throughput_samples_per_s"]
        assert c["throughput_ratio"] == pytest.approx(ratio)
        assert c["verdict"] in VERDICTS and c["verdict_band"] == band
        alone = {n["name"]: n["throughput_samples_per_s"] for n in b["networks"]}
        for n in a["networks"]:
            assert c["networks"][n["name"]]["slowdown"] == pytest.approx(
                alone[n["name"]] / n["throughput_samples_per_s"]
            )
        assert a["peak_memory_bytes"] > 0
        checked += 1
    assert checked == 4  # threads and processes, 2 frameworks
    sweep = {line["run"]: line for line in summary["sweep"]}
    assert set(sweep) == {"tf-shared-threads", "tf-shared-processes", "torch-shared-threads", "torch-shared-processes"}
    for line in sweep.values():
        assert [p["hidden_width"] for p in line["points"]] == [WIDTH] and line["flips"] == []


def test_shared_device_sweep_resizes_the_networks(shared):
    _, summary, out = shared
    for r in summary["runs"]:
        if r["status"] == "ok":
            width = r["size"]["hidden_width"]
            assert r["id"].endswith(f"@h{width}")
    assert (out / "sweep.png").stat().st_size > 0
    assert "## Size sweep" in (out / "report.md").read_text()


# ---- bad input ----------------------------------------------------------------------------------------


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
