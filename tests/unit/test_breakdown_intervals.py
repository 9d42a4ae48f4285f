"""Where the time goes, by hand: the interval arithmetic that splits a profiled step, and Horovod's timeline as xfw
reads it. The split each run of the shared mirrored compare reports: tests/frameworks/test_breakdown.py."""

import json

import pytest

from xfw.common.worker.breakdown import ENGINE_COMMUNICATION, merged, minus, step_breakdown, timeline_activities


def test_intervals_merge_and_subtract():
    assert merged([(3, 4), (0, 1), (0.5, 2), (2, 2.5)]) == [(0, 2.5), (3, 4)]
    assert minus([(0, 10)], [(1, 2), (5, 7)]) == [(0, 1), (2, 5), (7, 10)]
    assert minus([(0, 1), (4, 6)], [(0.5, 5)]) == [(0, 0.5), (5, 6)]


def test_overlapping_time_goes_to_communication_and_is_reported():
    events = {
        "compute": [(0.0, 4.0), (1.0, 2.0)],  # nested ops count once
        "communication": [(3.0, 5.0)],  # one second of it under compute
        "update": [(5.0, 6.0)],
    }
    b = step_breakdown(events, wall_s=8.0, input_wait_s=0.5, steps=2)
    assert b["compute_s"] == pytest.approx(1.5)  # (4 - 1 overlapped with communication) / 2 steps
    assert b["communication_s"] == pytest.approx(1.0)
    assert b["update_s"] == pytest.approx(0.5)
    assert b["input_s"] == pytest.approx(0.25)
    assert b["overlap_s"] == pytest.approx(0.5)
    assert b["rest_s"] == pytest.approx((8.0 - 3.0 - 2.0 - 1.0 - 0.5) / 2)
    assert b["step_s"] == 4.0


def test_horovod_activity_the_profiler_cannot_see_is_communication():
    unseen = step_breakdown({"compute": [(0, 1)], ENGINE_COMMUNICATION: [(100, 103)]}, 5.0, 0.0, 1)
    assert unseen["communication_s"] == 3.0 and unseen["rest_s"] == 1.0
    # torch: the step's wait in synchronize is seen; Horovod ran longer, behind the backward pass
    seen = step_breakdown({"communication": [(2, 3)], ENGINE_COMMUNICATION: [(100, 103)]}, 5.0, 0.0, 1)
    assert seen["communication_s"] == 1.0 and seen["overlap_s"] == 2.0


def test_a_horovod_timeline_is_read_to_its_top_level_activities():
    events = [
        {"name": "process_name", "ph": "M", "pid": 0, "args": {"start_time_since_epoch_in_micros": 1}},
        {"ph": "B", "name": "NEGOTIATE_ALLREDUCE", "ts": 10, "pid": 1},
        {"ph": "E", "ts": 20, "pid": 1},
        {"ph": "B", "name": "ALLREDUCE", "ts": 30, "pid": 1},
        {"ph": "B", "name": "GLOO_ALLREDUCE", "ts": 31, "pid": 1},
        {"ph": "E", "ts": 39, "pid": 1},
        {"ph": "E", "ts": 40, "pid": 1},
        {"ph": "B", "name": "ALLREDUCE", "ts": 35, "pid": 2},
        {"ph": "E", "ts": 50, "pid": 2},
    ]
    text = "[\n" + ",\n".join(json.dumps(e) for e in events) + ","  # as Horovod leaves it while running
    assert timeline_activities(text) == [(10e-6, 20e-6), (30e-6, 40e-6), (35e-6, 50e-6)]
