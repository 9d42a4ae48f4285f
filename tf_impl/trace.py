"""TensorFlow, replayed for `xfw localize` (common/localize): the training step of one device, or of the replicas
of MirroredStrategy or MultiWorkerMirroredStrategy, with every tensor the search needs captured, in the canonical
(Keras) layout and names, at the steps it asks for. torch_impl/trace.py is the PyTorch side."""

from __future__ import annotations

import numpy as np
import tensorflow as tf

from xfw.common.localize.replay import TraceWriter
from xfw.common.plan.runspec import RunSpec
from xfw.common.spec.models import blocks_of
from xfw.tf_impl import mirrored, training
from xfw.tf_impl.models import build_model

# Optimizer state Keras keeps per variable, under the names torch_impl/trace.py gives torch's.
OPTIMIZER_STATE = {"_momentums": "m", "_velocities": "v"}  # Adam, AdamW (SGD's momentum: another convention)


def canonical_variables(model, blocks) -> dict[str, tf.Variable]:
    """Canonical name -> the Keras variable holding it (weights and BatchNorm statistics)."""
    out = {}
    for block in blocks:
        if not block.has_weights:
            continue
        layer = model.get_layer(block.name)
        if hasattr(layer, "canonical_variables"):
            out.update(layer.canonical_variables())
        else:
            out.update(zip((name for name, _ in block.parameter_shapes()), layer.weights))
    return out


def trace_run(run: RunSpec, launcher: str) -> None:
    if run.implementation == "single":
        s = training.setup(run)
        strategy, rank = tf.distribute.get_strategy(), 0  # the default strategy: one replica, this device
        model = build_model(run.config.model, s.weights)
        optimizer = training.make_optimizer(run)
        optimizer.build(model.trainable_variables)
        rows = [tf.constant(row) for row in s.order]
    else:
        if run.implementation == "multi-worker":
            strategy, ctx = mirrored.multi_worker_strategy(run, launcher)
            s = training.setup(run)
        else:
            strategy, ctx, s = mirrored.mirrored_strategy(run, launcher)
        rank = ctx.rank
        model, optimizer = mirrored.strategy_model(run, s, strategy)
        shard = mirrored.replica_blocks(run, strategy)
        rows = [shard(row) for row in s.order]
    replicated = run.implementation != "single"
    local_count = strategy.num_replicas_in_sync // (run.replicas if run.implementation == "multi-worker" else 1)
    writers = [TraceWriter(run, rank * local_count + i) for i in range(local_count)]
    traced_steps(run, s, strategy, model, optimizer, rows, replicated, writers)
    if run.implementation == "multi-worker":
        ctx.gather(np.zeros(1))  # a barrier: every worker's trace written before worker 0 says it is complete
    if rank == 0:
        writers[0].write_meta([b.name for b in blocks_of(run.config.model)], run.replicas if replicated else 1)


def traced_steps(run: RunSpec, s, strategy, model, optimizer, rows, replicated: bool, writers) -> None:
    """The training loop with the writers' captures (one writer per replica of this process): the model's blocks
    called one by one, so that each block's output is seen; gradients as the optimizer receives them, summed over
    the replicas where there are several."""
    blocks = blocks_of(run.config.model)
    variables = canonical_variables(model, blocks)
    names = {id(v): n for n, v in variables.items()}
    trainable = model.trainable_variables
    trainable_names = [names[id(v)] for v in trainable]
    loss_fn = training.loss_function(run)
    layers = [model.get_layer(b.name) for b in blocks]
    global_batch = run.config.training.global_batch

    def replica_step(batch, capture: bool, checkpoint: bool):
        x, y = training.batch_tensors(s, batch)
        with tf.GradientTape() as tape:
            h, outputs = x, []
            for layer in layers:
                h = layer(h, training=True)
                outputs.append(h)
            per_example = loss_fn(y, h)
            # tf.distribute: gradients are summed over replicas, so each replica divides by the global batch.
            objective = (
                tf.nn.compute_average_loss(per_example, global_batch_size=global_batch)
                if replicated
                else tf.reduce_mean(per_example)
            )
        grads = [tf.convert_to_tensor(g) for g in tape.gradient(objective, trainable)]
        summed = grads
        if replicated and checkpoint:  # what Keras's apply_gradients all-reduces, the same way, to be seen
            summed = tf.distribute.get_replica_context().all_reduce(tf.distribute.ReduceOp.SUM, grads)
        optimizer.apply_gradients(zip(grads, trainable))
        return tf.reduce_mean(per_example), (outputs if capture else []), (summed if checkpoint else [])

    @tf.function
    def step(batch, capture: bool, checkpoint: bool):
        return strategy.run(replica_step, args=(batch, capture, checkpoint))

    def local(value) -> list:
        """This process's replicas' values of a (possibly per-replica or mirrored) value, in replica order; a Keras
        variable's through the tf.Variable it wraps."""
        return list(strategy.experimental_local_results(getattr(value, "value", value)))

    def weights(i: int) -> dict[str, np.ndarray]:
        return {n: local(v)[i].numpy() for n, v in variables.items()}

    def state(i: int) -> dict[str, np.ndarray]:
        out = {}
        for attr, short in OPTIMIZER_STATE.items():
            slots = getattr(optimizer, attr, None)
            if slots:
                for v in trainable:
                    out[f"{names[id(v)]}:{short}"] = local(slots[optimizer._get_variable_index(v)])[i].numpy()
        return out

    first = writers[0]
    for k, row in enumerate(rows):
        capture, checkpoint = first.captures(k), first.wants_weights(k)
        before = [weights(i) for i in range(len(writers))] if checkpoint else None
        loss, outputs, grads = step(row, capture, checkpoint)
        for i, writer in enumerate(writers):
            if checkpoint:
                writer.weights(k, before[i])
                writer.gradients(k, {n: local(g)[i].numpy() for n, g in zip(trainable_names, grads)})
            if capture:
                writer.step(
                    k,
                    activations={b.name: local(o)[i].numpy() for b, o in zip(blocks, outputs)},
                    after=weights(i),
                    optimizer_state=state(i),
                )
            writer.loss(k, float(local(loss)[i]))
    for i, writer in enumerate(writers):
        writer.weights(len(rows), weights(i))
        writer.close()
