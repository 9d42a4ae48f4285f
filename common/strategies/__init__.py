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


class StrategyResultFields(parameter_server.ResultFields):
    """The optional fields strategies add to a run's result and entry (common/records.py: RunResult, RunEntry), each
    declared in its strategy's module."""


# Bases in reverse order of the keys: pydantic lists the fields of the last base first.
class SyncConfig(parameter_server.SyncSettings, local_sgd.SyncSettings):
    """The config's `sync` section: how often the replicas synchronise and through how many servers, each setting
    declared by the strategy that reads it."""


STRATEGY: dict[str, Strategy] = {m.STRATEGY.name: m.STRATEGY for m in MODULES}
REGISTRY: tuple[Implementation, ...] = tuple(impl for m in MODULES for impl in m.IMPLEMENTATIONS)
