"""Local SGD (strategy local-sgd): with sync.every_k_steps 1 every implementation equals one device within the
same-framework tolerance (it is synchronous data parallelism); with k > 1 TensorFlow and PyTorch stay within the
cross-framework tolerance of each other (the arithmetic is matched: the same local steps, the weights divided by
the ranks and summed, on the same schedule), Horovod equals each framework's collective, the replicas end on the
same averaged weights, and the curve really differs from one device's (not judged against it). Bad k, one line:
tests/unit/test_local_sgd_input.py."""

from __future__ import annotations

import json

import numpy as np

from tests.helpers.cli import run_xfw


def compare(tmp_path, *sets: str, only: tuple[str, ...] = ()) -> dict:
    out = tmp_path / "cmp"
    args = [a for s in sets for a in ("--set", s)] + [a for run_id in only for a in ("--only", run_id)]
    proc = run_xfw("compare", "--strategy", "local-sgd", *args, "--out", str(out))
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return json.loads((out / "summary.json").read_text())


def test_averaging_every_step_is_synchronous_data_parallelism(tmp_path):
    # (Horovod's averaging equals the collectives' for every k: the next test)
    summary = compare(tmp_path, "sync.every_k_steps=1", "training.steps=40", only=("tf-local-sgd", "torch-local-sgd"))
    assert all(r["status"] == "ok" for r in summary["runs"]), [r.get("error") for r in summary["runs"]]
    judged = {(c["a"], c["b"]): c for c in summary["comparisons"]}
    for fw in ("tf", "torch"):
        against_one_device = judged[(f"{fw}-local-sgd", f"{fw}-single")]
        assert against_one_device["kind"] == "same_framework" and against_one_device["within_tolerance"] is True


def test_averaging_every_k_steps_matches_across_frameworks_and_engines(tmp_path):
    # 43 steps with k = 4: averaged after steps 0, 4, ..., 40 and, once more, after the last (42)
    summary = compare(tmp_path, "sync.every_k_steps=4", "training.steps=43")
    runs = {r["id"]: r for r in summary["runs"]}
    assert all(r["status"] == "ok" for r in runs.values()), [r.get("error") for r in runs.values()]
    judged = {(c["a"], c["b"]): c for c in summary["comparisons"]}
    across = judged[("tf-local-sgd", "torch-local-sgd")]
    assert across["kind"] == "cross_framework" and across["within_tolerance"] is True
    assert judged[("tf-local-sgd-horovod", "torch-local-sgd-horovod")]["within_tolerance"] is True
    for fw in ("tf", "torch"):
        # Horovod's allreduce of the weights and the framework's own collective: the same sums
        collective, horovod = (np.array(runs[f"{fw}-{name}"]["loss"]) for name in ("local-sgd", "local-sgd-horovod"))
        assert np.abs(collective - horovod).max() <= 1e-5 * np.abs(collective).max()
        against_one_device = judged[(f"{fw}-local-sgd", f"{fw}-single")]
        assert against_one_device["kind"] == "not_judged" and "every 4 steps" in against_one_device["note"]
        # another algorithm, really: the curves part by far more than rounding
        assert against_one_device["max_rel_loss_diff"] > 1e-3
        assert runs[f"{fw}-local-sgd"]["replica_weight_max_abs_diff"] == 0.0  # the final average
