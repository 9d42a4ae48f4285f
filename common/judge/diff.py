"""`xfw diff A B`: two finished runs (from direct engine launches, or from two different compares) compared
with the same logic, table and exit status as `xfw compare`. A and B are result.json files, or run folders
holding one (or repeat-*/result.json, whose repeats are merged as a compare merges them)."""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path

from pydantic import ValidationError

from xfw.common.errors import UserError
from xfw.common.judge.compare import compare_pair, run_entry
from xfw.common.judge.compare_networks import compare_networks_pair, network_run_entry
from xfw.common.plan.machine import this_machine
from xfw.common.plan.registry import find
from xfw.common.records import AnyRun, MachineInfo, NetworksResult, RunBase, Summary, first_problem, read_result
from xfw.common.spec.config import config_from_dict
from xfw.common.spec.data import loss_floor
from xfw.common.strategies.base import Parity

# Keys that may differ between two runs without changing what they train.
IGNORED_KEYS = {("runtime", "timeout_s")}


def result_files(path: Path) -> list[Path]:
    if path.is_file():
        return [path]
    if (path / "result.json").is_file():
        return [path / "result.json"]
    repeats = sorted(path.glob("repeat-*/result.json"))
    if repeats:
        return repeats
    raise UserError(f"{path}: no result.json there (give a result.json, or a run folder holding one)")


def load_results(path: Path) -> list:
    results = []
    for file in result_files(path):
        try:
            results.append(read_result(json.loads(file.read_text())))
        except OSError as err:
            raise UserError(f"cannot read {file}: {err.strerror}") from None
        except (ValueError, ValidationError) as err:
            raise UserError(f"{file} is not an xfw result: {first_problem(err)}") from None
    if len({r.id for r in results}) > 1:
        raise UserError(f"{path}: its repeats are of different runs ({', '.join(sorted({r.id for r in results}))})")
    if results[0].config is None:
        raise UserError(f"{path}: the result has no config (written by an older xfw); rerun it to diff it")
    return results


def _flatten(data: dict, prefix: tuple = ()) -> dict[tuple, object]:
    out: dict[tuple, object] = {}
    for key, value in data.items():
        if isinstance(value, dict):
            out |= _flatten(value, (*prefix, key))
        else:
            out[(*prefix, key)] = value
    return out


def config_differences(a: dict, b: dict) -> list[str]:
    fa, fb = _flatten(a), _flatten(b)
    keys = sorted((set(fa) | set(fb)) - IGNORED_KEYS)
    return [f"{'.'.join(k)} ({fa.get(k)!r} vs {fb.get(k)!r})" for k in keys if fa.get(k) != fb.get(k)]


def parity_kind(a, b) -> Parity:
    """How B is held against A: A's strategy's parity where B is A's reference; the other framework's tolerance
    across frameworks; otherwise the same-framework tolerance."""
    impl = find(a.framework, a.implementation)
    if a.framework != b.framework:
        return Parity.CROSS_FRAMEWORK
    if b.implementation == impl.reference and b.implementation != a.implementation:
        return impl.kind.parity
    return Parity.SAME_FRAMEWORK


def diff_runs(path_a: Path, path_b: Path) -> Summary:
    a_results, b_results = load_results(path_a), load_results(path_b)
    a, b = a_results[0], b_results[0]
    differences = config_differences(a.config, b.config)
    if differences:
        shown = "; ".join(differences[:3]) + (f"; and {len(differences) - 3} more" if len(differences) > 3 else "")
        raise UserError(f"the runs' configs differ in more than framework, strategy and implementation: {shown}")
    several = isinstance(a, NetworksResult)
    if several != isinstance(b, NetworksResult):
        raise UserError("one run trained several networks and the other one: they cannot be compared")
    entries: list[AnyRun] = []
    for results, side in ((a_results, "a"), (b_results, "b")):
        first = results[0]
        impl = find(first.framework, first.implementation)
        run_id = first.id if a.id != b.id else f"{first.id} ({side})"  # the same run twice: tell them apart
        base = RunBase(
            id=run_id,
            framework=first.framework,
            strategy=first.strategy,
            implementation=first.implementation,
            launcher=impl.launcher,
            description=impl.description,
        )
        entry = (network_run_entry if several else run_entry)(base, results)
        entry.result_files = [str(f) for f in result_files(path_a if side == "a" else path_b)]
        entries.append(entry)
    config = config_from_dict(a.config)
    compare = compare_networks_pair if several else compare_pair
    machine = this_machine()
    return Summary(
        command=f"xfw diff {path_a} {path_b}",
        strategy=a.strategy,
        created=dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        repeats=max(len(a_results), len(b_results)),
        timeout_s=config.runtime.timeout_s,
        machine=MachineInfo(cpu_cores=machine.cpu_cores, gpus=machine.gpus),
        config=a.config,
        loss_floor=loss_floor(config),
        runs=entries,
        comparisons=[compare(entries[0], entries[1], parity_kind(a, b), config)],
    )
