"""Learning-rate schedules, tabulated once per run: the rate used at each step, as float64. Both frameworks read
this table (Keras through a LearningRateSchedule, torch through LambdaLR), so a schedule can never be evaluated
differently on the two sides; what still differs is how each optimizer uses a changing rate
(common/spec/semantics.py)."""

from __future__ import annotations

import numpy as np

from xfw.common.spec.config import ScheduleConfig


def learning_rates(lr: float, schedule: ScheduleConfig, steps: int) -> np.ndarray:
    """The learning rate of each of `steps` steps (index 0 is the first update)."""
    t = np.arange(steps, dtype=np.float64)
    if schedule.kind == "constant":
        return np.full(steps, lr)
    if schedule.kind == "step":
        return lr * schedule.gamma ** np.floor(t / schedule.every)
    # warmup_cosine: (step + 1) / warmup_steps of lr while warming up, so that the first update is not zero
    warm = schedule.warmup_steps
    final = lr * schedule.final_ratio
    progress = np.clip((t - warm) / max(1, steps - 1 - warm), 0.0, 1.0)
    cosine = final + (lr - final) * 0.5 * (1.0 + np.cos(np.pi * progress))
    return np.where(t < warm, lr * (t + 1) / max(1, warm), cosine)
