"""PyTorch asynchronous training with parameter servers, over torch.distributed.rpc. torchrun starts
sync.parameter_servers + parallel.replicas processes: ranks 0 .. P-1 are the servers, the rest the workers.

Server s holds the weight tensors s, s + P, s + 2P, ... (named_parameters order) with an optimizer of its own over
them; server 0 also holds the BatchNorm statistics, deals out the steps and records every update. A worker, until
no step is left: asks server 0 for the next step (steps are dealt in the one-device run's order), pulls every
server's share of the weights, computes that step's whole-batch gradients, and pushes each server its share. A
server applies a push at once, under a lock, from whatever weights it holds then: the update's staleness is how
many updates server 0 applied between the worker's pull and its push. With one worker nothing is stale and every
update is one device's (test). tf_impl/parameter_server.py is the TensorFlow side.

Lines that exist only because of the engine are tagged `# torch.distributed:`."""

from __future__ import annotations

import dataclasses
import threading
import time

import numpy as np
import torch
import torch.distributed as dist
from torch.distributed import rpc

from xfw.common.plan.runspec import RunSpec
from xfw.common.strategies.parameter_server import asynchrony_record
from xfw.common.worker.faults import maybe_inject
from xfw.common.worker.loop import LoopTiming
from xfw.common.worker.rank import RankContext
from xfw.torch_impl import training
from xfw.torch_impl.models import build_model, flat_weights

# This process's server (None on a worker), and on server 0 the dealer of steps: module globals because an RPC
# runs a module-level function in the callee's process.
_server: Server | None = None
_dealer: Dealer | None = None


def _server_name(index: int) -> str:
    return f"server{index}"


class Server:
    """One parameter server: its share of the model's weights (and, on server 0, the buffers) and its optimizer."""

    def __init__(self, run: RunSpec, model: torch.nn.Module, index: int, servers: int):
        named = list(model.named_parameters())
        self.params = [p for i, (_, p) in enumerate(named) if i % servers == index]
        self.buffers = dict(model.named_buffers()) if index == 0 else {}
        self.optimizer = training.make_optimizer(run, self.params)
        self.lock = threading.Lock()
        self.version = 0  # updates applied so far

    def pull(self) -> tuple[int, list[torch.Tensor], dict[str, torch.Tensor]]:
        with self.lock:
            weights = [p.detach().clone() for p in self.params]
            return self.version, weights, {n: b.clone() for n, b in self.buffers.items()}

    def push(self, grads: list[torch.Tensor], buffers: dict[str, torch.Tensor]) -> int:
        """Applies a worker's gradients for this server's share; returns the update's index on this server."""
        with self.lock:
            for p, g in zip(self.params, grads):
                p.grad = g
            self.optimizer.step()
            self.optimizer.zero_grad()
            with torch.no_grad():
                for name, value in buffers.items():
                    self.buffers[name].copy_(value)
            applied = self.version
            self.version += 1
            return applied


class Dealer:
    """On server 0: hands out the steps in order and records each update as server 0 applies it."""

    def __init__(self, steps: int):
        self.steps = steps
        self.next_step = 0
        self.updates: dict[int, tuple[int, int, float]] = {}  # applied version -> (worker, read version, loss)
        self.applied_at: dict[int, float] = {}  # applied version -> time.perf_counter() when server 0 applied it
        self.changed = threading.Condition()

    def deal(self) -> int | None:
        with self.changed:
            if self.next_step == self.steps:
                return None
            self.next_step += 1
            return self.next_step - 1

    def record(self, worker: int, read: int, applied: int, loss: float, applied_at: float) -> None:
        with self.changed:
            self.updates[applied] = (worker, read, loss)
            self.applied_at[applied] = applied_at
            self.changed.notify_all()

    def timing(self, timing: LoopTiming, started: float) -> LoopTiming:
        """The timed loop's windows re-measured from when server 0 applied each update: the loop only notices
        updates when its thread runs, which on a busy machine can be long after a burst of them was applied."""
        at = [self.applied_at[k] for k in range(self.steps)]
        warmup = timing.warmup_steps
        bounds = np.cumsum([warmup] + [n for n, _ in timing.windows]).tolist()
        windows = [(hi - lo, at[hi - 1] - at[lo - 1]) for lo, hi in zip(bounds[:-1], bounds[1:])]
        return dataclasses.replace(timing, warmup_s=at[warmup - 1] - started, windows=windows)

    def wait_for(self, update: int) -> torch.Tensor:
        """The loss of the update-th update applied, once it is recorded (server 0's timed loop steps through
        these: a curve in the order the updates were applied)."""
        with self.changed:
            self.changed.wait_for(lambda: update in self.updates)
            return torch.tensor(self.updates[update][2])


def _deal() -> int | None:
    return _dealer.deal()


def _pull() -> tuple[int, list[torch.Tensor], dict[str, torch.Tensor]]:
    return _server.pull()


def _push(grads, buffers, record: tuple[int, int, float] | None) -> None:
    """record (worker, version it read, loss): server 0 records the update once it has applied it."""
    applied = _server.push(grads, buffers)
    applied_at = time.perf_counter()
    if record is not None:
        worker, read, loss = record
        _dealer.record(worker, read, applied, loss, applied_at)


def _pull_all(model: torch.nn.Module, servers: int) -> int:
    """torch.distributed: every server's share of the weights into `model`; returns server 0's version."""
    futures = [rpc.rpc_async(_server_name(s), _pull) for s in range(servers)]
    named = list(model.named_parameters())
    buffers = dict(model.named_buffers())
    version = 0
    with torch.no_grad():
        for s, future in enumerate(futures):
            read, weights, state = future.wait()
            version = read if s == 0 else version
            for (_, p), w in zip(named[s::servers], weights):
                p.copy_(w)
            for name, value in state.items():
                buffers[name].copy_(value)
    return version


def work(run: RunSpec, s: training.Setup, model: torch.nn.Module, rank: int, servers: int) -> None:
    """A worker's loop: deal, pull, one whole-batch backward, push, until server 0 has no step left."""
    loss_fn = training.loss_function(run)

    def forward(batch):
        x, y = training.batch_tensors(s, batch)
        return loss_fn(model(x), y)

    named = list(model.named_parameters())
    updates = 0
    while (step := rpc.rpc_sync(_server_name(0), _deal)) is not None:  # torch.distributed
        read = _pull_all(model, servers)
        model.zero_grad(set_to_none=True)
        loss = training.gradients(run, torch.from_numpy(s.order[step]).to(s.device), forward)
        buffers = {n: b.detach().cpu() for n, b in model.named_buffers()}
        pushes = [
            rpc.rpc_async(  # torch.distributed: each server its share of the gradients
                _server_name(i),
                _push,
                args=(
                    [p.grad.cpu() for _, p in named[i::servers]],
                    buffers if i == 0 else {},
                    (rank, read, float(loss)) if i == 0 else None,
                ),
            )
            for i in range(servers)
        ]
        torch.futures.wait_all(pushes)
        updates += 1
        if updates == 1:
            maybe_inject(run.id, "training")


def _backend_options(run: RunSpec) -> rpc.TensorPipeRpcBackendOptions:
    """TensorPipe's defaults, except across xfw's virtual hosts (network namespaces of one machine): there TensorPipe
    would still see one machine and move tensors by shared memory and cross-process memory reads (its shm transport,
    cma channel), never over the link; TCP only (uv transport, basic channel), as between real hosts."""
    options = rpc.TensorPipeRpcBackendOptions()
    if run.config.network.hosts > 1:
        options = rpc.TensorPipeRpcBackendOptions(_transports=["uv"], _channels=["basic"])
    return options


def run_parameter_server(run: RunSpec, launcher: str) -> None:
    global _server, _dealer
    device = training.init_process_group(run)  # torch.distributed: the bookkeeping group (barriers, the gather)
    rank, world = dist.get_rank(), dist.get_world_size()
    servers = run.config.sync.parameter_servers
    s = training.setup(run, device if rank >= servers else torch.device("cpu"))  # the servers hold CPU tensors
    model = build_model(run.config.model, s.weights).to(s.device)
    if rank < servers:
        _server = Server(run, model, rank, servers)
        _dealer = Dealer(run.config.training.steps) if rank == 0 else None
    name = _server_name(rank) if rank < servers else f"worker{rank - servers}"
    # torch.distributed: the RPC agent, from torchrun's rendezvous as the process group's
    rpc.init_rpc(name, rank=rank, world_size=world, rpc_backend_options=_backend_options(run))
    losses, timing = np.full(run.config.training.steps, np.nan), None
    if rank == 0:
        # The shared timed loop, each step the wait for the next update applied: throughput is updates a second.
        started = time.perf_counter()
        losses, timing = training.train(run, _dealer.wait_for, list(range(run.config.training.steps)), rank)
        timing = _dealer.timing(timing, started)
    elif rank >= servers:
        work(run, s, model, rank - servers, servers)
    training.barrier()  # torch.distributed: every push is done
    _pull_all(model, servers)  # every process ends with the servers' final weights
    record = None
    if rank == 0:  # the run's timing (None elsewhere) and its updates are server 0's
        updates = [(worker, read, applied) for applied, (worker, read, _) in sorted(_dealer.updates.items())]
        record = asynchrony_record(updates, run.replicas, "server 0's count of applied updates")
    ctx = RankContext(run, launcher, rank, world, (f"rank {rank} ({name}): {s.device}",), training.collective_gather())
    training.report(
        ctx, s, model, losses, timing, [flat_weights(model.parameters())], strategy_fields={"asynchrony": record}
    )
    rpc.shutdown()  # torch.distributed: waits for every process's outstanding calls
    dist.destroy_process_group()
