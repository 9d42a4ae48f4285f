"""Splitting a model into pipeline stages, always between blocks: which blocks go where, what crosses each
boundary, and how the work divides into micro-batches. Shared by every model-parallel, pipeline and hybrid
implementation. Stage.layers holds blocks (the name predates them)."""

from __future__ import annotations

import itertools
from dataclasses import dataclass

from xfw.common.errors import UserError
from xfw.common.spec.config import Config, ModelParallelConfig
from xfw.common.spec.models import Block, Layer, Shape, blocks_of, input_shape, model_kind, shapes_through


@dataclass(frozen=True)
class Stage:
    index: int
    layers: list[Layer]  # the stage's blocks, in model order
    input_shape: tuple[int, ...]  # one sample, channels-last (canonical)
    output_shape: tuple[int, ...]
    parameters: int

    @property
    def names(self) -> list[str]:
        return [layer.name for layer in self.layers]


def output_shape(layer: Block, shape: Shape) -> Shape:
    return layer.output_shape(shape)


def _stage(index: int, blocks: list[Block], shape: Shape) -> Stage:
    return Stage(index, blocks, shape, shapes_through(blocks, shape)[-1], sum(b.parameter_count for b in blocks))


def _even_split(blocks: list[Block], shapes: list[Shape], candidates: list[int], stages: int) -> list[int]:
    """Stage starts that minimise the largest stage's compute (forward FLOPs per sample, which the backward
    pass follows at about twice that), ties broken by the earliest split. Compute, not parameters: a conv
    layer has few weights and much work, a dense head the reverse."""
    flops = [b.forward_flops(shape) for b, shape in zip(blocks, shapes)]
    best, best_cost = None, None
    for starts in itertools.combinations(candidates, stages - 1):
        bounds = [0, *starts, len(blocks)]
        cost = max(sum(flops[a:z]) for a, z in zip(bounds, bounds[1:]))
        if best_cost is None or cost < best_cost:
            best, best_cost = list(starts), cost
    if best is None:
        raise UserError(
            f"model_parallel.stages {stages} is more than the {len(candidates) + 1} stages this model can be split into"
        )
    return best


def plan_stages(config: Config) -> list[Stage]:
    blocks = blocks_of(config.model)
    mp = config.model_parallel
    weighted = [b.name for b in blocks if b.has_weights]
    if mp.stages > len(weighted):
        raise UserError(
            f"model_parallel.stages {mp.stages} is more than the model's {len(weighted)} layers with weights "
            f"({', '.join(weighted)})"
        )
    if mp.split_points:
        names = [b.name for b in blocks]
        allowed = [names[i] for i in model_kind(config.model).stage_starts(blocks)]
        starts = []
        for point in mp.split_points:
            if point not in names[1:]:
                raise UserError(
                    f"model_parallel.split_points: no layer {point!r} to split at (layers: {', '.join(names)})"
                )
            if point not in allowed and model_kind(config.model).split_only_at_stage_starts:
                raise UserError(
                    f"model_parallel.split_points: {point!r} is not a block boundary a stage can start at "
                    f"(these are: {', '.join(allowed)})"
                )
            starts.append(names.index(point))
        if starts != sorted(set(starts)):
            raise UserError("model_parallel.split_points must name distinct layers in model order")
    shapes = shapes_through(blocks, input_shape(config.model))
    if not mp.split_points:
        starts = _even_split(blocks, shapes, model_kind(config.model).stage_starts(blocks), mp.stages)
    bounds = [0, *starts, len(blocks)]
    stages = [_stage(index, blocks[a:z], shapes[a]) for index, (a, z) in enumerate(zip(bounds, bounds[1:]))]
    empty = [s.index for s in stages if s.parameters == 0]
    if empty:
        raise UserError(
            f"model_parallel.split_points leave stage(s) {empty} without weights: split at a layer with weights"
        )
    return stages


def boundary_bytes(stages: list[Stage], global_batch: int, bytes_per_value: int = 4) -> list[int]:
    """Per boundary (stage i to i+1): activations sent forward plus their gradients sent back, per step."""
    return [2 * _size(s.output_shape) * global_batch * bytes_per_value for s in stages[:-1]]


def boundary_bytes_per_step(stages: list[Stage], global_batch: int, bytes_per_value: int = 4) -> int:
    """Activations sent forward plus their gradients sent back, across every stage boundary, per step."""
    return sum(boundary_bytes(stages, global_batch, bytes_per_value))


def theoretical_bubble(stages: int, micro_batches: int) -> float:
    """Idle share of each stage in a GPipe or 1F1B schedule with even stages and free transfers."""
    return (stages - 1) / (micro_batches + stages - 1)


def _size(shape: tuple[int, ...]) -> int:
    n = 1
    for d in shape:
        n *= d
    return n


def check_micro_batches(batch: int, micro_batches: int, what: str) -> int:
    if batch % micro_batches:
        raise UserError(f"model_parallel.micro_batches {micro_batches} does not divide {what} {batch}")
    return batch // micro_batches


def whole_model(config: Config) -> Stage:
    """The whole model as one stage (for timing a network's own passes alone)."""
    return _stage(0, blocks_of(config.model), input_shape(config.model))


def chain_parts(config: Config) -> list[Stage]:
    """The collaborative chain: the model cut into an encoder and a head at collaborative.chain_split
    (unset: the split that balances compute)."""
    split = config.collaborative.chain_split
    two = config.model_copy(
        update={"model_parallel": ModelParallelConfig(stages=2, split_points=[split] if split else [])}
    )
    try:
        return plan_stages(two)
    except UserError as err:
        raise UserError(
            str(err)
            .replace("model_parallel.split_points", "collaborative.chain_split")
            .replace("model_parallel.stages 2", "a chain of 2 networks")
        ) from None
