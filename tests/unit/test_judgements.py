"""Merging repeats, pair comparisons, several-network verdicts and the size sweep, on hand-made results whose
answers are known: pure Python and numpy, milliseconds. Expected values are written out, never recomputed with
the code under test."""

import math

import pytest

from tests.helpers.records import BATCH, base, result
from xfw.common.judge.compare import compare_pair, run_entry, samples_mismatch
from xfw.common.judge.compare_networks import compare_networks_pair, network_run_entry, sweep
from xfw.common.records import NetworksResult, ReplicaWork
from xfw.common.spec.config import load_config
from xfw.common.strategies.base import Parity

CONFIG = load_config()  # verdict bands 0.05, tolerance 1e-5 (configs/default.yaml)


def test_repeats_pool_every_window_and_keep_each_repeats_median():
    entry = run_entry(base("tf-a"), [result("tf-a", [1.0, 1.0, 1.0]), result("tf-a", [0.5, 0.5, 0.5, 0.5])])
    # Windows: three at 100 samples/s, four at 200: the median of all seven is 200, of each repeat 100 and 200.
    assert entry.throughput_samples_per_s == 200.0
    assert entry.throughput_spread.windows == 7 and entry.throughput_spread.repeat_medians == [100.0, 200.0]
    assert (entry.throughput_spread.min, entry.throughput_spread.max) == (100.0, 200.0)
    assert entry.repeats == 2 and entry.loss_identical_across_repeats
    assert entry.flops.achieved_flops_per_s == 6 * 200.0


def test_repeats_that_trained_differently_are_flagged():
    entry = run_entry(base("tf-a"), [result("tf-a", [1.0]), result("tf-a", [1.0], loss=(1.0, 0.5, 0.3))])
    assert entry.loss_identical_across_repeats is False
    assert entry.loss == [1.0, 0.5, 0.25]  # the first repeat's curve


def entries(a_seconds, b_seconds, a_loss=(1.0, 0.5, 0.25)):
    a = run_entry(base("tf-a"), [result("tf-a", a_seconds, a_loss)])
    b = run_entry(base("tf-single", "single"), [result("tf-single", b_seconds, strategy="single")])
    return a, b


def test_a_known_20_percent_gain_is_faster_and_its_mirror_slower():
    steady = [1.0] * 8
    a, b = entries([1 / 1.2] * 8, steady)
    cmp = compare_pair(a, b, Parity.SAME_FRAMEWORK, CONFIG)
    assert cmp.throughput_ratio == pytest.approx(1.2) and cmp.change == pytest.approx(0.2)
    assert cmp.verdict == "faster" and cmp.within_tolerance is True
    a, b = entries([1.2] * 8, steady)
    assert compare_pair(a, b, Parity.SAME_FRAMEWORK, CONFIG).verdict == "slower"


def test_equal_runs_and_overlapping_noise_give_no_verdict():
    a, b = entries([1.0] * 8, [1.0] * 8)
    cmp = compare_pair(a, b, Parity.SAME_FRAMEWORK, CONFIG)
    assert cmp.throughput_ratio == 1.0 and cmp.verdict == "no clear difference"
    # A median 20% faster, but a quarter of a's windows as slow as b's or slower: the range reaches 1.
    a, b = entries([1 / 1.2] * 6 + [1.0] * 3 + [1.5] * 2, [1.0] * 10)
    cmp = compare_pair(a, b, Parity.SAME_FRAMEWORK, CONFIG)
    assert cmp.throughput_ratio == pytest.approx(1.2)
    assert cmp.throughput_ratio_spread.low <= 1 and cmp.verdict == "no clear difference"


def test_a_diverged_curve_fails_its_comparison_whatever_the_speed():
    a, b = entries([0.5] * 8, [1.0] * 8, a_loss=(1.0, math.nan, math.nan))
    cmp = compare_pair(a, b, Parity.SAME_FRAMEWORK, CONFIG)
    assert cmp.within_tolerance is False and cmp.first_step_over_tolerance == 1 and "diverged" in cmp.note


def networks_result(run_id: str, seconds: list[list[float]], width: int | None = None) -> NetworksResult:
    """Networks n0, n1 whose windows took the given seconds for 10 steps of 10 samples; timed side by side over
    the longest network's time (so combined = the networks' samples over that time)."""
    nets = []
    longest = max(sum(s) for s in seconds)
    for i, secs in enumerate(seconds):
        rates = [100 / s for s in secs]
        nets.append(
            {
                "index": i,
                "name": f"n{i}",
                "device": "cpu",
                "eval": {},
                "loss": [1.0, 0.5],
                "warmup_steps": 1,
                "warmup_s": 0.1,
                "windows": [{"steps": 10, "seconds": s} for s in secs],
                "started_at": 0.0,
                "timed_started_at": 1.0,
                "ended_at": 1.0 + sum(secs),
                "busy_s_per_step": None,
                "throughput_samples_per_s": sorted(rates)[len(rates) // 2],
                "throughput_spread": {"p25": min(rates), "p75": max(rates)},
                "step_time_s": sum(secs) / (10 * len(secs)),
                "timed_s": sum(secs),
            }
        )
    samples = sum(10 * 10 * len(s) for s in seconds)
    return NetworksResult(
        id=run_id,
        framework="torch",
        strategy="shared-device",
        implementation="x",
        networks=nets,
        devices=1,
        processes=1,
        wall_s=longest + 1,
        timed_wall_s=longest,
        overlap=1.0,
        combined_throughput_samples_per_s=samples / longest,
        peak_memory_bytes=1,
        peak_memory_per_process=[1],
        peak_memory_kind="rss",
        global_batch=BATCH,
        steps=41,
        env={},
    )


def networks_entry(run_id: str, seconds, width: int):
    b = base(run_id, "shared-device").model_copy(update={"id": f"{run_id}@h{width}", "size": {"hidden_width": width}})
    return network_run_entry(b, [networks_result(run_id, seconds)])


def test_training_together_helps_or_hurts_by_the_combined_rate():
    # Sequential: each network alone at 100 samples/s, one after the other: 800 samples in 8 s, 100/s combined.
    sequential = networks_entry("torch-seq", [[1.0] * 4, [1.0] * 4], 8)
    sequential.combined_throughput_samples_per_s = 100.0
    together = networks_entry("torch-threads", [[1.25] * 4, [1.25] * 4], 8)  # each at 80/s, side by side: 160/s
    cmp = compare_networks_pair(together, sequential, Parity.IDENTICAL, CONFIG)
    assert cmp.throughput_ratio == pytest.approx(1.6) and cmp.verdict == "helps"
    assert cmp.networks["n0"].slowdown == pytest.approx(100 / 80)
    crowded = networks_entry("torch-threads", [[4.0] * 4, [4.0] * 4], 8)  # each at 25/s: 50/s combined
    cmp = compare_networks_pair(crowded, sequential, Parity.IDENTICAL, CONFIG)
    assert cmp.throughput_ratio == pytest.approx(0.5) and cmp.verdict == "hurts"
    noisy = networks_entry("torch-threads", [[0.5, 0.5, 2.0, 2.0], [0.5, 0.5, 2.0, 2.0]], 8)
    cmp = compare_networks_pair(noisy, sequential, Parity.IDENTICAL, CONFIG)
    assert cmp.verdict == "no clear difference"  # windows from 50 to 200 samples/s: the range spans 1


def test_the_sweep_lists_each_width_and_where_the_verdict_flips():
    sequential = {w: networks_entry("torch-seq", [[1.0] * 4, [1.0] * 4], w) for w in (8, 64, 512)}
    for entry in sequential.values():
        entry.combined_throughput_samples_per_s = 100.0
    together = {
        8: networks_entry("torch-threads", [[4.0] * 4, [4.0] * 4], 8),  # hurts
        64: networks_entry("torch-threads", [[4.0] * 4, [4.0] * 4], 64),  # hurts
        512: networks_entry("torch-threads", [[1.25] * 4, [1.25] * 4], 512),  # helps
    }
    comparisons = [compare_networks_pair(together[w], sequential[w], Parity.IDENTICAL, CONFIG) for w in (512, 8, 64)]
    (line,) = sweep(comparisons)
    assert line.run == "torch-threads"
    assert [(p.hidden_width, p.verdict) for p in line.points] == [(8, "hurts"), (64, "hurts"), (512, "helps")]
    assert line.flips == [{"from": 64, "to": 512, "verdict_from": "hurts", "verdict_to": "helps"}]


def work(replica: int, per_step: int, checksum: int) -> ReplicaWork:
    return ReplicaWork(
        replica=replica, process=replica, device="cpu", steps=3, samples_per_step=per_step, checksum=f"{checksum:016x}"
    )


def test_replicas_that_did_not_split_the_batch_fail_the_comparison_whatever_the_loss():
    single = [work(0, 32, 0xF000_0000_0000_0003)]
    split = [work(0, 16, 0xF000_0000_0000_0001), work(1, 16, 0x0000_0000_0000_0002)]  # adds up (mod 2^64)
    whole = [work(0, 32, 0xF000_0000_0000_0003), work(1, 32, 0xF000_0000_0000_0003)]  # each the whole batch
    other = [work(0, 16, 0xF000_0000_0000_0001), work(1, 16, 0x0000_0000_0000_0005)]  # right count, other samples
    assert samples_mismatch("a", split, "b", single) is None
    assert "trained 64 samples per step together, b 32" in samples_mismatch("a", whole, "b", single)
    assert "other samples" in samples_mismatch("a", other, "b", single)
    assert samples_mismatch("a", [], "b", single) is None  # a result from before xfw recorded samples
    a, b = entries([1.0] * 8, [1.0] * 8)  # identical curves...
    a.work_split, b.work_split = whole, single
    cmp = compare_pair(a, b, Parity.SAME_FRAMEWORK, CONFIG)
    assert cmp.max_rel_loss_diff == 0.0 and cmp.within_tolerance is False  # ...and still not at parity
    assert "the global batch was not split" in cmp.note
