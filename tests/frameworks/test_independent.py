"""Independent networks through the real CLI: each network's curve equals its solo run exactly, each trained
on its own batches, concurrently where the implementation says so; the ensemble through an all-gather."""

import json

import pytest
import yaml

from tests.helpers.cli import ROOT, run_xfw
from tests.helpers.curves import max_rel
from tests.helpers.several_networks import STEPS, VERDICTS, compare, curves
from tests.helpers.work_split import assert_network_trained_on_its_batches
from xfw.common.spec.config import load_config, network_config


@pytest.fixture(scope="session")
def independent(tmp_path_factory):
    return compare(tmp_path_factory, "independent", "configs/independent.yaml")


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
        if r["id"] == "tf-placed":  # each network's inputs were placed on its own logical device
            assert len({n["work"]["device"] for n in r["networks"]}) == 2, r["networks"]


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
