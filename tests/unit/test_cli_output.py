"""What xfw shows besides the data files: `xfw list`, the progress lines, the report's failure section. In-process
(no framework, no worker): milliseconds."""

import io
import json

from rich.console import Console

from tests.helpers.cli import assert_one_line_error, xfw_in_process
from tests.helpers.records import result
from xfw.cli.progress import RichProgress
from xfw.common.plan.machine import this_machine
from xfw.common.plan.registry import REGISTRY
from xfw.common.records import FailedRun, MachineInfo, SkippedRun, Summary
from xfw.common.report.comparison import write_report
from xfw.common.spec.config import load_config


def test_list_names_every_implementation_and_whether_it_runs_here():
    proc = xfw_in_process("list")
    assert proc.returncode == 0, proc.stderr
    for impl in REGISTRY:
        assert impl.name in proc.stdout, impl.id
    if this_machine().gpus == 0:  # nn.DataParallel needs GPUs: said, with the reason, in its row
        row = next(line for line in proc.stdout.splitlines() if "data-parallel" in line)
        assert "no: " in row and "GPU" in row, row
    assert proc.stdout.count("│ yes ") >= 9  # the CPU implementations of the mirrored strategy at least


def test_progress_lines_say_what_ended_how_and_in_how_long():
    out = io.StringIO()
    console = Console(file=out, width=200, force_terminal=False)
    with RichProgress(console) as progress:
        progress.start("tf-single", 300)
        progress.update(150)
        progress.finish("tf-single", "ok", "1,234 samples/s")
        progress.start("torch-ddp", 300)
        progress.finish("torch-ddp", "failed", "process 1 exited with status 1")
        progress.finish("torch-data-parallel", "skipped", "needs 2 GPUs")
        progress.note("torch-ddp: a rendezvous port was taken; trying once more with other ports")
    lines = out.getvalue().splitlines()
    assert lines[0].startswith("ok tf-single in ") and lines[0].endswith(" s: 1,234 samples/s"), lines
    assert lines[1].startswith("FAILED torch-ddp in ") and lines[1].endswith(": process 1 exited with status 1")
    assert lines[2] == "skipped torch-data-parallel: needs 2 GPUs"  # no time: it never started
    assert lines[3].startswith("note torch-ddp: a rendezvous port was taken")


def test_report_lists_failures_with_their_log_tail(tmp_path):
    base = dict(framework="torch", strategy="mirrored", launcher="torchrun", description="d")
    summary = Summary(
        strategy="mirrored",
        created="2026-11-26T00:00:00+00:00",
        repeats=1,
        timeout_s=60,
        machine=MachineInfo(cpu_cores=2, gpus=0),
        config=load_config().model_dump(mode="json"),
        runs=[
            FailedRun(
                id="torch-ddp", implementation="ddp", error="rank 1 crashed\nTraceback ...\nRuntimeError: x", **base
            ),
            SkippedRun(id="torch-data-parallel", implementation="data-parallel", reason="needs 2 GPUs", **base),
        ],
    )
    report = write_report(summary, tmp_path).read_text()
    assert "## Failures" in report and "### torch-ddp" in report
    assert "RuntimeError: x" in report.split("## Failures")[1]  # the log's tail, under the failure
    assert "needs 2 GPUs" in report


def test_a_result_that_does_not_validate_is_named_by_its_field(tmp_path):
    # A hand-edited result.json: the refusal names the field and the rule, in one line.
    data = result("tf-a", [1.0]).to_json()
    data["work_split"] = [
        {"replica": 0, "process": 0, "device": "cpu", "steps": 3, "samples_per_step": 10, "checksum": "zz"}
    ]
    bad = tmp_path / "result.json"
    bad.write_text(json.dumps(data))
    proc = xfw_in_process("diff", str(bad), str(bad))
    assert_one_line_error(proc, f"{bad} is not an xfw result: work_split.0.checksum: String should match pattern")
