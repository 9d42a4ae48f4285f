"""Initial weights drawn once in numpy from the seed, in the canonical (Keras) layout.

Both frameworks load these exact arrays, so every run starts from bit-identical weights; torch_impl
converts the layout with the functions below (pure numpy, tested without any framework).
"""

from __future__ import annotations

import numpy as np

from xfw.common.spec.config import ModelSpec
from xfw.common.spec.models import blocks_of


def initial_weights(spec: ModelSpec, seed: int) -> dict[str, np.ndarray]:
    """Glorot-uniform kernels, zero biases, BatchNorm and LayerNorm at identity (gamma and moving variance
    1, beta and moving mean 0), embeddings normal with std 0.02 (GPT-2's). These are Keras's defaults except
    the embeddings; torch's own (kaiming-uniform kernels, N(0, 1) embeddings) differ, which is why neither
    framework's initialiser is used. Arrays are drawn in parameter order, so adding a kind changes no
    existing kind's weights."""
    rng = np.random.default_rng([seed, 0x5EED])
    weights: dict[str, np.ndarray] = {}
    for block in blocks_of(spec):
        for name, shape in block.parameter_shapes():
            if name.endswith(("/bias", "/beta", "/moving_mean")):
                weights[name] = np.zeros(shape, dtype=np.float32)
            elif name.endswith(("/gamma", "/moving_variance")):
                weights[name] = np.ones(shape, dtype=np.float32)
            elif name.endswith("/embeddings"):
                weights[name] = (0.02 * rng.standard_normal(size=shape)).astype(np.float32)
            else:
                fan_in, fan_out = block.fans(name, shape)
                limit = np.sqrt(6.0 / (fan_in + fan_out))
                weights[name] = rng.uniform(-limit, limit, size=shape).astype(np.float32)
    return weights


def moved_one_ulp(weights: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Every value moved to the next float32 above it: a difference at rounding level only (the envelope's run)."""
    return {name: np.nextafter(w, np.float32(np.inf)).astype(w.dtype) for name, w in weights.items()}


def starting_weights(run) -> dict[str, np.ndarray]:
    """A run's initial weights: drawn from the config's seed; moved one ulp for the rounding envelope's run
    (RunSpec.perturbation); with XFW_PERTURB's test change (common/worker/faults.py)."""
    from xfw.common.worker.faults import perturbed

    cfg = run.config
    weights = perturbed(run.id, initial_weights(cfg.model, cfg.weights_seed))
    return moved_one_ulp(weights) if run.perturbation == "ulp" else weights


def dense_kernel_to_torch(kernel: np.ndarray, flattened_from: tuple[int, int, int] | None = None) -> np.ndarray:
    """(in, out) -> torch's (out, in). After a conv stack the input rows are in NHWC flatten order
    (h, w, c); torch flattens NCHW as (c, h, w), so the rows are permuted to match."""
    if flattened_from is not None:
        h, w, c = flattened_from
        kernel = kernel.reshape(h, w, c, -1).transpose(2, 0, 1, 3).reshape(h * w * c, -1)
    return np.ascontiguousarray(kernel.T)


def dense_kernel_from_torch(weight: np.ndarray, flattened_from: tuple[int, int, int] | None = None) -> np.ndarray:
    kernel = weight.T
    if flattened_from is not None:
        h, w, c = flattened_from
        kernel = kernel.reshape(c, h, w, -1).transpose(1, 2, 0, 3).reshape(h * w * c, -1)
    return np.ascontiguousarray(kernel)


def conv_kernel_to_torch(kernel: np.ndarray) -> np.ndarray:
    """HWIO -> OIHW."""
    return np.ascontiguousarray(kernel.transpose(3, 2, 0, 1))


def conv_kernel_from_torch(weight: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(weight.transpose(2, 3, 1, 0))


def attention_in_projection_to_torch(query: np.ndarray, key: np.ndarray, value: np.ndarray) -> np.ndarray:
    """Keras's three (E, heads, head_dim) kernels -> torch's packed in_proj_weight (3E, E), rows q, k, v."""
    return np.ascontiguousarray(np.concatenate([k.reshape(k.shape[0], -1).T for k in (query, key, value)]))


def attention_in_projection_from_torch(weight: np.ndarray, heads: int) -> list[np.ndarray]:
    e = weight.shape[1]
    return [np.ascontiguousarray(part.T.reshape(e, heads, e // heads)) for part in np.split(weight, 3)]


def attention_in_bias_to_torch(query: np.ndarray, key: np.ndarray, value: np.ndarray) -> np.ndarray:
    """(heads, head_dim) biases -> torch's packed in_proj_bias (3E,)."""
    return np.concatenate([b.reshape(-1) for b in (query, key, value)])


def attention_in_bias_from_torch(bias: np.ndarray, heads: int) -> list[np.ndarray]:
    return [np.ascontiguousarray(part.reshape(heads, -1)) for part in np.split(bias, 3)]


def attention_out_kernel_to_torch(kernel: np.ndarray) -> np.ndarray:
    """Keras's output kernel (heads, head_dim, E) -> torch's out_proj.weight (E, E)."""
    return np.ascontiguousarray(kernel.reshape(-1, kernel.shape[-1]).T)


def attention_out_kernel_from_torch(weight: np.ndarray, heads: int) -> np.ndarray:
    e = weight.shape[0]
    return np.ascontiguousarray(weight.T.reshape(heads, e // heads, e))
