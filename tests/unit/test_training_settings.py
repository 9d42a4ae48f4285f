"""Issue 12, point 5, without a run: the learning-rate schedules by hand (one table, common/spec/schedules.py), and
the settings refused in one line or skipped with the reason (clipping where stages clip apart, accumulation that
does not divide a replica's batch, weak and strong scaling together). The features trained:
tests/frameworks/test_training_features.py."""

import numpy as np
import pytest

from xfw.common.spec.config import ScheduleConfig, load_config
from xfw.common.spec.schedules import learning_rates


def test_schedules_by_hand():
    warm = learning_rates(1.0, ScheduleConfig(kind="warmup_cosine", warmup_steps=4, final_ratio=0.1), 13)
    assert warm[:4].tolist() == [0.25, 0.5, 0.75, 1.0]
    # cosine from step 4 (1.0) to the last, step 12 (0.1): half-way, step 8, is the mean
    assert warm[4] == 1.0 and warm[-1] == pytest.approx(0.1) and warm[8] == pytest.approx(0.55)
    assert (np.diff(warm[4:]) < 0).all()
    step = learning_rates(0.5, ScheduleConfig(kind="step", every=3, gamma=0.5), 7)
    assert step.tolist() == [0.5, 0.5, 0.5, 0.25, 0.25, 0.25, 0.125]
    assert (learning_rates(0.3, ScheduleConfig(), 5) == 0.3).all()


def test_clipping_is_refused_where_stages_clip_apart():
    cfg = load_config("configs/transformer.yaml", ["training.clip_global_norm=1.0"])
    from xfw.common.plan.refusals import model_unsupported
    from xfw.common.plan.registry import find

    assert "each stage's process" in model_unsupported(find("torch", "gpipe"), cfg)
    assert model_unsupported(find("tf", "gpipe"), cfg) is None  # one process, one optimizer over every stage


def test_accumulation_that_does_not_divide_a_replicas_batch_is_one_line():
    from tests.helpers.cli import assert_one_line_error, xfw_in_process

    proc = xfw_in_process("compare", "--strategy", "mirrored", "--set", "training.accumulation_steps=3")
    assert_one_line_error(proc, "training.accumulation_steps 3 does not divide each replica's batch (32 / 2")


def test_weak_and_strong_scaling_together_is_one_line():
    from tests.helpers.cli import assert_one_line_error, xfw_in_process

    proc = xfw_in_process(
        "compare",
        "--strategy",
        "mirrored",
        "--set",
        "training.per_replica_batch=8",
        "--set",
        "training.global_batch=64",
    )
    assert_one_line_error(
        proc, "training.global_batch 64 is not training.per_replica_batch 8 x parallel.replicas 2: set one of them"
    )
