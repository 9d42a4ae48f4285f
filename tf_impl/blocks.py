"""The multi-layer blocks of common/spec/models.py as Keras layers, each made of Keras's own layers (Conv2D,
BatchNormalization, ZeroPadding2D, Embedding, LayerNormalization, MultiHeadAttention, Dense).
torch_impl/blocks.py builds the same blocks from torch.nn.

Each layer maps the block's canonical parameter names to its Keras variables (`canonical_variables`), so
the initial weights load by name, never by position.
"""

from __future__ import annotations

from collections.abc import Callable

import keras
from keras import ops

from xfw.common.spec import models as spec
from xfw.common.spec.config import BatchNormConfig

# Builds one BatchNormalization: (config, synchronized, name) -> layer. Horovod passes its own subclass,
# whose batch statistics are averaged across ranks (tf_impl/horovod.py).
BatchNormFactory = Callable[[BatchNormConfig, bool, str], keras.layers.Layer]


def batchnorm(cfg: BatchNormConfig, synchronized: bool, name: str) -> keras.layers.Layer:
    """Keras's `momentum` is the fraction of the old moving statistic kept: the config's decay as is.
    synchronized=True all-reduces the batch moments over the replicas of a tf.distribute strategy."""
    return keras.layers.BatchNormalization(
        momentum=cfg.decay, epsilon=cfg.epsilon, synchronized=synchronized, name=name
    )


def _batchnorm_variables(prefix: str, bn) -> dict:
    return {
        f"{prefix}/gamma": bn.gamma,
        f"{prefix}/beta": bn.beta,
        f"{prefix}/moving_mean": bn.moving_mean,
        f"{prefix}/moving_variance": bn.moving_variance,
    }


def _conv3x3(channels: int, stride: int, name: str) -> list[keras.layers.Layer]:
    """One pixel of zeros on every side, then the convolution. Stride 1 this is padding="same"; stride 2
    "same" would pad only the bottom and right (TensorFlow's rule), unlike torch's padding=1."""
    if stride == 1:
        return [keras.layers.Conv2D(channels, 3, padding="same", use_bias=False, name=name)]
    return [
        keras.layers.ZeroPadding2D(1, name=f"{name}_pad"),
        keras.layers.Conv2D(channels, 3, strides=stride, padding="valid", use_bias=False, name=name),
    ]


ACTIVATIONS = {"relu": ops.relu, "tanh": ops.tanh}


def _chain(layers: list, x, training):
    for layer in layers:
        x = layer(x, training=training) if isinstance(layer, keras.layers.BatchNormalization) else layer(x)
    return x


class ConvBN(keras.layers.Layer):
    def __init__(self, block: spec.ConvBN, make_batchnorm: BatchNormFactory = batchnorm):
        super().__init__(name=block.name)
        self.block = block
        self.conv = keras.layers.Conv2D(block.channels_out, 3, padding="same", use_bias=False, name="conv")
        self.bn = make_batchnorm(block.batchnorm, block.sync_batchnorm, "bn")

    def call(self, x, training=None):
        return ACTIVATIONS[self.block.activation](self.bn(self.conv(x), training=training))

    def canonical_variables(self) -> dict:
        return {f"{self.name}/conv/kernel": self.conv.kernel, **_batchnorm_variables(f"{self.name}/bn", self.bn)}


class ResidualBlock(keras.layers.Layer):
    def __init__(self, block: spec.ResidualBlock, make_batchnorm: BatchNormFactory = batchnorm):
        super().__init__(name=block.name)
        self.block = block
        bn, sync = block.batchnorm, block.sync_batchnorm
        self.conv1 = _conv3x3(block.channels_out, block.stride, "conv1")
        self.bn1 = make_batchnorm(bn, sync, "bn1")
        self.conv2 = _conv3x3(block.channels_out, 1, "conv2")
        self.bn2 = make_batchnorm(bn, sync, "bn2")
        self.shortcut = None
        if block.projection:
            self.shortcut = keras.layers.Conv2D(
                block.channels_out, 1, strides=block.stride, padding="valid", use_bias=False, name="shortcut"
            )
            self.shortcut_bn = make_batchnorm(bn, sync, "shortcut_bn")

    def call(self, x, training=None):
        act = ACTIVATIONS[self.block.activation]
        h = act(self.bn1(_chain(self.conv1, x, training), training=training))
        h = self.bn2(_chain(self.conv2, h, training), training=training)
        skip = x if self.shortcut is None else self.shortcut_bn(self.shortcut(x), training=training)
        return act(h + skip)

    def canonical_variables(self) -> dict:
        n = self.name
        out = {
            f"{n}/conv1/kernel": self.conv1[-1].kernel,
            **_batchnorm_variables(f"{n}/bn1", self.bn1),
            f"{n}/conv2/kernel": self.conv2[-1].kernel,
            **_batchnorm_variables(f"{n}/bn2", self.bn2),
        }
        if self.shortcut is not None:
            out[f"{n}/shortcut/kernel"] = self.shortcut.kernel
            out.update(_batchnorm_variables(f"{n}/shortcut_bn", self.shortcut_bn))
        return out


class Embedding(keras.layers.Layer):
    def __init__(self, block: spec.Embedding):
        super().__init__(name=block.name)
        self.block = block
        self.token = keras.layers.Embedding(block.vocab, block.width, name="token")
        self.position = keras.layers.Embedding(block.seq_len, block.width, name="position")

    def call(self, ids):
        positions = ops.arange(ops.shape(ids)[1])
        return self.token(ids) + self.position(positions)[None]

    def canonical_variables(self) -> dict:
        return {
            f"{self.name}/token/embeddings": self.token.embeddings,
            f"{self.name}/position/embeddings": self.position.embeddings,
        }


class DecoderBlock(keras.layers.Layer):
    def __init__(self, block: spec.DecoderBlock):
        super().__init__(name=block.name)
        self.block = block
        self.ln1 = keras.layers.LayerNormalization(epsilon=block.epsilon, name="ln1")
        # Keras scales the query by 1/sqrt(key_dim) before q.k^T; the causal mask adds a large negative
        # number to future positions before the softmax (torch: -inf). No dropout.
        self.attention = keras.layers.MultiHeadAttention(block.heads, key_dim=block.head_dim, name="attention")
        self.ln2 = keras.layers.LayerNormalization(epsilon=block.epsilon, name="ln2")
        self.mlp_in = keras.layers.Dense(block.hidden, name="mlp_in")
        self.mlp_out = keras.layers.Dense(block.width, name="mlp_out")

    def call(self, x, training=None):
        a = self.ln1(x)
        x = x + self.attention(a, a, a, use_causal_mask=True, training=training)
        hidden = keras.activations.gelu(self.mlp_in(self.ln2(x)), approximate=self.block.gelu == "tanh")
        return x + self.mlp_out(hidden)

    def canonical_variables(self) -> dict:
        n, att = self.name, self.attention
        parts = {"query": att.query_dense, "key": att.key_dense, "value": att.value_dense, "output": att.output_dense}
        out = {f"{n}/ln1/gamma": self.ln1.gamma, f"{n}/ln1/beta": self.ln1.beta}
        for part, dense in parts.items():
            out[f"{n}/attention/{part}/kernel"] = dense.kernel
            out[f"{n}/attention/{part}/bias"] = dense.bias
        out.update({f"{n}/ln2/gamma": self.ln2.gamma, f"{n}/ln2/beta": self.ln2.beta})
        for name in ("mlp_in", "mlp_out"):
            dense = getattr(self, name)
            out[f"{n}/{name}/kernel"], out[f"{n}/{name}/bias"] = dense.kernel, dense.bias
        return out
