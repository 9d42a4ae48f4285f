"""PyTorch synchronous data parallelism: DistributedDataParallel and an explicit all_reduce of the
gradients (both launched by torchrun), and nn.DataParallel (one process, several GPUs).
tf_impl/mirrored.py is the TensorFlow side.

Every replica reads its block of the global batch through common.data.replica_slice. Lines that exist
only because of parallelism are tagged `# DDP:`, `# torch.distributed:` or `# DataParallel:`.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
import torch.distributed as dist
import torch.distributed.nn.functional as dist_nn
from torch.distributed.algorithms.ddp_comm_hooks import default_hooks, powerSGD_hook
from torch.nn.parallel import DistributedDataParallel
from torch.nn.parallel.scatter_gather import scatter

from xfw.common.plan.runspec import RunSpec
from xfw.common.spec.data import replica_slice
from xfw.common.worker.rank import RankContext
from xfw.torch_impl import training
from xfw.torch_impl.blocks import synchronized_batchnorm
from xfw.torch_impl.models import build_model, flat_weights


class ProcessGroupReplica(NamedTuple):
    """This rank's replica: what DDP and the explicit all_reduce (and localize's replay of them) train."""

    device: torch.device
    rank: int
    world: int
    s: training.Setup
    model: torch.nn.Module  # the module itself
    net: torch.nn.Module  # what the forward pass calls: the module, or DDP around it


def process_group_replica(run: RunSpec, wrap) -> ProcessGroupReplica:
    device = training.init_process_group(run)
    s = training.setup(run, device)
    # torch.distributed: BatchNorm statistics over the global batch where model.sync_batchnorm asks for them
    make_batchnorm = synchronized_batchnorm(lambda t: dist_nn.all_reduce(t, op=dist.ReduceOp.SUM))
    model = build_model(run.config.model, s.weights, make_batchnorm).to(device)
    return ProcessGroupReplica(device, dist.get_rank(), dist.get_world_size(), s, model, wrap(run, model, device))


def ddp(run: RunSpec, model, device):
    # DDP: broadcasts rank 0's weights, then averages gradients in buckets during backward(); its own options
    # (bucket_cap_mb, gradient_as_bucket_view, static_graph) and communication hook from parallel.engine.ddp.
    options = run.config.parallel.engine.given("ddp")
    hook, rank = options.pop("comm_hook", None), options.pop("powersgd_rank", 1)
    net = DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None, **options)
    if hook == "fp16":  # DDP: each bucket cast to float16, all-reduced, divided and cast back
        net.register_comm_hook(None, default_hooks.fp16_compress_hook)
    elif hook == "powersgd":  # DDP: low-rank factors all-reduced in place of each matrix gradient
        state = powerSGD_hook.PowerSGDState(
            process_group=None,
            matrix_approximation_rank=rank,
            start_powerSGD_iter=2,  # the first step all-reduces whole gradients (DDP's own rebuild of its buckets)
            use_error_feedback=True,
            warm_start=True,
            random_seed=run.config.seed,
        )
        net.register_comm_hook(state, powerSGD_hook.powerSGD_hook)
    return net


def unwrapped(run: RunSpec, model, device):
    return model


def averaged_by_ddp(model, world: int) -> None:
    """DDP has averaged the gradients during backward()."""


def all_reduce_average(model, world: int) -> None:
    for p in model.parameters():
        # torch.distributed: sum every gradient over ranks, then divide (gloo has no AVG op).
        dist.all_reduce(p.grad, op=dist.ReduceOp.SUM)
        p.grad /= world


# implementation -> (how the module is wrapped, how gradients get averaged after backward())
PROCESS_GROUP_ENGINES = {"ddp": (ddp, averaged_by_ddp), "allreduce": (unwrapped, all_reduce_average)}


def _run_process_group(run: RunSpec, launcher: str) -> None:
    """The loop shared by DDP and the explicit all_reduce: they differ only in how gradients get averaged."""
    wrap, average_gradients = PROCESS_GROUP_ENGINES[run.implementation]
    device, rank, world, s, model, net = process_group_replica(run, wrap)
    optimizer = training.make_optimizer(run, model.parameters())
    loss_fn = training.loss_function(run)

    @training.compiled(run)
    def forward(batch):
        x, y = training.batch_tensors(s, batch)
        return loss_fn(net(x), y)

    def train_step(batch):
        optimizer.zero_grad()  # set_to_none (the default)
        # DDP: its all-reduce held back until the last micro-batch of an accumulated step
        loss = training.gradients(run, batch, forward, getattr(net, "no_sync", None), optimizer)
        average_gradients(model, world)
        optimizer.step()
        return loss

    block = replica_slice(run.config.training.global_batch, rank, world)  # this rank's block
    # torch.distributed: a native pipeline's sampler gives each rank its block of every global batch
    batches = training.step_batches(
        run,
        s,
        preloaded=lambda: [torch.from_numpy(row[block]).to(device) for row in s.order],
        rank=rank,
        replicas=world,
    )
    losses, timing = training.train(run, train_step, batches, rank)
    ctx = RankContext(run, launcher, rank, world, (f"rank {rank}: {device}",), training.collective_gather())
    fed = [training.fed(rank, batches.indices)]
    training.report(ctx, s, model, losses, timing, [flat_weights(model.parameters())], fed=fed)
    # torch.distributed: wait for rank 0 to finish writing before tearing down; a rank that destroys the
    # group while its peer is still busy aborts in gloo now and then ("terminate called ...").
    training.barrier()
    dist.destroy_process_group()


def run_ddp(run: RunSpec, launcher: str) -> None:
    _run_process_group(run, launcher)


def run_allreduce(run: RunSpec, launcher: str) -> None:
    _run_process_group(run, launcher)


def run_data_parallel(run: RunSpec, launcher: str) -> None:
    if torch.cuda.device_count() < run.replicas:
        raise RuntimeError(f"nn.DataParallel needs {run.replicas} GPUs, found {torch.cuda.device_count()}")
    devices = list(range(run.replicas))
    s = training.setup(run, torch.device("cuda", 0))
    model = build_model(run.config.model, s.weights).to(s.device)
    # DataParallel: scatters each batch in contiguous blocks (replica_slice's rule) over the GPUs,
    # replicates the module every step and sums the gradients back onto GPU 0.
    net = torch.nn.DataParallel(model, device_ids=devices)
    optimizer = training.make_optimizer(run, model.parameters())
    loss_fn = training.loss_function(run)

    @training.compiled(run)
    def forward(batch):
        x, y = training.batch_tensors(s, batch)
        return loss_fn(net(x), y)

    def train_step(batch):
        optimizer.zero_grad()  # set_to_none (the default)
        loss = training.gradients(run, batch, forward, optimizer=optimizer)
        optimizer.step()
        return loss

    batches = training.step_batches(run, s, preloaded=lambda: [torch.from_numpy(row).to(s.device) for row in s.order])
    losses, timing = training.train(run, train_step, batches)
    ctx = RankContext(run, launcher, devices=tuple(f"cuda:{d}" for d in devices))
    # DataParallel: what each GPU got, split by the engine's own scatter (the rule it applies to the inputs).
    blocks = [scatter(idx, devices) for idx in batches.indices]
    fed = [training.fed(r, [b[r] for b in blocks]) for r in range(len(devices))]
    training.report(ctx, s, model, losses, timing, [flat_weights(model.parameters())], fed=fed)
