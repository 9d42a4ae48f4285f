"""Horovod with PyTorch, launched by horovodrun: one process per replica, gradients averaged by
hvd.DistributedOptimizer. tf_impl/horovod.py runs the same engine under TensorFlow. Every Horovod line
is tagged."""

from __future__ import annotations

import horovod.torch as hvd
import numpy as np
import torch

from xfw.common.plan.runspec import RunSpec
from xfw.common.spec.data import replica_slice
from xfw.common.worker.breakdown import HorovodTimeline
from xfw.common.worker.rank import RankContext
from xfw.torch_impl import training
from xfw.torch_impl.blocks import synchronized_batchnorm
from xfw.torch_impl.models import build_model, flat_weights


def compression(cfg):
    """hvd.Compression per parallel.engine.horovod.compression (none: Horovod's default)."""
    return hvd.Compression.fp16 if cfg.parallel.engine.horovod.compression == "fp16" else hvd.Compression.none


def start(run: RunSpec) -> torch.device:
    """Every Horovod run's start: Horovod joined, the rank count checked; returns this rank's device (its GPU)."""
    hvd.init()  # Horovod: rank and size come from horovodrun
    device = torch.device("cpu")
    if torch.cuda.is_available():
        torch.cuda.set_device(hvd.local_rank())  # Horovod: one GPU per process
        device = torch.device("cuda", hvd.local_rank())
    if hvd.size() != run.replicas:
        raise RuntimeError(f"horovodrun started {hvd.size()} processes but the run asks for {run.replicas} replicas")
    return device


def rank_context(run: RunSpec, launcher: str, device: torch.device) -> RankContext:
    """This rank's place in the run, gathering its outcome through Horovod's allgather (once, after training)."""

    def gather(vector: np.ndarray) -> np.ndarray:
        return hvd.allgather(torch.from_numpy(vector[None])).numpy()  # Horovod: once, after training

    return RankContext(run, launcher, hvd.rank(), hvd.size(), (f"rank {hvd.rank()}: {device}",), gather)


def run_horovod(run: RunSpec, launcher: str) -> None:
    device = start(run)
    s = training.setup(run, device)
    cfg = run.config
    # Horovod: BatchNorm statistics over the global batch where model.sync_batchnorm asks for them
    make_batchnorm = synchronized_batchnorm(lambda t: hvd.allreduce(t, op=hvd.Sum), hvd.SyncBatchNorm)
    model = build_model(cfg.model, s.weights, make_batchnorm).to(device)
    # Horovod: averages gradients over ranks (allreduce with op=Average) before each step().
    optimizer = training.make_optimizer(
        run,
        model.parameters(),
        wrap=lambda opt: hvd.DistributedOptimizer(
            opt,
            named_parameters=model.named_parameters(),
            # Horovod: all-reduce once the accumulated micro-batches' gradients are all in
            backward_passes_per_step=cfg.training.accumulation_steps,
            compression=compression(cfg),  # Horovod: gradients sent as float16 where parallel.engine asks
        ),
    )
    hvd.broadcast_parameters(model.state_dict(), root_rank=0)  # Horovod: start from rank 0's weights
    hvd.broadcast_optimizer_state(optimizer.optimizer, root_rank=0)
    loss_fn = training.loss_function(run)

    @training.compiled(run)
    def forward(batch):
        x, y = training.batch_tensors(s, batch)
        return loss_fn(model(x), y)

    def train_step(batch):
        optimizer.zero_grad()  # set_to_none (the default)
        loss = training.gradients(run, batch, forward, optimizer=optimizer)
        optimizer.step()
        return loss

    block = replica_slice(cfg.training.global_batch, hvd.rank(), hvd.size())  # Horovod: this rank's block
    # Horovod: each rank's sampler gives it its block of every global batch
    batches = training.step_batches(
        run,
        s,
        preloaded=lambda: [torch.from_numpy(row[block]).to(device) for row in s.order],
        rank=hvd.rank(),
        replicas=hvd.size(),
    )
    # Horovod: its timeline shows the all-reduces of the profiled steps, which run in its background thread
    timeline = HorovodTimeline(hvd, training.StepProfiler())
    losses, timing = training.train(run, train_step, batches, hvd.rank(), profiler=timeline)

    ctx = rank_context(run, launcher, device)
    training.report(
        ctx,
        s,
        model,
        losses,
        timing,
        [flat_weights(model.parameters())],
        fed=[training.fed(hvd.rank(), batches.indices)],
    )
    hvd.join()  # Horovod: every rank waits here until rank 0 has written the result, then all shut down
