"""Horovod with TensorFlow, launched by horovodrun: one process per replica, gradients averaged with
hvd.grouped_allreduce. torch_impl/horovod.py runs the same engine under PyTorch.

Keras 3 and Horovod 0.28.1: hvd.DistributedOptimizer with model.fit does not average, and
DistributedGradientTape / BroadcastGlobalVariablesCallback fail on Keras 3 variables (horovod issue
4290), so the allreduce is called on the gradient tensors directly. Every Horovod line is tagged.
"""

from __future__ import annotations

import horovod.tensorflow as hvd
import numpy as np
import tensorflow as tf

from xfw.common.data import replica_slice
from xfw.common.rank import RankContext
from xfw.common.runspec import RunSpec
from xfw.tf_impl import training
from xfw.tf_impl.models import build_model, flat_weights


def run_horovod(run: RunSpec, launcher: str) -> None:
    training.configure(run)
    hvd.init()  # Horovod: rank and size come from horovodrun
    gpus = tf.config.list_physical_devices("GPU")
    if gpus:
        tf.config.set_visible_devices(gpus[hvd.local_rank()], "GPU")  # Horovod: one GPU per process
    if hvd.size() != run.replicas:
        raise RuntimeError(f"horovodrun started {hvd.size()} processes but the run asks for {run.replicas} replicas")
    s = training.setup(run)
    cfg = run.config
    model = build_model(cfg.model, s.weights)
    optimizer = training.make_optimizer(run)
    optimizer.build(model.trainable_variables)
    for v in model.variables:  # Horovod: start from rank 0's weights (identical by construction anyway)
        v.assign(hvd.broadcast(v.value, root_rank=0))
    loss_fn = training.loss_function(run)

    @tf.function
    def train_step(idx):
        x, y = tf.gather(s.x, idx), tf.gather(s.y, idx)
        with tf.GradientTape() as tape:
            loss = tf.reduce_mean(loss_fn(y, model(x, training=True)))
        grads = tape.gradient(loss, model.trainable_variables)
        grads = hvd.grouped_allreduce(grads, op=hvd.Average)  # Horovod: average over ranks, one fused call
        optimizer.apply_gradients(zip(grads, model.trainable_variables))
        return loss

    block = replica_slice(cfg.training.global_batch, hvd.rank(), hvd.size())  # Horovod: this rank's block
    step_inputs = [tf.constant(row[block]) for row in s.order]
    losses, timing = training.train(run, train_step, step_inputs, hvd.rank())

    def gather(vector: np.ndarray) -> np.ndarray:
        return hvd.allgather(tf.constant(vector[None])).numpy()  # Horovod: once, after training

    device = training.default_device()
    ctx = RankContext(run, launcher, hvd.rank(), hvd.size(), (f"rank {hvd.rank()}: {device}",), gather)
    fed = [training.fed(hvd.rank(), step_inputs)]
    training.report(ctx, s, model, losses, timing, [flat_weights(model.trainable_variables)], fed=fed)
    hvd.join()  # Horovod: every rank waits here until rank 0 has written the result, then all shut down
