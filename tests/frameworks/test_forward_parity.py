"""Issue 12, point 2: the same canonical weights give the same outputs in both frameworks, for every model kind,
on one forward pass, in inference and training mode (BatchNorm by batch statistics), and the BatchNorm moving
statistics that pass updates agree. Each framework runs in its own process (tests/helpers/forward_pass.py)."""

import subprocess
import sys

import numpy as np
import pytest

from tests.helpers.cli import ROOT
from tests.helpers.forward_pass import SPECS
from xfw.common.spec.models import blocks_of, parameter_shapes

TOLERANCE = 1e-6  # relative to the largest output: fp32 rounding of differently ordered sums


def _forward(framework: str, kind: str, tmp_path) -> dict[str, np.ndarray]:
    out = tmp_path / f"{framework}.npz"
    subprocess.run(
        [sys.executable, str(ROOT / "tests" / "helpers" / "forward_pass.py"), framework, kind, str(out)],
        check=True,
        capture_output=True,
        timeout=300,
    )
    with np.load(out) as arrays:
        return dict(arrays)


def _rel(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.abs(a - b).max() / np.abs(b).max())


@pytest.mark.parametrize("kind", sorted(SPECS))
def test_tf_and_torch_compute_the_same_forward_pass(kind, tmp_path):
    tf, torch = _forward("tf", kind, tmp_path), _forward("torch", kind, tmp_path)
    assert tf["inference"].shape == torch["inference"].shape
    assert _rel(tf["inference"], torch["inference"]) < TOLERANCE
    assert _rel(tf["training"], torch["training"]) < TOLERANCE
    bn_state = [name for name, _ in parameter_shapes(SPECS[kind]) if name.endswith(("moving_mean", "moving_variance"))]
    assert sorted(k.removeprefix("state:") for k in tf if k.startswith("state:")) == sorted(bn_state)
    for name in bn_state:
        a, b = tf[f"state:{name}"], torch[f"state:{name}"]
        if name.endswith("moving_variance"):
            # torch updates its running variance with the unbiased batch variance, Keras with the biased one
            # (common/spec/semantics.py): undo torch's n/(n-1) on the new statistic's share before comparing.
            decay = SPECS[kind].batchnorm.decay
            n = _normalised_count(kind, name)
            before = _before(kind, name)
            b = decay * before + (b - decay * before) * (n - 1) / n
        assert _rel(a, b) < TOLERANCE, name
    # BatchNorm in training mode normalises by the batch: a model with BatchNorm must give other outputs there
    if bn_state:
        assert _rel(tf["training"], tf["inference"]) > 1e-3


def _before(kind: str, name: str) -> np.ndarray:
    from tests.helpers.forward_pass import inputs_and_weights

    return inputs_and_weights(kind)[1][name]


def _normalised_count(kind: str, name: str) -> int:
    """Samples x height x width that the BatchNorm `name` normalises over in the forward pass (batch of 4)."""
    from xfw.common.spec.models import input_shape, shapes_through

    spec = SPECS[kind]
    blocks = blocks_of(spec)
    index = [b.name for b in blocks].index(name.split("/")[0])
    h, w, _ = shapes_through(blocks, input_shape(spec))[index + 1]  # every BN of a block runs at its output size
    return 4 * h * w
