"""Parity through the real CLI: every data-parallel implementation against its framework's single-device
run, and TensorFlow against PyTorch. Losses are re-diffed here from the raw per-step lists, so the test
does not trust xfw's own comparison code."""

from tests.helpers.cli import load_summary, run_xfw
from tests.helpers.curves import max_rel
from tests.helpers.work_split import assert_replicas_split_the_batch
from xfw.common.plan.machine import this_machine
from xfw.common.plan.refusals import unavailable_reason
from xfw.common.plan.registry import for_strategy
from xfw.common.spec.config import Config


def test_every_available_implementation_ran(mirrored):
    proc, summary, _ = mirrored
    runs = {r["id"]: r for r in summary["runs"]}
    machine = this_machine()
    for impl in for_strategy("mirrored"):
        reason = unavailable_reason(impl, machine)
        if reason is None:
            assert runs[impl.id]["status"] == "ok", runs[impl.id].get("error")
        else:
            assert runs[impl.id] == runs[impl.id] | {"status": "skipped", "reason": reason}
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]


def test_data_parallel_matches_single_device(mirrored):
    _, summary, _ = mirrored
    runs = {r["id"]: r for r in summary["runs"]}
    checked = 0
    for r in summary["runs"]:
        if r["strategy"] == "mirrored" and r["status"] == "ok":
            assert len(r["loss"]) == 300
            assert max_rel(r["loss"], runs[f"{r['framework']}-single"]["loss"]) <= 1e-5, r["id"]
            checked += 1
    assert checked >= 7  # MirroredStrategy (custom loop and fit), MWMS, manual placement, DDP, all_reduce, Horovod x2


# Every CPU implementation of the mirrored strategy, and the references: a run that becomes skipped fails here.
EXPECTED_OK_ON_CPU = {
    "tf-single",
    "tf-mirrored-strategy",
    "tf-multi-worker",
    "tf-manual-placement",
    "tf-horovod",
    "tf-fit-mirrored",
    "torch-single",
    "torch-ddp",
    "torch-allreduce",
    "torch-horovod",
}
# Replicas in one process, each on a device of its own (placement, or MirroredStrategy's).
PLACED = {"tf-mirrored-strategy", "tf-manual-placement", "tf-fit-mirrored"}
# The two frameworks' custom loops on one device (`--strategy single` also runs Keras fit).
CUSTOM_LOOPS = ("--only", "tf-single", "--only", "torch-single")


def test_the_expected_implementations_ran(mirrored):
    _, summary, _ = mirrored
    status = {r["id"]: r["status"] for r in summary["runs"]}
    if this_machine().gpus == 0:
        assert {i for i, s in status.items() if s == "ok"} == EXPECTED_OK_ON_CPU, status
    else:
        assert {i for i, s in status.items() if s == "ok"} >= EXPECTED_OK_ON_CPU, status


def test_each_replica_trained_on_its_own_block(mirrored):
    # If every rank trained the whole global batch, the averaged gradients and the loss would equal the
    # single-device run: only what each replica was fed shows that the work was split.
    _, summary, _ = mirrored
    config = Config.model_validate(summary["config"])
    for r in summary["runs"]:
        if r["status"] != "ok":
            continue
        assert_replicas_split_the_batch(r, config)
        work = r["work_split"]
        if r["id"] in PLACED:
            assert len({w["device"] for w in work}) == r["replicas"] == 2, (r["id"], work)
        elif r["processes"] > 1:
            assert [w["process"] for w in work] == list(range(r["replicas"])), (r["id"], work)


def test_replicas_hold_identical_weights(mirrored):
    _, summary, _ = mirrored
    for r in summary["runs"]:
        if r["status"] == "ok":
            assert r["replica_weight_max_abs_diff"] == 0.0, r["id"]


def test_tf_and_torch_single_device_agree_for_the_mlp(mirrored):
    _, summary, _ = mirrored
    runs = {r["id"]: r for r in summary["runs"]}
    assert max_rel(runs["tf-single"]["loss"], runs["torch-single"]["loss"]) <= 1e-5
    assert runs["tf-single"]["loss"][-1] < 0.2 * runs["tf-single"]["loss"][0]  # it did train


def test_summary_schema_and_report(mirrored):
    _, summary, out = mirrored
    ok = next(r for r in summary["runs"] if r["status"] == "ok")
    for key in (
        "id",
        "framework",
        "strategy",
        "implementation",
        "status",
        "loss",
        "eval",
        "throughput_samples_per_s",
        "throughput_spread",
        "step_time_s",
        "peak_memory_bytes",
        "env",
        "flops",
    ):
        assert key in ok, key
    for key in ("framework_versions", "devices", "threads_per_replica", "precision", "determinism", "hyperparameters"):
        assert key in ok["env"], key
    cmp = next(c for c in summary["comparisons"] if c["status"] == "ok" and c["kind"] == "same_framework")
    for key in (
        "a",
        "b",
        "max_abs_loss_diff",
        "max_rel_loss_diff",
        "first_step_over_tolerance",
        "tolerance",
        "final_metric_diff",
        "throughput_ratio",
        "throughput_ratio_spread",
        "scaling_efficiency",
    ):
        assert key in cmp, key
    assert all(c["within_tolerance"] for c in summary["comparisons"] if c["status"] == "ok")
    for name in ("report.md", "loss.png", "loss_diff.png", "throughput.png"):
        assert (out / name).stat().st_size > 0, name


def test_table_printed(mirrored):
    proc, _, _ = mirrored
    for text in ("tf-mirrored-strategy", "torch-ddp", "tf-horovod", "torch-data-parallel", "PASS"):
        assert text in proc.stdout


def test_cnn_tf_vs_torch_and_under_ddp_and_mirrored_strategy(tmp_path):
    # The conv/flatten layout conversion: TF = torch on one device, and it also holds when the batch is split
    # across replicas (one compare: its single-device references are the TF vs torch pair).
    proc = run_xfw(
        "compare",
        "--strategy",
        "mirrored",
        "--config",
        "configs/cnn_digits.yaml",
        "--only",
        "tf-mirrored-strategy",
        "--only",
        "torch-ddp",
        "--out",
        str(tmp_path),
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    summary = load_summary(tmp_path)
    runs = {r["id"]: r for r in summary["runs"]}
    assert max_rel(runs["tf-single"]["loss"], runs["torch-single"]["loss"]) <= 1e-5
    assert runs["torch-single"]["eval"]["test_accuracy"] > 0.9
    for fw, impl in (("tf", "tf-mirrored-strategy"), ("torch", "torch-ddp")):
        assert max_rel(runs[impl]["loss"], runs[f"{fw}-single"]["loss"]) <= 1e-5
        assert_replicas_split_the_batch(runs[impl], Config.model_validate(summary["config"]))


def test_adam_divergence_is_measured_and_explained(tmp_path):
    proc = run_xfw(
        "compare", "--strategy", "single", *CUSTOM_LOOPS, "--config", "configs/adam.yaml", "--out", str(tmp_path)
    )
    summary = load_summary(tmp_path)
    (cmp,) = summary["comparisons"]
    # Keras and torch place Adam's epsilon differently: the curves drift apart beyond float noise...
    assert cmp["max_rel_loss_diff"] > 1e-5 and cmp["first_step_over_tolerance"] is not None
    # ...while still training the same model to nearly the same place.
    assert cmp["max_rel_loss_diff"] < 1e-2
    assert proc.returncode == 1  # a parity failure is reported as such
    report = (tmp_path / "report.md").read_text()
    assert "Adam epsilon is placed differently" in report
    hp = {r["framework"]: r["env"]["hyperparameters"]["optimizer"] for r in summary["runs"]}
    assert hp["tf"]["epsilon"] == hp["torch"]["eps"] == 1e-7


def test_tf_vs_torch_other_optimizer_and_loss_settings(tmp_path):
    # Nesterov momentum and cross-entropy on classes, mapped to each framework's own (one compare for both).
    overrides = ["optimizer.nesterov=true", "data.kind=synthetic_classification", "loss=cross_entropy"]
    args = [a for o in overrides for a in ("--set", o)]
    proc = run_xfw("compare", "--strategy", "single", *CUSTOM_LOOPS, *args, "--out", str(tmp_path))
    assert proc.returncode == 0, proc.stderr[-3000:]
    runs = {r["id"]: r for r in load_summary(tmp_path)["runs"]}
    assert max_rel(runs["tf-single"]["loss"], runs["torch-single"]["loss"]) <= 1e-5
