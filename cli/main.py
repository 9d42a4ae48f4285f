"""`xfw list`, `xfw run`, `xfw compare`, `xfw diff`, `xfw study`. Thin: parsing and printing; the work is in xfw.common.

Bad input ends as one line `xfw: error: ...` and exit status 2, never a traceback."""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import os
import sys
from pathlib import Path

import click
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from xfw.cli.progress import RichProgress, StudyProgress
from xfw.common.errors import UserError
from xfw.common.execute import runner
from xfw.common.execute.executor import FailureKind, RunFailure, execute
from xfw.common.execute.local import LocalExecutor
from xfw.common.execute.orchestrate import compare_strategy, preflight, run_replicas
from xfw.common.execute.outdir import OutputError, claim
from xfw.common.judge.diff import diff_runs
from xfw.common.plan import refusals, registry
from xfw.common.plan.launch import under_engine_launcher
from xfw.common.plan.machine import this_machine as machine_of_here
from xfw.common.plan.registry import run_processes
from xfw.common.plan.runspec import RunSpec
from xfw.common.records import NetworksResult, read_result
from xfw.common.report.comparison import print_tables, write_report
from xfw.common.spec.config import config_for_replicas, load_config
from xfw.common.strategies.base import Launcher
from xfw.common.worker.loop import write_json_atomic

config_options = [
    click.option(
        "--config",
        "config_path",
        type=click.Path(dir_okay=False),
        help="YAML run config (default: configs/default.yaml).",
    ),
    click.option(
        "--set",
        "overrides",
        multiple=True,
        metavar="KEY=VALUE",
        help="Override a config key, e.g. --set training.steps=100.",
    ),
    click.option("--replicas", type=click.IntRange(min=1), help="Data-parallel replicas (parallel.replicas)."),
    click.option(
        "--timeout",
        "timeout_s",
        type=click.FloatRange(min=0, min_open=True),
        help="Per-run deadline in seconds (runtime.timeout_s).",
    ),
]


def table_console() -> Console:
    # On a terminal rich uses its width; piped into a file or CI log, 80 columns would fold every cell.
    console = Console()
    return console if console.is_terminal else Console(width=180)


def with_config_options(fn):
    for option in reversed(config_options):
        fn = option(fn)
    return fn


@click.group()
def cli() -> None:
    """Run one training configuration under TensorFlow and PyTorch parallel strategies and diff them."""


@cli.command("list")
@config_options[0]
@config_options[1]
def list_cmd(config_path, overrides) -> None:
    """Every (framework, strategy, implementation), and whether it can run on this machine (with --config: this
    config's model and settings, e.g. a synchronised BatchNorm that some engines cannot do)."""
    machine = machine_of_here()
    defaults = load_config(config_path, overrides)
    table = Table(
        title=f"xfw implementations on this machine ({machine.cpu_cores} CPU cores, {machine.gpus} GPUs)",
        title_justify="left",
    )
    for h in ("framework", "strategy", "implementation", "launcher", "runs here", "what it is"):
        table.add_column(h, overflow="fold")
    for impl in registry.REGISTRY:
        devices = registry.run_devices(impl, defaults)
        reason = refusals.unavailable_reason(impl, machine, devices, defaults if config_path or overrides else None)
        table.add_row(
            impl.framework,
            impl.strategy,
            impl.name,
            impl.launcher,
            "yes" if reason is None else f"no: {reason}",
            impl.description,
        )
    table_console().print(table)


@cli.command()
@click.option("--framework", required=True, help="tf or torch.")
@click.option("--impl", "implementation", required=True, help="Implementation name, as `xfw list` shows it.")
@with_config_options
@click.option(
    "--out",
    "out_dir",
    type=click.Path(file_okay=False),
    help="Where result.json goes (default: runs/<framework>-<impl>).",
)
def run(framework, implementation, config_path, overrides, replicas, timeout_s, out_dir) -> None:
    """Run one implementation. Under horovodrun, torchrun or TF_CONFIG it acts as that launcher's worker."""
    impl = registry.find(framework, implementation)
    launcher = under_engine_launcher()
    config = load_config(config_path, overrides, replicas)
    if launcher and replicas is None and impl.kind.data_parallel:
        # The launcher's world size decides the data-parallel replicas: the count whose run has that many
        # processes (hybrid: replicas x stages; parameter servers: workers + servers).
        world = _launcher_world_size(launcher)
        fits = (load_config(config_path, overrides, r) for r in range(1, world + 1))
        config = next((c for c in fits if run_processes(impl, c) == world), None) or _no_replicas_for(impl, world)
    out = Path(out_dir or f"runs/{impl.id}").resolve()
    preflight(config, impl.strategy)
    config = config_for_replicas(config, run_replicas(impl, config))  # weak scaling: this run's global batch
    spec = RunSpec(config, impl.framework, impl.strategy, impl.name, str(out))
    if launcher:
        if launcher != impl.launcher:
            raise UserError(f"{impl.id} is started by {impl.launcher}, not {launcher}")
        from xfw.cli.worker import launcher_rank, run_worker

        # Rank 0 alone writes into --out, so it alone holds the folder (the ranks share one command line).
        with claim(out) if launcher_rank() == 0 else contextlib.nullcontext():
            run_worker(spec, launcher)
        if launcher_rank() == 0:  # rank 0 wrote the result, after gathering every rank's
            sys.exit(
                print_result(impl.id, read_result(json.loads((out / "result.json").read_text())), out / "result.json")
            )
        return
    machine = machine_of_here()
    reason = refusals.unavailable_reason(impl, machine, spec.devices, config)
    if reason:
        raise UserError(f"{impl.id} cannot run here: {reason}")
    refusals.check_devices(impl, machine, config)
    console = Console(stderr=True)
    with claim(out), runner.deferred_signals(), RichProgress(console) as progress:
        progress.start(impl.id, config.training.steps)
        result = execute(LocalExecutor(machine), impl, spec, timeout_s or config.runtime.timeout_s, progress)
    if isinstance(result, RunFailure) and result.kind == FailureKind.INTERRUPTED:
        console.print(f"xfw: {escape(result.error)}", highlight=False)
        signum = runner.interrupted()
        assert signum is not None  # the run ended interrupted: by the stop signal noted
        sys.exit(128 + signum)
    if isinstance(result, RunFailure):  # the run failed
        console.print(f"[red]{impl.id} failed[/]: {escape(result.error)}", highlight=False)
        sys.exit(1)
    if result.teardown_error:
        console.print(
            f"[yellow]{impl.id}: a process failed after the result was written[/]: {escape(result.teardown_error)}",
            highlight=False,
        )
    sys.exit(print_result(impl.id, result, out / "result.json"))


def print_result(run_id: str, result, path: Path) -> int:
    """One line per trained network (or one), ending with where the result is; the exit status: 1 if diverged."""
    if isinstance(result, NetworksResult):
        for net in result.networks:
            final = "-" if net.loss is None else f"{net.loss[-1]:.6g}"
            click.echo(f"{run_id} {net.name}: final loss {final}, eval {net.eval}")
    else:
        click.echo(f"{run_id}: final loss {result.loss[-1]:.6g}, eval {result.eval}")
    if result.diverged_at_step is not None:
        click.echo(f"{run_id}: DIVERGED at step {result.diverged_at_step} (loss not finite)")
    click.echo(f"{run_id}: result: {path}")
    return 0 if result.diverged_at_step is None else 1


def _launcher_world_size(launcher: Launcher) -> int:
    if launcher == Launcher.HOROVODRUN:
        return int(os.environ.get("HOROVOD_SIZE", os.environ.get("OMPI_COMM_WORLD_SIZE", "1")))
    if launcher == Launcher.TORCHRUN:
        return int(os.environ["WORLD_SIZE"])
    return sum(len(tasks) for tasks in json.loads(os.environ["TF_CONFIG"])["cluster"].values())


def _no_replicas_for(impl, world: int):
    raise UserError(f"{impl.id} cannot run on {world} processes under this config (no replica count gives that many)")


@cli.command()
@click.option("--strategy", required=True, help=f"One of: {', '.join(registry.STRATEGIES)}.")
@with_config_options
@click.option(
    "--repeats",
    type=click.IntRange(min=1),
    default=1,
    show_default=True,
    help="Runs of each implementation; throughput is the median over all.",
)
@click.option(
    "--only",
    multiple=True,
    metavar="RUN_ID",
    help="Run only this implementation of the strategy (repeatable), e.g. --only torch-ddp.",
)
@click.option(
    "--localize",
    "localize_failures",
    is_flag=True,
    help="Where a comparison fails, replay its runs to find where they part (xfw localize; report section).",
)
@click.option(
    "--out", "out_dir", type=click.Path(file_okay=False), help="Output folder (default: runs/<strategy>-<time>)."
)
def compare(strategy, config_path, overrides, replicas, timeout_s, repeats, only, localize_failures, out_dir) -> None:
    """Run every available implementation of STRATEGY and each framework's single-device reference on one
    config, then diff them: table on stdout, summary.json and report.md (with plots) in --out."""
    registry.for_strategy(strategy)  # unknown strategy: error before anything else
    config = load_config(config_path, overrides, replicas)
    stamp = dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    out = Path(out_dir or f"runs/{strategy}-{stamp}")
    console = Console(stderr=True)
    # Ctrl-C, SIGTERM, SIGHUP: the run in flight is ended and recorded, the files are written, then exit 128+signal.
    with claim(out) as folder, runner.deferred_signals():  # no other xfw writes here meanwhile
        try:
            with RichProgress(console) as progress:
                summary = compare_strategy(
                    strategy,
                    config,
                    out,
                    repeats,
                    timeout_s or config.runtime.timeout_s,
                    LocalExecutor(machine_of_here()),
                    progress,
                    list(only),
                    folder,
                )
        except OutputError as err:
            click.echo(f"xfw: error: {err} (the summary.json there holds the runs finished before)", err=True)
            sys.exit(1)
        if localize_failures and not summary.interrupted:
            summary = localized(summary, config, out, console)
        folder.release_reserve()  # summary.json is complete: the report may use the space kept for it
        report = report_or_error(summary, out)
        print_tables(summary, table_console())
        for pair in summary.localizations or []:
            click.echo(f"localize {pair.a} vs {pair.b}: {pair.verdict}" + (f" ({pair.error})" if pair.error else ""))
        click.echo(f"summary: {out / 'summary.json'}\nreport:  {report or 'not written'}")
        if summary.interrupted:
            click.echo(f"xfw: {summary.interrupted}", err=True)
            signum = runner.interrupted()
            assert signum is not None  # summary.interrupted is written from the stop signal noted
            sys.exit(128 + signum)
    sys.exit(max(exit_status(summary), int(report is None)))


def localized(summary, config, out: Path, console):
    """compare --localize: the summary with where its failing comparisons part, written again."""
    from xfw.common.localize.replay import localize_failures

    try:
        with RichProgress(console) as progress:
            summary = localize_failures(summary, config, out, machine_of_here(), progress)
    except KeyboardInterrupt:  # the compare's runs are complete: only the localisation is lost
        signum = runner.interrupted()
        assert signum is not None  # under deferred_signals, run_trace raises it for a stop signal noted
        return summary.model_copy(update={"interrupted": f"{runner.interruption(signum)} while localising"})
    write_json_atomic(out / "summary.json", summary.to_json())
    return summary


@cli.command()
@click.argument("run_a", type=click.Path(exists=True, path_type=Path))
@click.argument("run_b", type=click.Path(exists=True, path_type=Path))
@click.option("--out", "out_dir", type=click.Path(file_okay=False), help="Also write summary.json and report.md here.")
def diff(run_a, run_b, out_dir) -> None:
    """Compare two finished runs (result.json files or run folders), e.g. from direct horovodrun / torchrun
    launches or from two compares, as `xfw compare` would. Their configs must match."""
    summary = diff_runs(run_a, run_b)
    report: Path | str | None = ""  # "": no --out; None: the report could not be written
    if out_dir:
        out = Path(out_dir)
        with claim(out):
            try:
                write_json_atomic(out / "summary.json", summary.to_json())
            except OSError as exc:
                raise UserError(f"cannot write {out / 'summary.json'}: {exc.strerror}") from None
            report = report_or_error(summary, out)
        if report:
            click.echo(f"report: {report}")
    print_tables(summary, table_console())
    sys.exit(max(exit_status(summary), int(report is None)))


@cli.command()
@click.argument("study_file", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--out", "out_dir", type=click.Path(file_okay=False), help="Output folder (default: runs/study-<name>).")
@click.option(
    "--resume", is_flag=True, help="Finish a study stopped before its end: run only its missing or failed cells."
)
def study(study_file, out_dir, resume) -> None:
    """Run a grid of matched comparisons (STUDY_FILE: workloads x axes x seeds) and decide between frameworks and
    engines with statistics: study.csv, study.json and study.md (with plots) in --out."""
    from xfw.common.report.study import write_outputs
    from xfw.common.study.grid import check_cells, claim_study, expand_cells, load_study, run_study, study_identity

    spec = load_study(study_file)
    cells = expand_cells(spec, study_file)
    machine = machine_of_here()
    planned = check_cells(spec, cells, machine)
    identity = study_identity(spec, cells)
    out = Path(out_dir or f"runs/study-{spec.name}")
    meta = {
        "file": str(study_file),
        "identity": identity,
        "machine": {"cpu_cores": machine.cpu_cores, "gpus": machine.gpus},
    }
    console = Console(stderr=True)
    with claim(out), runner.deferred_signals():
        claim_study(out, spec, identity, study_file, resume)

        def rebuild(records, stopped=None):
            try:
                return write_outputs(spec, cells, records, out, {**meta, "stopped": stopped})
            except OSError as exc:
                raise OutputError(f"cannot write the study's outputs: {exc.filename or out}: {exc.strerror}") from None

        try:
            with StudyProgress(console) as progress:
                records, stopped = run_study(
                    spec, cells, out, LocalExecutor(machine), progress, planned, on_cell=rebuild
                )
            report = rebuild(records, stopped)
        except OutputError as err:
            click.echo(f"xfw: error: {err} (each finished cell's cell.json is kept: --resume rebuilds)", err=True)
            sys.exit(1)
        for text in report.recommendations.values():
            click.echo(text + "\n")
        click.echo(f"study: {out / 'study.md'}\n       {out / 'study.csv'}\n       {out / 'study.json'}")
        if stopped:
            click.echo(
                f"xfw: study stopped: {stopped}; `xfw study {study_file} --out {out} --resume` finishes it", err=True
            )
            sys.exit(128 + (runner.interrupted() or 2))
    sys.exit(1 if report.cells_failed else 0)


@cli.command()
@click.argument("run_a")
@click.argument("run_b")
@config_options[0]
@config_options[1]
@click.option(
    "--tolerance",
    type=click.FloatRange(min=0, min_open=True),
    help="Relative difference that counts as parted (default: the pair's parity tolerance).",
)
@click.option("--every", type=click.IntRange(min=1), help="Compare weights every K steps (default: steps / 20).")
@click.option("--around", type=click.IntRange(min=0), default=2, show_default=True, help="Steps captured around.")
@click.option(
    "--at", "at_step", type=click.IntRange(min=0), help="Capture every tensor around this step (no scan for it)."
)
@click.option(
    "--out", "out_dir", type=click.Path(file_okay=False), help="Output folder (default: runs/localize-<time>)."
)
def localize(run_a, run_b, config_path, overrides, tolerance, every, around, at_step, out_dir) -> None:
    """Where two runs part: the first step, block output, gradient and update that differ. RUN_A and RUN_B are
    finished runs (result.json files or run folders, e.g. from a compare), or run ids (tf-single, torch-ddp, ...)
    trained with --config / --set. A data-parallel run is compared replica by replica: against a one-device run,
    each replica's block outputs against the rows of its block of the batch."""
    from xfw.common.judge.diff import config_differences, load_results
    from xfw.common.localize import replay as loc
    from xfw.common.spec.config import config_from_dict

    if Path(run_a).exists() or Path(run_b).exists():
        if config_path or overrides:
            raise UserError("--config and --set are for run ids; finished runs bring their own config")
        a, b = (load_results(Path(p))[0] for p in (run_a, run_b))
        differences = config_differences(a.config, b.config)
        if differences:
            raise UserError(f"the runs' configs differ in more than framework and implementation: {differences[0]}")
        config = config_from_dict(a.config)
        pair = [(r.framework, r.implementation) for r in (a, b)]
    else:
        config = load_config(config_path, overrides)
        pair = [(i.framework, i.name) for i in (registry.find_id(r) for r in (run_a, run_b))]
    kind = "cross_framework" if pair[0][0] != pair[1][0] else "same_framework"
    tolerance = tolerance or config.parity.tolerance(kind, "float32")
    every = every or max(1, config.training.steps // 20)
    stamp = dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    out = Path(out_dir or f"runs/localize-{stamp}")
    console = Console(stderr=True)
    with claim(out), runner.deferred_signals(), RichProgress(console) as progress:
        try:
            result = loc.localize(
                config,
                pair[0],
                pair[1],
                out,
                tolerance,
                every,
                around,
                machine_of_here(),
                progress,
                at=at_step,
            )
        except RuntimeError as err:
            click.echo(f"xfw: {str(err).splitlines()[0]}", err=True)
            sys.exit(1)
        except KeyboardInterrupt:
            click.echo("xfw: interrupted", err=True)
            sys.exit(128 + (runner.interrupted() or 2))
        loc.write_outputs(result, out)
    click.echo(result.verdict)
    click.echo(result.explanation)
    click.echo(f"localize: {out / 'localize.md'}")


def report_or_error(summary, out: Path) -> Path | None:
    """report.md and its plots, written after summary.json; a failure to write them is said in one line (the
    summary stays complete) and makes the exit status 1."""
    try:
        return write_report(summary, out)
    except OSError as exc:
        where = exc.filename or out
        click.echo(f"xfw: error: report not written: {where}: {exc.strerror} (summary.json is complete)", err=True)
        return None


def exit_status(summary) -> int:
    """1 when a run failed or diverged or a comparison is outside its tolerance; else 0."""
    failed_parity = [c for c in summary.comparisons if c.status == "ok" and c.within_tolerance is False]
    failed_runs = [r for r in summary.runs if r.status == "failed"]
    diverged = [
        r
        for r in summary.runs
        if r.status == "ok" and (r.diverged_at_step is not None or getattr(r, "non_finite_metrics", []))
    ]
    return 1 if failed_runs or failed_parity or diverged else 0


def main() -> None:
    try:
        cli.main(standalone_mode=False)
    except UserError as err:
        click.echo(f"xfw: error: {err}", err=True)
        sys.exit(2)
    except click.exceptions.Abort:
        click.echo("xfw: interrupted", err=True)
        sys.exit(130)
    except click.ClickException as err:  # usage errors: one line, status 2
        click.echo(f"xfw: error: {err.format_message()}", err=True)
        sys.exit(2)


if __name__ == "__main__":
    main()
