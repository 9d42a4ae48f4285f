"""PyTorch, several independent networks (config `networks`): one after another, in threads of one
process (each on its own CUDA stream where there is a GPU), and one process per network (torchrun).
Used by the independent and shared-device strategies; tf_impl/networks.py is the TensorFlow side, and
common.rank.Network says what every network keeps of its solo run.

Lines that exist for concurrency are tagged `# threads:`, `# streams:` or `# torch.distributed:`.
"""

from __future__ import annotations

import contextlib
import dataclasses

import numpy as np
import torch
import torch.distributed as dist

from xfw.common.plan.runspec import RunSpec
from xfw.common.spec.config import network_config
from xfw.common.worker.networks import NetworkOutcome
from xfw.common.worker.rank import Network, RankContext, report_networks, train_in_threads
from xfw.torch_impl import training
from xfw.torch_impl.models import build_model, to_torch_layout
from xfw.torch_impl.single import step_body


def prepare(run: RunSpec, index: int, device: torch.device) -> Network:
    net_run = dataclasses.replace(run, config=network_config(run.config, index))
    s = training.setup(net_run, device)
    model = build_model(net_run.config.model, s.weights).to(device)
    return Network(index, run.config.networks[index].name, net_run, s, model, step_body(net_run, s, model), device)


@torch.no_grad()
def predictions(net: Network) -> np.ndarray:
    """Test-set probabilities (classification) or outputs: what the ensemble averages."""
    net.model.eval()  # BatchNorm normalises by its moving statistics, as Keras's inference call does
    out = net.model(torch.from_numpy(to_torch_layout(net.s.data.x_test)).to(net.device))
    net.model.train()
    return (torch.softmax(out, dim=-1) if net.s.data.classification else out).double().cpu().numpy()


def train_alone(net: Network, rank: int = 0, after_warmup=None) -> NetworkOutcome:
    step_inputs = [torch.from_numpy(row).to(net.device) for row in net.s.order]
    losses, timing = training.train(net.run, net.step, step_inputs, rank, after_warmup)
    return outcome(net, losses, timing, step_inputs)


def outcome(net: Network, losses: np.ndarray, timing, step_inputs: list) -> NetworkOutcome:
    evaluation = training.evaluate(net.run, net.s, net.model)
    fed = training.fed(net.index, step_inputs)
    return NetworkOutcome(net.index, net.name, losses, timing, evaluation, str(net.device), predictions(net), fed=fed)


def _finish(ctx: RankContext, outcomes: list[NetworkOutcome]) -> None:
    report_networks(ctx, outcomes, training.END, ensemble=ctx.run.kind.ensemble)


def run_sequential(run: RunSpec, launcher: str) -> None:
    """Each network alone, one after another, on one device: the reference."""
    outcomes = [train_alone(prepare(run, i, training.default_device())) for i in range(run.networks)]
    _finish(RankContext(run, launcher), outcomes)


def _run_in_threads(run: RunSpec, launcher: str, streams: bool) -> None:
    nets = [prepare(run, i, training.default_device()) for i in range(run.networks)]

    def train_one(k: int, rank: int, after_warmup) -> NetworkOutcome:
        # streams: this thread's kernels go to its own CUDA stream, so the GPU may overlap the networks.
        context = torch.cuda.stream(torch.cuda.Stream(nets[k].device)) if streams else contextlib.nullcontext()
        with context:
            return train_alone(nets[k], rank, after_warmup)

    outcomes = train_in_threads([net.name for net in nets], train_one)  # threads: one per network
    _finish(RankContext(run, launcher), outcomes)


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
    ctx = RankContext(run, launcher, rank, world, gather=training.collective_gather())
    net = prepare(run, rank, device)
    result = train_alone(net, rank, after_warmup=training.barrier)  # torch.distributed: start barrier
    result = dataclasses.replace(result, device=f"rank {rank}: {device}")
    _finish(ctx, [result])
    training.barrier()  # rank 0 writes before anyone tears the group down
    dist.destroy_process_group()
