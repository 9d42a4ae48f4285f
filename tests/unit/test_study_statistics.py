"""`xfw study`: the statistics on synthetic measurements (a known difference is found, identical distributions are
not told apart, noise below the floor is not called), and bad study files. A real study stopped by a signal and
finished with --resume, and a failed cell that does not stop the others: tests/frameworks/test_study.py."""

from __future__ import annotations

import json

import numpy as np
import pytest

from tests.helpers.cli import ROOT, assert_one_line_error, xfw_in_process
from tests.helpers.studies import write_study
from xfw.common.judge.stats import (
    compare_throughput,
    first_reach,
    noise_floor,
    smoothed,
    step_end_times,
    tost_paired,
)

rng = np.random.default_rng(1234)


# ---- statistics on synthetic measurements ------------------------------------------------------------------


def test_a_known_throughput_difference_is_found():
    a = rng.normal(1150, 30, 40)  # 15% faster, window-to-window noise 3%
    b = rng.normal(1000, 30, 40)
    est = compare_throughput(a, b, floor=0.05, confidence=0.95)
    assert est.low > 1 and est.verdict == "faster"
    assert est.low < 1.15 < est.high
    assert compare_throughput(b, a, floor=0.05, confidence=0.95).verdict == "slower"


def test_identical_distributions_give_no_clear_difference():
    verdicts = []
    for _ in range(20):
        a, b = rng.normal(1000, 50, 30), rng.normal(1000, 50, 30)
        verdicts.append(compare_throughput(a, b, floor=0.02, confidence=0.95).verdict)
    # 95% intervals: an identical pair may rarely exclude 1 by chance, never most of the time.
    assert verdicts.count("no clear difference") >= 17, verdicts


def test_a_difference_inside_the_noise_floor_is_not_called():
    a, b = rng.normal(1100, 5, 40), rng.normal(1000, 5, 40)  # a tight 10% difference
    est = compare_throughput(a, b, floor=0.15, confidence=0.95)  # ...but processes of one implementation differ 15%
    assert est.low > 1 and est.verdict == "no clear difference"
    assert compare_throughput(a, b, floor=0.05, confidence=0.95).verdict == "faster"


def test_the_bootstrap_is_reproducible():
    a, b = rng.normal(1000, 50, 30), rng.normal(950, 50, 30)
    assert compare_throughput(a, b, 0.0, 0.95) == compare_throughput(a, b, 0.0, 0.95)


def test_noise_floor_is_the_largest_process_to_process_change():
    assert noise_floor([[100, 110], [200, 200, 190]]) == pytest.approx(0.1)
    assert noise_floor([[100], [50]]) is None


def test_equivalence_by_two_one_sided_tests():
    base = rng.normal(0.5, 0.05, 6)  # per-seed final losses: the seeds differ a lot...
    same = base + rng.normal(0, 1e-4, 6)  # ...the implementations, paired by seed, hardly at all
    assert tost_paired(same, base, margin=0.01, alpha=0.05).equivalent is True
    shifted = base + 0.02 + rng.normal(0, 1e-3, 6)  # 2 x margin apart
    result = tost_paired(shifted, base, margin=0.01, alpha=0.05)
    assert result.equivalent is False and result.p_value > 0.05
    noisy = base + rng.normal(0, 0.05, 6)  # could be anything: not shown equivalent at this margin
    assert tost_paired(noisy, base, margin=0.01, alpha=0.05).equivalent is False
    assert tost_paired(base[:1], base[:1], margin=0.01, alpha=0.05).equivalent is None
    exact = tost_paired(base, base, margin=0.01, alpha=0.05)  # bit-identical curves: no variance to test
    assert exact.equivalent is True and exact.method.startswith("exact")


def test_time_to_target_pieces():
    loss = np.array([4.0, 3.0, 2.0, 1.0, 0.5, 0.5])
    assert smoothed(loss, 2)[1:].tolist() == [3.5, 2.5, 1.5, 0.75, 0.5]
    assert np.isnan(smoothed(loss, 2)[0])
    assert first_reach(smoothed(loss, 2), 1.5, below=True) == 3
    assert first_reach(smoothed(loss, 2), 0.1, below=True) is None  # never reached: None, not an error
    assert first_reach([0.2, 0.9], 0.9, below=False) == 1
    # Warm-up 3 steps in 2.0 s at a steady pace of 0.25 s a step: the first step (tracing) took 1.5 s.
    ends = step_end_times(3, 2.0, [(2, 0.5), (2, 0.5)])
    assert ends.tolist() == [1.5, 1.75, 2.0, 2.25, 2.5, 2.75, 3.0]
    assert step_end_times(2, 0.1, [(2, 1.0)]).tolist() == [0.0, 0.1, 0.6, 1.1]  # warm-up faster than steady


def test_curve_band_over_seeds():
    from types import SimpleNamespace

    from xfw.common.report.study import band_share

    def runs(*curves_by_seed):
        return [SimpleNamespace(seed=seed, loss=list(curve)) for seed, curve in enumerate(curves_by_seed)]

    band = runs([1.0] * 6, [3.0] * 6)  # two seeds: the band is 1..3 at every step
    assert band_share(runs([2.0] * 6), band, 2, 0.0) == 1.0
    assert band_share(runs([4.0] * 6), band, 2, 0.0) == 0.0
    # trailing means (window 2, from the second step) 2.0, 2.0 inside, then 3.5, 5.0, 5.0 outside: 2 of 5
    assert band_share(runs([2.0, 2.0, 2.0, 5.0, 5.0, 5.0]), band, 2, 0.0) == 0.4
    assert band_share(runs([2.0] * 6), runs([1.0] * 6), 2, 0.0) is None  # one seed has no band
    assert band_share(runs([2.0] * 5), band, 2, 0.0) is None  # other lengths
    # on the edge within rounding: inside with the tolerance, outside without
    assert band_share(runs([3.0 * (1 + 1e-7)] * 6), band, 2, 1e-5) == 1.0
    assert band_share(runs([3.0 * (1 + 1e-7)] * 6), band, 2, 0.0) == 0.0


# ---- bad input ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("change", "expected"),
    [
        ({"worklods": []}, "unknown key 'worklods'"),
        ({"workloads": []}, "workloads: List should have at least 1 item"),
        ({"axes": {"training.global_batch": []}}, "axes.training.global_batch: List should have at least 1 item"),
        ({"axes": {"training.gobal_batch": [8]}}, "cell mlp[training.gobal_batch=8]: config: unknown config key"),
        ({"axes": {"training.global_batch": [16, -4]}}, "cell mlp[training.global_batch=-4]: config: training"),
        ({"axes": {"seed": [1, 2]}}, "'seed' is not an axis"),
        ({"seeds": [0], "repeats": 1}, "a noise floor needs every implementation measured in two processes"),
        ({"implementations": ["torch-dpp"]}, "implementations: torch-dpp not in the strategies single"),
        ({"strategies": ["independent"]}, "trains several networks"),
        ({"strategies": ["mirored"]}, "mirored"),
        ({"target": {"metric": "train_loss"}}, "give exactly one of below or above"),
        ({"needs_gpus": 64}, "needs 64 GPU(s)"),
    ],
)
def test_bad_study_files_are_refused_in_one_line(tmp_path, change, expected):
    study = write_study(tmp_path / "bad.yaml", **change)
    assert_one_line_error(xfw_in_process("study", str(study), "--out", str(tmp_path / "out")), expected)
    assert not (tmp_path / "out" / "cells").exists()


def test_resume_on_another_studys_folder_is_refused(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "study-spec.json").write_text(json.dumps({"name": "other", "file": "x.yaml", "identity": "0" * 16}))
    study = write_study(tmp_path / "tiny.yaml")
    assert_one_line_error(xfw_in_process("study", str(study), "--out", str(out), "--resume"), "holds another study")
    missing = xfw_in_process("study", str(tmp_path / "none.yaml"))
    assert_one_line_error(missing, "cannot read study")


def test_the_shipped_studies_are_valid(tmp_path):
    """quick.yaml passes every check a run makes first; gpu.yaml is refused here only for want of GPUs."""
    from xfw.common.plan.machine import this_machine
    from xfw.common.study.grid import check_cells, expand_cells, load_study

    for name in ("quick", "gpu"):
        path = ROOT / "studies" / f"{name}.yaml"
        spec = load_study(path)
        cells = expand_cells(spec, path)
        assert cells
        if spec.needs_gpus <= this_machine().gpus:
            assert sum(check_cells(spec, cells, this_machine()).values()) > 0
        else:
            proc = xfw_in_process("study", str(path), "--out", str(tmp_path / name))
            assert_one_line_error(proc, f"needs {spec.needs_gpus} GPU(s)")
