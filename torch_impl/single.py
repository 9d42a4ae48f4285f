"""PyTorch, one device: the reference that every PyTorch parallel run is diffed against."""

from __future__ import annotations

import torch

from xfw.common.plan.runspec import RunSpec
from xfw.common.worker.rank import RankContext
from xfw.torch_impl import training
from xfw.torch_impl.models import build_model, flat_weights


def step_body(run: RunSpec, s, model):
    """One training step on a batch (sample indices, or a native pipeline's (indices, x, y)). Every strategy
    that trains whole networks alone uses this."""
    optimizer = training.make_optimizer(run, model.parameters())
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

    return train_step


def run_single(run: RunSpec, launcher: str) -> None:
    s = training.setup(run)
    model = build_model(run.config.model, s.weights).to(s.device)
    train_step = step_body(run, s, model)
    batches = training.step_batches(run, s, preloaded=lambda: [torch.from_numpy(row).to(s.device) for row in s.order])
    losses, timing = training.train(run, train_step, batches)
    ctx = RankContext(run, launcher, devices=(str(s.device),))
    fed = [training.fed(0, batches.indices)]
    training.report(ctx, s, model, losses, timing, [flat_weights(model.parameters())], fed=fed)
