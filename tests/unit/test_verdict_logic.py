"""The judgements, on hand-made inputs with known answers: curve parity (NaN, infinities, different lengths),
throughput verdicts (disjoint and overlapping ranges, repeats), strict JSON, oversubscription. Pure Python and
numpy: milliseconds. End to end through the real CLI: tests/frameworks/test_verdicts.py."""

import json
import math

import pytest

from tests.helpers.cli import xfw_in_process
from xfw.common.judge.compare import curve_diff, throughput_verdict
from xfw.common.records import RatioRange, RunResult, strict_json

NAMES = ("a", "b")


def test_equal_curves_pass_and_a_known_gap_fails_at_its_step():
    same = curve_diff([1.0, 0.5, 0.25], [1.0, 0.5, 0.25], 1e-5, NAMES)
    assert (same.max_rel, same.first_over, same.within, same.note) == (0.0, None, True, None)
    gap = curve_diff([1.0, 0.5, 0.25], [1.0, 0.5, 0.2], 1e-5, NAMES)
    assert gap.first_over == 2 and gap.within is False
    assert gap.max_rel == pytest.approx(0.05 / 0.25)


def test_one_side_diverging_never_passes():
    d = curve_diff([1.0, 2.0, math.nan, math.nan], [1.0, 2.0, 3.0, 4.0], 1e-5, NAMES)
    assert d.within is False and d.first_over == 2
    assert d.max_rel == 0.0  # over the steps where both are finite
    assert "a diverged at step 2" in d.note


def test_both_diverging_at_the_same_step_is_not_parity():
    d = curve_diff([1.0, math.inf, math.nan], [1.0, math.inf, math.nan], 1e-5, NAMES)
    assert d.within is False and d.first_over == 1
    assert "both diverging is not parity" in d.note


def test_curves_of_different_lengths_fail_where_the_shorter_ends():
    d = curve_diff([1.0, 0.5, 0.25], [1.0, 0.5], 1e-5, NAMES)
    assert d.within is False and d.first_over == 2 and "different lengths (3 and 2" in d.note


def test_not_judged_curves_report_their_gap_without_pass_or_fail():
    d = curve_diff([1.0, 0.5], [1.0, 0.4], None, NAMES)
    assert d.within is None and d.first_over is None and d.max_rel == pytest.approx(0.2)


@pytest.mark.parametrize(
    ("ratio", "low", "high", "expected"),
    [
        (1.20, 1.10, 1.30, "faster"),  # a known 20% gain, ranges disjoint from 1
        (0.80, 0.70, 0.90, "slower"),
        (1.20, 0.95, 1.45, "no clear difference"),  # beyond the band, but the range reaches 1
        (1.03, 1.01, 1.05, "no clear difference"),  # the whole range above 1, but within the band
        (1.00, 0.90, 1.10, "no clear difference"),  # equal distributions
    ],
)
def test_throughput_verdicts(ratio, low, high, expected):
    assert throughput_verdict(ratio, RatioRange(low=low, high=high), 0.05) == expected


def test_non_finite_numbers_are_written_as_null_and_read_back_as_nan():
    data = strict_json({"loss": [1.0, math.inf, math.nan], "x": {"y": -math.inf}, "ok": 2.5})
    assert data == {"loss": [1.0, None, None], "x": {"y": None}, "ok": 2.5}
    json.dumps(data, allow_nan=False)  # strict
    timing = {"global_batch": 1, "warmup_steps": 1, "warmup_s": 0.1, "windows": []}
    result = RunResult(
        id="x",
        framework="tf",
        strategy="single",
        implementation="single",
        loss=[1.0, None],
        replicas=1,
        devices=1,
        processes=1,
        replica_weight_max_abs_diff=None,
        peak_memory_bytes=1,
        peak_memory_per_process=[1],
        peak_memory_kind="x",
        timing=timing,
        model={"parameters": 1, "training_flops_per_sample": 1},
        eval={},
        env={},
        peak_flops_per_s=1.0,
    )
    assert math.isnan(result.loss[1]) and math.isnan(result.replica_weight_max_abs_diff)


def test_threads_count_towards_oversubscription():
    from xfw.common.plan.machine import Machine
    from xfw.common.plan.refusals import oversubscription
    from xfw.common.plan.registry import find
    from xfw.common.spec.config import load_config

    two_cores = Machine(cpu_cores=2, gpus=0, frameworks=frozenset(), horovod_frameworks=frozenset())
    ddp = find("torch", "ddp")
    assert oversubscription(ddp, two_cores, load_config()) is None
    threads = load_config(overrides=["parallel.threads_per_replica=2"])
    assert "need 4 CPU cores but this machine has 2" in oversubscription(ddp, two_cores, threads)
    assert oversubscription(find("torch", "single"), two_cores, threads) is None  # 1 device x 2 threads fits
    one_gpu = Machine(cpu_cores=2, gpus=1, frameworks=frozenset(), horovod_frameworks=frozenset())
    assert oversubscription(ddp, one_gpu, threads) == "2 replicas but this machine has 1 GPUs"


def test_oversubscribed_threads_are_refused_with_one_line():
    proc = xfw_in_process(
        "compare", "--strategy", "mirrored", "--replicas", "2", "--set", "parallel.threads_per_replica=64"
    )
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 2 and len(lines) == 1 and lines[0].startswith("xfw: error: "), proc.stderr
    assert "threads each (parallel.threads_per_replica)" in lines[0] and "parallel.oversubscribe" in lines[0]


def test_repeats_widen_the_range_to_every_repeat_pair():
    from xfw.common.judge.compare import ratio_range

    steady = ratio_range(1.3, 1.5, [140.0], [100.0])  # one repeat: the window range as it is
    assert (steady.low, steady.high) == (1.3, 1.5)
    drifting = ratio_range(1.3, 1.5, [140.0, 80.0], [100.0, 100.0])  # repeat 2 of a ran slower than b
    assert (drifting.low, drifting.high) == (0.8, 1.5)
    assert throughput_verdict(1.4, drifting, 0.05) == "no clear difference"
    assert throughput_verdict(1.4, steady, 0.05) == "faster"
