"""The one registry: (framework, strategy, implementation) -> the function that trains and the launcher that starts
it. The entries live in their strategy's module (common/strategies/<strategy>.py); this module looks them up and
counts what one run occupies. `xfw list`, `xfw run` and `xfw compare` read only these tables."""

from __future__ import annotations

from xfw.common.errors import UserError
from xfw.common.strategies import REGISTRY, STRATEGY
from xfw.common.strategies.base import FRAMEWORKS, DeviceUse, Implementation, Launcher, Role, Strategy

# Name -> description (`xfw compare --help`, README); every strategy has entries on both sides (tests/unit).
STRATEGIES = {s.name: s.description for s in STRATEGY.values()}


def get_strategy(name: str) -> Strategy:
    try:
        return STRATEGY[name]
    except KeyError:
        raise UserError(f"unknown strategy {name!r} (expected one of: {', '.join(STRATEGY)})") from None


def network_count(impl: Implementation, config) -> int:
    """Networks (or chain parts) one run of `impl` trains."""
    if not impl.kind.several_networks:
        return 1
    return 2 if impl.chain else len(config.networks)


def run_devices(impl: Implementation, config) -> int:
    """Devices one run of `impl` occupies under `config`."""
    if impl.devices == DeviceUse.ONE:
        return 1
    if impl.devices == DeviceUse.EACH:
        return network_count(impl, config)
    return impl.kind.mesh(config).world


def run_roles(impl: Implementation, config) -> tuple[Role, ...]:
    """The processes one run starts, in launcher rank order: one for the plain-process launcher, else one per
    device, or per network where several networks share a device, unless the strategy has roles of its own
    (servers, a coordinator)."""
    if impl.launcher == Launcher.PROCESS:
        processes = 1
    elif impl.kind.several_networks:
        processes = network_count(impl, config)
    else:
        processes = run_devices(impl, config)
    return impl.kind.roles(impl, config, processes)


def run_processes(impl: Implementation, config) -> int:
    return len(run_roles(impl, config))


def find(framework: str, implementation: str) -> Implementation:
    if framework not in FRAMEWORKS:
        raise UserError(f"unknown framework {framework!r} (expected one of: {', '.join(FRAMEWORKS)})")
    for impl in REGISTRY:
        if impl.framework == framework and impl.name == implementation:
            return impl
    names = ", ".join(i.name for i in REGISTRY if i.framework == framework)
    raise UserError(f"unknown implementation {implementation!r} for {framework} (expected one of: {names})")


def find_id(run_id: str) -> Implementation:
    """By run id (tf-single, torch-ddp, ...), as `xfw list` and the tables name runs."""
    for impl in REGISTRY:
        if impl.id == run_id:
            return impl
    raise UserError(
        f"{run_id!r} is neither a run folder nor a run id (expected a path, or one of: "
        f"{', '.join(i.id for i in REGISTRY)})"
    )


def for_strategy(name: str) -> list[Implementation]:
    get_strategy(name)  # unknown: a UserError naming the known ones
    return [i for i in REGISTRY if i.strategy == name]
