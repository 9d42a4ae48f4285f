"""The model section of a config: one validated spec per model kind (common/spec/models.py builds from them). Apart
from the rest of the config so that the model registry and the config both import it, and neither the other."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator


class Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class MLPSpec(Section):
    kind: Literal["mlp"] = "mlp"
    # Input width, hidden widths..., output width. [10, 10] is a model with no hidden layer.
    layers: list[Annotated[int, Field(gt=0)]] = Field(default=[10, 50, 10], min_length=2)
    activation: Literal["relu", "tanh"] = "relu"


class CNNSpec(Section):
    kind: Literal["cnn"] = "cnn"
    input_shape: tuple[Annotated[int, Field(gt=0)], Annotated[int, Field(gt=0)], Annotated[int, Field(gt=0)]] = (
        8,
        8,
        1,
    )
    # One block per entry: conv (stride 1, 'same' padding, odd kernel) -> activation -> 2x2 max-pool.
    conv_channels: list[Annotated[int, Field(gt=0)]] = Field(default=[8, 16], min_length=1)
    kernel_size: Annotated[int, Field(gt=0)] = 3
    dense: list[Annotated[int, Field(gt=0)]] = [32]
    outputs: Annotated[int, Field(gt=0)] = 10
    activation: Literal["relu", "tanh"] = "relu"

    @model_validator(mode="after")
    def _check_shape(self) -> CNNSpec:
        if self.kernel_size % 2 == 0:
            raise ValueError("kernel_size must be odd ('same' padding is then symmetric in both frameworks)")
        h, w, _ = self.input_shape
        for _ in self.conv_channels:
            if h < 2 or w < 2:
                raise ValueError(
                    f"input_shape {self.input_shape} is too small for {len(self.conv_channels)} pooling blocks"
                )
            h, w = h // 2, w // 2
        return self


class BatchNormConfig(Section):
    # The moving statistics keep this fraction of their old value each step: Keras momentum=decay,
    # torch momentum=1-decay (the two frameworks name opposite quantities "momentum").
    decay: Annotated[float, Field(gt=0, lt=1)] = 0.9
    # One epsilon for both (the frameworks' defaults differ: Keras 1e-3, torch 1e-5).
    epsilon: Annotated[float, Field(gt=0)] = 1e-5


class ResNetSpec(Section):
    """The CIFAR ResNet family (He et al. 2016, section 4.2): depth 6n+2, a 3x3 stem, three stages of n
    BasicBlocks, global average pooling, a dense head."""

    kind: Literal["resnet"] = "resnet"
    depth: Annotated[int, Field(ge=8)] = 8
    widths: tuple[Annotated[int, Field(gt=0)], Annotated[int, Field(gt=0)], Annotated[int, Field(gt=0)]] = (16, 32, 64)
    input_shape: tuple[Annotated[int, Field(gt=0)], Annotated[int, Field(gt=0)], Annotated[int, Field(gt=0)]] = (
        32,
        32,
        3,
    )
    outputs: Annotated[int, Field(gt=0)] = 10
    # relu is the ResNet's; its kink makes training sensitive to rounding (README: "Why ResNet curves part").
    activation: Literal["relu", "tanh"] = "relu"
    batchnorm: BatchNormConfig = BatchNormConfig()
    # Batch statistics computed over the global batch across replicas (Keras synchronized=True, torch
    # SyncBatchNorm); off: each replica normalises by its own shard's statistics.
    sync_batchnorm: bool = False

    @field_validator("depth")
    @classmethod
    def _check_depth(cls, depth: int) -> int:
        if (depth - 2) % 6:
            raise ValueError(f"must be 6n+2 (8, 14, 20, 32, 44, 56, 110, ...), got {depth}")
        return depth

    @model_validator(mode="after")
    def _check_shape(self) -> ResNetSpec:
        h, w, _ = self.input_shape
        if h < 4 or w < 4:
            raise ValueError(f"input_shape {self.input_shape} is too small for two stride-2 stages (at least 4x4)")
        return self

    @property
    def blocks_per_stage(self) -> int:
        return (self.depth - 2) // 6


class TransformerSpec(Section):
    """A decoder-only language model: token and learned position embeddings, pre-LayerNorm blocks of causal
    multi-head self-attention and a GELU MLP, a final LayerNorm and a dense head over the vocabulary."""

    kind: Literal["transformer"] = "transformer"
    vocab: Annotated[int, Field(ge=2)] = 64
    width: Annotated[int, Field(gt=0)] = 32
    heads: Annotated[int, Field(gt=0)] = 4
    depth: Annotated[int, Field(gt=0)] = 2
    seq_len: Annotated[int, Field(gt=0)] = 16  # tokens per sample, and the size of the position table
    mlp_ratio: Annotated[int, Field(gt=0)] = 4  # the MLP's hidden width is mlp_ratio x width
    layer_norm_epsilon: Annotated[float, Field(gt=0)] = 1e-5
    # exact: x * Phi(x) (torch nn.GELU() and keras gelu(approximate=False)); tanh: the tanh approximation.
    gelu: Literal["exact", "tanh"] = "exact"

    @model_validator(mode="after")
    def _check_heads(self) -> TransformerSpec:
        if self.width % self.heads:
            raise ValueError(f"heads {self.heads} does not divide width {self.width}")
        return self


# One spec class per model kind; what each kind is made of (blocks, data, stages) is its entry in
# common.models.MODEL_KINDS.
ModelSpec = Annotated[MLPSpec | CNNSpec | ResNetSpec | TransformerSpec, Field(discriminator="kind")]
MODEL_SPEC_TAGS = ("mlp", "cnn", "resnet", "transformer")
