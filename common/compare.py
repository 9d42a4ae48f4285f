"""Turns per-repeat results into run entries, and pairs of runs into comparisons. Pure numpy.

Which runs are diffed is decided by the registry, never by strategy names here: every implementation
against its reference (Implementation.reference, in the strategy's reference strategy), held to the
strategy's Parity; and TensorFlow runs against their PyTorch twin (Implementation.twin) where the strategy's
descriptor says so. Several-network runs are diffed network by network (compare_networks.py)."""

from __future__ import annotations

import numpy as np

from xfw.common.config import Config
from xfw.common.records import AnyRun, Comparison, Flops, RatioRange, RunBase, RunEntry, RunResult, Spread
from xfw.common.registry import Parity, find


def window_rates(global_batch: int, windows) -> np.ndarray:
    """Samples/s of each timed window."""
    return np.array([global_batch * w.steps / w.seconds for w in windows])


def throughput_stats(results: list[RunResult]) -> Spread:
    """Median (returned separately) and spread of samples/s over every timed window of every repeat."""
    rates = np.concatenate([window_rates(r.timing.global_batch, r.timing.windows) for r in results])
    p25, p75 = np.percentile(rates, [25, 75])
    return Spread(p25=float(p25), p75=float(p75), min=float(rates.min()), max=float(rates.max()), windows=int(rates.size))


def run_entry(base: RunBase, results: list[RunResult]) -> RunEntry:
    """Merge the repeats of one implementation: the loss curve of the first repeat (the others must be
    identical when determinism is on), throughput pooled over all repeats."""
    first = results[0]
    rates = np.concatenate([window_rates(r.timing.global_batch, r.timing.windows) for r in results])
    median = float(np.percentile(rates, 50))
    flops_per_sample = first.model.training_flops_per_sample
    peak = float(np.median([r.peak_flops_per_s for r in results]))
    achieved = flops_per_sample * median
    losses = np.array([r.loss for r in results])
    return RunEntry(
        **base.model_dump(),
        loss=first.loss,
        eval=first.eval,
        throughput_samples_per_s=median,
        throughput_spread=throughput_stats(results),
        step_time_s=first.timing.global_batch / median,
        warmup_s=float(np.median([r.timing.warmup_s for r in results])),
        warmup_steps=first.timing.warmup_steps,
        peak_memory_bytes=max(r.peak_memory_bytes for r in results),
        peak_memory_kind=first.peak_memory_kind,
        peak_memory_per_process=first.peak_memory_per_process,
        replica_weight_max_abs_diff=max(r.replica_weight_max_abs_diff for r in results),
        processes=first.processes,
        replicas=first.replicas,
        devices=first.devices,
        flops=Flops(training_flops_per_sample=flops_per_sample, achieved_flops_per_s=achieved, peak_flops_per_s=peak,
                    utilization=achieved / peak),
        parameters=first.model.parameters,
        repeats=len(results),
        loss_identical_across_repeats=bool((losses == losses[0]).all()),
        env=first.env,
        model_parallel=first.model_parallel,
        teardown_errors=[r.teardown_error for r in results if r.teardown_error],
    )


def loss_diff(a: list[float], b: list[float]) -> tuple[np.ndarray, np.ndarray]:
    """Per-step absolute and relative difference; relative to the larger of the two magnitudes."""
    la, lb = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    diff = np.abs(la - lb)
    return diff, diff / np.maximum(np.maximum(np.abs(la), np.abs(lb)), 1e-12)


def _key(run: AnyRun, implementation: str | None = None, framework: str | None = None) -> tuple:
    """A run's place in a compare: framework, implementation and sweep point."""
    size = run.size or {}
    return (framework or run.framework, implementation or run.implementation, size.get("hidden_width"))


def pairs_for(runs: list[AnyRun]) -> list[tuple[AnyRun, AnyRun, Parity]]:
    """Which runs are diffed and how: first every run against its reference, then TensorFlow runs against
    their PyTorch twins, each in run order."""
    by_key = {_key(r): r for r in runs}
    pairs = []
    for r in runs:
        impl = find(r.framework, r.implementation)
        ref = by_key.get(_key(r, impl.reference))
        if ref is not None and ref is not r:
            pairs.append((r, ref, impl.kind.parity))
    for r in runs:
        impl = find(r.framework, r.implementation)
        if r.framework != "tf" or (impl.kind.twins == "references" and impl.name != impl.reference):
            continue
        twin = by_key.get(_key(r, impl.twin or impl.name, "torch"))
        if twin is not None:
            pairs.append((r, twin, Parity.CROSS_FRAMEWORK))
    return pairs


def tolerance_for(kind: Parity, config: Config) -> float | None:
    if kind == Parity.IDENTICAL:
        return 0.0
    if kind == Parity.NOT_JUDGED:
        return None
    return getattr(config.parity, kind.value)


def not_compared(a: AnyRun, b: AnyRun, kind: Parity, config: Config) -> Comparison | None:
    """The comparison of a pair of which a run did not produce a result; None when both did."""
    if a.status == "ok" and b.status == "ok":
        return None
    missing = [r.id for r in (a, b) if r.status != "ok"]
    return Comparison(a=a.id, b=b.id, kind=kind.value, tolerance=tolerance_for(kind, config), status="not compared",
                      size=a.size, reason=f"{', '.join(missing)} did not run ({a.status}/{b.status})")


def compare_pair(a: AnyRun, b: AnyRun, kind: Parity, config: Config) -> Comparison:
    skipped = not_compared(a, b, kind, config)
    if skipped:
        return skipped
    tolerance = tolerance_for(kind, config)
    absd, reld = loss_diff(a.loss, b.loss)
    over = np.flatnonzero(reld > tolerance) if tolerance is not None else np.array([], dtype=int)
    ta, tb = a.throughput_samples_per_s, b.throughput_samples_per_s
    sa, sb = a.throughput_spread, b.throughput_spread
    against_reference_strategy = kind != Parity.CROSS_FRAMEWORK and a.strategy != b.strategy  # e.g. mirrored vs single
    return Comparison(
        a=a.id, b=b.id, kind=kind.value, tolerance=tolerance, status="ok",
        max_abs_loss_diff=float(absd.max()),
        max_rel_loss_diff=float(reld.max()),
        first_step_over_tolerance=int(over[0]) if over.size else None,
        within_tolerance=None if tolerance is None else not over.size,
        final_metric_diff={k: a.eval[k] - b.eval[k] for k in a.eval if k in b.eval},
        throughput_ratio=ta / tb,
        # From the interquartile ranges: the ratio's plausible range given both runs' window-to-window spread.
        throughput_ratio_spread=RatioRange(low=sa.p25 / sb.p75, high=sa.p75 / sb.p25),
        scaling_efficiency=ta / (tb * a.devices) if against_reference_strategy else None,
    )


def comparisons(runs: list[AnyRun], config: Config) -> list[Comparison]:
    from xfw.common.compare_networks import compare_networks_pair

    out = []
    for a, b, kind in pairs_for(runs):
        several = find(a.framework, a.implementation).kind.several_networks
        out.append((compare_networks_pair if several else compare_pair)(a, b, kind, config))
    return out
