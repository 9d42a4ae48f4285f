"""The peak a run's FLOP utilisation is measured against: the best rate of a square matmul on one device, at a
size large enough to saturate it, in the precision and math mode (TF32 on or off) the run trains with.

Measuring it takes seconds (a GPU needs matmuls of thousands of rows), so it is measured once per machine and
setting and cached in a JSON file (XFW_PEAK_CACHE, default ~/.cache/xfw/peak_flops.json): compare does not pay
for it on every run. Delete the file to measure again (a peak measured while the machine was busy is too low,
and shows as a utilisation above 100%).

The framework supplies `matmul_seconds(n, count)`: the wall time of `count` back-to-back n x n matmuls, the
device synchronised before and after. Nothing here imports a framework."""

from __future__ import annotations

import fcntl
import json
import math
import os
import platform
import time
from collections.abc import Callable
from pathlib import Path

from pydantic import ValidationError

from xfw.common.records import PeakFlops

# Matmul sizes tried, smallest first, until one more doubling gains under SATURATED.
CPU_SIZES = (256, 512, 1024, 2048)
GPU_SIZES = (1024, 2048, 4096, 8192, 16384)
SATURATED = 1.03
STABLE = 1.01  # a size's rate is settled once PATIENCE timings in a row fail to beat the best by this factor
PATIENCE = 3
MAX_TIMINGS = 30
TIMING_S = 0.02  # each timing covers at least this long, so the clock's resolution and launch costs vanish


def cpu_name() -> str:
    """The CPU model as /proc/cpuinfo names it (the machine's architecture elsewhere)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.machine()


def visible_gpus(count: int) -> list[int]:
    """The machine's index of each GPU a process sees (CUDA_VISIBLE_DEVICES renumbers them from 0), so that
    processes which each see one GPU still tell theirs apart."""
    listed = [d.strip() for d in os.environ.get("CUDA_VISIBLE_DEVICES", "").split(",") if d.strip()]
    if listed and all(d.isdigit() for d in listed):
        return [int(d) for d in listed[:count]]
    return list(range(count))


def cache_path() -> Path:
    if os.environ.get("XFW_PEAK_CACHE"):
        return Path(os.environ["XFW_PEAK_CACHE"])
    base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return base / "xfw" / "peak_flops.json"


def stable_rate(matmul_seconds: Callable[[int, int], float], n: int) -> float:
    """Best FLOP/s of n x n matmuls, timed until PATIENCE timings in a row bring nothing new."""
    flops = 2 * n**3
    matmul_seconds(n, 1)  # warm-up: library start, kernel choice, allocation
    once = max(matmul_seconds(n, 1), 1e-7)
    count = max(1, math.ceil(TIMING_S / once))
    best, stale = 0.0, 0
    for _ in range(MAX_TIMINGS):
        rate = count * flops / matmul_seconds(n, count)
        if rate > best * STABLE:
            stale = 0
        else:
            stale += 1
        best = max(best, rate)
        if stale >= PATIENCE:
            break
    return best


def saturating_rate(matmul_seconds: Callable[[int, int], float], sizes: tuple[int, ...]) -> tuple[float, int]:
    """(best FLOP/s, the size that gave it), growing the matmul until a doubling gains under SATURATED."""
    best, best_n = 0.0, sizes[0]
    for n in sizes:
        rate = stable_rate(matmul_seconds, n)
        if rate > best:
            gained = rate / best if best else math.inf
            best, best_n = rate, n
            if gained < SATURATED:
                break
        else:
            break
    return best, best_n


def machine_peak(setting: dict, matmul_seconds: Callable[[int, int], float], gpu: bool) -> PeakFlops:
    """The cached peak for `setting` (framework, device, precision, math mode, threads: whatever changes the
    rate), measured and stored where the cache has none. Concurrent processes take turns on the file."""
    key = json.dumps({"machine": platform.node(), **setting}, sort_keys=True)
    path = cache_path()
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path.with_suffix(".lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # one measurement at a time: two at once would slow each other
        table = _read(path)
        try:
            return PeakFlops.model_validate(table[key] | {"cached": True})
        except (KeyError, TypeError, ValidationError):  # none for this setting, or an entry edited out of shape
            pass
        started = time.perf_counter()
        rate, n = saturating_rate(matmul_seconds, GPU_SIZES if gpu else CPU_SIZES)
        peak = PeakFlops(
            flops_per_s=rate,
            matmul_size=n,
            setting=setting,
            measured_s=time.perf_counter() - started,
            measured_at=time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            cache=str(path),
        )
        table[key] = peak.model_dump(mode="json", exclude={"cached"})
        tmp = path.with_suffix(f".{os.getpid()}.tmp")
        tmp.write_text(json.dumps(table, indent=1))
        tmp.replace(path)
        return peak


def _read(path: Path) -> dict:
    try:
        table = json.loads(path.read_text())
    except (OSError, ValueError):  # none yet, or not JSON (hand-edited): measure again and rewrite it
        return {}
    return table if isinstance(table, dict) else {}
