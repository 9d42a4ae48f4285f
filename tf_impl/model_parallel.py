"""TensorFlow model parallelism, pipelining and hybrid data x model parallelism, all by placement in one
process: stage i of replica r runs under tf.device(devices[r * S + i]) (GPUs, or logical CPU devices).
torch_impl/model_parallel.py is the PyTorch side.

One function serves the three strategies; the run says how many replicas R, stages S and micro-batches M
(model-parallel: R = M = 1; pipeline: R = 1; hybrid: all three). Each replica runs every micro-batch's
forward, then one backward over all of them (the GPipe order); TensorFlow's dataflow executor overlaps
stages of different micro-batches by itself. Lines that exist for placement are tagged `# placement:`.
"""

from __future__ import annotations

import keras
import tensorflow as tf

from xfw.common.plan.runspec import RunSpec
from xfw.common.spec.data import replica_slice
from xfw.common.spec.partition import plan_stages
from xfw.common.worker.rank import RankContext
from xfw.tf_impl import training
from xfw.tf_impl.models import build_stage, flat_weights


def run_placed_stages(run: RunSpec, launcher: str) -> None:
    replicas, n_stages, micro_batches = run.replicas, run.stages, run.micro_batches
    s = training.setup(run, local_devices=run.devices)
    devices = training.logical_devices(run.devices)
    stages = plan_stages(run.config)
    models = []
    for stage in stages:
        with tf.device(devices[stage.index]):  # placement: stage i's weights live on its device
            models.append(build_stage(stage, s.weights))
    variables = [v for m in models for v in m.trainable_variables]
    optimizer = training.make_optimizer(run)
    loss_fn = training.loss_function(run)
    per_replica = run.config.training.global_batch // replicas
    micro = per_replica // micro_batches

    @tf.function
    def train_step(replica_idx):
        replica_grads, replica_losses = [], []
        for r, idx in enumerate(replica_idx):
            with tf.GradientTape() as tape:
                micro_losses = []
                for m in range(micro_batches):
                    sub = idx[m * micro : (m + 1) * micro]
                    h, y = tf.gather(s.x, sub), tf.gather(s.y, sub)
                    for i, model in enumerate(models):
                        with tf.device(devices[r * n_stages + i]):  # placement: stage i of replica r
                            h = model(h, training=True)
                    with tf.device(devices[r * n_stages + n_stages - 1]):
                        micro_losses.append(tf.reduce_mean(loss_fn(y, h)))
                loss = tf.add_n(micro_losses) / micro_batches  # equal micro-batches: the mean over the replica's batch
            replica_grads.append(tape.gradient(loss, variables))
            replica_losses.append(loss)
        # placement: the replicas' gradients averaged by hand, one update of the single weight copy.
        grads = [tf.add_n(list(g)) / replicas for g in zip(*replica_grads)]
        optimizer.apply_gradients(zip(grads, variables))
        return tf.add_n(replica_losses) / replicas

    # hybrid: each replica's block of the batch, on its first stage's device (one replica: the whole batch).
    blocks = [replica_slice(run.config.training.global_batch, r, replicas) for r in range(replicas)]
    step_inputs = [
        tuple(training.placed(row[b], devices[r * n_stages]) for r, b in enumerate(blocks)) for row in s.order
    ]
    losses, timing = training.train(run, train_step, step_inputs)
    fed = [training.fed(r, [replica_idx[r] for replica_idx in step_inputs]) for r in range(replicas)]
    busy = {
        st.index: training.stage_seconds(
            run, models[st.index], st, micro, st.index == n_stages - 1, devices[st.index], count=micro_batches
        )
        for st in stages
    }
    full_model = keras.Sequential(models)  # the stages chained, for evaluation
    ctx = RankContext(run, launcher, devices=tuple(devices))
    where = {st.index: models[st.index].trainable_variables[0].value.device for st in stages}  # placement: as placed
    weights = [flat_weights(variables)]
    training.report(ctx, s, full_model, losses, timing, weights, stage_busy_s=busy, fed=fed, stage_devices=where)
