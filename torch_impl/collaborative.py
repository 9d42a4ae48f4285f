"""PyTorch, collaborating networks that exchange intermediate results every step: mutual learning
(each network also learns from the others' predictions) and an encoder -> head chain (activations
forward, gradients back). Both on one device (the reference) or one process per network, where the
exchange is torch.distributed's (all_gather of predictions; send/recv of activations and gradients).
tf_impl/collaborative.py is the TensorFlow side.

Lines that exist for the exchange are tagged `# exchange:`.
"""

from __future__ import annotations

import dataclasses

import torch
import torch.distributed as dist
import torch.nn.functional as F

from xfw.common.plan.runspec import RunSpec
from xfw.common.spec.config import network_config
from xfw.common.spec.partition import chain_parts, whole_model
from xfw.common.worker.networks import NetworkOutcome, chain_exchange, head_run, mutual_exchange
from xfw.common.worker.rank import Member, RankContext, report_networks
from xfw.torch_impl import training
from xfw.torch_impl.models import build_model, build_stage, export_weights, torch_sample_shape

NO_LOSS = torch.tensor(float("nan"))  # the chain's encoder computes no loss


def divergence(run: RunSpec, partner, mine):
    """How far `mine` is from the partner's (constant) predictions: KL(partner || mine) averaged over the
    batch (and positions, for a language model) for classification, the mean squared difference for regression."""
    if run.config.loss == "cross_entropy":
        p_log = F.log_softmax(partner, dim=-1)
        return torch.mean(torch.sum(torch.exp(p_log) * (p_log - F.log_softmax(mine, dim=-1)), dim=-1))
    return torch.mean(torch.square(mine - partner))


def mutual_loss(run: RunSpec, k: int, outputs: list, y, loss_fn):
    """Network k's loss: its task loss plus mutual_weight x its mean divergence from the others."""
    task = loss_fn(outputs[k], y)
    others = [divergence(run, outputs[j].detach(), outputs[k]) for j in range(len(outputs)) if j != k]
    return task + run.config.collaborative.mutual_weight * (sum(others) / len(others))


def _member(run: RunSpec, i: int, device: torch.device) -> tuple[Member, training.Setup]:
    net_run = dataclasses.replace(run, config=network_config(run.config, i))
    s = training.setup(net_run, device)  # same data and sample order for every network; own weights
    model = build_model(net_run.config.model, s.weights).to(device)
    return Member(
        i, run.config.networks[i].name, net_run, model, training.make_optimizer(net_run, model.parameters()), device
    ), s


def _busy(m: Member) -> float:
    """The network's own forward+backward on one batch, timed alone: what it does when it does not wait."""
    return training.stage_seconds(
        m.run, m.model, whole_model(m.run.config), m.run.config.training.global_batch, True, m.device
    )


def run_mutual(run: RunSpec, launcher: str) -> None:
    device = training.default_device()
    pairs = [_member(run, i, device) for i in range(run.networks)]
    members, s = [m for m, _ in pairs], pairs[0][1]
    loss_fn = training.loss_function(run)

    def train_step(idx):
        x, y = s.x[idx], s.y[idx]
        for m in members:
            m.optimizer.zero_grad()  # set_to_none (the default)
        outputs = [m.model(x) for m in members]
        losses = [mutual_loss(run, m.index, outputs, y, loss_fn) for m in members]
        # The others' predictions enter each loss detached, so one backward of the sum gives every
        # network exactly the gradient of its own loss.
        stacked = torch.stack(losses)
        stacked.sum().backward()
        for m in members:
            m.optimizer.step()
        return stacked.detach()

    step_inputs = [torch.from_numpy(row).to(device) for row in s.order]
    losses, timing = training.train(run, train_step, step_inputs)
    outcomes = [
        m.outcome(
            losses,
            timing,
            training.evaluate(m.run, s, m.model),
            str(device),
            _busy(m),
            training.fed(m.index, step_inputs),
        )
        for m in members
    ]
    report_networks(RankContext(run, launcher), outcomes, training.END, mutual_exchange(run.config))


def run_mutual_distributed(run: RunSpec, launcher: str) -> None:
    """One process per network; every step the processes all-gather their predictions on the batch."""
    device = training.init_process_group(run)
    rank, world = dist.get_rank(), dist.get_world_size()
    ctx = RankContext(run, launcher, rank, world, gather=training.collective_gather())
    m, s = _member(run, rank, device)
    loss_fn = training.loss_function(run)

    def train_step(idx):
        x, y = s.x[idx], s.y[idx]
        m.optimizer.zero_grad()  # set_to_none (the default)
        mine = m.model(x)
        outputs = [torch.empty_like(mine) for _ in range(world)]
        dist.all_gather(outputs, mine.detach())  # exchange: every network's predictions to every process
        outputs[rank] = mine  # our own keeps its graph
        loss = mutual_loss(run, rank, outputs, y, loss_fn)
        loss.backward()
        m.optimizer.step()
        return loss.detach()

    step_inputs = [torch.from_numpy(row).to(device) for row in s.order]
    losses, timing = training.train(run, train_step, step_inputs, rank)
    outcome = NetworkOutcome(
        m.index,
        m.name,
        losses,
        timing,
        training.evaluate(m.run, s, m.model),
        f"rank {rank}: {device}",
        busy_s_per_step=_busy(m),
        fed=training.fed(m.index, step_inputs),
    )
    report_networks(ctx, [outcome], training.END, mutual_exchange(run.config, "dist.all_gather"))
    training.barrier()  # rank 0 writes before anyone tears the group down
    dist.destroy_process_group()


def run_chain(run: RunSpec, launcher: str) -> None:
    device = training.default_device()
    s = training.setup(run, device)
    parts = chain_parts(run.config)
    encoder = build_stage(parts[0], s.weights).to(device)
    head = build_stage(parts[1], s.weights).to(device)
    encoder_optimizer = training.make_optimizer(run, encoder.parameters())
    head_optimizer = training.make_optimizer(head_run(run), head.parameters())
    loss_fn = training.loss_function(run)

    def train_step(idx):
        encoder_optimizer.zero_grad()  # set_to_none (the default)
        head_optimizer.zero_grad()
        loss = loss_fn(head(encoder(s.x[idx])), s.y[idx])
        loss.backward()  # the gradient of the encoder's output flows back into the encoder
        head_optimizer.step()
        encoder_optimizer.step()
        return loss.detach()

    step_inputs = [torch.from_numpy(row).to(device) for row in s.order]
    losses, timing = training.train(run, train_step, step_inputs)
    batch = run.config.training.global_batch
    chain = torch.nn.Sequential(encoder, head)
    outcomes = [
        NetworkOutcome(
            0,
            "encoder",
            None,
            timing,
            {},
            str(device),
            busy_s_per_step=training.stage_seconds(run, encoder, parts[0], batch, False, device),
            fed=training.fed(0, step_inputs),
        ),
        NetworkOutcome(
            1,
            "head",
            losses,
            timing,
            training.evaluate(run, s, chain),
            str(device),
            busy_s_per_step=training.stage_seconds(run, head, parts[1], batch, True, device),
            fed=training.fed(1, step_inputs),
        ),
    ]
    report_networks(RankContext(run, launcher), outcomes, training.END, chain_exchange(parts, batch))


def run_chain_send_recv(run: RunSpec, launcher: str) -> None:
    """Rank 0 the encoder, rank 1 the head; the encoder's output goes forward and its gradient comes back
    with point-to-point send/recv every step."""
    device = training.init_process_group(run)
    rank, world = dist.get_rank(), dist.get_world_size()
    ctx = RankContext(run, launcher, rank, world, gather=training.collective_gather())
    s = training.setup(run, device)
    parts = chain_parts(run.config)
    part = parts[rank]
    module = build_stage(part, s.weights).to(device)
    optimizer = training.make_optimizer(run if rank == 0 else head_run(run), module.parameters())
    loss_fn = training.loss_function(run)
    batch = run.config.training.global_batch
    between = (batch, *torch_sample_shape(parts[0].output_shape))

    def encoder_step(idx):
        optimizer.zero_grad()  # set_to_none (the default)
        h = module(s.x[idx])
        dist.send(h.detach(), dst=1)  # exchange: the encoder's output to the head
        grad = torch.empty(between, device=device)
        dist.recv(grad, src=1)  # exchange: the gradient of that output, back from the head
        h.backward(grad)
        optimizer.step()
        return NO_LOSS

    def head_step(idx):
        optimizer.zero_grad()
        h = torch.empty(between, device=device)
        dist.recv(h, src=0)  # exchange: the encoder's output
        h.requires_grad_()
        loss = loss_fn(module(h), s.y[idx])
        loss.backward()
        dist.send(h.grad, dst=0)  # exchange: the gradient of the encoder's output
        optimizer.step()
        return loss.detach()

    step_inputs = [torch.from_numpy(row).to(device) for row in s.order]
    losses, timing = training.train(run, encoder_step if rank == 0 else head_step, step_inputs, rank)
    busy = training.stage_seconds(run, module, part, batch, rank == 1, device)
    # Both parts' weights to every rank, so that the head's process evaluates the whole chain.
    weights = [None] * world
    training.all_gather_object(weights, export_weights(module, part.layers))
    if rank == 0:
        outcome = NetworkOutcome(
            0, "encoder", None, timing, {}, f"rank 0: {device}", busy_s_per_step=busy, fed=training.fed(0, step_inputs)
        )
    else:
        chain = build_model(run.config.model, {k: v for w in weights for k, v in w.items()}).to(device)
        outcome = NetworkOutcome(
            1,
            "head",
            losses,
            timing,
            training.evaluate(run, s, chain),
            f"rank 1: {device}",
            busy_s_per_step=busy,
            fed=training.fed(1, step_inputs),
        )
    report_networks(ctx, [outcome], training.END, chain_exchange(parts, batch, "dist.send/recv"))
    training.barrier()  # rank 0 writes before anyone tears the group down
    dist.destroy_process_group()
