"""The rank-side end of a run that trains several networks (independent, collaborative, shared-device):
what each process knows about its networks is all-gathered through the engine's own collective, and
rank 0 writes result.json with one entry per network, the overlap of their training in time, and (for
independent networks) the ensemble of their test-set predictions.

Framework-free: the framework side hands over numpy arrays and a `gather` function (one all-gather of a
float vector across the run's processes, rows in rank order)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from xfw.common.plan.registry import STRATEGY
from xfw.common.plan.runspec import RunSpec
from xfw.common.records import Ensemble, NetworksResult, first_non_finite, non_finite_keys
from xfw.common.spec.config import Config, network_config
from xfw.common.spec.data import Fed, load_dataset, work_record
from xfw.common.spec.models import output_width, parameter_count, training_flops_per_sample
from xfw.common.worker.loop import Gather, LoopTiming, device_memory, gather_json, peak_rss_bytes, write_json_atomic


@dataclass(frozen=True)
class NetworkOutcome:
    """What one process knows about one network it trained."""

    index: int  # position in the run's network list (the chain: 0 encoder, 1 head)
    name: str
    losses: np.ndarray | None  # per step; None for a chain's encoder, whose loss is the head's
    timing: LoopTiming
    eval: dict
    device: str
    predictions: np.ndarray | None = None  # test-set probabilities (classification) or outputs, for the ensemble
    busy_s_per_step: float | None = None  # collaborative: this network's own forward+backward, timed alone
    fed: Fed | None = None  # the samples it trained on, read back from its step inputs


def _interval_union(intervals: list[tuple[float, float]]) -> float:
    """Total length covered by the intervals: the time during which at least one network trained."""
    total, end = 0.0, float("-inf")
    for lo, hi in sorted(intervals):
        if hi > end:
            total += hi - max(lo, end)
            end = hi
    return total


def ensemble_members(config: Config) -> list[int]:
    """Networks whose predictions can be averaged with network 0's: same data, loss and output width."""
    first = network_config(config, 0)
    key = (first.data, first.loss, output_width(first.model))
    members = []
    for i in range(len(config.networks)):
        cfg = network_config(config, i)
        if (cfg.data, cfg.loss, output_width(cfg.model)) == key:
            members.append(i)
    return members


def ensemble_predictions(config: Config, outcomes: list[NetworkOutcome], gather: Gather) -> np.ndarray | None:
    """All-gather of the ensemble members' test-set predictions, (members, test samples, outputs). Each
    process fills the rows of the networks it trained and NaN elsewhere; every row has one owner."""
    members = ensemble_members(config)
    if len(members) < 2:
        return None
    first = network_config(config, 0)
    # one row per prediction: per test sample, or per position of a test sequence (a language model's class ids)
    y_test = load_dataset(first).y_test
    n_test = y_test.size if first.loss == "cross_entropy" else len(y_test)
    width = output_width(first.model)
    mine = np.full((len(members), n_test, width), np.nan)
    for o in outcomes:
        if o.index in members and o.predictions is not None:
            mine[members.index(o.index)] = o.predictions.reshape(n_test, width)
    table = gather(mine.ravel()).reshape(-1, len(members), n_test, width)
    return np.nansum(table, axis=0)  # each row was filled by exactly one process


def ensemble_report(config: Config, predictions: np.ndarray, evals: dict[str, dict]) -> Ensemble:
    first = network_config(config, 0)
    members = ensemble_members(config)
    names = [config.networks[i].name for i in members]
    y = load_dataset(first).y_test
    if first.loss == "cross_entropy":
        y = y.reshape(-1)  # a language model's positions are predictions of their own
    mean = predictions.mean(axis=0)  # averaged probabilities (classification) or outputs (regression)
    if first.loss == "cross_entropy":
        metrics = {
            "test_loss": float(-np.mean(np.log(np.maximum(mean[np.arange(len(y)), y], 1e-12)))),
            "test_accuracy": float(np.mean(mean.argmax(axis=1) == y)),
        }
        key, better = "test_accuracy", max
    else:
        metrics = {"test_loss": float(np.mean((mean - y) ** 2))}
        key, better = "test_loss", min
    best = better(names, key=lambda n: evals[n][key])
    return Ensemble(
        members=names,
        method="mean of the members' softmax probabilities"
        if first.loss == "cross_entropy"
        else "mean of the members' outputs",
        **metrics,
        best_member=best,
        best_member_metric={key: evals[best][key]},
        gain_over_best_member=metrics[key] - evals[best][key]
        if key == "test_accuracy"
        else evals[best][key] - metrics[key],
        gain_metric=key,
    )


def finish_networks(
    run: RunSpec,
    outcomes: list[NetworkOutcome],
    gather: Gather,
    rank: int,
    rank0_extras: Callable[[], dict],
    gpu_memory: dict[int, int],
    ensemble: bool = False,
) -> None:
    """Gather every process's networks (losses, timings, evaluation, memory; `gpu_memory`: this process's
    allocator peak per GPU) and, for `ensemble`, the test predictions; rank 0 writes result.json."""
    cfg = run.config
    mine = {
        "rank": rank,
        "peak_memory_bytes": peak_rss_bytes(),
        "gpu_memory": {str(k): v for k, v in gpu_memory.items()},
        "networks": [
            {
                "index": o.index,
                "name": o.name,
                "device": o.device,
                "eval": o.eval,
                "loss": None if o.losses is None else [float(v) for v in o.losses],
                "warmup_steps": o.timing.warmup_steps,
                "warmup_s": o.timing.warmup_s,
                "windows": [{"steps": n, "seconds": s} for n, s in o.timing.windows],
                "started_at": o.timing.started_at,
                "timed_started_at": o.timing.timed_started_at,
                "ended_at": o.timing.ended_at,
                "busy_s_per_step": o.busy_s_per_step,
                "work": None if o.fed is None else work_record(o.fed, rank),
            }
            for o in outcomes
        ],
    }
    processes = gather_json(mine, gather)
    predictions = ensemble_predictions(cfg, outcomes, gather) if ensemble else None
    if rank != 0:
        return
    batch = cfg.training.global_batch
    networks = sorted((n for p in processes for n in p["networks"]), key=lambda n: n["index"])
    for n in networks:
        timed_steps = sum(w["steps"] for w in n["windows"])
        timed_s = n["ended_at"] - n["timed_started_at"]
        rates = [batch * w["steps"] / w["seconds"] for w in n["windows"]]
        n["throughput_samples_per_s"] = float(np.median(rates))
        n["throughput_spread"] = {"p25": float(np.percentile(rates, 25)), "p75": float(np.percentile(rates, 75))}
        n["step_time_s"] = sum(w["seconds"] for w in n["windows"]) / timed_steps
        n["timed_s"] = timed_s
        if n["busy_s_per_step"] is not None:
            n["wait_s_per_step"] = max(0.0, n["step_time_s"] - n["busy_s_per_step"])
        if not run.kind.exchanges:  # networks[i] is config.networks[i] (not a chain's part)
            net_cfg = network_config(cfg, n["index"])
            n["parameters"] = parameter_count(net_cfg.model)
            n["training_flops_per_sample"] = training_flops_per_sample(net_cfg.model)
    timed = [(n["timed_started_at"], n["ended_at"]) for n in networks]
    timed_union = _interval_union(timed)
    # Samples every network processed in its timed steps, over the time during which any of them trained.
    # A chain's encoder is not counted: its samples are the head's (one model in two parts).
    combined = (
        sum(batch * sum(w["steps"] for w in n["windows"]) for n in networks if n["loss"] is not None) / timed_union
    )
    evals = {n["name"]: n["eval"] for n in networks}
    peaks = [p["peak_memory_bytes"] for p in sorted(processes, key=lambda p: p["rank"])]
    result = {
        **run.identity,
        "networks": networks,
        "devices": run.devices,
        "processes": len(processes),
        "wall_s": max(n["ended_at"] for n in networks) - min(n["started_at"] for n in networks),
        "timed_wall_s": timed_union,
        # How much of the timed stretch the networks spent training at the same time (1: all of it; clipped to
        # [0, 1] against rounding in the sums of wall-clock times).
        "overlap": min(
            1.0, max(0.0, (sum(hi - lo for lo, hi in timed) - timed_union) / (timed_union * (len(timed) - 1)))
        )
        if len(timed) > 1
        else 0.0,
        "combined_throughput_samples_per_s": combined,
        "peak_memory_bytes": int(sum(peaks)),
        "peak_memory_per_process": peaks,
        "peak_memory_kind": "sum over the run's processes of each one's peak resident set size",
        "device_memory": device_memory(sorted(processes, key=lambda p: p["rank"]), total=True),
        "global_batch": batch,
        "steps": cfg.training.steps,
        "config": cfg.model_dump(mode="json"),
    }
    if predictions is not None:
        result["ensemble"] = ensemble_report(cfg, predictions, evals)
    record = NetworksResult.model_validate(result | rank0_extras())
    for net in record.networks:
        net.diverged_at_step = first_non_finite(net.loss)
        net.non_finite_metrics = non_finite_keys(net.eval)
    record.diverged_at_step = min(
        (n.diverged_at_step for n in record.networks if n.diverged_at_step is not None), default=None
    )
    write_json_atomic(Path(run.out_dir) / "result.json", record.to_json())


def check_networks(config: Config, strategy: str) -> None:
    """What config validation alone cannot see for the multi-network strategies; a UserError names it."""
    from xfw.common.errors import UserError
    from xfw.common.spec.config import network_configs
    from xfw.common.spec.models import input_shape
    from xfw.common.spec.partition import chain_parts

    configs = network_configs(config)
    for cfg in configs:
        load_dataset(cfg)  # each network's data exists and fits its model
    kind = STRATEGY[strategy]
    if len(configs) < kind.min_networks:
        raise UserError(
            f"strategy {strategy} needs at least {kind.min_networks} networks in `networks` (found {len(configs)})"
        )
    if kind.ensemble and len(ensemble_members(config)) > 1 and not len(load_dataset(configs[0]).y_test):
        # The ensemble is judged on held-out samples; refused rather than silently left out of the result.
        raise UserError(
            f"strategy {strategy} evaluates the networks' ensemble on held-out samples, and data.test_fraction 0 "
            "leaves none: set it above 0 (or give x_test and y_test in the .npz)"
        )
    if kind.exchanges:
        first = configs[0]
        key = (first.data, first.loss, input_shape(first.model), output_width(first.model))
        for net, cfg in zip(config.networks[1:], configs[1:]):
            if (cfg.data, cfg.loss, input_shape(cfg.model), output_width(cfg.model)) != key:
                raise UserError(
                    f"networks: {net.name} differs from {config.networks[0].name} in data, loss or input/output "
                    "shape; mutual learning compares their predictions on the same samples"
                )
        chain_parts(config)


def mutual_exchange(config: Config, how: str | None = None, bytes_per_value: int = 4) -> dict:
    """What mutual learning exchanges per step: every network's predictions to every other one (fp32)."""
    k = len(config.networks)
    what = "predictions (logits or outputs), every network to every other"
    return {
        "what": f"{what}, by {how}" if how else what,
        "bytes_per_step": k
        * (k - 1)
        * config.training.global_batch
        * output_width(network_config(config, 0).model)
        * bytes_per_value,
    }


def chain_exchange(parts: list, batch: int, how: str | None = None) -> dict:
    """What the encoder -> head chain exchanges per step: the encoder's output forward, its gradient back."""
    from xfw.common.spec.partition import boundary_bytes_per_step

    what = "encoder output forward, its gradient back"
    return {
        "what": f"{what}, by {how}" if how else what,
        "bytes_per_step": boundary_bytes_per_step(parts, batch),
        "split": [p.names for p in parts],
    }


def head_run(run: RunSpec) -> RunSpec:
    """The chain's run as the head's optimizer sees it: collaborative.head_optimizer, or the top-level one."""
    import dataclasses

    head_optimizer = run.config.collaborative.head_optimizer or run.config.optimizer
    return dataclasses.replace(run, config=run.config.model_copy(update={"optimizer": head_optimizer}))
