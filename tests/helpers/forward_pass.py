"""One forward pass of a model kind in one framework, from the canonical initial weights with every
BatchNorm and LayerNorm parameter and statistic moved off its identity value (so a conversion that dropped
one would show): `python tests/helpers/forward_pass.py tf|torch KIND OUT.npz`. Writes the outputs in inference mode,
in training mode, and the BatchNorm moving statistics after that training-mode pass, all canonical layout.
One framework per process (the two are not imported together)."""

from __future__ import annotations

import os
import sys

import numpy as np

os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "0")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

from xfw.common.spec.config import CNNSpec, MLPSpec, ResNetSpec, TransformerSpec  # noqa: E402
from xfw.common.spec.models import blocks_of, input_shape, is_state  # noqa: E402
from xfw.common.spec.weights import initial_weights  # noqa: E402

# The parity tests' small instances (issue 12): resnet-8 with narrow widths on 16x16 inputs, a 2-block
# Transformer of width 32 over 16 tokens.
SPECS = {
    "mlp": MLPSpec(),
    "cnn": CNNSpec(),
    "resnet": ResNetSpec(widths=(4, 8, 8), input_shape=(16, 16, 3)),
    "resnet-projection": ResNetSpec(depth=14, widths=(4, 8, 16), input_shape=(15, 15, 3)),  # odd sizes, 2 per stage
    "transformer": TransformerSpec(vocab=64, width=32, heads=4, depth=2, seq_len=16),
    "transformer-tanh-gelu": TransformerSpec(vocab=50, width=24, heads=3, depth=1, seq_len=8, gelu="tanh"),
}


def inputs_and_weights(kind: str) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    spec = SPECS[kind]
    rng = np.random.default_rng(1)
    weights = initial_weights(spec, 0)
    for name, value in weights.items():
        if name.endswith("/moving_variance"):
            weights[name] = rng.uniform(0.5, 2.0, size=value.shape).astype(np.float32)
        elif name.endswith(("/moving_mean", "/gamma", "/beta", "/bias")):
            weights[name] = (value + 0.1 * rng.standard_normal(size=value.shape)).astype(np.float32)
    if isinstance(spec, TransformerSpec):
        x = rng.integers(0, spec.vocab, size=(4, spec.seq_len)).astype(np.int64)
    else:
        x = rng.standard_normal(size=(4, *input_shape(spec))).astype(np.float32)
    return x, weights


def main(framework: str, kind: str, out: str) -> None:
    spec = SPECS[kind]
    x, weights = inputs_and_weights(kind)
    blocks = blocks_of(spec)
    if framework == "tf":
        import tensorflow as tf

        tf.config.experimental.enable_op_determinism()
        from xfw.tf_impl.models import build_model

        model = build_model(spec, weights)
        inference = model(x, training=False).numpy()
        training = model(x, training=True).numpy()
        state = {}
        for block in blocks:
            layer = model.get_layer(block.name)
            if hasattr(layer, "canonical_variables"):
                state.update({k: v.numpy() for k, v in layer.canonical_variables().items() if is_state(k)})
    else:
        import torch

        torch.use_deterministic_algorithms(True)
        from xfw.torch_impl.models import build_model, export_weights, to_torch_layout

        model = build_model(spec, weights)
        exported = export_weights(model, blocks)
        assert set(exported) == set(weights), sorted(set(exported) ^ set(weights))
        assert all(np.array_equal(exported[k], weights[k]) for k in weights), "layout round trip is not exact"
        xt = torch.from_numpy(to_torch_layout(x))
        with torch.no_grad():
            model.eval()
            inference = model(xt).numpy()
            model.train()
            training = model(xt).numpy()
        state = {k: v for k, v in export_weights(model, blocks).items() if is_state(k)}
    np.savez(out, inference=inference, training=training, **{f"state:{k}": v for k, v in state.items()})


if __name__ == "__main__":
    main(*sys.argv[1:])
