"""Turns per-repeat results into run entries, and pairs of runs into comparisons. Pure numpy.

Which runs are diffed is decided by the registry, never by strategy names here: every implementation
against its reference (Implementation.reference, in the strategy's reference strategy), held to the
strategy's Parity; and TensorFlow runs against their PyTorch twin (Implementation.twin) where the strategy's
descriptor says so. Several-network runs are diffed network by network (compare_networks.py)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from xfw.common.plan.registry import find, get_strategy
from xfw.common.records import (
    AnyRun,
    Comparison,
    DeviceMemory,
    Flops,
    NetworksRunEntry,
    RatioRange,
    ReplicaWork,
    RunBase,
    RunEntry,
    RunResult,
    Spread,
    first_non_finite,
    non_finite_keys,
)
from xfw.common.spec.config import Config
from xfw.common.spec.data import combined_checksum
from xfw.common.spec.model_specs import ResNetSpec
from xfw.common.spec.models import has_batchnorm
from xfw.common.strategies.base import Framework, Parity


def window_rates(global_batch: int, windows) -> np.ndarray:
    """Samples/s of each timed window."""
    return np.array([global_batch * w.steps / w.seconds for w in windows])


def throughput_stats(per_repeat: list[np.ndarray]) -> tuple[float, Spread]:
    """Median and spread of samples/s over every timed window of every repeat (one array of window rates per
    repeat), and each repeat's own median (run-to-run drift)."""
    rates = np.concatenate(per_repeat)
    p25, median, p75 = np.percentile(rates, [25, 50, 75])
    return float(median), Spread(
        p25=float(p25),
        p75=float(p75),
        min=float(rates.min()),
        max=float(rates.max()),
        windows=int(rates.size),
        repeat_medians=[float(np.median(r)) for r in per_repeat],
    )


def ratio_range(low: float, high: float, a: list[float] | None, b: list[float] | None) -> RatioRange:
    """The window-to-window range, widened to the ratio of every pair of repeats (repeat k of a over repeat k of
    b: interleaved, they ran close in time) so that run-to-run drift cannot hide behind one run's steadiness."""
    pairs = list(zip(a or [], b or []))
    if len(pairs) > 1:
        ratios = [x / y for x, y in pairs]
        low, high = min(low, *ratios), max(high, *ratios)
    return RatioRange(low=low, high=high)


def largest_device_memory(results: list) -> DeviceMemory | None:
    """The GPU memory of the repeat that allocated the most (None: the run used no GPU)."""
    used = [r.device_memory for r in results if r.device_memory is not None]
    return max(used, key=lambda m: m.peak_bytes) if used else None


def input_wait_per_step(results: list[RunResult]) -> float | None:
    """Median over repeats of the mean input wait of a timed step (None: results written before xfw measured it)."""
    waits = [
        sum(r.timing.input_wait_s) / sum(w.steps for w in r.timing.windows) for r in results if r.timing.input_wait_s
    ]
    return float(np.median(waits)) if waits else None


def run_entry(base: RunBase, results: list[RunResult]) -> RunEntry:
    """Merge the repeats of one implementation: the loss curve of the first repeat (the others must be
    identical when determinism is on), throughput pooled over all repeats."""
    first = results[0]
    median, spread = throughput_stats([window_rates(r.timing.global_batch, r.timing.windows) for r in results])
    flops_per_sample = first.model.training_flops_per_sample
    peak = float(np.median([r.peak_flops_per_s for r in results]))
    achieved = flops_per_sample * median
    losses = np.array([r.loss for r in results])
    return RunEntry(
        **base.model_dump(),
        loss=first.loss,
        eval=first.eval,
        throughput_samples_per_s=median,
        throughput_spread=spread,
        step_time_s=first.timing.global_batch / median,
        input_wait_s_per_step=input_wait_per_step(results),
        warmup_s=float(np.median([r.timing.warmup_s for r in results])),
        warmup_steps=first.timing.warmup_steps,
        peak_memory_bytes=max(r.peak_memory_bytes for r in results),
        peak_memory_kind=first.peak_memory_kind,
        peak_memory_per_process=first.peak_memory_per_process,
        device_memory=largest_device_memory(results),
        replica_weight_max_abs_diff=max(r.replica_weight_max_abs_diff for r in results),
        processes=first.processes,
        replicas=first.replicas,
        devices=first.devices,
        flops=Flops(
            training_flops_per_sample=flops_per_sample,
            achieved_flops_per_s=achieved,
            peak_flops_per_s=peak,
            utilization=achieved / peak,
            peak=first.peak_flops,
        ),
        parameters=first.model.parameters,
        repeats=len(results),
        loss_identical_across_repeats=bool((losses == losses[0]).all()),
        env=first.env,
        model_parallel=first.model_parallel,
        step_breakdown=first.step_breakdown,
        work_split=first.work_split,
        diverged_at_step=first_non_finite(first.loss),
        non_finite_metrics=non_finite_keys(first.eval),
        teardown_errors=[r.teardown_error for r in results if r.teardown_error],
        network=first.network,
        **{name: getattr(first, name) for name in get_strategy(first.strategy).result_fields},
    )


def loss_diff(a: list[float], b: list[float]) -> tuple[np.ndarray, np.ndarray]:
    """Per-step absolute and relative difference over the common steps; relative to the larger of the two
    magnitudes. NaN where either loss is not finite."""
    n = min(len(a), len(b))
    la, lb = np.asarray(a[:n], dtype=np.float64), np.asarray(b[:n], dtype=np.float64)
    finite = np.isfinite(la) & np.isfinite(lb)
    diff = np.full(n, np.nan)
    diff[finite] = np.abs(la[finite] - lb[finite])
    rel = np.full(n, np.nan)
    rel[finite] = diff[finite] / np.maximum(np.maximum(np.abs(la[finite]), np.abs(lb[finite])), 1e-12)
    return diff, rel


@dataclass(frozen=True)
class CurveDiff:
    max_abs: float | None  # over the steps where both are finite; None: there is no such step
    max_rel: float | None
    first_over: int | None  # first step over tolerance, or where either is not finite
    within: bool | None  # None: not judged (no tolerance)
    note: str | None  # why the curves cannot be at parity


def curve_diff(a: list[float], b: list[float], tolerance: float | None, names: tuple[str, str]) -> CurveDiff:
    """Two loss curves against a tolerance. A curve that diverges (NaN or infinite loss) is never at parity,
    not even with another that diverges at the same step: nothing was compared from there on."""
    absd, reld = loss_diff(a, b)
    notes = []
    bad = np.flatnonzero(np.isnan(reld))
    diverged = [
        f"{name} diverged at step {step}" for name, c in zip(names, (a, b)) if (step := first_non_finite(c)) is not None
    ]
    if diverged:
        notes.append("; ".join(diverged) + (" (both diverging is not parity)" if len(diverged) == 2 else ""))
    if len(a) != len(b):
        notes.append(f"the curves have different lengths ({len(a)} and {len(b)} steps)")
    over = np.flatnonzero((reld > tolerance) | np.isnan(reld)) if tolerance is not None else bad
    first = int(over[0]) if over.size else (min(len(a), len(b)) if len(a) != len(b) else None)
    finite = reld[~np.isnan(reld)]
    return CurveDiff(
        max_abs=float(absd[~np.isnan(absd)].max()) if finite.size else None,
        max_rel=float(finite.max()) if finite.size else None,
        first_over=first if tolerance is not None or notes else None,
        within=None if tolerance is None else (first is None and not notes),
        note="; ".join(notes) or None,
    )


def _key(run: AnyRun, implementation: str | None = None, framework: str | None = None) -> tuple:
    """A run's place in a compare: framework, implementation and sweep point."""
    size = run.size or {}
    return (framework or run.framework, implementation or run.implementation, size.get("hidden_width"))


def pairs_for(runs: list[AnyRun]) -> list[tuple[AnyRun, AnyRun, Parity]]:
    """Which runs are diffed and how: first every run against its reference, then TensorFlow runs against
    their PyTorch twins, each in run order."""
    runs = [r for r in runs if r.perturbation is None]  # the envelope's runs are not compared
    by_key = {_key(r): r for r in runs}
    pairs = []
    for r in runs:
        impl = find(r.framework, r.implementation)
        ref = by_key.get(_key(r, impl.reference))
        if ref is not None and ref is not r:
            pairs.append((r, ref, impl.kind.parity))
    for r in runs:
        impl = find(r.framework, r.implementation)
        if r.framework != Framework.TF or (impl.kind.twins == "references" and impl.name != impl.reference):
            continue
        twin = by_key.get(_key(r, impl.twin or impl.name, Framework.TORCH))
        if twin is not None:
            pairs.append((r, twin, Parity.CROSS_FRAMEWORK))
    return pairs


def throughput_verdict(
    ratio: float, spread: RatioRange, band: float, words: tuple[str, str] = ("faster", "slower")
) -> str:
    """a is faster (or slower) than b only when the ratio is beyond the band AND the window-to-window spread
    of both runs cannot turn it into no change: one noisy run gives no verdict."""
    if ratio > 1 + band and spread.low > 1:
        return words[0]
    if ratio < 1 - band and spread.high < 1:
        return words[1]
    return "no clear difference"


def verdict_fields(
    a: RunEntry | NetworksRunEntry,
    b: RunEntry | NetworksRunEntry,
    ratio: float,
    spread: RatioRange,
    band: float,
    words: tuple[str, str] = ("faster", "slower"),
) -> dict:
    """The throughput verdict of a comparison, or why it has none."""
    crowded = [r.id for r in (a, b) if r.oversubscribed]
    if crowded:
        return {"verdict": f"none: {', '.join(crowded)} oversubscribed"}
    return {
        "verdict": throughput_verdict(ratio, spread, band, words),
        "verdict_band": band,
        "change": ratio - 1,
        "repeats": min(a.repeats, b.repeats),
    }


def tolerance_for(kind: Parity, config: Config, float16_gradients: bool = False) -> float | None:
    """The pair's tolerance at runtime.precision; where a run's gradients were all-reduced as float16 (Horovod's
    fp16 compression), the looser of that and the float16 tolerance."""
    if kind == Parity.IDENTICAL:
        return 0.0
    if kind == Parity.NOT_JUDGED:
        return None
    tolerance = config.parity.tolerance(kind.value, config.runtime.precision)
    if float16_gradients:
        tolerance = max(tolerance, config.parity.tolerance(kind.value, "mixed_float16"))
    return tolerance


def float16_gradients(run: RunEntry) -> bool:
    """Whether the run's gradients travelled as float16 (parallel.engine.horovod.compression fp16, or
    parallel.engine.ddp.comm_hook fp16)."""
    options = (run.env.get("engine") or {}).get("options", {})
    return options.get("compression") == "fp16" or options.get("comm_hook") == "fp16"


def low_rank_by_design(a: RunEntry, b: RunEntry, kind: Parity, config: Config) -> str | None:
    """Why a run whose gradients went as PowerSGD's low-rank approximation is meant to differ; None otherwise."""
    approximated = [
        r.id for r in (a, b) if ((r.env.get("engine") or {}).get("options", {})).get("comm_hook") == "powersgd"
    ]
    if not approximated or kind == Parity.CROSS_FRAMEWORK:
        return None
    rank = config.parallel.engine.ddp.powersgd_rank or 1
    return (
        f"{' and '.join(approximated)} all-reduced a rank-{rank} PowerSGD approximation of each matrix gradient (with "
        "error feedback): another algorithm"
    )


def not_compared(a: AnyRun, b: AnyRun, kind: Parity, config: Config) -> Comparison | None:
    """The comparison of a pair of which a run did not produce a result; None when both did."""
    if a.status == "ok" and b.status == "ok":
        return None
    missing = [r.id for r in (a, b) if r.status != "ok"]
    return Comparison(
        a=a.id,
        b=b.id,
        kind=kind.value,
        tolerance=tolerance_for(kind, config),
        status="not compared",
        size=a.size,
        reason=f"{', '.join(missing)} did not run ({a.status}/{b.status})",
    )


def samples_mismatch(a_id: str, a_work: list[ReplicaWork], b_id: str, b_work: list[ReplicaWork]) -> str | None:
    """Why two runs did not train on the same samples at every step, from what their replicas were fed
    (work_split); None when they did, or when either recorded nothing (a result written before xfw recorded it).
    Replicas that each trained the whole batch average to the same gradients as one device: the loss cannot
    show it, the samples do."""
    if not a_work or not b_work:
        return None
    per_step = [sum(w.samples_per_step for w in work) for work in (a_work, b_work)]
    if per_step[0] != per_step[1]:
        return (
            f"{a_id}'s {len(a_work)} replicas trained {per_step[0]} samples per step together, {b_id} "
            f"{per_step[1]}: the global batch was not split"
        )
    if combined_checksum([w.checksum for w in a_work]) != combined_checksum([w.checksum for w in b_work]):
        return f"{a_id} trained on other samples than {b_id} (their work_split checksums differ)"
    return None


def with_samples_check(within: bool | None, note: str | None, mismatch: str | None) -> tuple[bool | None, str | None]:
    """A comparison's parity and note once the samples are checked: a pair that trained on other samples fails."""
    if mismatch is None:
        return within, note
    return (None if within is None else False), "; ".join(filter(None, (note, mismatch)))


def weak_scaling_by_design(a: RunEntry, b: RunEntry, kind: Parity, config: Config) -> str | None:
    """Under weak scaling a run of R replicas trains R x per_replica_batch samples a step, its one-device reference
    per_replica_batch: other batches, other curves, by design."""
    per = config.training.per_replica_batch
    if per is None or kind == Parity.CROSS_FRAMEWORK or a.strategy == b.strategy or a.replicas == b.replicas:
        return None
    return (
        f"weak scaling: {a.replicas} replicas train {a.replicas * per} samples a step, one device {per}: "
        "other batches, different curves by design"
    )


def batchnorm_by_design(a: RunEntry, b: RunEntry, kind: Parity, config: Config) -> str | None:
    """Why `a` normalises other batches than its reference `b` does, so that their curves differ by design (the
    diff is measured and shown, not judged); None when they normalise the same batches."""
    if kind == Parity.CROSS_FRAMEWORK or a.strategy == b.strategy or not has_batchnorm(config.model):
        return None
    assert isinstance(config.model, ResNetSpec)  # has_batchnorm: the ResNet's blocks are the ones with BatchNorm
    strategy = get_strategy(a.strategy)
    if strategy.micro_batched and config.model_parallel.micro_batches > 1:
        return (
            f"BatchNorm normalises each of the {config.model_parallel.micro_batches} micro-batches by its own "
            "statistics, one device the whole batch: different by design"
        )
    if strategy.data_parallel and strategy.shards_batch and a.replicas > 1 and not config.model.sync_batchnorm:
        return (
            "BatchNorm normalises each replica's shard by its own statistics (model.sync_batchnorm is off), one "
            "device the whole batch: different by design"
        )
    return None


def strategies_judge_apart(a: AnyRun, b: AnyRun, kind: Parity, config: Config) -> str | None:
    """Why either run's strategy holds the pair apart by design (common/strategies: e.g. local SGD with k > 1,
    several asynchronous workers); None where neither does."""
    kinds = dict.fromkeys(get_strategy(r.strategy) for r in (a, b))  # each strategy once, a's first
    return next(filter(None, (s.judged_apart(a, b, kind, config) for s in kinds)), None)


def compare_pair(a: AnyRun, b: AnyRun, kind: Parity, config: Config) -> Comparison:
    skipped = not_compared(a, b, kind, config)
    if skipped:
        return skipped
    # Both ran (not_compared), one network each (comparisons() gives several networks to compare_networks_pair).
    assert isinstance(a, RunEntry) and isinstance(b, RunEntry)
    weak = weak_scaling_by_design(a, b, kind, config)
    by_design = (
        weak
        or batchnorm_by_design(a, b, kind, config)
        or strategies_judge_apart(a, b, kind, config)
        or low_rank_by_design(a, b, kind, config)
    )
    if by_design:
        kind = Parity.NOT_JUDGED
    compressed = [r.id for r in (a, b) if float16_gradients(r)]
    tolerance = tolerance_for(kind, config, bool(compressed))
    if compressed and kind != Parity.NOT_JUDGED:
        by_design = f"{' and '.join(compressed)} all-reduced float16 gradients: float16 tolerance"
    curve = curve_diff(a.loss, b.loss, tolerance, (a.id, b.id))
    ta, tb = a.throughput_samples_per_s, b.throughput_samples_per_s
    sa, sb = a.throughput_spread, b.throughput_spread
    # From the interquartile ranges: the ratio's plausible range given both runs' window-to-window spread.
    spread = ratio_range(sa.p25 / sb.p75, sa.p75 / sb.p25, sa.repeat_medians, sb.repeat_medians)
    band = config.training.verdict_band
    against_reference_strategy = kind != Parity.CROSS_FRAMEWORK and a.strategy != b.strategy  # e.g. mirrored vs single
    within, note = with_samples_check(
        curve.within,
        "; ".join(filter(None, (by_design, curve.note))) or None,
        None if weak else samples_mismatch(a.id, a.work_split, b.id, b.work_split),
    )
    return Comparison(
        a=a.id,
        b=b.id,
        kind=kind.value,
        tolerance=tolerance,
        status="ok",
        max_abs_loss_diff=curve.max_abs,
        max_rel_loss_diff=curve.max_rel,
        first_step_over_tolerance=curve.first_over,
        within_tolerance=within,
        note=note,
        final_metric_diff={k: a.eval[k] - b.eval[k] for k in a.eval if k in b.eval},
        throughput_ratio=ta / tb,
        throughput_ratio_spread=spread,
        **verdict_fields(a, b, ta / tb, spread, band),
        scaling_efficiency=ta / (tb * a.devices) if against_reference_strategy else None,
    )


def comparisons(runs: list[AnyRun], config: Config) -> list[Comparison]:
    from xfw.common.judge.compare_networks import compare_networks_pair

    out = []
    for a, b, kind in pairs_for(runs):
        several = find(a.framework, a.implementation).kind.several_networks
        out.append((compare_networks_pair if several else compare_pair)(a, b, kind, config))
    factor = config.parity.envelope_factor
    if factor is not None:
        curves = envelopes(runs)
        by_id = {r.id: r for r in runs}
        for c in out:
            if c.status == "ok" and c.networks is None:
                c.within_envelope, c.envelope_first_over = within_envelope(by_id[c.a], by_id[c.b], curves, factor)
    return out


# One float32 rounding: a difference this small is within rounding whatever the envelope measured so far.
FLOAT32_EPS = float(np.finfo(np.float32).eps)


def envelopes(runs: list[AnyRun]) -> dict[str, np.ndarray]:
    """Framework -> the running maximum, step by step, of the relative loss difference between its single-device
    run and the same run from weights moved one ulp (parity.envelope_factor): what rounding alone does."""
    out = {}
    by_key = {(r.framework, r.implementation, r.perturbation): r for r in runs if r.status == "ok" and r.size is None}
    for (fw, impl, moved), run in by_key.items():
        reference = by_key.get((fw, impl, None))
        if moved == "ulp" and reference is not None:
            # The envelope's runs are one-network strategies' (compare_strategy plans them for no other).
            assert isinstance(reference, RunEntry) and isinstance(run, RunEntry)
            _, rel = loss_diff(reference.loss, run.loss)
            out[fw] = np.maximum.accumulate(np.nan_to_num(rel, nan=np.inf))
    return out


def within_envelope(
    a: AnyRun, b: AnyRun, curves: dict[str, np.ndarray], factor: float
) -> tuple[bool | None, int | None]:
    """Whether a's and b's loss difference stays within factor x the rounding envelope (the larger of their
    frameworks', never below one float32 rounding) at every step, and the first step where it does not; (None,
    None) when an envelope is missing (its run failed or was skipped)."""
    if a.framework not in curves or b.framework not in curves:
        return None, None
    # Compared with compare_pair (no per-network diffs): one network each.
    assert isinstance(a, RunEntry) and isinstance(b, RunEntry)
    envelope = np.maximum(curves[a.framework], curves[b.framework])
    _, rel = loss_diff(a.loss, b.loss)
    n = min(len(rel), len(envelope))
    over = np.flatnonzero(~(rel[:n] <= factor * np.maximum(envelope[:n], FLOAT32_EPS)))
    return (not over.size, int(over[0]) if over.size else None)
