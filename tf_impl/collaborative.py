"""TensorFlow, collaborating networks that exchange intermediate results every step: mutual learning
(each network also learns from the others' predictions) and an encoder -> head chain (activations
forward, gradients back). Both on one device (the reference) or one tf.device per network, where the
exchange is TensorFlow's copy between devices. torch_impl/collaborative.py is the PyTorch side.

Lines that exist for the exchange are tagged `# exchange:`; for placement `# placement:`.
"""

from __future__ import annotations

import dataclasses

import keras
import tensorflow as tf

from xfw.common.plan.runspec import RunSpec
from xfw.common.spec.config import network_config
from xfw.common.spec.partition import chain_parts, whole_model
from xfw.common.worker.networks import NetworkOutcome, chain_exchange, head_run, mutual_exchange
from xfw.common.worker.rank import Member, RankContext, report_networks
from xfw.tf_impl import training
from xfw.tf_impl.models import build_model, build_stage


def divergence(run: RunSpec, partner, mine):
    """How far `mine` is from the partner's (constant) predictions: KL(partner || mine) averaged over the
    batch (and positions, for a language model) for classification, the mean squared difference for regression."""
    if run.config.loss == "cross_entropy":
        p_log = tf.nn.log_softmax(partner)
        return tf.reduce_mean(tf.reduce_sum(tf.exp(p_log) * (p_log - tf.nn.log_softmax(mine)), axis=-1))
    return tf.reduce_mean(tf.square(mine - partner))


def mutual_loss(run: RunSpec, k: int, outputs: list, y, loss_fn):
    """Network k's loss: its task loss plus mutual_weight x its mean divergence from the others."""
    task = tf.reduce_mean(loss_fn(y, outputs[k]))
    others = [divergence(run, tf.stop_gradient(outputs[j]), outputs[k]) for j in range(len(outputs)) if j != k]
    return task + run.config.collaborative.mutual_weight * (tf.add_n(others) / len(others))


def _member(run: RunSpec, i: int, device: str) -> tuple[Member, training.Setup]:
    net_run = dataclasses.replace(run, config=network_config(run.config, i))
    s = training.setup(net_run)  # same data and sample order for every network; own weights
    with tf.device(device):  # placement: network i's weights live on its device
        model = build_model(net_run.config.model, s.weights)
    return Member(i, run.config.networks[i].name, net_run, model, training.make_optimizer(net_run), device), s


def _busy(m: Member) -> float:
    """The network's own forward+backward on one batch, timed alone: what it does when it does not wait."""
    return training.stage_seconds(
        m.run, m.model, whole_model(m.run.config), m.run.config.training.global_batch, True, m.device
    )


def _devices(run: RunSpec) -> list[str]:
    devices = training.logical_devices(run.devices)
    return [devices[i % len(devices)] for i in range(run.networks)]


def run_mutual(run: RunSpec, launcher: str) -> None:
    training.configure(run, local_devices=run.devices)
    pairs = [_member(run, i, device) for i, device in enumerate(_devices(run))]
    members, s = [m for m, _ in pairs], pairs[0][1]
    loss_fn = training.loss_function(run)

    @tf.function
    def train_step(idx):
        x, y = tf.gather(s.x, idx), tf.gather(s.y, idx)
        with tf.GradientTape(persistent=True) as tape:
            outputs = []
            for m in members:
                with tf.device(m.device):  # placement
                    outputs.append(m.model(x, training=True))
            losses = []
            for m in members:
                with tf.device(m.device):  # exchange: the others' predictions are copied to this device
                    losses.append(mutual_loss(run, m.index, outputs, y, loss_fn))
        for m, loss in zip(members, losses):
            m.optimizer.apply_gradients(
                zip(tape.gradient(loss, m.model.trainable_variables), m.model.trainable_variables)
            )
        return tf.stack(losses)

    step_inputs = [tf.constant(row) for row in s.order]
    losses, timing = training.train(run, train_step, step_inputs)
    outcomes = [
        m.outcome(
            losses, timing, training.evaluate(m.run, s, m.model), m.device, _busy(m), training.fed(m.index, step_inputs)
        )
        for m in members
    ]
    report_networks(RankContext(run, launcher), outcomes, training.END, mutual_exchange(run.config))


def run_chain(run: RunSpec, launcher: str) -> None:
    training.configure(run, local_devices=run.devices)
    devices = _devices(run)
    s = training.setup(run)
    parts = chain_parts(run.config)
    with tf.device(devices[0]):  # placement
        encoder = build_stage(parts[0], s.weights)
        encoder_optimizer = training.make_optimizer(run)
    with tf.device(devices[1]):  # placement
        head = build_stage(parts[1], s.weights)
        head_optimizer = training.make_optimizer(head_run(run))
    loss_fn = training.loss_function(run)

    @tf.function
    def train_step(idx):
        x, y = tf.gather(s.x, idx), tf.gather(s.y, idx)
        with tf.GradientTape(persistent=True) as tape:
            with tf.device(devices[0]):
                h = encoder(x, training=True)
            with tf.device(devices[1]):  # exchange: the encoder's output is copied to the head's device
                loss = tf.reduce_mean(loss_fn(y, head(h, training=True)))
        # exchange: the gradient of h flows back to the encoder's device inside tape.gradient
        head_optimizer.apply_gradients(zip(tape.gradient(loss, head.trainable_variables), head.trainable_variables))
        encoder_optimizer.apply_gradients(
            zip(tape.gradient(loss, encoder.trainable_variables), encoder.trainable_variables)
        )
        return loss

    step_inputs = [tf.constant(row) for row in s.order]
    losses, timing = training.train(run, train_step, step_inputs)
    batch = run.config.training.global_batch
    chain = keras.Sequential([encoder, head])
    outcomes = [
        NetworkOutcome(
            0,
            "encoder",
            None,
            timing,
            {},
            devices[0],
            busy_s_per_step=training.stage_seconds(run, encoder, parts[0], batch, False, devices[0]),
            fed=training.fed(0, step_inputs),
        ),
        NetworkOutcome(
            1,
            "head",
            losses,
            timing,
            training.evaluate(run, s, chain),
            devices[1],
            busy_s_per_step=training.stage_seconds(run, head, parts[1], batch, True, devices[1]),
            fed=training.fed(1, step_inputs),
        ),
    ]
    report_networks(RankContext(run, launcher), outcomes, training.END, chain_exchange(parts, batch))
