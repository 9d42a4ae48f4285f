"""Asynchronous training with parameter servers (TF ParameterServerStrategy, torch.distributed.rpc): servers hold the
weights, each worker reads them, computes a whole batch's gradients and the servers apply them as they arrive. One
worker is one device's algorithm; with more, each update comes from weights some updates old (its staleness, recorded
per update in the result's `asynchrony`)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Annotated, Any

from pydantic import Field

from xfw.common.record_types import Count, Real, Record
from xfw.common.spec.model_specs import Section
from xfw.common.spec.models import is_state, parameter_shapes
from xfw.common.strategies.base import Framework, Implementation, Parity, Role, Strategy, implementation, register

if TYPE_CHECKING:
    from xfw.common.spec.config import Config

# Why the parameter-server implementations train in float32 and uncompiled only.
ASYNC_FLOAT32 = (
    "the parameter-server implementations are built for float32 only: float16's loss scaling would have to skip an "
    "overflowed update on every server at once, which an asynchronous update has no step to do, and bfloat16 "
    "autocast in the workers was not built or tested"
)
ASYNC_EAGER_EXCHANGE = (
    "each update is a pull of the weights, a step and a push of the gradients across processes: xfw compiles "
    "whole-model steps only, and this step is split by the exchange"
)


class Asynchrony(Record):
    """An asynchronous run (strategy parameter-server): every update in the order the servers applied it, and how
    stale the weights its gradients were computed from were."""

    updates: Count
    # Per applied update: how many updates were applied between the worker's read of the weights and this one
    # (0: computed from the weights it updates, as one device's every step is).
    staleness: list[int]
    mean_staleness: Real
    max_staleness: int
    counted_by: str  # which counter the versions come from
    # Updates each worker pushed (None where the engine does not say which worker ran a step).
    updates_per_worker: list[int] | None = None


def asynchrony_record(updates: list[tuple[int | None, int, int]], workers: int, counted_by: str) -> Asynchrony:
    """From (worker or None, version read, version applied) per update, in the order applied."""
    staleness = [applied - read for _, read, applied in updates]
    per_worker = None
    if updates and all(worker is not None for worker, _, _ in updates):
        per_worker = [sum(worker == w for worker, _, _ in updates) for w in range(workers)]
    return Asynchrony(
        updates=len(updates),
        staleness=staleness,
        mean_staleness=sum(staleness) / len(staleness) if staleness else 0.0,
        max_staleness=max(staleness, default=0),
        counted_by=counted_by,
        updates_per_worker=per_worker,
    )


class ResultFields(Record):
    """What a parameter-server run adds to result.json (RunResult) and to its entry in summary.json (RunEntry: the
    first repeat's), gathered with other strategies' fields in common/strategies/__init__.py."""

    asynchrony: Asynchrony | None = None  # every update's staleness


class SyncSettings(Section):
    """The parameter servers' setting in the config's `sync` section."""

    # Processes that hold the weights (each a share of the weight tensors, round-robin) and apply the workers'
    # gradients as they arrive; the workers are parallel.replicas.
    parameter_servers: Annotated[int, Field(ge=1)] = 1


class ParameterServer(Strategy):
    def roles(self, impl: Implementation, config: Config, processes: int) -> tuple[Role, ...]:
        """TensorFlow (a coordinator): the chief, the workers, the ps tasks, as TF_CONFIG lists them. PyTorch: the
        servers (ranks 0..P-1), then the workers. Only rank 0 (the chief, or server 0, which deals out the steps)
        writes progress."""
        workers = config.parallel.replicas
        servers = config.sync.parameter_servers
        trainers = tuple(Role("worker", i, i, reports_progress=False) for i in range(workers))
        if impl.coordinator:
            ps = tuple(Role("ps", i, None, reports_progress=False) for i in range(servers))
            return (Role("chief", 0, None), *trainers, *ps)
        served = tuple(Role("server", i, None, reports_progress=i == 0) for i in range(servers))
        return (*served, *trainers)

    def refusal(self, config: Config, impl: Implementation | None = None) -> str | None:
        servers = config.sync.parameter_servers
        weights = [name for name, _ in parameter_shapes(config.model) if not is_state(name)]
        if servers > len(weights):
            return (
                f"sync.parameter_servers {servers} is more than the model's {len(weights)} weight tensors: the "
                "servers share the tensors out, and a server would hold none"
            )
        if config.data.pipeline == "native":
            return (
                "data.pipeline native: a parameter-server worker takes whichever step the servers hand it next, not "
                "the next batch of a pipeline of its own"
            )
        if config.training.per_replica_batch is not None:
            return (
                "training.per_replica_batch (weak scaling): every update of a parameter-server run is one worker's "
                "whole training.global_batch"
            )
        torch_servers = impl is not None and impl.framework == Framework.TORCH
        if torch_servers and servers > 1 and config.training.clip_global_norm:
            return (
                "cannot clip by the global norm (training.clip_global_norm) with several servers: each would clip "
                "its share of the weights by that share's norm"
            )
        return None

    def judged_apart(self, a: Any, b: Any, kind: Parity, config: Config) -> str | None:
        """Several workers: each update from weights some updates old, in an order the machine's timing decides, so
        not held step for step; one worker is one device's steps and is judged."""
        stale = [r for r in (a, b) if r.strategy == self.name and r.replicas > 1]
        if not stale:
            return None
        staleness = "; ".join(
            f"{r.id} mean staleness {r.asynchrony.mean_staleness:.2f}, max {r.asynchrony.max_staleness}"
            for r in stale
            if getattr(r, "asynchrony", None) is not None
        )
        return (
            f"asynchronous: {config.parallel.replicas} workers apply updates from stale weights in an order timing "
            "decides, not reproducible step for step"
            + (f" ({staleness})" if staleness else "")
            + "; convergence over seeds: xfw study (README)"
        )

    def run_notes(self, entry: Any) -> list[str]:
        """The staleness: updates computed from weights this many updates old."""
        a = entry.asynchrony
        if a is None:
            return []
        per_worker = f", updates per worker {a.updates_per_worker}" if a.updates_per_worker is not None else ""
        return [f"staleness mean {a.mean_staleness:.2f} max {a.max_staleness}{per_worker}"]

    def repeats_may_differ(self, entry: Any) -> str | None:
        stale = getattr(entry, "asynchrony", None) is not None and entry.asynchrony.max_staleness > 0
        return "asynchronous updates: expected" if stale else None


STRATEGY = ParameterServer(
    "parameter-server",
    "asynchronous training: parameter servers hold the weights, each worker reads them, computes a whole "
    "batch's gradients and the servers apply them as they arrive (staleness reported); one worker is one device",
    data_parallel=True,
    device_unit="workers",
    config_sections=("parallel", "sync"),
    whole_model_steps=True,
    shards_batch=False,
    result_fields=("asynchrony",),
)

IMPLEMENTATIONS = (
    implementation(
        "tf",
        "parameter-server",
        "parameter-server",
        "parameter_server",
        "run_parameter_server",
        "tf_config",
        "ParameterServerStrategy: TF_CONFIG chief, worker and ps tasks; the chief's ClusterCoordinator schedules "
        "each step on a free worker, which updates the variables on the ps tasks",
        coordinator=True,
        no_mixed_precision=ASYNC_FLOAT32,
        no_compile=ASYNC_EAGER_EXCHANGE,
    ),
    implementation(
        "torch",
        "parameter-server",
        "parameter-server",
        "parameter_server",
        "run_parameter_server",
        "torchrun",
        "torch.distributed.rpc: server ranks hold the parameters and apply gradients as they arrive; worker ranks "
        "pull the weights and push a batch's gradients",
        no_mixed_precision=ASYNC_FLOAT32,
        no_compile=ASYNC_EAGER_EXCHANGE,
    ),
)

register(STRATEGY, IMPLEMENTATIONS)
