"""Sample order, the batch-splitting rule, datasets (shaped for each model kind) and the weight layout conversions
(numpy only)."""

import numpy as np
import pytest

from xfw.common.config import load_config
from xfw.common.data import load_dataset, replica_slice, sample_order
from xfw.common.errors import UserError
from xfw.common.models import layers_of, parameter_count
from xfw.common.weights import (
    conv_kernel_from_torch,
    conv_kernel_to_torch,
    dense_kernel_from_torch,
    dense_kernel_to_torch,
    initial_weights,
)


def test_sample_order_is_one_permutation_per_epoch_and_deterministic():
    order = sample_order(100, 32, 10, seed=3)
    assert order.shape == (10, 32)
    stream = order.ravel()
    for epoch in range(3):
        assert sorted(stream[epoch * 100 : (epoch + 1) * 100]) == list(range(100))
    assert (order == sample_order(100, 32, 10, seed=3)).all()
    assert not (order == sample_order(100, 32, 10, seed=4)).all()


def test_replica_blocks_tile_the_global_batch():
    batch = np.arange(32)
    blocks = [batch[replica_slice(32, r, 4)] for r in range(4)]
    assert np.concatenate(blocks).tolist() == batch.tolist()
    with pytest.raises(UserError, match="not divisible"):
        replica_slice(32, 0, 3)


def test_initial_weights_are_seeded_and_glorot_bounded():
    cfg = load_config()
    a, b = initial_weights(cfg.model, 0), initial_weights(cfg.model, 0)
    assert all((a[k] == b[k]).all() for k in a)
    assert sum(v.size for v in a.values()) == parameter_count(cfg.model) == 10 * 50 + 50 + 50 * 10 + 10
    assert np.abs(a["dense0/kernel"]).max() <= np.sqrt(6 / 60)
    assert not (a["dense0/kernel"] == initial_weights(cfg.model, 1)["dense0/kernel"]).all()


def test_dense_after_flatten_sees_the_same_features_in_both_layouts():
    rng = np.random.default_rng(0)
    h, w, c, out = 2, 3, 4, 5
    image_nhwc = rng.normal(size=(h, w, c))
    kernel = rng.normal(size=(h * w * c, out))
    keras_out = image_nhwc.reshape(-1) @ kernel  # Keras: flatten (h, w, c), kernel (in, out)
    torch_w = dense_kernel_to_torch(kernel, (h, w, c))
    torch_out = torch_w @ image_nhwc.transpose(2, 0, 1).reshape(-1)  # torch: flatten (c, h, w), weight (out, in)
    assert np.allclose(keras_out, torch_out)
    assert (dense_kernel_from_torch(torch_w, (h, w, c)) == kernel).all()


def test_conv_kernel_round_trip():
    k = np.random.default_rng(1).normal(size=(3, 3, 2, 4))
    assert conv_kernel_to_torch(k).shape == (4, 2, 3, 3)
    assert (conv_kernel_from_torch(conv_kernel_to_torch(k)) == k).all()


def test_cnn_layers_and_digits_dataset():
    cfg = load_config("configs/cnn_digits.yaml")
    dense = [b for b in layers_of(cfg.model) if type(b).__name__ == "Dense"]
    assert dense[0].flattened_from == (2, 2, 16) and dense[0].units_in == 64
    ds = load_dataset(cfg)
    assert ds.x_train.shape[1:] == (8, 8, 1) and ds.classification
    assert len(ds.x_train) + len(ds.x_test) == 1797


def test_npz_dataset_and_its_errors(tmp_path):
    rng = np.random.default_rng(0)
    path = tmp_path / "d.npz"
    np.savez(path, x=rng.normal(size=(200, 10)), y=rng.normal(size=(200, 10)))
    ds = load_dataset(load_config(None, ["data.kind=npz", f"data.path={path}"]))
    assert len(ds.x_train) + len(ds.x_test) == 200
    np.savez(path, x=rng.normal(size=(200, 7)), y=rng.normal(size=(200, 10)))
    with pytest.raises(UserError, match=r"model.layers\[0\] expects samples of shape \(10,\)"):
        load_dataset(load_config(None, ["data.kind=npz", f"data.path={path}"]))
    with pytest.raises(UserError, match="no such file"):
        load_dataset(load_config(None, ["data.kind=npz", f"data.path={tmp_path / 'missing.npz'}"]))


def test_samples_take_the_model_kinds_input_layout(tmp_path):
    # digits: flat vectors for the mlp, (h, w, 1) images for the cnn; a 3-D npz set gets the channel axis
    mlp = load_dataset(load_config(None, ["data.kind=digits", "loss=cross_entropy", "model.layers=[64, 10]"]))
    assert mlp.x_train.shape[1:] == (64,)
    path = tmp_path / "gray.npz"
    rng = np.random.default_rng(0)
    np.savez(path, x=rng.normal(size=(100, 8, 8)), y=rng.integers(0, 10, size=100))
    cnn = load_dataset(load_config("configs/cnn_digits.yaml", ["data.kind=npz", f"data.path={path}"]))
    assert cnn.x_train.shape[1:] == (8, 8, 1)
    rgb = load_config("configs/cnn_digits.yaml", ["data.kind=npz", f"data.path={path}", "model.input_shape=[8, 8, 3]"])
    with pytest.raises(
        UserError, match=r"model.input_shape expects samples of shape \(8, 8, 3\), but .* has \(8, 8, 1\)"
    ):
        load_dataset(rgb)
