"""Sample order, the batch-splitting rule, datasets (shaped for each model kind) and the weight layout conversions
(numpy only)."""

import numpy as np
import pytest

from xfw.common.errors import UserError
from xfw.common.spec.config import load_config
from xfw.common.spec.data import load_dataset, replica_slice, sample_order
from xfw.common.spec.models import layers_of, parameter_count
from xfw.common.spec.weights import (
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


def test_attention_projections_pack_and_unpack_exactly():
    from xfw.common.spec.weights import (
        attention_in_bias_from_torch,
        attention_in_bias_to_torch,
        attention_in_projection_from_torch,
        attention_in_projection_to_torch,
        attention_out_kernel_from_torch,
        attention_out_kernel_to_torch,
    )

    rng = np.random.default_rng(0)
    e, heads = 12, 3
    q, k, v = (rng.standard_normal((e, heads, e // heads)) for _ in range(3))
    packed = attention_in_projection_to_torch(q, k, v)
    assert packed.shape == (3 * e, e)
    x = rng.standard_normal(e)
    # torch computes in_proj_weight @ x; Keras einsum("e,ehd->hd") per projection: the same numbers, in order
    assert np.allclose(packed @ x, np.concatenate([np.einsum("e,ehd->hd", x, w).ravel() for w in (q, k, v)]))
    assert all(np.array_equal(a, b) for a, b in zip(attention_in_projection_from_torch(packed, heads), (q, k, v)))
    biases = [rng.standard_normal((heads, e // heads)) for _ in range(3)]
    back = attention_in_bias_from_torch(attention_in_bias_to_torch(*biases), heads)
    assert all(np.array_equal(a, b) for a, b in zip(back, biases))
    out = rng.standard_normal((heads, e // heads, e))
    h = rng.standard_normal((heads, e // heads))
    assert np.allclose(attention_out_kernel_to_torch(out) @ h.ravel(), np.einsum("hd,hde->e", h, out))
    assert np.array_equal(attention_out_kernel_from_torch(attention_out_kernel_to_torch(out), heads), out)


def test_normalisation_and_embedding_weights_start_where_both_frameworks_start_them():
    cfg = load_config("configs/resnet.yaml")
    w = initial_weights(cfg.model, 0)
    assert (w["stem/bn/gamma"] == 1).all() and (w["stem/bn/moving_variance"] == 1).all()
    assert (w["stem/bn/beta"] == 0).all() and (w["stem/bn/moving_mean"] == 0).all()
    t = initial_weights(load_config("configs/transformer.yaml").model, 0)
    assert abs(float(t["embed/token/embeddings"].std()) - 0.02) < 0.002
    # attention kernels: Glorot over (E, heads x head_dim), not over the last two axes
    limit = np.sqrt(6.0 / (64 + 64))
    assert np.abs(t["block0/attention/query/kernel"]).max() <= limit
    assert np.abs(t["block0/attention/query/kernel"]).max() > 0.9 * limit
    # adding kinds changed no existing kind's weights: the MLP's kernels are still the same draws, in order
    mlp = initial_weights(load_config().model, 0)
    rng = np.random.default_rng([0, 0x5EED])
    for name, (fan_in, fan_out) in (("dense0/kernel", (10, 50)), ("dense1/kernel", (50, 10))):
        limit = np.sqrt(6.0 / (fan_in + fan_out))
        assert np.array_equal(mlp[name], rng.uniform(-limit, limit, size=(fan_in, fan_out)).astype(np.float32))


def test_markov_text_loss_floor_is_the_chains_entropy_rate():
    from xfw.common.spec.data import markov_chain

    cfg = load_config("configs/transformer.yaml", ["data.samples=4000"])
    ds = load_dataset(cfg)
    assert ds.x_train.dtype == np.int64 and ds.x_train.shape[1:] == (32,) and ds.y_train.shape == ds.x_train.shape
    assert (ds.x_train[:, 1:] == ds.y_train[:, :-1]).all()  # y is x shifted by one token
    chain = markov_chain(64, cfg.seed)
    assert np.allclose(chain.transitions.sum(axis=1), 1) and np.allclose(
        chain.stationary @ chain.transitions, chain.stationary
    )
    # the chain's own cross-entropy on the generated text is its entropy rate (law of large numbers)
    empirical = -np.log(chain.transitions[ds.x_train, ds.y_train]).mean()
    assert ds.loss_floor == pytest.approx(chain.entropy_rate)
    assert empirical == pytest.approx(ds.loss_floor, rel=0.02)
    assert ds.loss_floor < 0.7 * np.log(64)  # structure to learn: well below a uniform guess


def test_synthetic_images_are_learnable_and_shaped_like_cifar():
    cfg = load_config("configs/resnet.yaml")
    ds = load_dataset(cfg)
    assert ds.x_train.shape[1:] == (32, 32, 3) and ds.x_train.dtype == np.float32
    assert set(np.unique(ds.y_train)) == set(range(10))
    # a nearest-class-mean classifier (no shifts handled) already beats chance by far: there is signal
    means = np.stack([ds.x_train[ds.y_train == k].mean(axis=0) for k in range(10)])
    distances = ((ds.x_test[:, None] - means[None]) ** 2).sum(axis=(2, 3, 4))
    assert (distances.argmin(axis=1) == ds.y_test).mean() > 0.3
    # ...and not perfectly: the noise and the shifts leave something for a convolutional network to do
    assert (distances.argmin(axis=1) == ds.y_test).mean() < 0.99
