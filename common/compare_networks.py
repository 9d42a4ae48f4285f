"""compare.py for the strategies that train several networks (independent, collaborative, shared-device):
per-repeat results into run entries with one row per network, pairs of runs into comparisons that match
the networks by name, and the verdicts (does concurrency help; where does the size sweep flip). Pure numpy.

Which runs are diffed: every implementation against its framework's reference (registry `reference`: the
networks one after another, or all on one device), the two frameworks' references against each other, and
each collaborative TensorFlow implementation against its PyTorch twin. Networks trained alone must not change by being
trained at the same time as others, so independent and shared-device runs are held to bit-identical
loss curves against their reference (kind "identical", tolerance 0)."""

from __future__ import annotations

import numpy as np

from xfw.common.compare import loss_diff
from xfw.common.config import Config
from xfw.common.registry import find


def _rates(per_repeat: list[dict], batch: int) -> np.ndarray:
    return np.array([batch * w["steps"] / w["seconds"] for n in per_repeat for w in n["windows"]])


def network_run_entry(base: dict, results: list[dict]) -> dict:
    """Merge the repeats of one multi-network implementation: each network's loss curve from the first
    repeat, its throughput pooled over every timed window of every repeat; run-level times as medians."""
    first, batch = results[0], results[0]["global_batch"]
    networks = []
    for i, net in enumerate(first["networks"]):
        per = [r["networks"][i] for r in results]
        rates = _rates(per, batch)
        p25, median, p75 = np.percentile(rates, [25, 50, 75])
        busy = [n["busy_s_per_step"] for n in per if n.get("busy_s_per_step") is not None]
        entry = {k: net[k] for k in ("index", "name", "device", "loss", "eval")} | {
            "throughput_samples_per_s": float(median),
            "throughput_spread": {"p25": float(p25), "p75": float(p75), "windows": int(rates.size)},
            "step_time_s": batch / float(median),
            "busy_s_per_step": float(np.median(busy)) if busy else None,
        }
        # Waiting: the step time the network does not spend on its own passes (for its partner, the exchange).
        entry["wait_s_per_step"] = max(0.0, entry["step_time_s"] - entry["busy_s_per_step"]) if busy else None
        entry |= {k: net[k] for k in ("parameters", "training_flops_per_sample") if k in net}
        networks.append(entry)
    curves = [[n["loss"] for n in r["networks"]] for r in results]
    combined = float(np.median([r["combined_throughput_samples_per_s"] for r in results]))
    return base | {
        "status": "ok",
        "networks": networks,
        "wall_s": float(np.median([r["wall_s"] for r in results])),
        "timed_wall_s": float(np.median([r["timed_wall_s"] for r in results])),
        "overlap": float(np.median([r["overlap"] for r in results])),
        "combined_throughput_samples_per_s": combined,
        "throughput_samples_per_s": combined,
        "peak_memory_bytes": max(r["peak_memory_bytes"] for r in results),
        "peak_memory_kind": first["peak_memory_kind"],
        "peak_memory_per_process": first["peak_memory_per_process"],
        "processes": first["processes"],
        "devices": first["devices"],
        "global_batch": batch,
        "repeats": len(results),
        "loss_identical_across_repeats": all(c == curves[0] for c in curves),
        "env": first["env"],
    } | {k: first[k] for k in ("ensemble", "exchange") if k in first}


def _key(run: dict, implementation: str | None = None, framework: str | None = None) -> tuple:
    size = run.get("size") or {}
    return (framework or run["framework"], implementation or run["implementation"], size.get("hidden_width"))


def network_pairs(runs: list[dict]) -> list[tuple[dict, dict, str]]:
    by_key = {_key(r): r for r in runs}
    pairs = []
    for r in runs:
        impl = find(r["framework"], r["implementation"])
        ref = by_key.get(_key(r, impl.reference))
        if ref is not None and ref is not r:
            pairs.append((r, ref, "same_framework" if r["strategy"] == "collaborative" else "identical"))
    for r in (r for r in runs if r["framework"] == "tf"):
        impl = find("tf", r["implementation"])
        # Independent and shared-device runs are bit-identical to their reference, so their twins' diff is
        # the references' diff: only collaborative runs (whose exchange differs per engine) pair as twins.
        if r["strategy"] != "collaborative" and impl.name != impl.reference:
            continue
        twin = by_key.get(_key(r, impl.twin or impl.name, "torch"))
        if twin is not None:
            pairs.append((r, twin, "cross_framework"))
    return pairs


def _verdict(ratio: float, spread: dict, band: float) -> str:
    """helps / hurts only when the change is beyond the band AND the window-to-window spread of both runs
    cannot turn it into no change: one noisy run gives no verdict."""
    if ratio > 1 + band and spread["low"] > 1:
        return "helps"
    if ratio < 1 - band and spread["high"] < 1:
        return "hurts"
    return "no clear difference"


def _ratio_spread(a: dict, b: dict, ratio: float) -> dict:
    """The combined-throughput ratio's plausible range: each run's networks' interquartile ranges, taken at
    their most unfavourable (the lowest p25 / median and the highest p75 / median of its networks)."""
    def scale(run: dict, key: str, pick) -> float:
        return pick(n["throughput_spread"][key] / n["throughput_samples_per_s"] for n in run["networks"])

    return {"low": ratio * scale(a, "p25", min) / scale(b, "p75", max), "high": ratio * scale(a, "p75", max) / scale(b, "p25", min)}


def compare_networks_pair(a: dict, b: dict, kind: str, config: Config) -> dict:
    tolerance = 0.0 if kind == "identical" else getattr(config.parity, kind)
    entry = {"a": a["id"], "b": b["id"], "kind": kind, "tolerance": tolerance, "size": a.get("size")}
    if a["status"] != "ok" or b["status"] != "ok":
        missing = [r["id"] for r in (a, b) if r["status"] != "ok"]
        return entry | {"status": "not compared", "reason": f"{', '.join(missing)} did not run ({a['status']}/{b['status']})"}
    b_nets = {n["name"]: n for n in b["networks"]}
    per_network = {}
    for n in a["networks"]:
        m = b_nets.get(n["name"])
        if m is None or n["loss"] is None or m["loss"] is None:
            continue
        absd, reld = loss_diff(n["loss"], m["loss"])
        over = np.flatnonzero(reld > tolerance)
        per_network[n["name"]] = {
            "max_abs_loss_diff": float(absd.max()), "max_rel_loss_diff": float(reld.max()),
            "first_step_over_tolerance": int(over[0]) if over.size else None,
            "final_metric_diff": {k: n["eval"][k] - m["eval"][k] for k in n["eval"] if k in m["eval"]},
        }
        if kind == "identical":
            # Throughput alone (the reference trains the networks one at a time) over together: >1 = slowed down.
            per_network[n["name"]]["slowdown"] = m["throughput_samples_per_s"] / n["throughput_samples_per_s"]
    if not per_network:
        return entry | {"status": "not compared", "reason": "no network with a loss curve in both runs"}
    firsts = [p["first_step_over_tolerance"] for p in per_network.values() if p["first_step_over_tolerance"] is not None]
    ratio = a["combined_throughput_samples_per_s"] / b["combined_throughput_samples_per_s"]
    entry |= {
        "status": "ok",
        "networks": per_network,
        "max_abs_loss_diff": max(p["max_abs_loss_diff"] for p in per_network.values()),
        "max_rel_loss_diff": max(p["max_rel_loss_diff"] for p in per_network.values()),
        "first_step_over_tolerance": min(firsts) if firsts else None,
        "within_tolerance": not firsts,
        # Both runs train the same samples, so this is also the ratio of their timed wall times, b / a.
        "throughput_ratio": ratio,
        "throughput_ratio_spread": _ratio_spread(a, b, ratio),
    }
    if kind != "cross_framework":
        band = config.shared_device.verdict_band
        entry |= {"verdict": _verdict(ratio, entry["throughput_ratio_spread"], band), "verdict_band": band, "change": ratio - 1}
    return entry


def network_comparisons(runs: list[dict], config: Config) -> list[dict]:
    return [compare_networks_pair(a, b, kind, config) for a, b, kind in network_pairs(runs)]


def sweep(comparisons: list[dict]) -> list[dict]:
    """The shared-device size sweep: for each concurrent implementation, its verdict against sequential at
    every hidden width, and the widths between which the verdict changes."""
    lines: dict[str, list[dict]] = {}
    for c in comparisons:
        if c["kind"] != "identical" or c.get("size") is None or c["status"] != "ok":
            continue
        lines.setdefault(c["a"].split("@")[0], []).append(
            {"hidden_width": c["size"]["hidden_width"], "throughput_ratio": c["throughput_ratio"],
             "throughput_ratio_spread": c["throughput_ratio_spread"], "verdict": c["verdict"],
             "slowdown": {k: v["slowdown"] for k, v in c["networks"].items()}})
    out = []
    for impl_id, points in lines.items():
        points.sort(key=lambda p: p["hidden_width"])
        flips = [{"from": p["hidden_width"], "to": q["hidden_width"], "verdict_from": p["verdict"], "verdict_to": q["verdict"]}
                 for p, q in zip(points, points[1:]) if p["verdict"] != q["verdict"]]
        out.append({"run": impl_id, "points": points, "flips": flips})
    return out
