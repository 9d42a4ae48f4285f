"""Splitting a model into pipeline stages: which layers go where, what crosses each boundary, and how
the work divides into micro-batches. Shared by every model-parallel, pipeline and hybrid implementation."""

from __future__ import annotations

import itertools
from dataclasses import dataclass

from xfw.common.config import Config, ModelParallelConfig
from xfw.common.errors import UserError
from xfw.common.models import Conv, Dense, Flatten, Layer, MaxPool, input_shape, layers_of, parameter_shapes


@dataclass(frozen=True)
class Stage:
    index: int
    layers: list[Layer]
    input_shape: tuple[int, ...]  # one sample, channels-last (canonical)
    output_shape: tuple[int, ...]
    parameters: int

    @property
    def names(self) -> list[str]:
        return [layer.name for layer in self.layers]


def output_shape(layer: Layer, shape: tuple[int, ...]) -> tuple[int, ...]:
    if isinstance(layer, Dense):
        return (layer.units_out,)
    if isinstance(layer, Conv):
        return (shape[0], shape[1], layer.channels_out)
    if isinstance(layer, MaxPool):
        return (shape[0] // 2, shape[1] // 2, shape[2])
    if isinstance(layer, Flatten):
        return (shape[0] * shape[1] * shape[2],)
    raise TypeError(layer)


def _layer_parameters(config: Config) -> dict[str, int]:
    counts: dict[str, int] = {}
    for name, shape in parameter_shapes(config.model):
        n = 1
        for d in shape:
            n *= d
        counts[name.split("/")[0]] = counts.get(name.split("/")[0], 0) + n
    return counts


def _even_split(layers: list[Layer], params: dict[str, int], stages: int) -> list[int]:
    """Stage starts that minimise the largest stage's parameter count (ties: the earliest split)."""
    candidates = [i for i, layer in enumerate(layers) if i > 0 and isinstance(layer, (Dense, Conv))]
    best, best_cost = None, None
    for starts in itertools.combinations(candidates, stages - 1):
        bounds = [0, *starts, len(layers)]
        cost = max(sum(params.get(l.name, 0) for l in layers[a:b]) for a, b in zip(bounds, bounds[1:]))
        if best_cost is None or cost < best_cost:
            best, best_cost = list(starts), cost
    return best


def plan_stages(config: Config) -> list[Stage]:
    layers = layers_of(config.model)
    mp = config.model_parallel
    params = _layer_parameters(config)
    weighted = [l.name for l in layers if isinstance(l, (Dense, Conv))]
    if mp.stages > len(weighted):
        raise UserError(f"model_parallel.stages {mp.stages} is more than the model's {len(weighted)} layers with weights ({', '.join(weighted)})")
    if mp.split_points:
        names = [l.name for l in layers]
        starts = []
        for point in mp.split_points:
            if point not in names[1:]:
                raise UserError(f"model_parallel.split_points: no layer {point!r} to split at (layers: {', '.join(names)})")
            starts.append(names.index(point))
        if starts != sorted(set(starts)):
            raise UserError("model_parallel.split_points must name distinct layers in model order")
    else:
        starts = _even_split(layers, params, mp.stages)
    bounds = [0, *starts, len(layers)]
    stages, shape = [], input_shape(config.model)
    for index, (a, b) in enumerate(zip(bounds, bounds[1:])):
        first = shape
        for layer in layers[a:b]:
            shape = output_shape(layer, shape)
        stages.append(Stage(index, layers[a:b], first, shape, sum(params.get(l.name, 0) for l in layers[a:b])))
    empty = [s.index for s in stages if s.parameters == 0]
    if empty:
        raise UserError(f"model_parallel.split_points leave stage(s) {empty} without weights: split at a layer with weights")
    return stages


def boundary_bytes_per_step(stages: list[Stage], global_batch: int, bytes_per_value: int = 4) -> int:
    """Activations sent forward plus their gradients sent back, across every stage boundary, per step."""
    per_sample = sum(_size(s.output_shape) for s in stages[:-1])
    return 2 * per_sample * global_batch * bytes_per_value


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
    layers, shape = layers_of(config.model), input_shape(config.model)
    first = shape
    for layer in layers:
        shape = output_shape(layer, shape)
    return Stage(0, layers, first, shape, sum(_layer_parameters(config).values()))


def chain_parts(config: Config) -> list[Stage]:
    """The collaborative chain: the model cut into an encoder and a head at collaborative.chain_split
    (unset: the split that balances parameters)."""
    split = config.collaborative.chain_split
    two = config.model_copy(update={"model_parallel": ModelParallelConfig(stages=2, split_points=[split] if split else [])})
    try:
        return plan_stages(two)
    except UserError as err:
        raise UserError(str(err).replace("model_parallel.split_points", "collaborative.chain_split")
                        .replace("model_parallel.stages 2", "a chain of 2 networks")) from None
