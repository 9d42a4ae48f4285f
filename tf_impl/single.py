"""TensorFlow, one device: the reference that every TensorFlow parallel run is diffed against."""

from __future__ import annotations

import tensorflow as tf

from xfw.common.plan.runspec import RunSpec
from xfw.common.worker.rank import RankContext
from xfw.tf_impl import training
from xfw.tf_impl.models import build_model, flat_weights


def step_body(run: RunSpec, s, model):
    """One training step on a batch (sample indices, or a native pipeline's (indices, x, y)); not yet a
    tf.function, so that several networks' steps can be composed into one graph. Every strategy that trains whole
    networks alone uses this."""
    optimizer = training.make_optimizer(run)
    loss_fn = training.loss_function(run)

    @training.compiled(run)
    def forward(batch):
        x, y = training.batch_tensors(s, batch)
        loss = tf.reduce_mean(loss_fn(y, model(x, training=True)))
        return loss, loss

    def train_step(batch):
        grads, loss = training.gradients(run, batch, model.trainable_variables, forward, optimizer)
        optimizer.apply_gradients(zip(grads, model.trainable_variables))
        return loss

    train_step.optimizer = optimizer  # to build its slots where a strategy places variables (parameter_server.py)
    return train_step


def run_single(run: RunSpec, launcher: str) -> None:
    s = training.setup(run)
    model = build_model(run.config.model, s.weights)
    train_step = tf.function(step_body(run, s, model))
    batches = training.step_batches(run, s, preloaded=lambda: [tf.constant(row) for row in s.order])
    losses, timing = training.train(run, train_step, batches)
    ctx = RankContext(run, launcher, devices=(training.default_device(),))
    fed = [training.fed(0, batches.indices)]
    training.report(ctx, s, model, losses, timing, [flat_weights(model.trainable_variables)], fed=fed)
