"""TensorFlow, several independent networks (config `networks`): one after another, all at once under
their own tf.device in one graph, in threads of one process, and one process per network (TF_CONFIG).
Used by the independent and shared-device strategies; torch_impl/networks.py is the PyTorch side.

Each network trains exactly as its solo run (`xfw run --impl single` on common.config.network_config):
the same step (single.step_body), weights, sample order and threads. Running them concurrently may
change how long they take, never what they compute. Lines that exist for concurrency are tagged
`# placement:`, `# threads:` or `# tf.distribute:`.
"""

from __future__ import annotations

import dataclasses
import threading
from dataclasses import dataclass

import numpy as np

from xfw.common.config import network_config
from xfw.common.networks import NetworkOutcome, finish_networks
from xfw.common.runspec import RunSpec
from xfw.tf_impl import training
from xfw.tf_impl.models import build_model
from xfw.tf_impl.single import step_body


@dataclass
class Network:
    """One network, ready to train: its own run (config), data, model and step."""

    index: int
    name: str
    run: RunSpec
    s: training.Setup
    model: object
    step: object  # the undecorated step function (single.step_body)
    device: str


def prepare(run: RunSpec, index: int, device: str, **setup_kw) -> Network:
    net_run = dataclasses.replace(run, config=network_config(run.config, index))
    s = training.setup(net_run, **setup_kw)
    with s.tf.device(device):  # placement: the network's weights live on its device
        model = build_model(net_run.config.model, s.weights)
        step = step_body(net_run, s, model)
    return Network(index, run.config.networks[index].name, net_run, s, model, step, device)


def predictions(net: Network) -> np.ndarray:
    """Test-set probabilities (classification) or outputs: what the ensemble averages."""
    out = net.model(net.s.tf.constant(net.s.data.x_test), training=False)
    return (net.s.tf.nn.softmax(out) if net.s.data.classification else out).numpy()


def train_alone(net: Network, rank: int = 0, after_warmup=None) -> NetworkOutcome:
    tf = net.s.tf
    step = tf.function(net.step)
    losses, timing = training.train(net.run, step, [tf.constant(row) for row in net.s.order], rank, after_warmup)
    return outcome(net, losses, timing)


def outcome(net: Network, losses: np.ndarray, timing) -> NetworkOutcome:
    return NetworkOutcome(net.index, net.name, losses, timing, training.evaluate(net.run, net.s, net.model), net.device,
                          predictions(net))


def default_device(tf) -> str:
    return (tf.config.list_logical_devices("GPU")[:1] or tf.config.list_logical_devices("CPU")[:1])[0].name


def _finish(run: RunSpec, launcher: str, outcomes, gather, rank: int, world: int) -> None:
    finish_networks(run, outcomes, gather, rank,
                    lambda: {"env": training.environment(run, launcher, world, sorted({o.device for o in outcomes}))},
                    ensemble=run.strategy == "independent")


def run_sequential(run: RunSpec, launcher: str) -> None:
    """Each network alone, one after another, on one device: the reference."""
    tf = training.configure(run)
    device = default_device(tf)
    outcomes = [train_alone(prepare(run, i, device)) for i in range(run.networks)]
    _finish(run, launcher, outcomes, lambda v: v[None], 0, 1)


def run_placed(run: RunSpec, launcher: str) -> None:
    """All networks in one tf.function, network k under tf.device(devices[k]); they share nothing, so
    TensorFlow's executor runs their ops at the same time (one inter-op thread per device)."""
    tf = training.configure(run, logical_cpus=run.devices)
    devices = training.logical_devices(tf, run.devices)
    nets = [prepare(run, i, devices[i]) for i in range(run.networks)]

    @tf.function
    def train_step(*indices):
        losses = []
        for net, idx in zip(nets, indices):
            with tf.device(net.device):  # placement
                losses.append(net.step(idx))
        return tf.stack(losses)

    step_inputs = [tuple(tf.constant(net.s.order[t]) for net in nets) for t in range(run.config.training.steps)]
    losses, timing = training.train(run, lambda ins: train_step(*ins), step_inputs)
    _finish(run, launcher, [outcome(net, losses[:, k], timing) for k, net in enumerate(nets)], lambda v: v[None], 0, 1)


def run_threads(run: RunSpec, launcher: str) -> None:
    """One Python thread per network, all on one device; a barrier after warm-up, so the timed steps
    of the networks run at the same time."""
    tf = training.configure(run, inter_op_threads=run.networks)
    device = default_device(tf)
    nets = [prepare(run, i, device) for i in range(run.networks)]
    barrier = threading.Barrier(len(nets))  # threads: start the timed steps together
    outcomes: list = [None] * len(nets)
    errors: list[BaseException] = []

    def work(k: int) -> None:
        try:
            outcomes[k] = train_alone(nets[k], rank=0 if k == 0 else -1, after_warmup=barrier.wait)
        except BaseException as exc:  # re-raised in the main thread: a failed network fails the run
            errors.append(exc)
            barrier.abort()

    threads = [threading.Thread(target=work, args=(k,), name=f"network-{nets[k].name}") for k in range(len(nets))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if errors:
        raise errors[0]
    _finish(run, launcher, outcomes, lambda v: v[None], 0, 1)


def run_processes(run: RunSpec, launcher: str) -> None:
    """One process per network (TF_CONFIG); MultiWorkerMirroredStrategy provides the collectives only
    (the models are built outside its scope: nothing is mirrored)."""
    tf = training.configure(run)
    strategy = tf.distribute.MultiWorkerMirroredStrategy()  # tf.distribute: before any op, from TF_CONFIG
    rank, world = strategy.cluster_resolver.task_id, strategy.num_replicas_in_sync
    if world != run.networks:
        raise RuntimeError(f"TF_CONFIG has {world} workers but the run has {run.networks} networks")

    def gather(vector: np.ndarray) -> np.ndarray:
        # tf.distribute: an all-gather across the workers.
        value = strategy.experimental_distribute_values_from_function(lambda ctx: tf.constant(vector[None]))
        return strategy.gather(value, axis=0).numpy()

    net = prepare(run, rank, default_device(tf))
    result = train_alone(net, rank, after_warmup=lambda: gather(np.zeros(1)))  # tf.distribute: start barrier
    _finish(run, launcher, [result], gather, rank, world)
