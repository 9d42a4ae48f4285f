"""The statistics of a study (scipy.stats), on plain arrays so that they can be tested on synthetic measurements.

- throughput: a bootstrap confidence interval of the ratio of two implementations' median samples/s (timing
  windows of all their processes pooled), and a noise floor: how far apart the same implementation landed in
  separate processes. A difference is called only when the interval excludes 1 AND the ratio is beyond the floor.
- convergence: two one-sided t-tests (TOST) on the per-seed differences of a final metric, paired by seed (the same
  seed gives both implementations the same data, order and initial weights).
- time to target: the first step at which the smoothed training loss (or a test metric) reaches a target."""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt
from scipy import stats

# Bootstrap resamples: enough that the interval's ends move by well under the noise floor between two studies.
BOOTSTRAP_RESAMPLES = 4000
# The bootstrap is seeded: a study rebuilt from the same cell results (--resume) prints the same intervals.
BOOTSTRAP_SEED = 0


@dataclass(frozen=True)
class RatioEstimate:
    ratio: float  # median(a) / median(b)
    low: float  # confidence interval of the ratio
    high: float
    noise_floor: float  # the larger change seen between two processes running the same implementation
    verdict: str  # "faster", "slower" (a against b) or "no clear difference"


def median_ratio_ci(a: np.ndarray, b: np.ndarray, confidence: float) -> tuple[float, float, float]:
    """median(a) / median(b) and its percentile-bootstrap interval, a and b resampled independently."""
    a, b = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    ratio = float(np.median(a) / np.median(b))
    if np.ptp(a) == 0 and np.ptp(b) == 0:  # nothing to resample: the interval is the point
        return ratio, ratio, ratio

    def statistic(x, y, axis=-1):
        return np.median(x, axis=axis) / np.median(y, axis=axis)

    result = stats.bootstrap(
        (a, b),
        statistic,
        vectorized=True,
        paired=False,
        confidence_level=confidence,
        n_resamples=BOOTSTRAP_RESAMPLES,
        method="percentile",
        rng=np.random.default_rng(BOOTSTRAP_SEED),
    )
    return ratio, float(result.confidence_interval.low), float(result.confidence_interval.high)


def noise_floor(process_medians: list[list[float]]) -> float | None:
    """The largest relative change between two processes of the same implementation (max / min - 1 over each
    implementation's per-process medians, the largest over implementations); None when no implementation was
    measured twice."""
    spreads = [max(m) / min(m) - 1 for m in process_medians if len(m) >= 2]
    return max(spreads) if spreads else None


def throughput_verdict(ratio: float, low: float, high: float, floor: float) -> str:
    """a against b: "faster" only when the whole interval is above 1 and a beats b by more than the noise floor
    (symmetrically for "slower"); anything else could be this machine's run-to-run noise."""
    if low > 1 and ratio - 1 > floor:
        return "faster"
    if high < 1 and 1 / ratio - 1 > floor:
        return "slower"
    return "no clear difference"


def compare_throughput(a: np.ndarray, b: np.ndarray, floor: float, confidence: float) -> RatioEstimate:
    ratio, low, high = median_ratio_ci(a, b, confidence)
    return RatioEstimate(ratio, low, high, floor, throughput_verdict(ratio, low, high, floor))


@dataclass(frozen=True)
class Equivalence:
    seeds: int  # paired seeds tested
    mean_difference: float  # a - b, averaged over seeds
    p_value: float | None  # the larger of the two one-sided p-values (None: not tested)
    equivalent: bool | None  # None: fewer than two seeds, no test possible
    method: str


def tost_paired(a: np.ndarray, b: np.ndarray, margin: float, alpha: float) -> Equivalence:
    """Two one-sided tests on the paired differences d = a - b: H0 |mean d| >= margin is rejected (equivalent)
    when both d > -margin and d < margin are significant at alpha."""
    d = np.asarray(a, dtype=float) - np.asarray(b, dtype=float)
    mean = float(np.mean(d)) if d.size else float("nan")
    if d.size < 2:
        return Equivalence(int(d.size), mean, None, None, "not tested: needs two or more seeds")
    if np.ptp(d) == 0:
        # Every seed gave the same difference (e.g. identical curves): no variance to test; the difference is exact.
        inside = abs(mean) < margin
        return Equivalence(int(d.size), mean, 0.0 if inside else 1.0, inside, "exact: every seed's difference equal")
    with warnings.catch_warnings():  # near-identical differences: scipy warns of precision loss, the test stands
        warnings.simplefilter("ignore", RuntimeWarning)
        lower = stats.ttest_1samp(d, -margin, alternative="greater").pvalue
        upper = stats.ttest_1samp(d, margin, alternative="less").pvalue
    p = float(max(lower, upper))
    return Equivalence(int(d.size), mean, p, p < alpha, f"TOST, paired t-tests over {d.size} seeds")


def smoothed(loss: np.ndarray, window: int) -> np.ndarray:
    """Trailing mean over `window` steps; NaN for the first window - 1 steps (not enough history yet)."""
    loss = np.asarray(loss, dtype=float)
    out = np.full(loss.shape, np.nan)
    if window <= len(loss):
        sums = np.convolve(loss, np.ones(window), mode="valid") / window
        out[window - 1 :] = sums
    return out


def first_reach(values: npt.ArrayLike, target: float, below: bool) -> int | None:
    """The first index whose value is at or beyond the target (<= when `below`), or None (NaN never reaches)."""
    values = np.asarray(values, dtype=float)
    with np.errstate(invalid="ignore"):
        hit = values <= target if below else values >= target
    where = np.flatnonzero(hit)
    return int(where[0]) if where.size else None


def step_end_times(warmup_steps: int, warmup_s: float, windows: list[tuple[int, float]]) -> np.ndarray:
    """Seconds from the first step's start to the end of every step. xfw keeps the warm-up's total and each timed
    window's: a window's steps are spread evenly over it; in warm-up, every step but the first takes the timed
    steps' mean time and the first the rest (where tracing and compiling happen)."""
    timed_steps = sum(steps for steps, _ in windows)
    steady = sum(seconds for _, seconds in windows) / timed_steps if timed_steps else 0.0
    first = max(warmup_s - (warmup_steps - 1) * steady, 0.0) if warmup_steps else 0.0
    later = (warmup_s - first) / (warmup_steps - 1) if warmup_steps > 1 else 0.0
    durations = [first] * min(warmup_steps, 1) + [later] * max(warmup_steps - 1, 0)
    for steps, seconds in windows:
        durations += [seconds / steps] * steps
    return np.cumsum(durations)
