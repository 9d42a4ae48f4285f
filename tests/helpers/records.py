"""Hand-made run records with known timings, for the judgements and the report (tests/unit/test_judgements.py,
tests/unit/test_cli_output.py): pure Python, no framework."""

from xfw.common.records import RunBase, RunResult

BATCH = 10


def base(run_id: str, strategy: str = "mirrored") -> RunBase:
    fw = run_id.split("-")[0]
    return RunBase(id=run_id, framework=fw, strategy=strategy, implementation="x", launcher="process", description="")


def result(run_id: str, seconds: list[float], loss=(1.0, 0.5, 0.25), strategy: str = "mirrored") -> RunResult:
    """A run whose timed windows each took `seconds[i]` for 10 steps of 10 samples (100 samples / seconds)."""
    return RunResult(
        id=run_id,
        framework=run_id.split("-")[0],
        strategy=strategy,
        implementation="x",
        loss=list(loss),
        replicas=1,
        devices=1,
        processes=1,
        replica_weight_max_abs_diff=0.0,
        peak_memory_bytes=1,
        peak_memory_per_process=[1],
        peak_memory_kind="rss",
        timing={
            "global_batch": BATCH,
            "warmup_steps": 1,
            "warmup_s": 0.1,
            "windows": [{"steps": 10, "seconds": s} for s in seconds],
        },
        model={"parameters": 1, "training_flops_per_sample": 6},
        eval={"test_loss": 0.3},
        env={},
        peak_flops_per_s=1e9,
    )
