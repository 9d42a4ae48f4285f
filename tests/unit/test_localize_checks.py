"""`xfw localize`'s checks on constructed tensors: a pooling window's near-tie broken the other way, a difference on
the padded border only, rounding that grows step by step against a jump in one step. The replays themselves:
tests/frameworks/test_localize.py."""

from __future__ import annotations

import numpy as np


def test_kink_padding_and_rounding_checks_on_constructed_tensors():
    from xfw.common.localize.replay import StepTable, TensorDiff, border_check, pool_switches, rounding_growth

    rng = np.random.default_rng(0)
    x = rng.normal(size=(2, 4, 4, 3)).astype(np.float32)
    x[0, 0:2, 0:2, 2] = [[3.0, 3.0 - 1e-6], [0.2, 0.3]]  # a near-tie in one pooling window
    y = x.copy()
    y[0, 0:2, 0:2, 2] = [[3.0 - 1e-6, 3.0], [0.2, 0.3]]  # broken the other way in the other run
    switches = pool_switches("pool0", x, y)
    assert (switches.switched, switches.windows) == (1, 2 * 2 * 2 * 3)
    assert switches.largest_switched_gap <= 1e-4 * switches.median_gap
    assert pool_switches("pool0", x, x).switched == 0

    border = y.copy()
    border[:, 0, :, :] += 0.5  # the top row only: what another padding convention does
    check = border_check("conv0", x, border, 1e-5, None)
    assert check.over > 0 and check.on_border == check.over
    inside = x.copy()
    inside[:, 1:3, 1:3, :] += 0.5
    assert border_check("conv0", x, inside, 1e-5, None).on_border == 0

    first = TensorDiff(kind="gradient", name="dense0/kernel", relative=2e-5)
    smooth = StepTable(kind="gradient", name="dense0/kernel", relative={0: 1e-7, 50: 1e-6, 100: 2e-5})
    jump = StepTable(kind="gradient", name="dense0/kernel", relative={0: 1e-7, 50: 1e-7, 51: 2e-5})
    assert rounding_growth(first, [smooth], 100).is_rounding
    assert not rounding_growth(first, [jump], 51).is_rounding  # a 200x jump in one step is an event
