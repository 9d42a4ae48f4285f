"""Issue 12: bad ResNet and Transformer input, and token files that do not fit the model, refused in one line before
any worker starts. The models trained through the real CLI: tests/frameworks/test_realistic.py."""

import numpy as np
import pytest

from tests.helpers.cli import assert_one_line_error, xfw_in_process
from xfw.common.spec.config import load_config


def _sets(overrides: list[str]) -> list[str]:
    return [a for o in overrides for a in ("--set", o)]


@pytest.mark.parametrize(
    "overrides, message",
    [
        (["model.depth=9"], "model.depth: must be 6n+2 (8, 14, 20, 32, 44, 56, 110, ...), got 9"),
        (["model.widths=[16,32]"], "model.widths"),
        (["model.input_shape=[3,3,3]"], "too small for two stride-2 stages"),
        (["model_parallel.split_points=[pool]"], "'pool' is not a block boundary"),
        (["model_parallel.split_points=[stage1_block0/conv1]"], "no layer 'stage1_block0/conv1' to split at"),
    ],
)
def test_bad_resnet_input_is_one_line(overrides, message):
    args = ["compare", "--strategy", "pipeline", "--config", "configs/resnet.yaml", *_sets(overrides)]
    assert_one_line_error(xfw_in_process(*args), message)


@pytest.mark.parametrize(
    "overrides, message",
    [
        (["model.heads=5"], "model: Value error, heads 5 does not divide width 64"),
        (["model.vocab=1"], "model.vocab"),
        (["model_parallel.stages=9"], "more than the"),
    ],
)
def test_bad_transformer_input_is_one_line(overrides, message):
    args = ["compare", "--strategy", "pipeline", "--config", "configs/transformer.yaml", *_sets(overrides)]
    assert_one_line_error(xfw_in_process(*args), message.replace("model: Value error, ", "model: "))


def test_token_files_that_do_not_fit_the_model_are_refused(tmp_path):
    rng = np.random.default_rng(0)
    longer = tmp_path / "longer.npz"
    np.savez(longer, x=rng.integers(0, 64, size=(64, 40)), y=rng.integers(0, 64, size=(64, 40)))
    wide = tmp_path / "wide.npz"
    np.savez(wide, x=rng.integers(0, 100, size=(64, 32)), y=rng.integers(0, 100, size=(64, 32)))
    base = ["compare", "--strategy", "single", "--config", "configs/transformer.yaml", "--set", "data.kind=npz"]
    # a sequence longer than the position table
    proc = xfw_in_process(*base, "--set", f"data.path={longer}")
    assert_one_line_error(proc, "model.seq_len expects samples of shape (32,)")
    # token ids beyond the vocabulary
    proc = xfw_in_process(*base, "--set", f"data.path={wide}")
    assert_one_line_error(proc, "token ids 0..99, but model.vocab is 64")
    load_config("configs/transformer.yaml")  # the shipped config itself is valid
