"""Config validation and overrides (no framework involved)."""

import pytest

from xfw.common.errors import UserError
from xfw.common.spec.config import CNNSpec, MLPSpec, SGDConfig, load_config


def write(tmp_path, text):
    path = tmp_path / "c.yaml"
    path.write_text(text)
    return path


def test_default_config_is_the_seeds_network():
    cfg = load_config()
    assert cfg.model == MLPSpec(layers=[10, 50, 10], activation="relu")
    assert cfg.loss == "mse" and cfg.data.kind == "synthetic_regression"
    assert isinstance(cfg.optimizer, SGDConfig) and cfg.optimizer.momentum > 0
    assert (cfg.training.global_batch, cfg.training.steps, cfg.parallel.replicas) == (32, 300, 2)


def test_overrides_are_parsed_as_yaml():
    cfg = load_config(None, ["training.steps=120", "optimizer.nesterov=true", "model.layers=[10, 10]"])
    assert cfg.training.steps == 120 and cfg.optimizer.nesterov is True and cfg.model.layers == [10, 10]


@pytest.mark.parametrize(
    "text, message",
    [
        ("training:\n  stepz: 3\n", "unknown config key 'training.stepz'"),
        ("optimizer:\n  kind: sgd\n  lrr: 0.1\n", "unknown config key 'optimizer.lrr'"),
        ("model:\n  kind: vit\n", "model.kind: unknown value 'vit'"),
        ("data:\n  kind: imagenet\n", "data.kind"),
        ("training:\n  global_batch: 30\nparallel:\n  replicas: 4\n", "not divisible"),
        ("model:\n  kind: cnn\n", "model cnn needs image data"),
        ("data:\n  kind: npz\n", "data.path is required"),
        ("training: [1, 2\n", "malformed YAML"),
        ("- a\n- b\n", "must be a mapping"),
    ],
)
def test_bad_configs_name_the_problem(tmp_path, text, message):
    with pytest.raises(UserError, match=message.replace("[", r"\[").replace("(", r"\(")):
        load_config(write(tmp_path, text))


def test_missing_config_file(tmp_path):
    with pytest.raises(UserError, match="cannot read config"):
        load_config(tmp_path / "nope.yaml")


def test_bad_override_syntax():
    with pytest.raises(UserError, match="key=value"):
        load_config(None, ["training.steps"])


def test_cnn_spec_rejects_even_kernels_and_too_many_pools():
    with pytest.raises(ValueError, match="odd"):
        CNNSpec(kernel_size=2)
    with pytest.raises(ValueError, match="too small"):
        CNNSpec(input_shape=(4, 4, 1), conv_channels=[4, 4, 4])
