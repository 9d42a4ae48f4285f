"""Initial weights drawn once in numpy from the seed, in the canonical (Keras) layout.

Both frameworks load these exact arrays, so every run starts from bit-identical weights; torch_impl
converts the layout with the functions below (pure numpy, tested without any framework).
"""

from __future__ import annotations

import numpy as np

from xfw.common.config import ModelSpec
from xfw.common.models import parameter_shapes


def initial_weights(spec: ModelSpec, seed: int) -> dict[str, np.ndarray]:
    """Glorot-uniform kernels and zero biases (Keras's defaults; torch's own default is kaiming-uniform,
    which is why neither framework's initialiser is used)."""
    rng = np.random.default_rng([seed, 0x5EED])
    weights: dict[str, np.ndarray] = {}
    for name, shape in parameter_shapes(spec):
        if name.endswith("/bias"):
            weights[name] = np.zeros(shape, dtype=np.float32)
            continue
        receptive = int(np.prod(shape[:-2])) if len(shape) > 2 else 1
        fan_in, fan_out = shape[-2] * receptive, shape[-1] * receptive
        limit = np.sqrt(6.0 / (fan_in + fan_out))
        weights[name] = rng.uniform(-limit, limit, size=shape).astype(np.float32)
    return weights


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
