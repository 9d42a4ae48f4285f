"""TensorFlow, several independent networks (config `networks`): one after another, all at once under
their own tf.device in one graph, in threads of one process, and one process per network (TF_CONFIG).
Used by the independent and shared-device strategies; torch_impl/networks.py is the PyTorch side, and
common.rank.Network says what every network keeps of its solo run.

Lines that exist for concurrency are tagged `# placement:`, `# threads:` or `# tf.distribute:`.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import tensorflow as tf

from xfw.common.plan.runspec import RunSpec
from xfw.common.spec.config import network_config
from xfw.common.worker.networks import NetworkOutcome
from xfw.common.worker.rank import Network, RankContext, report_networks, train_in_threads
from xfw.tf_impl import training
from xfw.tf_impl.models import build_model
from xfw.tf_impl.single import step_body


def prepare(run: RunSpec, index: int, device: str, **setup_kw) -> Network:
    net_run = dataclasses.replace(run, config=network_config(run.config, index))
    s = training.setup(net_run, **setup_kw)
    with tf.device(device):  # placement: the network's weights live on its device
        model = build_model(net_run.config.model, s.weights)
        step = step_body(net_run, s, model)
    return Network(index, run.config.networks[index].name, net_run, s, model, step, device)


def predictions(net: Network) -> np.ndarray:
    """Test-set probabilities (classification) or outputs: what the ensemble averages."""
    out = net.model(tf.constant(net.s.data.x_test), training=False)
    return (tf.nn.softmax(out) if net.s.data.classification else out).numpy()


def train_alone(net: Network, rank: int = 0, after_warmup=None) -> NetworkOutcome:
    step = tf.function(net.step)
    step_inputs = [tf.constant(row) for row in net.s.order]
    losses, timing = training.train(net.run, step, step_inputs, rank, after_warmup)
    return outcome(net, losses, timing, step_inputs)


def outcome(net: Network, losses: np.ndarray, timing, step_inputs: list) -> NetworkOutcome:
    evaluation = training.evaluate(net.run, net.s, net.model)
    fed = training.fed(net.index, step_inputs)
    return NetworkOutcome(net.index, net.name, losses, timing, evaluation, net.device, predictions(net), fed=fed)


def _finish(ctx: RankContext, outcomes: list[NetworkOutcome]) -> None:
    report_networks(ctx, outcomes, training.END, ensemble=ctx.run.kind.ensemble)


def run_sequential(run: RunSpec, launcher: str) -> None:
    """Each network alone, one after another, on one device: the reference."""
    training.configure(run)
    device = training.default_device()
    outcomes = [train_alone(prepare(run, i, device)) for i in range(run.networks)]
    _finish(RankContext(run, launcher), outcomes)


def run_placed_networks(run: RunSpec, launcher: str) -> None:
    """All networks in one tf.function, network k under tf.device(devices[k]); they share nothing, so
    TensorFlow's executor runs their ops at the same time (one inter-op thread per device)."""
    training.configure(run, local_devices=run.devices)
    devices = training.logical_devices(run.devices)
    nets = [prepare(run, i, devices[i]) for i in range(run.networks)]

    @tf.function
    def train_step(*indices):
        losses = []
        for net, idx in zip(nets, indices):
            with tf.device(net.device):  # placement
                losses.append(net.step(idx))
        return tf.stack(losses)

    # placement: each network's sample indices on its own device
    steps = range(run.config.training.steps)
    step_inputs = [tuple(training.placed(net.s.order[t], net.device) for net in nets) for t in steps]
    losses, timing = training.train(run, lambda ins: train_step(*ins), step_inputs)
    outcomes = [outcome(net, losses[:, k], timing, [ins[k] for ins in step_inputs]) for k, net in enumerate(nets)]
    _finish(RankContext(run, launcher), outcomes)


def run_threads(run: RunSpec, launcher: str) -> None:
    """One Python thread per network, all on one device; a barrier after warm-up, so the timed steps
    of the networks run at the same time."""
    training.configure(run, inter_op_threads=run.networks)
    device = training.default_device()
    nets = [prepare(run, i, device) for i in range(run.networks)]
    outcomes = train_in_threads(
        [net.name for net in nets],  # threads: one per network
        lambda k, rank, after_warmup: train_alone(nets[k], rank, after_warmup),
    )
    _finish(RankContext(run, launcher), outcomes)


def run_processes(run: RunSpec, launcher: str) -> None:
    """One process per network (TF_CONFIG); MultiWorkerMirroredStrategy provides the collectives only
    (the models are built outside its scope: nothing is mirrored)."""
    training.configure(run)
    strategy = tf.distribute.MultiWorkerMirroredStrategy()  # tf.distribute: before any op, from TF_CONFIG
    rank, world = strategy.cluster_resolver.task_id, strategy.num_replicas_in_sync
    if world != run.networks:
        raise RuntimeError(f"TF_CONFIG has {world} workers but the run has {run.networks} networks")
    ctx = RankContext(run, launcher, rank, world, gather=training.collective_gather(strategy))
    net = prepare(run, rank, training.default_device())
    result = train_alone(net, rank, after_warmup=lambda: ctx.gather(np.zeros(1)))  # tf.distribute: start barrier
    _finish(ctx, [result])
