"""Where the time goes: the split every single-device and data-parallel run of the shared mirrored compare reports
(the interval arithmetic and the Horovod timeline by hand: tests/unit/test_breakdown_intervals.py)."""


def test_every_profiled_run_splits_its_step(mirrored):
    _, summary, out = mirrored
    ok = [r for r in summary["runs"] if r["status"] == "ok"]
    assert ok
    for r in ok:
        b = r["step_breakdown"]
        assert b is not None and b["steps"] == 3, r["id"]
        parts = sum(b[f"{p}_s"] for p in ("compute", "communication", "update", "input", "rest"))
        assert parts >= b["step_s"] * (1 - 1e-9), r["id"]  # every part measured; rest fills up to the step
        assert b["compute_s"] > 0, r["id"]
        if r["processes"] > 1 or r["replicas"] > 1:
            # every data-parallel engine's gradient all-reduce is seen: collectives, Horovod's timeline, DDP buckets
            assert b["communication_s"] > 0, r["id"]
        else:
            assert b["communication_s"] == 0, r["id"]
    report = (out / "report.md").read_text()
    assert "## Where the time goes" in report and (out / "breakdown.png").exists()
