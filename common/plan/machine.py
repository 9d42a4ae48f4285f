"""What a machine offers a run: CPU cores, GPUs, the frameworks installed and what Horovod was built with. The
refusals (common/plan/refusals.py) read only this description, so that a cluster could provide one too."""

from __future__ import annotations

import functools
import importlib.util
import os
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

from xfw.common.strategies.base import Framework


@dataclass(frozen=True)
class Machine:
    cpu_cores: int
    gpus: int
    frameworks: frozenset[str]  # the frameworks installed
    horovod_frameworks: frozenset[str]  # the frameworks Horovod was built with

    @property
    def devices(self) -> int:
        """Devices a replica can own: GPUs where there are any, else CPU cores (split into logical devices)."""
        return self.gpus or self.cpu_cores


def gpu_of_rank(rank: int, gpus: int, devices: int) -> int:
    """The GPU a rank runs on: its own where the run has a GPU per rank; else ranks take turns over the run's GPUs
    (several networks sharing one device, or more replicas than GPUs)."""
    return rank % min(gpus, devices)


def ranks_share_a_gpu(processes: int, gpus: int, devices: int) -> bool:
    """Whether two processes of a run land on one GPU (gpu_of_rank): NCCL refuses a group whose ranks do."""
    return gpus > 0 and processes > min(gpus, devices)


def _count_gpus() -> int:
    if not shutil.which("nvidia-smi"):
        return 0
    try:
        out = subprocess.run(["nvidia-smi", "-L"], capture_output=True, text=True, timeout=20)
    except (OSError, subprocess.TimeoutExpired):
        return 0
    gpus = sum(1 for line in out.stdout.splitlines() if line.startswith("GPU "))
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible is not None:
        gpus = min(gpus, len([d for d in visible.split(",") if d.strip() and d.strip() != "-1"]))
    return gpus


def gpu_memory_mib(index: int) -> int:
    """Total memory of the machine's GPU `index`, in MiB, as nvidia-smi reports it."""
    out = subprocess.run(
        ["nvidia-smi", f"--id={index}", "--query-gpu=memory.total", "--format=csv,noheader,nounits"],
        capture_output=True,
        text=True,
        timeout=20,
        check=True,
    )
    return int(out.stdout.split()[0])


def _horovod_frameworks() -> frozenset[str]:
    # Looks at the compiled extensions without importing horovod (which would import a framework).
    spec = importlib.util.find_spec("horovod")
    if spec is None or not spec.submodule_search_locations:
        return frozenset()
    root = Path(next(iter(spec.submodule_search_locations)))
    built = set()
    # Horovod's extension for each framework: horovod/torch/mpi_lib_v2*.so, horovod/tensorflow/mpi_lib*.so
    extension = {Framework.TORCH: "mpi_lib_v2*.so", Framework.TF: "mpi_lib*.so"}
    for framework, pattern in extension.items():
        if list((root / framework.package).glob(pattern)):
            built.add(framework)
    return frozenset(built)


@functools.cache
def this_machine() -> Machine:
    frameworks = {fw for fw in Framework if importlib.util.find_spec(fw.package)}
    return Machine(len(os.sched_getaffinity(0)), _count_gpus(), frozenset(frameworks), _horovod_frameworks())
