"""What a worker process is told to do: written as run.json into the run directory by the parent."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path

from xfw.common.plan.mesh import Axis, Mesh
from xfw.common.plan.registry import find, network_count, run_devices, run_processes, run_roles
from xfw.common.spec.config import Config, config_from_dict
from xfw.common.strategies.base import Implementation, Role, Strategy


@dataclass(frozen=True)
class RunSpec:
    config: Config
    framework: str
    strategy: str
    implementation: str
    out_dir: str  # rank 0 writes result.json here; the parent reads progress from here
    # `xfw localize`: replay with tensors captured (common/localize.TraceWriter) instead of a timed run
    trace: dict | None = None
    # "ulp": every initial weight moved by one ulp (the rounding envelope's run, parity.envelope_factor)
    perturbation: str | None = None

    @property
    def id(self) -> str:
        return f"{self.framework}-{self.implementation}"

    @property
    def identity(self) -> dict:
        """What names the run in result.json and summary.json."""
        return {
            "id": self.id,
            "framework": self.framework,
            "strategy": self.strategy,
            "implementation": self.implementation,
        }

    @property
    def impl(self) -> Implementation:
        return find(self.framework, self.implementation)

    @property
    def kind(self) -> Strategy:
        """The strategy's descriptor."""
        return self.impl.kind

    @property
    def mesh(self) -> Mesh:
        """The run's parallel layout (common/plan/mesh.py)."""
        return self.kind.mesh(self.config)

    @property
    def replicas(self) -> int:
        """Data-parallel replicas: the size of the data axis."""
        return self.mesh.size(Axis.DATA)

    @property
    def stages(self) -> int:
        """Model-parallel stages: the size of the pipeline axis."""
        return self.mesh.size(Axis.PIPELINE)

    @property
    def micro_batches(self) -> int:
        return self.config.model_parallel.micro_batches if self.kind.micro_batched else 1

    @property
    def devices(self) -> int:
        """Devices the run occupies; multi-process launchers start one process per device."""
        return run_devices(self.impl, self.config)

    @property
    def roles(self) -> tuple[Role, ...]:
        """Every process of the run, in launcher rank order."""
        return run_roles(self.impl, self.config)

    @property
    def processes(self) -> int:
        """Processes the launcher starts (one per device, or per network where networks share a device)."""
        return run_processes(self.impl, self.config)

    @property
    def networks(self) -> int:
        """Networks (or chain parts) the run trains; 1 outside the multi-network strategies."""
        return network_count(self.impl, self.config)

    def to_json(self) -> str:
        data = asdict(self) | {"config": self.config.model_dump(mode="json")}
        return json.dumps(data, indent=2)

    @classmethod
    def from_json(cls, text: str) -> RunSpec:
        data = json.loads(text)
        return cls(**(data | {"config": config_from_dict(data["config"])}))

    def write(self, path: Path) -> Path:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(self.to_json())
        return path
