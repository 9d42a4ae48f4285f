"""Loss curves re-diffed from the raw per-step lists, not through xfw's comparison code."""

import numpy as np


def max_rel(a, b):
    a, b = np.asarray(a), np.asarray(b)
    return float((np.abs(a - b) / np.maximum(np.abs(a), np.abs(b))).max())
