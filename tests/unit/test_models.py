"""Model kinds and blocks (pure Python, no framework): every registered kind is complete, the MLP's and the
CNN's parameters and FLOPs match counts done by hand, and both frameworks build every block type (read from
their source with `ast`, so neither framework is imported)."""

import ast
import typing
from pathlib import Path

import pytest

from xfw.common.errors import UserError
from xfw.common.spec.config import CNNSpec, Config, DataConfig, MLPSpec, build_config
from xfw.common.spec.models import (
    MODEL_KINDS,
    Block,
    Conv,
    Dense,
    Flatten,
    MaxPool,
    blocks_of,
    forward_flops_per_sample,
    input_shape,
    model_kind,
    output_width,
    parameter_count,
    parameter_shapes,
    shapes_through,
    training_flops_per_sample,
)

ROOT = Path(__file__).resolve().parents[2]  # tests/unit/test_models.py -> the checkout
DATA_KINDS = typing.get_args(DataConfig.model_fields["kind"].annotation)


def _spec_kinds() -> set[str]:
    """The `kind` tags of the config's ModelSpec union."""
    union = typing.get_args(Config.model_fields["model"].annotation)
    return {typing.get_args(spec.model_fields["kind"].annotation)[0] for spec in union}


def test_the_registry_and_the_config_union_name_the_same_kinds():
    assert set(MODEL_KINDS) == _spec_kinds()
    for name, kind in MODEL_KINDS.items():
        assert kind.name == name and kind.spec().kind == name


@pytest.mark.parametrize("name", sorted(MODEL_KINDS))
def test_every_kind_is_complete(name):
    kind = MODEL_KINDS[name]
    spec = kind.spec()
    blocks = blocks_of(spec)
    assert model_kind(spec) is kind and blocks and all(isinstance(b, Block) for b in blocks)
    assert len({b.name for b in blocks}) == len(blocks)
    shapes = shapes_through(blocks, input_shape(spec))
    # one row of outputs per sample, or per position of a sequence
    assert shapes[-1][-1] == output_width(spec) and len(shapes[-1]) in (1, 2)
    params = parameter_shapes(spec)
    assert params and all(n > 0 for _, shape in params for n in shape)
    assert [n for n, _ in params] == [n for b in blocks for n, _ in b.parameter_shapes()]
    assert all(n.startswith(f"{b.name}/") for b in blocks for n, _ in b.parameter_shapes())
    assert forward_flops_per_sample(spec) > 0
    starts = kind.stage_starts(blocks)
    assert starts and all(0 < i < len(blocks) and blocks[i].has_weights for i in starts)
    assert (
        kind.input_layout in ("flat", "image", "tokens") and kind.data_kinds and set(kind.data_kinds) <= set(DATA_KINDS)
    )


def test_mlp_counts_by_hand():
    spec = MLPSpec(layers=[4, 3, 2], activation="tanh")
    blocks = blocks_of(spec)
    assert blocks == [Dense("dense0", 4, 3, "tanh"), Dense("dense1", 3, 2, None)]
    assert parameter_shapes(spec) == [
        ("dense0/kernel", (4, 3)),
        ("dense0/bias", (3,)),
        ("dense1/kernel", (3, 2)),
        ("dense1/bias", (2,)),
    ]
    assert parameter_count(spec) == 4 * 3 + 3 + 3 * 2 + 2 == 23
    assert forward_flops_per_sample(spec) == 2 * (4 * 3 + 3 * 2) == 36
    assert training_flops_per_sample(spec) == 3 * 36
    assert (input_shape(spec), output_width(spec)) == ((4,), 2)
    assert model_kind(spec).stage_starts(blocks) == [1]


def test_cnn_counts_by_hand():
    spec = CNNSpec(input_shape=(4, 6, 2), conv_channels=[3], kernel_size=3, dense=[5], outputs=4, activation="tanh")
    blocks = blocks_of(spec)
    assert [type(b) for b in blocks] == [Conv, MaxPool, Flatten, Dense, Dense]
    assert blocks[3].flattened_from == (2, 3, 3) and blocks[3].units_in == 18
    assert shapes_through(blocks, input_shape(spec)) == [(4, 6, 2), (4, 6, 3), (2, 3, 3), (18,), (5,), (4,)]
    assert parameter_shapes(spec) == [
        ("conv0/kernel", (3, 3, 2, 3)),
        ("conv0/bias", (3,)),
        ("dense0/kernel", (18, 5)),
        ("dense0/bias", (5,)),
        ("dense1/kernel", (5, 4)),
        ("dense1/bias", (4,)),
    ]
    assert parameter_count(spec) == (3 * 3 * 2 * 3 + 3) + (18 * 5 + 5) + (5 * 4 + 4) == 176
    # conv: every one of the 4x6x3 outputs sums 3x3x2 products; dense: in x out
    assert forward_flops_per_sample(spec) == 2 * (4 * 6 * 3 * 3 * 3 * 2 + 18 * 5 + 5 * 4) == 2812
    assert [b.name for b in blocks if b.has_weights] == ["conv0", "dense0", "dense1"]
    assert model_kind(spec).stage_starts(blocks) == [3, 4]  # pool and flatten hold no weights


def test_cnn_digits_counts_by_hand():
    spec = CNNSpec(input_shape=(8, 8, 1), conv_channels=[8, 16], kernel_size=3, dense=[32], outputs=10)
    assert parameter_count(spec) == (9 * 1 * 8 + 8) + (9 * 8 * 16 + 16) + (4 * 16 * 32 + 32) + (32 * 10 + 10) == 3658
    assert forward_flops_per_sample(spec) == 2 * (8 * 8 * 8 * 9 + 4 * 4 * 16 * 8 * 9 + 64 * 32 + 32 * 10) == 50816


@pytest.mark.parametrize("name", sorted(MODEL_KINDS))
def test_data_kinds_a_model_cannot_train_on_are_rejected_by_name(name):
    kind = MODEL_KINDS[name]
    for data in set(DATA_KINDS) - set(kind.data_kinds):
        raw = {
            "model": {"kind": name},
            "data": {"kind": data, **({"path": "x.npz"} if data == "npz" else {})},
            "loss": "mse" if data == "synthetic_regression" else "cross_entropy",
        }
        with pytest.raises(UserError, match=f"model {name} needs {kind.input_layout} data: data.kind "):
            build_config(raw)


def _block_types() -> set[str]:
    """Every class in common/spec/models.py that derives (directly or not) from Block."""
    tree = ast.parse((ROOT / "common" / "spec" / "models.py").read_text())
    classes = [node for node in tree.body if isinstance(node, ast.ClassDef)]
    bases = {node.name: {b.id for b in node.bases if isinstance(b, ast.Name)} for node in classes}
    found, grew = {"Block"}, True
    while grew:
        new = {name for name, parents in bases.items() if parents & found} - found
        found |= new
        grew = bool(new)
    return found - {"Block"}


def _registered(path: Path) -> set[str]:
    """The keys of the module's BUILDERS dict literal."""
    for node in ast.parse(path.read_text()).body:
        targets = (
            [node.target] if isinstance(node, ast.AnnAssign) else node.targets if isinstance(node, ast.Assign) else []
        )
        target = targets[0] if targets else None
        if isinstance(target, ast.Name) and target.id == "BUILDERS" and isinstance(node.value, ast.Dict):
            return {key.id for key in node.value.keys if isinstance(key, ast.Name)}
    raise AssertionError(f"{path} has no BUILDERS dict")


def test_the_block_types_found_by_ast_are_the_runtime_ones():
    runtime, stack = set(), [Block]
    while stack:
        for sub in stack.pop().__subclasses__():
            runtime.add(sub.__name__)
            stack.append(sub)
    assert (
        _block_types()
        == runtime
        == {
            "Dense",
            "Conv",
            "MaxPool",
            "Flatten",
            "ConvBN",
            "ResidualBlock",
            "GlobalAveragePool",
            "Embedding",
            "DecoderBlock",
            "LayerNorm",
        }
    )


@pytest.mark.parametrize("framework", ["tf_impl", "torch_impl"])
def test_every_block_type_has_a_builder(framework):
    assert _registered(ROOT / framework / "models.py") == _block_types()
