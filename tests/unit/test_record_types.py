"""The typed records and the strategy descriptors: which runs are paired, and how, comes from the registry. No
framework is imported. summary.json and result.json read back into their records:
tests/frameworks/test_records.py."""

import pytest

from xfw.common.judge.compare import compare_pair, pairs_for
from xfw.common.plan.registry import REGISTRY, STRATEGY, find
from xfw.common.records import RunBase, RunEntry, SkippedRun, Spread
from xfw.common.spec.config import load_config
from xfw.common.strategies.base import Parity


def skipped(run_id: str, size: dict | None = None) -> SkippedRun:
    impl = next(i for i in REGISTRY if i.id == run_id)
    return SkippedRun(
        id=run_id if size is None else f"{run_id}@h{size['hidden_width']}",
        framework=impl.framework,
        strategy=impl.strategy,
        implementation=impl.name,
        launcher=impl.launcher,
        description=impl.description,
        size=size,
        reason="test",
    )


def names(pairs) -> list[tuple[str, str, str]]:
    return [(a.id, b.id, kind.value) for a, b, kind in pairs]


def test_data_parallel_pairs_come_from_the_registry():
    runs = [
        skipped(i)
        for i in ("tf-single", "torch-single", "tf-mirrored-strategy", "tf-horovod", "torch-ddp", "torch-horovod")
    ]
    assert names(pairs_for(runs)) == [
        ("tf-mirrored-strategy", "tf-single", "same_framework"),
        ("tf-horovod", "tf-single", "same_framework"),
        ("torch-ddp", "torch-single", "same_framework"),
        ("torch-horovod", "torch-single", "same_framework"),
        ("tf-single", "torch-single", "cross_framework"),
        ("tf-horovod", "torch-horovod", "cross_framework"),
    ]


def test_several_network_pairs_use_the_strategy_parity_and_twin_rule():
    runs = [skipped(i) for i in ("tf-sequential", "tf-placed", "tf-processes", "torch-sequential", "torch-processes")]
    # Independent runs must be bit-identical to their reference; only the references pair across frameworks.
    assert names(pairs_for(runs)) == [
        ("tf-placed", "tf-sequential", "identical"),
        ("tf-processes", "tf-sequential", "identical"),
        ("torch-processes", "torch-sequential", "identical"),
        ("tf-sequential", "torch-sequential", "cross_framework"),
    ]
    collab = [skipped(i) for i in ("tf-mutual", "tf-mutual-placed", "torch-mutual", "torch-mutual-distributed")]
    assert names(pairs_for(collab)) == [
        ("tf-mutual-placed", "tf-mutual", "same_framework"),
        ("torch-mutual-distributed", "torch-mutual", "same_framework"),
        ("tf-mutual", "torch-mutual", "cross_framework"),
        ("tf-mutual-placed", "torch-mutual-distributed", "cross_framework"),  # registry twin, not the same name
    ]


def test_sweep_points_pair_only_within_their_size():
    runs = [skipped("tf-shared-sequential", {"hidden_width": w}) for w in (16, 64)]
    runs += [skipped("tf-shared-threads", {"hidden_width": w}) for w in (16, 64)]
    assert names(pairs_for(runs)) == [
        ("tf-shared-threads@h16", "tf-shared-sequential@h16", "identical"),
        ("tf-shared-threads@h64", "tf-shared-sequential@h64", "identical"),
    ]


def test_every_implementation_reference_and_twin_exists():
    ids = {i.id for i in REGISTRY}
    for impl in REGISTRY:
        ref_strategy = impl.kind.reference_strategy or impl.strategy
        ref = find(impl.framework, impl.reference)
        assert ref.strategy == ref_strategy, impl.id
        if impl.twin:
            assert f"torch-{impl.twin}" in ids, impl.id


def test_descriptors_declare_what_the_runs_need():
    two_by_three = load_config(None, ["parallel.replicas=2", "model_parallel.stages=3"])
    assert STRATEGY["hybrid"].mesh(two_by_three).world == 6
    assert STRATEGY["pipeline"].mesh(two_by_three).world == 3
    assert STRATEGY["mirrored"].mesh(two_by_three).world == 2
    for s in STRATEGY.values():
        assert set(s.config_sections) <= set(load_config().model_dump()), s.name


def entry(run_id: str, loss: list[float], rate: float) -> RunEntry:
    impl = next(i for i in REGISTRY if i.id == run_id)
    base = RunBase(
        id=run_id,
        framework=impl.framework,
        strategy=impl.strategy,
        implementation=impl.name,
        launcher=impl.launcher,
        description=impl.description,
    )
    return RunEntry(
        **base.model_dump(),
        loss=loss,
        eval={"test_loss": loss[-1]},
        throughput_samples_per_s=rate,
        throughput_spread=Spread(p25=rate * 0.9, p75=rate * 1.1, windows=10),
        step_time_s=32 / rate,
        warmup_s=0.1,
        warmup_steps=1,
        peak_memory_bytes=1,
        peak_memory_kind="x",
        peak_memory_per_process=[1],
        replica_weight_max_abs_diff=0.0,
        processes=2,
        replicas=2,
        devices=2,
        flops={
            "training_flops_per_sample": 1,
            "achieved_flops_per_s": 1.0,
            "peak_flops_per_s": 1.0,
            "utilization": 1.0,
        },
        parameters=1,
        repeats=1,
        loss_identical_across_repeats=True,
        env={},
    )


def test_not_judged_parity_reports_the_diff_without_a_verdict():
    config = load_config()
    a, b = entry("tf-mirrored-strategy", [1.0, 0.5], 200.0), entry("tf-single", [1.0, 0.4], 100.0)
    judged = compare_pair(a, b, Parity.SAME_FRAMEWORK, config)
    assert judged.within_tolerance is False and judged.first_step_over_tolerance == 1
    assert judged.scaling_efficiency == pytest.approx(200.0 / (100.0 * 2))
    free = compare_pair(a, b, Parity.NOT_JUDGED, config)
    assert free.within_tolerance is None and free.tolerance is None
    assert free.max_rel_loss_diff == pytest.approx(0.1 / 0.5)
