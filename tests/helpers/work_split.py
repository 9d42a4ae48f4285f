"""What the ranks of a run must have trained on, computed here from the config alone: the global batches of the
shared sample order, cut into contiguous blocks (replica r of R takes the r-th), and the checksum result.json
records of them, written out again (plain Python integers) so that the test does not reuse the code it checks."""

from __future__ import annotations

import numpy as np

from xfw.common.spec.config import Config
from xfw.common.spec.data import load_dataset, sample_order

MASK = (1 << 64) - 1


def checksum(rows: np.ndarray) -> str:
    """The sum mod 2^64 of splitmix64(step << 32 | sample) over every (step, sample) pair of `rows`."""
    total = 0
    for step, row in enumerate(rows.tolist()):
        for sample in row:
            z = (step << 32) | sample
            z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & MASK
            z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & MASK
            total = (total + (z ^ (z >> 31))) & MASK
    return f"{total:016x}"


def global_batches(config: Config) -> np.ndarray:
    t = config.training
    return sample_order(load_dataset(config).train_size, t.global_batch, t.steps, config.seed)


def assert_replicas_split_the_batch(run: dict, config: Config) -> None:
    """Each of the run's R replicas trained on its own block of every global batch, and together on each sample
    of each global batch exactly once."""
    batches = global_batches(config)
    replicas = run["replicas"]
    per = batches.shape[1] // replicas
    work = run["work_split"]
    assert [w["replica"] for w in work] == list(range(replicas)), (run["id"], work)
    for w in work:
        r = w["replica"]
        assert (w["steps"], w["samples_per_step"]) == (config.training.steps, per), (run["id"], w)
        assert w["checksum"] == checksum(batches[:, r * per : (r + 1) * per]), (run["id"], f"replica {r}")
    together = sum(int(w["checksum"], 16) for w in work) & MASK
    assert f"{together:016x}" == checksum(batches), run["id"]


def assert_network_trained_on_its_batches(net: dict, config: Config, run_id: str) -> None:
    """One network of a several-network run: every sample of each of its global batches, once."""
    work = net["work"]
    assert work is not None, (run_id, net["name"])
    batches = global_batches(config)
    assert (work["steps"], work["samples_per_step"]) == batches.shape, (run_id, net["name"], work)
    assert work["checksum"] == checksum(batches), (run_id, net["name"])
