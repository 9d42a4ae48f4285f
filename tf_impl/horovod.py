"""Horovod with TensorFlow, launched by horovodrun: one process per replica, gradients averaged with
hvd.grouped_allreduce. torch_impl/horovod.py runs the same engine under PyTorch.

Keras 3 and Horovod 0.28.1: hvd.DistributedOptimizer with model.fit does not average, and
DistributedGradientTape / BroadcastGlobalVariablesCallback fail on Keras 3 variables (horovod issue
4290), so the allreduce is called on the gradient tensors directly. Every Horovod line is tagged.
"""

from __future__ import annotations

import horovod.tensorflow as hvd
import keras
import numpy as np
import tensorflow as tf

from xfw.common.plan.runspec import RunSpec
from xfw.common.spec.data import replica_slice
from xfw.common.worker.breakdown import HorovodTimeline
from xfw.common.worker.rank import RankContext
from xfw.tf_impl import training
from xfw.tf_impl.blocks import batchnorm
from xfw.tf_impl.models import build_model, flat_weights


class HorovodBatchNormalization(keras.layers.BatchNormalization):
    """Keras BatchNormalization whose training moments are the global batch's: per-channel sums, sums of
    squares and counts summed over the ranks by hvd.allreduce (differentiable: its gradient is an allreduce
    too), as Keras's synchronized=True does over a tf.distribute strategy's replicas, which Horovod's
    processes are not. Horovod's own SyncBatchNormalization subclasses tf.keras 2 layers, not Keras 3's.
    Overrides Keras's private `_moments` (Keras 3.15), the one step that differs."""

    def _moments(self, inputs, mask):
        axes = self._reduction_axes
        count = tf.cast(tf.reduce_prod(tf.gather(tf.shape(inputs), axes)), inputs.dtype)
        local = tf.concat([tf.reduce_sum(inputs, axes), tf.reduce_sum(tf.square(inputs), axes), [count]], 0)
        total = hvd.allreduce(local, op=hvd.Sum)  # Horovod: over every rank's shard
        channels = inputs.shape[-1]
        mean = total[:channels] / total[-1]
        variance = tf.maximum(total[channels : 2 * channels] / total[-1] - tf.square(mean), 0.0)
        return mean, variance


def horovod_batchnorm(cfg, synchronized: bool, name: str) -> keras.layers.Layer:
    if not synchronized:
        return batchnorm(cfg, False, name)
    return HorovodBatchNormalization(momentum=cfg.decay, epsilon=cfg.epsilon, name=name)


def compression(cfg):
    """hvd.Compression per parallel.engine.horovod.compression (none: Horovod's default)."""
    return hvd.Compression.fp16 if cfg.parallel.engine.horovod.compression == "fp16" else hvd.Compression.none


def start(run: RunSpec) -> None:
    """Every Horovod run's start: the runtime configured, Horovod joined, this rank's GPU, the rank count checked."""
    training.configure(run)
    hvd.init()  # Horovod: rank and size come from horovodrun
    gpus = tf.config.list_physical_devices("GPU")
    if gpus:
        tf.config.set_visible_devices(gpus[hvd.local_rank()], "GPU")  # Horovod: one GPU per process
    if hvd.size() != run.replicas:
        raise RuntimeError(f"horovodrun started {hvd.size()} processes but the run asks for {run.replicas} replicas")


def rank_context(run: RunSpec, launcher: str) -> RankContext:
    """This rank's place in the run, gathering its outcome through Horovod's allgather (once, after training)."""

    def gather(vector: np.ndarray) -> np.ndarray:
        return hvd.allgather(tf.constant(vector[None])).numpy()  # Horovod: once, after training

    device = training.default_device()
    return RankContext(run, launcher, hvd.rank(), hvd.size(), (f"rank {hvd.rank()}: {device}",), gather)


def run_horovod(run: RunSpec, launcher: str) -> None:
    start(run)
    s = training.setup(run)
    cfg = run.config
    model = build_model(cfg.model, s.weights, horovod_batchnorm)  # Horovod: synchronised BatchNorm if asked
    optimizer = training.make_optimizer(run)
    optimizer.build(model.trainable_variables)
    for v in model.variables:  # Horovod: start from rank 0's weights (identical by construction anyway)
        v.assign(hvd.broadcast(v.value, root_rank=0))
    loss_fn = training.loss_function(run)

    @training.compiled(run)
    def forward(batch):
        x, y = training.batch_tensors(s, batch)
        loss = tf.reduce_mean(loss_fn(y, model(x, training=True)))
        return loss, loss

    @tf.function
    def train_step(batch):
        grads, loss = training.gradients(run, batch, model.trainable_variables, forward, optimizer)
        # Horovod: embedding gradients arrive as tf.IndexedSlices, which Horovod would allgather (and cannot
        # when their index dtypes differ); dense, as Horovod's own sparse_as_dense=True makes them.
        grads = [tf.convert_to_tensor(g) for g in grads]
        # Horovod: average over ranks, one fused call (as float16 where parallel.engine asks)
        grads = hvd.grouped_allreduce(grads, op=hvd.Average, compression=compression(cfg))
        optimizer.apply_gradients(zip(grads, model.trainable_variables))
        return loss

    block = replica_slice(cfg.training.global_batch, hvd.rank(), hvd.size())  # Horovod: this rank's block
    # Horovod: each rank's pipeline reads only its block of every global batch
    batches = training.step_batches(run, s, preloaded=lambda: [tf.constant(row[block]) for row in s.order], block=block)
    # Horovod: its timeline shows the all-reduces of the profiled steps, which run in its background thread
    timeline = HorovodTimeline(hvd, training.StepProfiler())
    losses, timing = training.train(run, train_step, batches, hvd.rank(), profiler=timeline)

    ctx = rank_context(run, launcher)
    fed = [training.fed(hvd.rank(), batches.indices)]
    training.report(ctx, s, model, losses, timing, [flat_weights(model.trainable_variables)], fed=fed)
    hvd.join()  # Horovod: every rank waits here until rank 0 has written the result, then all shut down
