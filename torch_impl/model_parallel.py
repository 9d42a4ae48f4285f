"""PyTorch model parallelism, pipelining and hybrid data x model parallelism: stages on different GPUs in
one process (the seeds' pattern), one process per stage exchanging activations and gradients with
send/recv, and torch.distributed.pipelining schedules (GPipe, 1F1B), with a process group per stage for
the hybrid. tf_impl/model_parallel.py is the TensorFlow side.

Lines that exist for the split are tagged `# placement:`, `# send/recv:`, `# pipelining:` or `# hybrid:`.
"""

from __future__ import annotations

import torch
import torch.distributed as dist
from torch.distributed.pipelining import PipelineStage, Schedule1F1B, ScheduleGPipe

from xfw.common.plan.runspec import RunSpec
from xfw.common.spec.data import replica_slice
from xfw.common.spec.partition import plan_stages
from xfw.common.worker.rank import RankContext
from xfw.torch_impl import training
from xfw.torch_impl.models import build_model, build_stage, export_weights, flat_weights, torch_sample_shape

NO_LOSS = torch.tensor(float("nan"))  # stages before the last compute no loss


def _full_model_on_rank0(run: RunSpec, stage, module, rank: int):
    """Every stage's weights, in the canonical layout, gathered to build the whole model for evaluation."""
    parts = [None] * dist.get_world_size()
    training.all_gather_object(parts, export_weights(module, stage.layers))
    if rank != 0:
        return None
    merged = {k: v for part in parts for k, v in part.items()}
    return build_model(run.config.model, merged)


def _stage_context(run: RunSpec, launcher: str, stage, device: torch.device) -> RankContext:
    rank = dist.get_rank()
    return RankContext(
        run,
        launcher,
        rank,
        dist.get_world_size(),
        (f"rank {rank}: stage {stage.index} on {device}",),
        training.collective_gather(),
    )


def _finish(ctx: RankContext, s, stage, module, losses, timing, device, busy_batch: int, fed: list) -> None:
    run = ctx.run
    last = stage.index == run.stages - 1
    # One rank at a time: on a CPU the "devices" share caches and memory bandwidth, so stages timed at once
    # would time each other.
    for turn in range(dist.get_world_size()):
        if turn == dist.get_rank():
            busy = {
                stage.index: training.stage_seconds(
                    run, module, stage, busy_batch, last, device, count=run.micro_batches
                )
            }
        training.barrier()
    full = _full_model_on_rank0(run, stage, module, ctx.rank)
    weights = [flat_weights(module.parameters())]
    where = {stage.index: f"rank {ctx.rank}: {device}"}
    training.report(
        ctx, s, full, losses, timing, weights, stage=stage.index, stage_busy_s=busy, fed=fed, stage_devices=where
    )
    training.barrier()  # rank 0 writes before anyone tears the group down
    dist.destroy_process_group()


def run_placed_stages(run: RunSpec, launcher: str) -> None:
    if torch.cuda.device_count() < run.stages:
        raise RuntimeError(
            f"{run.stages} stages on separate GPUs need {run.stages} GPUs, found {torch.cuda.device_count()}"
        )
    s = training.setup(run, torch.device("cuda", 0))
    stages = plan_stages(run.config)
    devices = [torch.device("cuda", i) for i in range(run.stages)]
    modules = [build_stage(st, s.weights).to(dev) for st, dev in zip(stages, devices)]  # placement
    parameters = [p for m in modules for p in m.parameters()]
    optimizer = training.make_optimizer(run, parameters)
    loss_fn = training.loss_function(run)

    def train_step(idx):
        optimizer.zero_grad()  # set_to_none (the default)
        h = s.x[idx]
        for module, device in zip(modules, devices):
            h = module(h.to(device))  # placement: the activation moves to the next stage's GPU
        loss = loss_fn(h, s.y[idx].to(devices[-1]))
        loss.backward()  # autograd carries the gradients back across the GPUs
        optimizer.step()
        return loss.detach()

    step_inputs = [torch.from_numpy(row).to(s.device) for row in s.order]
    losses, timing = training.train(run, train_step, step_inputs)
    batch = run.config.training.global_batch
    busy = {
        st.index: training.stage_seconds(run, m, st, batch, st.index == run.stages - 1, d)
        for st, m, d in zip(stages, modules, devices)
    }
    full = torch.nn.Sequential(*[m.to(devices[0]) for m in modules])
    ctx = RankContext(run, launcher, devices=tuple(str(d) for d in devices))
    fed = [training.fed(0, step_inputs)]
    where = {st.index: str(next(m.parameters()).device) for st, m in zip(stages, modules)}  # placement: as placed
    weights = [flat_weights(parameters)]
    training.report(ctx, s, full, losses, timing, weights, stage_busy_s=busy, fed=fed, stage_devices=where)


def run_send_recv(run: RunSpec, launcher: str) -> None:
    device = training.init_process_group(run)
    rank, n_stages = dist.get_rank(), run.stages
    s = training.setup(run, device)
    stage = plan_stages(run.config)[rank]  # send/recv: one stage per process
    ctx = _stage_context(run, launcher, stage, device)
    module = build_stage(stage, s.weights).to(device)
    optimizer = training.make_optimizer(run, module.parameters())
    loss_fn = training.loss_function(run)
    batch = run.config.training.global_batch
    in_shape = (batch, *torch_sample_shape(stage.input_shape))
    out_shape = (batch, *torch_sample_shape(stage.output_shape))
    first, last = rank == 0, rank == n_stages - 1

    def train_step(idx):
        optimizer.zero_grad()  # set_to_none (the default)
        if first:
            inp = s.x[idx]
        else:
            inp = torch.empty(in_shape, device=device)
            dist.recv(inp, src=rank - 1)  # send/recv: activations from the previous stage
            inp.requires_grad_()
        out = module(inp)
        loss = NO_LOSS
        if last:
            loss = loss_fn(out, s.y[idx])
            loss.backward()
        else:
            dist.send(out.detach(), dst=rank + 1)  # send/recv: activations to the next stage
            grad = torch.empty(out_shape, device=device)
            dist.recv(grad, src=rank + 1)  # send/recv: the gradient of our output, from the next stage
            out.backward(grad)
        if not first:
            dist.send(inp.grad, dst=rank - 1)  # send/recv: the gradient of our input, to the previous stage
        optimizer.step()
        return loss.detach()

    step_inputs = [torch.from_numpy(row).to(device) for row in s.order]
    losses, timing = training.train(run, train_step, step_inputs, rank)
    fed = [training.fed(0, step_inputs)] if first else []  # the first stage feeds the inputs
    _finish(ctx, s, stage, module, losses, timing, device, busy_batch=batch, fed=fed)


def _first_call_in_inference_mode(module) -> None:
    """The module's first forward call (PipelineStage's shape inference) runs in eval mode, then it trains."""
    handles = {}

    def before(mod, args):
        handles["before"].remove()
        mod.eval()
        handles["after"] = mod.register_forward_hook(after)

    def after(mod, args, output):
        handles["after"].remove()
        mod.train()

    handles["before"] = module.register_forward_pre_hook(before)


def _run_pipelining(run: RunSpec, launcher: str, schedule_class) -> None:
    device = training.init_process_group(run)
    rank, replicas, n_stages, micro_batches = dist.get_rank(), run.replicas, run.stages, run.micro_batches
    replica, stage_index = divmod(rank, n_stages)
    # Every rank creates every group, in the same order (torch.distributed requires it).
    pipeline_groups = [dist.new_group([r * n_stages + i for i in range(n_stages)]) for r in range(replicas)]
    stage_groups = [dist.new_group([r * n_stages + i for r in range(replicas)]) for i in range(n_stages)]
    s = training.setup(run, device)
    stage = plan_stages(run.config)[stage_index]
    ctx = _stage_context(run, launcher, stage, device)
    module = build_stage(stage, s.weights).to(device)
    optimizer = training.make_optimizer(run, module.parameters())
    block = replica_slice(run.config.training.global_batch, replica, replicas)  # hybrid: this replica's block
    micro = (block.stop - block.start) // micro_batches
    # pipelining: the stage talks to its neighbours inside this replica's group; the schedule cuts each batch
    # into micro-batches, averages their losses and scales the gradients by 1 / micro_batches.
    # pipelining: PipelineStage learns its shapes by running the module once before the first micro-batch, on
    # the first micro-batch (stage 0) or on uninitialised tensors (NaN-filled under determinism). That pass runs
    # in inference mode, so that BatchNorm does not fold it into its running statistics. (Giving the shapes up
    # front instead, PipelineStage's static mode, computed other gradients than the dynamic one here.)
    _first_call_in_inference_mode(module)
    pipe_stage = PipelineStage(module, stage_index, n_stages, device, group=pipeline_groups[replica])
    schedule = schedule_class(pipe_stage, n_microbatches=micro_batches, loss_fn=training.loss_function(run))
    first, last = stage_index == 0, stage_index == n_stages - 1

    def train_step(idx):
        optimizer.zero_grad()  # set_to_none (the default)
        micro_losses: list = []
        if first:
            schedule.step(s.x[idx])
        elif last:
            schedule.step(target=s.y[idx], losses=micro_losses)
        else:
            schedule.step()
        if replicas > 1:
            for p in module.parameters():  # hybrid: average over the replicas of this stage
                dist.all_reduce(p.grad, op=dist.ReduceOp.SUM, group=stage_groups[stage_index])
                p.grad /= replicas
        optimizer.step()
        return torch.stack(micro_losses).mean().detach() if last else NO_LOSS

    step_inputs = [torch.from_numpy(row[block]).to(device) for row in s.order]
    losses, timing = training.train(run, train_step, step_inputs, rank)
    fed = [training.fed(replica, step_inputs)] if first else []  # each replica's first stage feeds its inputs
    _finish(ctx, s, stage, module, losses, timing, device, busy_batch=micro, fed=fed)


def run_gpipe(run: RunSpec, launcher: str) -> None:
    _run_pipelining(run, launcher, ScheduleGPipe)


def run_1f1b(run: RunSpec, launcher: str) -> None:
    _run_pipelining(run, launcher, Schedule1F1B)


def run_hybrid(run: RunSpec, launcher: str) -> None:
    _run_pipelining(run, launcher, ScheduleGPipe)
