"""A run's parallel layout as named mesh axes (after torchtitan's ParallelDims and torch's DeviceMesh): each axis a
kind of parallelism with a size, the world their product. Strategies say which axes they use (common/strategies);
everything else asks the mesh "how large is this axis" instead of "which strategy is this"."""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum
from math import prod


class Axis(StrEnum):
    """The kinds of parallelism, in the order a mesh nests them (outermost first)."""

    DATA = "data"  # replicas of the whole model (or of each stage), each on a shard of the global batch
    SHARD = "shard"  # the weights, gradients and optimizer state sharded across ranks (FSDP / ZeRO)
    TENSOR = "tensor"  # single layers split across ranks (tensor parallelism)
    PIPELINE = "pipeline"  # the layers split into stages


# The axes whose ranks see different samples: the global batch is cut along them.
BATCH_AXES = (Axis.DATA, Axis.SHARD)


@dataclass(frozen=True)
class Mesh:
    """Sizes of the axes a run uses; an axis it does not use has size 1."""

    axes: tuple[tuple[Axis, int], ...] = ()

    @classmethod
    def of(cls, **sizes: int) -> Mesh:
        """Mesh.of(data=2, pipeline=2); axes of size 1 are left out."""
        for name, size in sizes.items():
            if size < 1:
                raise ValueError(f"mesh axis {name} has size {size}")
        return cls(tuple((axis, sizes[axis.value]) for axis in Axis if sizes.get(axis.value, 1) > 1))

    def size(self, axis: Axis) -> int:
        return dict(self.axes).get(axis, 1)

    @property
    def world(self) -> int:
        """Devices the mesh spans: the product of its axes' sizes."""
        return prod(size for _, size in self.axes)

    @property
    def batch_shards(self) -> int:
        """How many pieces the global batch is cut into (the product of the batch axes)."""
        return prod(self.size(axis) for axis in BATCH_AXES)

    def coordinates(self, rank: int) -> dict[Axis, int]:
        """Where device `rank` sits on each axis, the last axis varying fastest (row-major, as DeviceMesh)."""
        where = {}
        for axis, size in reversed(self.axes):
            where[axis] = rank % size
            rank //= size
        return {axis: where.get(axis, 0) for axis in Axis}

    def describe(self) -> str:
        """ "data 2 x pipeline 2", or "one device"."""
        return " x ".join(f"{axis.value} {size}" for axis, size in self.axes) or "one device"

    def to_dict(self) -> dict[str, int]:
        return {axis.value: size for axis, size in self.axes}
