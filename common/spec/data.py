"""Datasets, the global sample order, and the one rule that splits a global batch across replicas.

Every framework and every strategy reads its batches through `sample_order` and `replica_slice`, so a
single-device run and an N-replica run see the same samples at the same step, and the replicas' shards
put together are exactly the single-device batch.
"""

from __future__ import annotations

import dataclasses
import sys
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from xfw.common.errors import UserError
from xfw.common.spec.config import Config, ModelSpec
from xfw.common.spec.models import input_shape, model_kind, output_width


@dataclass(frozen=True)
class Dataset:
    x_train: np.ndarray  # float32, canonical channels-last layout; int64 token ids for a language model
    y_train: np.ndarray  # float32 targets (regression), int64 class ids, or (samples, seq_len) next tokens
    x_test: np.ndarray
    y_test: np.ndarray
    classification: bool
    # The lowest expected loss any model can reach on this data (nats per prediction), where the generator
    # knows it: a Markov chain's entropy rate. None where it is unknown.
    loss_floor: float | None = None

    @property
    def train_size(self) -> int:
        return len(self.x_train)


def _split(x: np.ndarray, y: np.ndarray, test_fraction: float, seed: int, classification: bool) -> Dataset:
    order = np.random.default_rng([seed, 0x5B117]).permutation(len(x))
    # test_fraction 0: no held-out split, and no evaluation (the workers' `evaluate` returns {}).
    n_test = max(1, int(round(len(x) * test_fraction))) if test_fraction > 0 else 0
    test, train = order[:n_test], order[n_test:]
    return Dataset(x[train], y[train], x[test], y[test], classification)


def _synthetic(config: Config, classification: bool) -> tuple[np.ndarray, np.ndarray]:
    spec = config.model
    n_in, n_out = input_shape(spec)[0], output_width(spec)
    rng = np.random.default_rng([config.seed, 0xDA7A])
    y: np.ndarray  # class ids (int64), or regression targets (float64)
    if classification:
        centers = rng.normal(0.0, 1.5, size=(n_out, n_in))
        y = rng.integers(0, n_out, size=config.data.samples)
        x = centers[y] + rng.normal(0.0, 1.0, size=(config.data.samples, n_in))
        return x.astype(np.float32), y.astype(np.int64)
    x = rng.normal(0.0, 1.0, size=(config.data.samples, n_in))
    w_true = rng.normal(0.0, 1.0 / np.sqrt(n_in), size=(n_in, n_out))
    y = np.tanh(x @ w_true) + config.data.noise * rng.normal(size=(config.data.samples, n_out))
    return x.astype(np.float32), y.astype(np.float32)


def _synthetic_images(config: Config) -> tuple[np.ndarray, np.ndarray]:
    """CIFAR-shaped images a model can learn, made from the seed: each class is a smooth pattern (three
    random 2-D waves per channel, unit variance); a sample is its class's pattern, shifted by up to 3
    pixels either way (wrapping round), scaled by 0.5..1.5, plus Gaussian noise of std data.noise. Shifts
    make a convolution's translation invariance pay; noise sets how hard it is."""
    h, w, c = input_shape(config.model)
    classes, n = output_width(config.model), config.data.samples
    rng = np.random.default_rng([config.seed, 0x1A6E])
    yy, xx = np.meshgrid(np.arange(h) / h, np.arange(w) / w, indexing="ij")
    patterns = np.zeros((classes, h, w, c))
    for k in range(classes):
        for ch in range(c):
            for _ in range(3):
                fy, fx = rng.integers(1, 4, size=2)
                phase = rng.uniform(0, 2 * np.pi)
                patterns[k, :, :, ch] += np.sin(2 * np.pi * (fy * yy + fx * xx) + phase)
    patterns = (patterns - patterns.mean(axis=(1, 2, 3), keepdims=True)) / patterns.std(axis=(1, 2, 3), keepdims=True)
    y = rng.integers(0, classes, size=n)
    shifts = rng.integers(-3, 4, size=(n, 2))
    scale = rng.uniform(0.5, 1.5, size=n)
    x = np.empty((n, h, w, c), dtype=np.float32)
    for i in range(n):
        x[i] = scale[i] * np.roll(patterns[y[i]], tuple(shifts[i]), axis=(0, 1))
    x += config.data.noise * rng.standard_normal(size=x.shape).astype(np.float32)
    return x, y.astype(np.int64)


@dataclass(frozen=True)
class MarkovChain:
    """A first-order Markov chain over the vocabulary: row i of `transitions` is the next token's
    distribution after token i. Rows are Dirichlet(0.1) draws (a few likely successors each), so there is
    structure to learn and a known floor: no model predicts the next token better than the chain itself."""

    transitions: np.ndarray  # (vocab, vocab), rows sum to 1
    stationary: np.ndarray  # (vocab,)

    @property
    def entropy_rate(self) -> float:
        """Nats per token: sum_i pi_i H(P_i), the expected next-token cross-entropy of the chain itself."""
        p = self.transitions
        row_entropy = -np.sum(np.where(p > 0, p * np.log(np.where(p > 0, p, 1.0)), 0.0), axis=1)
        return float(self.stationary @ row_entropy)


def markov_chain(vocab: int, seed: int) -> MarkovChain:
    rng = np.random.default_rng([seed, 0x7E47])
    transitions = rng.dirichlet(np.full(vocab, 0.1), size=vocab)
    # the stationary distribution: the left eigenvector of eigenvalue 1
    values, vectors = np.linalg.eig(transitions.T)
    pi = np.abs(np.real(vectors[:, np.argmin(np.abs(values - 1.0))]))
    return MarkovChain(transitions, pi / pi.sum())


def _markov_text(config: Config) -> tuple[np.ndarray, np.ndarray, float]:
    """`data.samples` sequences of seq_len + 1 tokens, each started from the stationary distribution (so
    every position's best loss is the entropy rate); x is a sequence's first seq_len tokens, y the next
    token at each position."""
    spec = config.model
    chain = markov_chain(output_width(spec), config.seed)
    rng = np.random.default_rng([config.seed, 0x7E48])
    n, length = config.data.samples, input_shape(spec)[0] + 1
    cumulative = np.cumsum(chain.transitions, axis=1)
    tokens = np.empty((n, length), dtype=np.int64)
    tokens[:, 0] = rng.choice(len(chain.stationary), size=n, p=chain.stationary)
    for t in range(1, length):
        draws = rng.uniform(size=n)
        nxt = (cumulative[tokens[:, t - 1]] < draws[:, None]).sum(axis=1)
        tokens[:, t] = np.minimum(nxt, len(chain.stationary) - 1)  # a draw above the row's rounded total
    return tokens[:, :-1], tokens[:, 1:], chain.entropy_rate


# The digits images, (n, 8, 8), in each model kind's input layout (common.models.ModelKind.input_layout).
_DIGITS_LAYOUTS = {"flat": lambda x: x.reshape(len(x), 64), "image": lambda x: x[..., None]}


def _digits(spec: ModelSpec) -> tuple[np.ndarray, np.ndarray]:
    from sklearn.datasets import load_digits  # ships inside scikit-learn: no download

    digits = load_digits()
    x = (digits.images / 16.0).astype(np.float32)  # (n, 8, 8) in [0, 1]
    x = _DIGITS_LAYOUTS[model_kind(spec).input_layout](x)
    return x, digits.target.astype(np.int64)


# Conversions already announced in this process: the parent loads a dataset several times (preflight, each
# network), and the user is told once.
_ANNOUNCED: set[str] = set()


def _notice(message: str) -> None:
    if message not in _ANNOUNCED:
        _ANNOUNCED.add(message)
        print(f"xfw: note: {message}", file=sys.stderr)


def _npz_arrays(file: Path, path: str) -> dict[str, np.ndarray]:
    """The arrays xfw uses from the file, by name: x, y or x_train, y_train[, x_test, y_test]."""
    try:
        with np.load(file) as arrays:
            names = set(arrays.files)
            if {"x_train", "y_train"} <= names:
                wanted = ["x_train", "y_train"]
                if len(names & {"x_test", "y_test"}) == 1:
                    given, missing = sorted(names & {"x_test", "y_test"})[0], sorted({"x_test", "y_test"} - names)[0]
                    raise UserError(f"data.path {path}: has {given} but no {missing} (give both, or neither)")
                wanted += ["x_test", "y_test"] if {"x_test", "y_test"} <= names else []
            elif {"x", "y"} <= names:
                wanted = ["x", "y"]
            else:
                raise UserError(
                    f"data.path {path}: expected arrays x and y (or x_train and y_train), found {sorted(names)}"
                )
            return {name: arrays[name] for name in wanted}
    except (OSError, ValueError, EOFError) as exc:  # ValueError: not a zip, or an object array (no pickles)
        raise UserError(f"data.path {path}: not a readable .npz file ({exc})") from None


def _convert(name: str, arr: np.ndarray, label: bool, path: str, notes: list[str]) -> np.ndarray:
    """`arr` as the dtype training uses (float32 samples and targets, int64 class ids), refusing what cannot
    be converted without changing its meaning; conversions that may round are listed in `notes`."""
    if arr.ndim == 0 or arr.dtype.kind not in "biuf":
        what = "a scalar" if arr.ndim == 0 else f"dtype {arr.dtype}"
        raise UserError(f"data.path {path}: {name} is {what}; expected an array of numbers, one row per sample")
    if label:  # class ids
        if arr.dtype.kind == "f":
            whole = np.isfinite(arr) & (arr == np.round(arr))
            if not whole.all():
                bad = int(np.argmin(whole))
                raise UserError(
                    f"data.path {path}: {name} must hold integer class ids, but sample {bad} is "
                    f"{arr.flat[bad].item()!r}"
                )
            notes.append(f"{name} {arr.dtype} -> int64 class ids")
        elif arr.dtype.kind == "b":
            raise UserError(f"data.path {path}: {name} is boolean; expected integer class ids 0..outputs-1")
        return arr.astype(np.int64)
    if arr.dtype != np.float32:
        notes.append(f"{name} {arr.dtype} -> float32")
    with np.errstate(over="ignore"):  # a float64 beyond float32's range becomes inf: refused below, named
        out = arr.astype(np.float32)
    finite = np.isfinite(out)
    if not finite.all():
        rows = np.flatnonzero(~finite.reshape(len(out), -1).all(axis=1)) if out.ndim > 1 else np.flatnonzero(~finite)
        rounded = " after conversion to float32" if np.isfinite(arr).all() else ""
        raise UserError(
            f"data.path {path}: {name} has {int((~finite).sum())} non-finite value(s) (NaN or inf){rounded}, "
            f"first in sample {int(rows[0])}"
        )
    return out


def _npz(path: str, classification: bool, tokens: bool = False) -> tuple[np.ndarray, ...]:
    """`tokens`: x holds token ids too (a language model), read as integers like the labels."""
    file = Path(path)
    if not file.is_file():
        raise UserError(f"data.path: no such file {path}")
    arrays = _npz_arrays(file, path)
    names = list(arrays)
    for x_name, y_name in zip(names[::2], names[1::2]):
        x, y = arrays[x_name], arrays[y_name]
        if x.ndim and y.ndim and len(x) != len(y):
            raise UserError(
                f"data.path {path}: {x_name} has {len(x)} samples but {y_name} has {len(y)} (one label per sample)"
            )
    notes: list[str] = []
    out = tuple(
        _convert(n, arrays[n], (i % 2 == 1 and classification) or tokens, path, notes) for i, n in enumerate(names)
    )
    if notes:
        _notice(f"data.path {path}: converted {', '.join(notes)}")
    return out


def _check_shapes(ds: Dataset, spec: ModelSpec, source: str, given_labels: bool) -> Dataset:
    """`given_labels`: the labels come from the user's file (generated sets have one class per output)."""
    want, kind = input_shape(spec), model_kind(spec)
    x_train, x_test = ds.x_train, ds.x_test
    if kind.input_layout == "image" and x_train.ndim == 3:  # (n, h, w) grayscale: add the channel axis
        x_train, x_test = x_train[..., None], x_test[..., None]
    got = tuple(x_train.shape[1:])
    if got != want or tuple(x_test.shape[1:]) != want:
        got = got if got != want else tuple(x_test.shape[1:])
        hint = (
            " (channels first? images are (samples, height, width, channels))"
            if len(want) == 3 and got == (want[2], *want[:2])
            else ""
        )
        raise UserError(f"{kind.input_key} expects samples of shape {want}, but {source} has {got}{hint}")
    n_out = output_width(spec)
    y_train, y_test = ds.y_train, ds.y_test
    if kind.input_layout == "tokens":
        return _check_tokens(ds, spec, source)
    if ds.classification:
        if y_train.ndim != 1 or y_test.ndim != 1:
            raise UserError(f"{source}: classification labels must be a 1-D array of class ids (not one-hot)")
        labels = np.concatenate([y_train, y_test])
        low, top = int(labels.min()), int(labels.max())
        if top >= n_out or low < 0:
            raise UserError(
                f"{source} has class ids {low}..{top}, but the model has {n_out} outputs (ids 0..{n_out - 1})"
            )
        if given_labels and top + 1 < n_out:
            raise UserError(
                f"{source} has class ids 0..{top} ({top + 1} classes), but the model has {n_out} outputs: "
                f"make its output width {top + 1}"
            )
    else:
        if n_out == 1:  # one target per sample may come as a flat vector
            y_train, y_test = (y.reshape(len(y), 1) if y.ndim == 1 else y for y in (y_train, y_test))
        if y_train.shape[1:] != (n_out,) or y_test.shape[1:] != (n_out,):
            shape = y_train.shape[1:] if y_train.shape[1:] != (n_out,) else y_test.shape[1:]
            raise UserError(f"{source} targets have shape {shape}, but the model has {n_out} outputs")
    return Dataset(x_train, y_train, x_test, y_test, ds.classification, ds.loss_floor)


def _check_tokens(ds: Dataset, spec: ModelSpec, source: str) -> Dataset:
    """Token ids in x and next-token ids in y, both (samples, seq_len), every id below the vocabulary."""
    vocab = output_width(spec)
    for name, arr in (("x", ds.x_train), ("y", ds.y_train), ("x_test", ds.x_test), ("y_test", ds.y_test)):
        if arr.dtype.kind not in "iu" and not (arr.dtype.kind == "f" and np.all(arr == np.round(arr))):
            raise UserError(f"{source}: {name} must hold integer token ids")
        if arr.shape[1:] != ds.x_train.shape[1:]:
            raise UserError(f"{source}: {name} has shape {arr.shape[1:]} per sample; x and y must match")
        if arr.size and (arr.min() < 0 or arr.max() >= vocab):
            raise UserError(
                f"{source} has token ids {int(arr.min())}..{int(arr.max())}, but model.vocab is {vocab} "
                f"(ids 0..{vocab - 1})"
            )
    x_train, y_train, x_test, y_test = (a.astype(np.int64) for a in (ds.x_train, ds.y_train, ds.x_test, ds.y_test))
    return Dataset(x_train, y_train, x_test, y_test, ds.classification, ds.loss_floor)


def load_dataset(config: Config) -> Dataset:
    data, spec = config.data, config.model
    classification = config.loss == "cross_entropy"
    if data.kind in ("synthetic_regression", "synthetic_classification"):
        ds = _split(*_synthetic(config, classification), data.test_fraction, config.seed, classification)
    elif data.kind == "digits":
        ds = _split(*_digits(spec), data.test_fraction, config.seed, classification)
    elif data.kind == "synthetic_images":
        ds = _split(*_synthetic_images(config), data.test_fraction, config.seed, classification)
    elif data.kind == "markov_text":
        x, y, floor = _markov_text(config)
        ds = dataclasses.replace(_split(x, y, data.test_fraction, config.seed, classification), loss_floor=floor)
    else:
        assert data.path is not None  # DataConfig._check_path: kind npz requires data.path
        parts = _npz(data.path, classification, tokens=model_kind(spec).input_layout == "tokens")
        ds = (
            Dataset(*parts, classification)
            if len(parts) == 4
            else _split(parts[0], parts[1], data.test_fraction, config.seed, classification)  # x and y
        )
    ds = _check_shapes(ds, spec, data.path or data.kind, given_labels=data.kind == "npz")
    if ds.train_size < config.training.global_batch:
        raise UserError(
            f"the training set has {ds.train_size} samples, fewer than training.global_batch "
            f"{config.training.global_batch}"
        )
    return ds


def loss_floor(config: Config) -> float | None:
    """Dataset.loss_floor without generating the data: the Markov chain's entropy rate for markov_text."""
    if config.data.kind == "markov_text":
        return markov_chain(output_width(config.model), config.seed).entropy_rate
    return None


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


class DeliveredBatches:
    """The step inputs as the training loop takes them, keeping each one's sample indices (`indices(batch)`) as it
    goes by: what reached the steps, read back from the batches themselves (for Fed). Wraps a list of
    precomputed index tensors (data.pipeline preloaded) or a framework's input pipeline (native)."""

    def __init__(self, batches: Iterable, indices: Callable[[Any], Any]):
        self.batches, self.indices_of = batches, indices
        self.indices: list = []

    def __iter__(self) -> Iterator:
        for batch in self.batches:
            self.indices.append(self.indices_of(batch))
            yield batch


def steps_per_epoch(train_size: int, global_batch: int) -> int:
    """The steps of one pass over the training set (the last one may reach into the next epoch's order)."""
    return -(-train_size // global_batch)


@dataclass(frozen=True)
class Fed:
    """The sample indices one replica (or one network) was fed, read back from its step inputs after training:
    `rows` has one row per step. What the result records of it is its size and `samples_checksum`."""

    replica: int
    device: str  # where the replica's inputs were placed (as the framework reports the tensor's device)
    rows: np.ndarray  # (steps, samples per step) int64


_MASK64 = (1 << 64) - 1


def _mix64(keys: np.ndarray) -> np.ndarray:
    """splitmix64's finaliser on uint64 keys (wrapping arithmetic): neighbouring keys get unrelated values."""
    z = keys.astype(np.uint64)
    with np.errstate(over="ignore"):
        z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        return z ^ (z >> np.uint64(31))


def samples_checksum(rows: np.ndarray) -> str:
    """Which (step, sample) pairs `rows` holds, as 16 hex digits: the sum mod 2^64 of a 64-bit mix of each pair.
    Order-free and additive: the checksums of the replicas' blocks add up to the global batches' exactly when
    the blocks together hold each (step, sample) of the global batches as often as they do."""
    steps = np.arange(rows.shape[0], dtype=np.uint64)[:, None]
    keys = (steps << np.uint64(32)) | rows.astype(np.uint64)
    with np.errstate(over="ignore"):
        total = int(_mix64(keys).sum(dtype=np.uint64))
    return f"{total & _MASK64:016x}"


def combined_checksum(checksums: list[str]) -> str:
    """The checksum of several replicas' samples together (samples_checksum adds up mod 2^64)."""
    return f"{sum(int(c, 16) for c in checksums) & _MASK64:016x}"


def work_record(fed: Fed, process: int) -> dict:
    """result.json's record of what one replica trained on (common.records.ReplicaWork)."""
    steps, per_step = fed.rows.shape
    return {
        "replica": fed.replica,
        "process": process,
        "device": fed.device,
        "steps": steps,
        "samples_per_step": per_step,
        "checksum": samples_checksum(fed.rows),
    }
