"""compare.py for the strategies that train several networks (independent, collaborative, shared-device):
per-repeat results into run entries with one row per network, pairs of runs into comparisons that match
the networks by name, and the verdicts (does concurrency help; where does the size sweep flip). Pure numpy.

Which runs are diffed is compare.pairs_for's (the registry's) decision. Networks trained alone must not
change by being trained at the same time as others, so those strategies declare Parity.IDENTICAL: their
runs are held to bit-identical loss curves against their reference (tolerance 0)."""

from __future__ import annotations

import numpy as np

from xfw.common.judge.compare import (
    curve_diff,
    largest_device_memory,
    not_compared,
    ratio_range,
    samples_mismatch,
    throughput_stats,
    tolerance_for,
    verdict_fields,
    window_rates,
    with_samples_check,
)
from xfw.common.records import (
    Comparison,
    NetworkDiff,
    NetworkEntry,
    NetworksResult,
    NetworksRunEntry,
    RatioRange,
    RunBase,
    SweepLine,
    SweepPoint,
    first_non_finite,
    non_finite_keys,
)
from xfw.common.spec.config import Config
from xfw.common.strategies.base import Parity


def network_run_entry(base: RunBase, results: list[NetworksResult]) -> NetworksRunEntry:
    """Merge the repeats of one multi-network implementation: each network's loss curve from the first
    repeat, its throughput pooled over every timed window of every repeat; run-level times as medians."""
    first, batch = results[0], results[0].global_batch
    networks = []
    for i, net in enumerate(first.networks):
        per = [r.networks[i] for r in results]
        median, spread = throughput_stats([window_rates(batch, n.windows) for n in per])
        busy = [n.busy_s_per_step for n in per if n.busy_s_per_step is not None]
        step_time = batch / median
        networks.append(
            NetworkEntry(
                index=net.index,
                name=net.name,
                device=net.device,
                loss=net.loss,
                eval=net.eval,
                throughput_samples_per_s=median,
                throughput_spread=spread,
                step_time_s=step_time,
                busy_s_per_step=float(np.median(busy)) if busy else None,
                # Waiting: the step time the network does not spend on its own passes (its partner, the exchange).
                wait_s_per_step=max(0.0, step_time - float(np.median(busy))) if busy else None,
                parameters=net.parameters,
                training_flops_per_sample=net.training_flops_per_sample,
                work=net.work,
                diverged_at_step=first_non_finite(net.loss),
                non_finite_metrics=non_finite_keys(net.eval),
            )
        )
    curves = [[n.loss for n in r.networks] for r in results]
    combined = float(np.median([r.combined_throughput_samples_per_s for r in results]))
    return NetworksRunEntry(
        **base.model_dump(),
        networks=networks,
        wall_s=float(np.median([r.wall_s for r in results])),
        timed_wall_s=float(np.median([r.timed_wall_s for r in results])),
        overlap=float(np.median([r.overlap for r in results])),
        combined_throughput_samples_per_s=combined,
        combined_per_repeat=[r.combined_throughput_samples_per_s for r in results],
        throughput_samples_per_s=combined,
        peak_memory_bytes=max(r.peak_memory_bytes for r in results),
        peak_memory_kind=first.peak_memory_kind,
        peak_memory_per_process=first.peak_memory_per_process,
        device_memory=largest_device_memory(results),
        processes=first.processes,
        devices=first.devices,
        global_batch=batch,
        repeats=len(results),
        loss_identical_across_repeats=all(c == curves[0] for c in curves),
        env=first.env,
        ensemble=first.ensemble,
        exchange=first.exchange,
        diverged_at_step=min((n.diverged_at_step for n in networks if n.diverged_at_step is not None), default=None),
        teardown_errors=[r.teardown_error for r in results if r.teardown_error],
    )


def ratio_spread(a: NetworksRunEntry, b: NetworksRunEntry, ratio: float) -> RatioRange:
    """The combined-throughput ratio's plausible range: each run's networks' interquartile ranges, taken at
    their most unfavourable (the lowest p25 / median and the highest p75 / median of its networks)."""

    def scale(run: NetworksRunEntry, key: str, pick) -> float:
        return pick(getattr(n.throughput_spread, key) / n.throughput_samples_per_s for n in run.networks)

    return ratio_range(
        ratio * scale(a, "p25", min) / scale(b, "p75", max),
        ratio * scale(a, "p75", max) / scale(b, "p25", min),
        a.combined_per_repeat,
        b.combined_per_repeat,
    )


def compare_networks_pair(a, b, kind: Parity, config: Config) -> Comparison:
    skipped = not_compared(a, b, kind, config)
    if skipped:
        return skipped
    tolerance = tolerance_for(kind, config)
    entry = dict(a=a.id, b=b.id, kind=kind.value, tolerance=tolerance, size=a.size)
    b_nets = {n.name: n for n in b.networks}
    per_network = {}
    for n in a.networks:
        m = b_nets.get(n.name)
        if m is None or n.loss is None or m.loss is None:
            continue
        names = (f"{a.id} {n.name}", f"{b.id} {m.name}")
        curve = curve_diff(n.loss, m.loss, tolerance, names)
        fed = [[w] if w else [] for w in (n.work, m.work)]  # each network's own samples, in both runs
        _, note = with_samples_check(curve.within, curve.note, samples_mismatch(names[0], fed[0], names[1], fed[1]))
        per_network[n.name] = NetworkDiff(
            max_abs_loss_diff=curve.max_abs,
            max_rel_loss_diff=curve.max_rel,
            first_step_over_tolerance=curve.first_over,
            note=note,
            final_metric_diff={k: n.eval[k] - m.eval[k] for k in n.eval if k in m.eval},
            # Throughput alone (the reference trains the networks one at a time) over together: >1 = slowed down.
            slowdown=m.throughput_samples_per_s / n.throughput_samples_per_s if kind == Parity.IDENTICAL else None,
        )
    if not per_network:
        return Comparison(**entry, status="not compared", reason="no network with a loss curve in both runs")
    firsts = [p.first_step_over_tolerance for p in per_network.values() if p.first_step_over_tolerance is not None]
    notes = [f"{name}: {p.note}" for name, p in per_network.items() if p.note]
    maxima = {
        k: [getattr(p, k) for p in per_network.values() if getattr(p, k) is not None]
        for k in ("max_abs_loss_diff", "max_rel_loss_diff")
    }
    ratio = a.combined_throughput_samples_per_s / b.combined_throughput_samples_per_s
    spread = ratio_spread(a, b, ratio)
    # Against the reference: does training the networks together help; across frameworks: which is faster.
    words = ("faster", "slower") if kind == Parity.CROSS_FRAMEWORK else ("helps", "hurts")
    band = config.shared_device.verdict_band
    judged = verdict_fields(a, b, ratio, spread, band, words)
    return Comparison(
        **entry,
        status="ok",
        networks=per_network,
        max_abs_loss_diff=max(maxima["max_abs_loss_diff"], default=None),
        max_rel_loss_diff=max(maxima["max_rel_loss_diff"], default=None),
        first_step_over_tolerance=min(firsts) if firsts else None,
        within_tolerance=None if tolerance is None else not firsts and not notes,
        note="; ".join(notes) or None,
        # Both runs train the same samples, so this is also the ratio of their timed wall times, b / a.
        throughput_ratio=ratio,
        throughput_ratio_spread=spread,
        **judged,
    )


def sweep(comparisons: list[Comparison]) -> list[SweepLine]:
    """The shared-device size sweep: for each concurrent implementation, its verdict against sequential at
    every hidden width, and the widths between which the verdict changes."""
    lines: dict[str, list[SweepPoint]] = {}
    for c in comparisons:
        if c.kind != Parity.IDENTICAL or c.size is None or c.status != "ok":
            continue
        # compare_networks_pair: every compared pair has a ratio, its range, per-network diffs and a verdict.
        assert c.throughput_ratio is not None and c.throughput_ratio_spread is not None
        assert c.networks is not None and c.verdict is not None
        lines.setdefault(c.a.split("@")[0], []).append(
            SweepPoint(
                hidden_width=c.size["hidden_width"],
                throughput_ratio=c.throughput_ratio,
                throughput_ratio_spread=c.throughput_ratio_spread,
                verdict=c.verdict,
                # Parity.IDENTICAL: compare_networks_pair set every network's slowdown.
                slowdown={k: v.slowdown for k, v in c.networks.items()},  # type: ignore[misc]
            )
        )
    out = []
    for impl_id, points in lines.items():
        points.sort(key=lambda p: p.hidden_width)
        flips = [
            {"from": p.hidden_width, "to": q.hidden_width, "verdict_from": p.verdict, "verdict_to": q.verdict}
            for p, q in zip(points, points[1:])
            if p.verdict != q.verdict
        ]
        out.append(SweepLine(run=impl_id, points=points, flips=flips))
    return out
