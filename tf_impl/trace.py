"""TensorFlow, one device, replayed for `xfw localize` (common/localize.py): the single-device training step with
every tensor the search needs captured, in the canonical (Keras) layout and names, at the steps it asks for."""

from __future__ import annotations

import numpy as np
import tensorflow as tf

from xfw.common.localize import TraceWriter
from xfw.common.models import blocks_of
from xfw.common.runspec import RunSpec
from xfw.tf_impl import training
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
    s = training.setup(run)
    blocks = blocks_of(run.config.model)
    model = build_model(run.config.model, s.weights)
    variables = canonical_variables(model, blocks)
    names = {id(v): n for n, v in variables.items()}
    trainable = model.trainable_variables
    trainable_names = [names[id(v)] for v in trainable]
    optimizer = training.make_optimizer(run)
    optimizer.build(trainable)
    loss_fn = training.loss_function(run)
    layers = [model.get_layer(b.name) for b in blocks]

    @tf.function
    def step(batch, capture: bool):
        x, y = training.batch_tensors(s, batch)
        with tf.GradientTape() as tape:
            h, outputs = x, []
            for layer in layers:  # the Sequential's own calls, one by one, so that each block's output is seen
                h = layer(h, training=True)
                outputs.append(h)
            loss = tf.reduce_mean(loss_fn(y, h))
        grads = [tf.convert_to_tensor(g) for g in tape.gradient(loss, trainable)]
        optimizer.apply_gradients(zip(grads, trainable))
        return loss, (outputs if capture else []), (grads if capture else [])

    def weights() -> dict[str, np.ndarray]:
        return {n: v.numpy() for n, v in variables.items()}

    def state() -> dict[str, np.ndarray]:
        out = {}
        for attr, short in OPTIMIZER_STATE.items():
            slots = getattr(optimizer, attr, None)
            if slots:
                for v in trainable:
                    out[f"{names[id(v)]}:{short}"] = slots[optimizer._get_variable_index(v)].numpy()
        return out

    writer = TraceWriter(run, [b.name for b in blocks])
    for k, row in enumerate(s.order):
        capture = writer.captures(k)
        before = weights() if writer.wants_weights(k) else None
        loss, outputs, grads = step(tf.constant(row), capture)
        if before is not None:
            writer.weights(k, before)
        if capture:
            writer.step(
                k,
                activations={b.name: o.numpy() for b, o in zip(blocks, outputs)},
                gradients={n: g.numpy() for n, g in zip(trainable_names, grads)},
                after=weights(),
                optimizer_state=state(),
            )
        writer.loss(k, float(loss))
    writer.weights(len(s.order), weights())
    writer.close()
