"""Turns per-repeat result files into run entries, and pairs of runs into comparisons. Pure numpy."""

from __future__ import annotations

import numpy as np

from xfw.common.config import Config


def throughput_stats(results: list[dict]) -> dict:
    """Median and spread of samples/s over every timed window of every repeat (warm-up excluded)."""
    rates = np.array([
        r["timing"]["global_batch"] * w["steps"] / w["seconds"] for r in results for w in r["timing"]["windows"]
    ])
    p25, median, p75 = np.percentile(rates, [25, 50, 75])
    return {"median": float(median), "p25": float(p25), "p75": float(p75), "min": float(rates.min()),
            "max": float(rates.max()), "windows": int(rates.size)}


def run_entry(base: dict, results: list[dict]) -> dict:
    """Merge the repeats of one implementation: the loss curve of the first repeat (the others must be
    identical when determinism is on), throughput pooled over all repeats."""
    first = results[0]
    stats = throughput_stats(results)
    flops_per_sample = first["model"]["training_flops_per_sample"]
    peak = float(np.median([r["peak_flops_per_s"] for r in results]))
    achieved = flops_per_sample * stats["median"]
    losses = np.array([r["loss"] for r in results])
    return base | {
        "status": "ok",
        "loss": first["loss"],
        "eval": first["eval"],
        "throughput_samples_per_s": stats["median"],
        "throughput_spread": {k: stats[k] for k in ("p25", "p75", "min", "max", "windows")},
        "step_time_s": first["timing"]["global_batch"] / stats["median"],
        "warmup_s": float(np.median([r["timing"]["warmup_s"] for r in results])),
        "warmup_steps": first["timing"]["warmup_steps"],
        "peak_memory_bytes": max(r["peak_memory_bytes"] for r in results),
        "peak_memory_kind": first["peak_memory_kind"],
        "peak_memory_per_process": first.get("peak_memory_per_process"),
        "replica_weight_max_abs_diff": max(r["replica_weight_max_abs_diff"] for r in results),
        "processes": first["processes"],
        "replicas": first["replicas"],
        "devices": first["devices"],
        "flops": {
            "training_flops_per_sample": flops_per_sample,
            "achieved_flops_per_s": achieved,
            "peak_flops_per_s": peak,
            "utilization": achieved / peak,
        },
        "parameters": first["model"]["parameters"],
        "repeats": len(results),
        "loss_identical_across_repeats": bool((losses == losses[0]).all()),
        "env": first["env"],
    } | ({"model_parallel": first["model_parallel"]} if "model_parallel" in first else {})


def loss_diff(a: list[float], b: list[float]) -> tuple[np.ndarray, np.ndarray]:
    """Per-step absolute and relative difference; relative to the larger of the two magnitudes."""
    la, lb = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    diff = np.abs(la - lb)
    return diff, diff / np.maximum(np.maximum(np.abs(la), np.abs(lb)), 1e-12)


def pairs_for(runs: list[dict]) -> list[tuple[dict, dict, str]]:
    """Which runs are diffed: every parallel run against its framework's single-device run, the two
    single-device runs against each other, and the same engine under both frameworks (Horovod)."""
    by_id = {r["id"]: r for r in runs}
    pairs = []
    for r in runs:
        if r["strategy"] != "single" and f"{r['framework']}-single" in by_id:
            pairs.append((r, by_id[f"{r['framework']}-single"], "same_framework"))
    if "tf-single" in by_id and "torch-single" in by_id:
        pairs.append((by_id["tf-single"], by_id["torch-single"], "cross_framework"))
    for r in runs:
        twin = by_id.get(f"torch-{r['implementation']}")
        if r["framework"] == "tf" and r["strategy"] != "single" and twin is not None:
            pairs.append((r, twin, "cross_framework"))
    return pairs


def compare_pair(a: dict, b: dict, kind: str, config: Config) -> dict:
    tolerance = getattr(config.parity, kind)
    entry = {"a": a["id"], "b": b["id"], "kind": kind, "tolerance": tolerance}
    if a["status"] != "ok" or b["status"] != "ok":
        missing = [r["id"] for r in (a, b) if r["status"] != "ok"]
        return entry | {"status": "not compared", "reason": f"{', '.join(missing)} did not run ({a['status']}/{b['status']})"}
    absd, reld = loss_diff(a["loss"], b["loss"])
    over = np.flatnonzero(reld > tolerance)
    ta, tb = a["throughput_samples_per_s"], b["throughput_samples_per_s"]
    sa, sb = a["throughput_spread"], b["throughput_spread"]
    entry |= {
        "status": "ok",
        "max_abs_loss_diff": float(absd.max()),
        "max_rel_loss_diff": float(reld.max()),
        "first_step_over_tolerance": int(over[0]) if over.size else None,
        "within_tolerance": not over.size,
        "final_metric_diff": {k: a["eval"][k] - b["eval"][k] for k in a["eval"] if k in b["eval"]},
        "throughput_ratio": ta / tb,
        # From the interquartile ranges: the ratio's plausible range given both runs' window-to-window spread.
        "throughput_ratio_spread": {"low": sa["p25"] / sb["p75"], "high": sa["p75"] / sb["p25"]},
    }
    if b["strategy"] == "single" and a["strategy"] != "single":
        entry["scaling_efficiency"] = ta / (tb * a["devices"])
    return entry


def comparisons(runs: list[dict], config: Config) -> list[dict]:
    return [compare_pair(a, b, kind, config) for a, b, kind in pairs_for(runs)]
