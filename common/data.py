"""Datasets, the global sample order, and the one rule that splits a global batch across replicas.

Every framework and every strategy reads its batches through `sample_order` and `replica_slice`, so a
single-device run and an N-replica run see the same samples at the same step, and the replicas' shards
put together are exactly the single-device batch.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from xfw.common.config import Config, ModelSpec
from xfw.common.errors import UserError
from xfw.common.models import input_shape, model_kind, output_width


@dataclass(frozen=True)
class Dataset:
    x_train: np.ndarray  # float32, canonical channels-last layout
    y_train: np.ndarray  # float32 targets (regression) or int64 class ids (classification)
    x_test: np.ndarray
    y_test: np.ndarray
    classification: bool

    @property
    def train_size(self) -> int:
        return len(self.x_train)


def _split(x: np.ndarray, y: np.ndarray, test_fraction: float, seed: int, classification: bool) -> Dataset:
    order = np.random.default_rng([seed, 0x5B117]).permutation(len(x))
    n_test = max(1, int(round(len(x) * test_fraction)))
    test, train = order[:n_test], order[n_test:]
    return Dataset(x[train], y[train], x[test], y[test], classification)


def _synthetic(config: Config, classification: bool) -> tuple[np.ndarray, np.ndarray]:
    spec = config.model
    n_in, n_out = input_shape(spec)[0], output_width(spec)
    rng = np.random.default_rng([config.seed, 0xDA7A])
    if classification:
        centers = rng.normal(0.0, 1.5, size=(n_out, n_in))
        y = rng.integers(0, n_out, size=config.data.samples)
        x = centers[y] + rng.normal(0.0, 1.0, size=(config.data.samples, n_in))
        return x.astype(np.float32), y.astype(np.int64)
    x = rng.normal(0.0, 1.0, size=(config.data.samples, n_in))
    w_true = rng.normal(0.0, 1.0 / np.sqrt(n_in), size=(n_in, n_out))
    y = np.tanh(x @ w_true) + config.data.noise * rng.normal(size=(config.data.samples, n_out))
    return x.astype(np.float32), y.astype(np.float32)


# The digits images, (n, 8, 8), in each model kind's input layout (common.models.ModelKind.input_layout).
_DIGITS_LAYOUTS = {"flat": lambda x: x.reshape(len(x), 64), "image": lambda x: x[..., None]}


def _digits(spec: ModelSpec) -> tuple[np.ndarray, np.ndarray]:
    from sklearn.datasets import load_digits  # ships inside scikit-learn: no download

    digits = load_digits()
    x = (digits.images / 16.0).astype(np.float32)  # (n, 8, 8) in [0, 1]
    x = _DIGITS_LAYOUTS[model_kind(spec).input_layout](x)
    return x, digits.target.astype(np.int64)


def _npz(path: str, classification: bool) -> tuple[np.ndarray, ...]:
    file = Path(path)
    if not file.is_file():
        raise UserError(f"data.path: no such file {path}")
    try:
        with np.load(file) as arrays:
            names = set(arrays.files)
            if {"x_train", "y_train"} <= names:
                parts = [arrays["x_train"], arrays["y_train"]]
                if {"x_test", "y_test"} <= names:
                    parts += [arrays["x_test"], arrays["y_test"]]
            elif {"x", "y"} <= names:
                parts = [arrays["x"], arrays["y"]]
            else:
                raise UserError(
                    f"data.path {path}: expected arrays x and y (or x_train and y_train), found {sorted(names)}"
                )
    except (OSError, ValueError) as exc:
        raise UserError(f"data.path {path}: not a readable .npz file ({exc})") from None
    out = []
    for i, arr in enumerate(parts):
        is_label = i % 2 == 1
        out.append(arr.astype(np.int64 if (is_label and classification) else np.float32))
    return tuple(out)


def _check_shapes(ds: Dataset, spec: ModelSpec, source: str) -> Dataset:
    want, kind = input_shape(spec), model_kind(spec)
    x_train, x_test = ds.x_train, ds.x_test
    if kind.input_layout == "image" and x_train.ndim == 3:  # (n, h, w) grayscale: add the channel axis
        x_train, x_test = x_train[..., None], x_test[..., None]
    if tuple(x_train.shape[1:]) != want:
        raise UserError(
            f"{kind.input_key} expects samples of shape {want}, but {source} has {tuple(x_train.shape[1:])}"
        )
    n_out = output_width(spec)
    if ds.classification:
        if ds.y_train.ndim != 1:
            raise UserError(f"{source}: classification labels must be a 1-D array of class ids")
        top = int(max(ds.y_train.max(), ds.y_test.max()))
        if top >= n_out or min(ds.y_train.min(), ds.y_test.min()) < 0:
            raise UserError(f"{source} has class ids up to {top}, but the model has {n_out} outputs")
    elif ds.y_train.shape[1:] != (n_out,):
        raise UserError(f"{source} targets have shape {ds.y_train.shape[1:]}, but the model has {n_out} outputs")
    return Dataset(x_train, ds.y_train, x_test, ds.y_test, ds.classification)


def load_dataset(config: Config) -> Dataset:
    data, spec = config.data, config.model
    classification = config.loss == "cross_entropy"
    if data.kind in ("synthetic_regression", "synthetic_classification"):
        ds = _split(*_synthetic(config, classification), data.test_fraction, config.seed, classification)
    elif data.kind == "digits":
        ds = _split(*_digits(spec), data.test_fraction, config.seed, classification)
    else:
        parts = _npz(data.path, classification)
        ds = (
            Dataset(*parts, classification)
            if len(parts) == 4
            else _split(*parts, data.test_fraction, config.seed, classification)
        )
    ds = _check_shapes(ds, spec, data.path or data.kind)
    if ds.train_size < config.training.global_batch:
        raise UserError(
            f"the training set has {ds.train_size} samples, fewer than training.global_batch "
            f"{config.training.global_batch}"
        )
    return ds


def sample_order(train_size: int, global_batch: int, steps: int, seed: int) -> np.ndarray:
    """Indices of every step's global batch, shape (steps, global_batch).

    One permutation per epoch, drawn from the seed; the epochs are laid end to end and cut into
    consecutive global batches (a batch may straddle two epochs, so no sample is ever dropped)."""
    needed = steps * global_batch
    epochs = -(-needed // train_size)
    rng = np.random.default_rng([seed, 0x0DE5])
    stream = np.concatenate([rng.permutation(train_size) for _ in range(epochs)])
    return stream[:needed].reshape(steps, global_batch).astype(np.int64)


def replica_slice(global_batch: int, replica: int, replicas: int) -> slice:
    """Replica r of R takes the r-th contiguous block of each global batch (as nn.DataParallel's scatter
    and a DistributedSampler without shuffling would). Requires R to divide the global batch."""
    if global_batch % replicas:
        raise UserError(f"global batch {global_batch} is not divisible by {replicas} replicas")
    per = global_batch // replicas
    return slice(replica * per, (replica + 1) * per)
