"""PyTorch local SGD (periodic model averaging): every rank steps on its block of each global batch with its own
optimizer, and the ranks' weights are averaged after steps 0, k, 2k, ... (k = sync.every_k_steps) and after the
last step. run_local_sgd: torchrun and the engine's PeriodicModelAverager; run_local_sgd_horovod: horovodrun and
hvd.grouped_allreduce of the weights. tf_impl/local_sgd.py is the TensorFlow side.

Both average as the engine's averager does: each weight divided by the number of ranks, then summed over them.
Only trainable parameters are averaged (BatchNorm's running statistics stay each rank's own), and each rank's
optimizer state (momentum) stays its own. Lines that exist only because of parallelism are tagged
`# torch.distributed:` or `# Horovod:`.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.distributed as dist
from torch.distributed.algorithms.model_averaging import averagers
from torch.distributed.algorithms.model_averaging.utils import average_parameters

from xfw.common.plan.runspec import RunSpec
from xfw.common.spec.data import replica_slice
from xfw.common.strategies.local_sgd import averages_after
from xfw.common.worker.rank import RankContext
from xfw.torch_impl import training
from xfw.torch_impl.models import build_model, flat_weights
from xfw.torch_impl.single import step_body


def _train_locally(
    run: RunSpec, ctx: RankContext, s: training.Setup, model, average_now: Callable[[int], None], average: Callable
) -> None:
    """The loop both engines share: a local step, then the engine's averaging where the schedule says.
    average_now(step) averages where its schedule says; average() averages unconditionally (after the last step)."""
    local_step = step_body(run, s, model)  # one device's step, on this rank's block
    steps_done = [0]

    def train_step(batch):
        loss = local_step(batch)
        average_now(steps_done[0])
        steps_done[0] += 1
        return loss

    block = replica_slice(run.config.training.global_batch, ctx.rank, ctx.world_size)  # this rank's block
    batches = training.step_batches(
        run,
        s,
        preloaded=lambda: [torch.from_numpy(row[block]).to(s.device) for row in s.order],
        rank=ctx.rank,
        replicas=ctx.world_size,
    )
    losses, timing = training.train(run, train_step, batches, ctx.rank)
    if not averages_after(run.config, steps_done[0] - 1):
        average()  # the model local SGD ends with: the replicas' average
    fed = [training.fed(ctx.rank, batches.indices)]
    training.report(ctx, s, model, losses, timing, [flat_weights(model.parameters())], fed=fed)


def run_local_sgd(run: RunSpec, launcher: str) -> None:
    device = training.init_process_group(run)
    rank, world = dist.get_rank(), dist.get_world_size()
    s = training.setup(run, device)
    model = build_model(run.config.model, s.weights).to(device)  # torch.distributed: this rank's own copy
    # torch.distributed: the engine's averager keeps the schedule (steps 0, k, 2k, ...) and all-reduces the
    # flattened parameters, each divided by the world size first.
    averager = averagers.PeriodicModelAverager(period=run.config.sync.every_k_steps, warmup_steps=0)
    ctx = RankContext(run, launcher, rank, world, (f"rank {rank}: {device}",), training.collective_gather())
    _train_locally(
        run,
        ctx,
        s,
        model,
        average_now=lambda step: averager.average_parameters(model.parameters()),
        average=lambda: average_parameters(iter(model.parameters()), None),
    )
    training.barrier()  # torch.distributed: rank 0 has written the result before the group goes
    dist.destroy_process_group()


def run_local_sgd_horovod(run: RunSpec, launcher: str) -> None:
    import horovod.torch as hvd

    from xfw.torch_impl import horovod

    device = horovod.start(run)
    s = training.setup(run, device)
    model = build_model(run.config.model, s.weights).to(device)  # Horovod: this rank's own copy
    hvd.broadcast_parameters(model.state_dict(), root_rank=0)  # Horovod: start from rank 0's weights

    @torch.no_grad()
    def average() -> None:
        # Horovod: each weight divided by the ranks, then summed over them (the averager's arithmetic), in one call
        params = list(model.parameters())
        summed = hvd.grouped_allreduce([p / hvd.size() for p in params], op=hvd.Sum)
        for p, value in zip(params, summed):
            p.copy_(value)

    def average_now(step: int) -> None:
        if averages_after(run.config, step):
            average()

    _train_locally(run, horovod.rank_context(run, launcher, device), s, model, average_now, average)
    hvd.join()  # Horovod: every rank waits here until rank 0 has written the result, then all shut down
