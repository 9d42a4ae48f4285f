"""PyTorch, several independent networks (config `networks`): one after another, in threads of one
process (each on its own CUDA stream where there is a GPU), and one process per network (torchrun).
Used by the independent and shared-device strategies; tf_impl/networks.py is the TensorFlow side.

Each network trains exactly as its solo run (`xfw run --impl single` on common.config.network_config):
the same step (single.step_body), weights, sample order and threads. Running them concurrently may
change how long they take, never what they compute. Lines that exist for concurrency are tagged
`# threads:`, `# streams:` or `# torch.distributed:`.
"""

from __future__ import annotations

import contextlib
import dataclasses
import threading
from dataclasses import dataclass

import numpy as np
import torch
import torch.distributed as dist

from xfw.common.config import network_config
from xfw.common.networks import NetworkOutcome, finish_networks
from xfw.common.runspec import RunSpec
from xfw.torch_impl import training
from xfw.torch_impl.models import build_model, to_torch_layout
from xfw.torch_impl.single import step_body


@dataclass
class Network:
    """One network, ready to train: its own run (config), data, model and step."""

    index: int
    name: str
    run: RunSpec
    s: training.Setup
    model: torch.nn.Module
    step: object  # single.step_body
    device: torch.device


def prepare(run: RunSpec, index: int, device: torch.device) -> Network:
    net_run = dataclasses.replace(run, config=network_config(run.config, index))
    s = training.setup(net_run, device)
    model = build_model(net_run.config.model, s.weights).to(device)
    return Network(index, run.config.networks[index].name, net_run, s, model, step_body(net_run, s, model), device)


@torch.no_grad()
def predictions(net: Network) -> np.ndarray:
    """Test-set probabilities (classification) or outputs: what the ensemble averages."""
    out = net.model(torch.from_numpy(to_torch_layout(net.s.data.x_test)).to(net.device))
    return (torch.softmax(out, dim=1) if net.s.data.classification else out).double().cpu().numpy()


def train_alone(net: Network, rank: int = 0, after_warmup=None) -> NetworkOutcome:
    step_inputs = [torch.from_numpy(row).to(net.device) for row in net.s.order]
    losses, timing = training.train(net.run, net.step, step_inputs, rank, after_warmup)
    return outcome(net, losses, timing)


def outcome(net: Network, losses: np.ndarray, timing) -> NetworkOutcome:
    return NetworkOutcome(net.index, net.name, losses, timing, training.evaluate(net.run, net.s, net.model), str(net.device),
                          predictions(net))


def default_device() -> torch.device:
    return torch.device("cuda:0" if torch.cuda.is_available() else "cpu")


def _finish(run: RunSpec, launcher: str, outcomes, gather, rank: int, world: int) -> None:
    finish_networks(run, outcomes, gather, rank,
                    lambda: {"env": training.environment(run, launcher, world, sorted({o.device for o in outcomes}))},
                    ensemble=run.strategy == "independent")


def run_sequential(run: RunSpec, launcher: str) -> None:
    """Each network alone, one after another, on one device: the reference."""
    outcomes = [train_alone(prepare(run, i, default_device())) for i in range(run.networks)]
    _finish(run, launcher, outcomes, lambda v: v[None], 0, 1)


def _run_in_threads(run: RunSpec, launcher: str, streams: bool) -> None:
    nets = [prepare(run, i, default_device()) for i in range(run.networks)]
    barrier = threading.Barrier(len(nets))  # threads: start the timed steps together
    outcomes: list = [None] * len(nets)
    errors: list[BaseException] = []

    def work(k: int) -> None:
        # streams: this thread's kernels go to its own CUDA stream, so the GPU may overlap the networks.
        context = torch.cuda.stream(torch.cuda.Stream(nets[k].device)) if streams else contextlib.nullcontext()
        try:
            with context:
                outcomes[k] = train_alone(nets[k], rank=0 if k == 0 else -1, after_warmup=barrier.wait)
        except BaseException as exc:  # re-raised in the main thread: a failed network fails the run
            errors.append(exc)
            barrier.abort()

    threads = [threading.Thread(target=work, args=(k,), name=f"network-{nets[k].name}") for k in range(len(nets))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if errors:
        raise errors[0]
    _finish(run, launcher, outcomes, lambda v: v[None], 0, 1)


def run_threads(run: RunSpec, launcher: str) -> None:
    """One Python thread per network, all on one device (torch releases the GIL inside its ops); a
    barrier after warm-up, so the timed steps of the networks run at the same time."""
    _run_in_threads(run, launcher, streams=False)


def run_cuda_streams(run: RunSpec, launcher: str) -> None:
    """As run_threads, each thread on its own CUDA stream of the one GPU."""
    if not torch.cuda.is_available():
        raise RuntimeError("cuda-streams needs a GPU")
    _run_in_threads(run, launcher, streams=True)


def run_processes(run: RunSpec, launcher: str) -> None:
    """One process per network (torchrun); the process group serves the start barrier and the final
    all-gathers only."""
    device = training.init_process_group(run)
    rank, world = dist.get_rank(), dist.get_world_size()
    net = prepare(run, rank, device)
    result = train_alone(net, rank, after_warmup=dist.barrier)  # torch.distributed: start barrier
    result = dataclasses.replace(result, device=f"rank {rank}: {device}")
    _finish(run, launcher, [result], training.process_group_gather(device), rank, world)
    dist.barrier()  # rank 0 writes before anyone tears the group down
    dist.destroy_process_group()
