""".npz files checked before any worker starts (load_dataset, numpy only) and data.test_fraction 0."""

import numpy as np
import pytest

from xfw.common.errors import UserError
from xfw.common.spec.config import load_config
from xfw.common.spec.data import load_dataset

RNG = np.random.default_rng(0)


def npz_config(path, *extra, classes: int | None = None):
    sets = ["data.kind=npz", f"data.path={path}"]
    if classes is not None:  # classification: cross-entropy, `classes` outputs
        sets += ["loss=cross_entropy", f"model.layers=[10, {classes}]"]
    return load_config(None, [*sets, *extra])


def save(tmp_path, **arrays):
    path = tmp_path / "d.npz"
    np.savez(path, **arrays)
    return path


def x(n, dtype=np.float32):
    return RNG.normal(size=(n, 10)).astype(dtype)


def ids(n, classes=3):
    return np.arange(n) % classes  # every class present


@pytest.mark.parametrize(
    "arrays, classes, message",
    [
        ({"x": x(100), "y": ids(90)}, 3, "x has 100 samples but y has 90"),
        ({"x": x(90), "y": ids(100)}, 3, "x has 90 samples but y has 100"),
        ({"x_train": x(100), "y_train": ids(99)}, 3, "x_train has 100 samples but y_train has 99"),
        (
            {"x_train": x(100), "y_train": ids(100), "x_test": x(20), "y_test": ids(21)},
            3,
            "x_test has 20 samples but y_test has 21",
        ),
        ({"x_train": x(100), "y_train": ids(100), "x_test": x(20)}, 3, "has x_test but no y_test"),
        (
            {"x": np.where(np.arange(1000).reshape(100, 10) == 417, np.nan, x(100)), "y": ids(100)},
            3,
            "first in sample 41",
        ),
        ({"x": x(100), "y": x(100) * np.inf}, None, "y has 1000 non-finite value(s)"),
        ({"x": x(100, np.float64) * 1e39, "y": ids(100)}, 3, "after conversion to float32"),
        ({"x": x(100), "y": ids(100) + 0.5}, 3, "must hold integer class ids, but sample 0 is 0.5"),
        ({"x": x(100), "y": ids(100) % 2 == 0}, 3, "y is boolean"),
        ({"x": x(100), "y": ids(100, 3)}, 5, "class ids 0..2 (3 classes), but the model has 5 outputs"),
        ({"x": x(100), "y": ids(100, 7)}, 5, "class ids 0..6, but the model has 5 outputs"),
        ({"x": x(100), "y": ids(100) - 1}, 3, "class ids -1..1"),
        ({"x": x(100), "y": np.eye(3)[ids(100)]}, 3, "1-D array of class ids (not one-hot)"),
        ({"x": np.array(["a"] * 100), "y": ids(100)}, 3, "x is dtype <U1"),
        ({"x": x(100), "y": x(100)[:, :4]}, None, "targets have shape (4,), but the model has 10 outputs"),
        ({"images": x(100), "labels": ids(100)}, 3, "expected arrays x and y"),
    ],
)
def test_malformed_npz_is_refused_in_one_line(tmp_path, arrays, classes, message):
    with pytest.raises(UserError) as err:
        load_dataset(npz_config(save(tmp_path, **arrays), classes=classes))
    assert message in str(err.value) and "\n" not in str(err.value)


def test_not_an_npz_file(tmp_path):
    path = tmp_path / "d.npz"
    path.write_text("not a zip")
    with pytest.raises(UserError, match="not a readable .npz file"):
        load_dataset(npz_config(path))


def test_conversions_are_announced_once(tmp_path, capsys):
    path = save(tmp_path, x=x(100, np.float64), y=ids(100).astype(np.float64))
    cfg = npz_config(path, classes=3)
    ds = load_dataset(cfg)
    load_dataset(cfg)
    assert ds.x_train.dtype == np.float32 and ds.y_train.dtype == np.int64
    lines = capsys.readouterr().err.splitlines()
    assert lines == [f"xfw: note: data.path {path}: converted x float64 -> float32, y float64 -> int64 class ids"]


def test_well_formed_npz_needs_no_notice(tmp_path, capsys):
    path = save(tmp_path, x_train=x(100), y_train=ids(100), x_test=x(30), y_test=ids(30).astype(np.int32))
    ds = load_dataset(npz_config(path, classes=3))
    assert (len(ds.x_train), len(ds.x_test)) == (100, 30) and capsys.readouterr().err == ""


def test_channels_first_images_get_a_hint(tmp_path):
    path = save(tmp_path, x=RNG.normal(size=(100, 1, 8, 8)).astype(np.float32), y=ids(100, 10))
    with pytest.raises(UserError, match=r"has \(1, 8, 8\) \(channels first\?"):
        load_dataset(load_config("configs/cnn_digits.yaml", ["data.kind=npz", f"data.path={path}"]))


def test_one_target_per_sample_may_be_a_flat_vector(tmp_path):
    path = save(tmp_path, x=x(100), y=RNG.normal(size=100).astype(np.float32))
    ds = load_dataset(npz_config(path, "model.layers=[10, 1]"))
    assert ds.y_train.shape[1:] == (1,)


def test_test_fraction_zero_trains_on_everything():
    ds = load_dataset(load_config(None, ["data.test_fraction=0", "data.samples=200"]))
    assert (len(ds.x_train), len(ds.x_test)) == (200, 0)
    with pytest.raises(UserError, match="data.test_fraction"):
        load_config(None, ["data.test_fraction=-0.1"])


def test_test_fraction_zero_refuses_the_independent_ensemble():
    from xfw.common.worker.networks import check_networks

    cfg = load_config("configs/independent.yaml", ["data.test_fraction=0"])
    with pytest.raises(UserError, match="ensemble on held-out samples, and data.test_fraction 0 leaves none"):
        check_networks(cfg, "independent")
    check_networks(cfg, "shared-device")  # no ensemble: nothing needs the held-out split
