"""Every strategy, one module each (common/strategies/base.py says what a module defines). MODULES is the order
`xfw list`, `xfw compare --help` and the docs show them in."""

from xfw.common.strategies import (
    collaborative,
    hybrid,
    independent,
    local_sgd,
    mirrored,
    model_parallel,
    parameter_server,
    pipeline,
    shared_device,
    single,
)
from xfw.common.strategies.base import Implementation, Strategy

MODULES = (
    single,
    mirrored,
    local_sgd,
    parameter_server,
    model_parallel,
    pipeline,
    hybrid,
    independent,
    collaborative,
    shared_device,
)
STRATEGY: dict[str, Strategy] = {m.STRATEGY.name: m.STRATEGY for m in MODULES}
REGISTRY: tuple[Implementation, ...] = tuple(impl for m in MODULES for impl in m.IMPLEMENTATIONS)
