"""`xfw localize A B`: where two runs part. Both are replayed from their config (the same initial weights, data and
sample order) by a trace worker of their framework (tf_impl/trace.py, torch_impl/trace.py), in two passes:

    1. scan: every run's weights at every K-th step   -> the first checkpoint whose weights differ: the interval
    2. zoom: every tensor at each step of that interval (and a few around it): block outputs in forward order,
       the loss, gradients from the loss backwards, the optimizer's state and the update
                                                      -> the first step, the first block, the first gradient

Differences are relative: max |a - b| over a tensor / the larger of the two tensors' largest magnitude. Each
explanation is backed by a check on the captured tensors (relu_flips: units on in one run and off in the other).
Outputs: localize.json, localize.md, localize.png in --out; the command prints one verdict line."""

from __future__ import annotations

import json
import uuid
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np

from xfw.common.errors import UserError
from xfw.common.plan.registry import REGISTRY, find, find_id
from xfw.common.plan.runspec import RunSpec
from xfw.common.record_types import Record
from xfw.common.spec.config import Config
from xfw.common.worker.loop import write_json_atomic

TRACE_FILE = "trace.json"  # written last by a trace worker: the parent's sign that it finished
# What a trace holds per captured step, under these key prefixes (npz keys "<prefix>|<name>").
WEIGHTS, ACTIVATIONS, GRADIENTS, STATE, UPDATE = "w", "a", "g", "s", "u"


# ---- the trace worker's side -------------------------------------------------------------------------------


class TraceWriter:
    """What a trace worker records for one replica, as run.trace asks: {"every": K, "capture": [first, last] or
    None}. Weights before every K-th step (and before each captured step), everything at the captured steps, the
    loss of every step. One .npz per step in <out>/trace/r<replica>/, then its losses.json; write_meta() after
    every replica's close() (a barrier apart where replicas are processes)."""

    def __init__(self, run: RunSpec, replica: int = 0):
        self.out = replica_folder(Path(run.out_dir), replica)
        self.out.mkdir(parents=True, exist_ok=True)
        assert run.trace is not None  # a trace worker's run: trace_spec sets what it records
        self.every = int(run.trace["every"])
        self.capture = run.trace.get("capture")
        self.losses: list[float] = []
        self.pending: dict[str, np.ndarray] = {}
        self.params: list[str] = []

    def captures(self, k: int) -> bool:
        return self.capture is not None and self.capture[0] <= k <= self.capture[1]

    def wants_weights(self, k: int) -> bool:
        """Weights before step k, and its gradients: at every checkpoint and every captured step."""
        return k % self.every == 0 or self.captures(k)

    def weights(self, k: int, values: dict[str, np.ndarray]) -> None:
        self.params = list(values)
        self._before = values
        self.pending.update({f"{WEIGHTS}|{n}": v for n, v in values.items()})

    def gradients(self, k: int, values: dict) -> None:
        self.pending.update({f"{GRADIENTS}|{n}": np.asarray(v) for n, v in values.items()})

    def step(self, k: int, activations: dict, after: dict, optimizer_state: dict) -> None:
        self.pending.update({f"{ACTIVATIONS}|{n}": np.asarray(v) for n, v in activations.items()})
        self.pending.update({f"{STATE}|{n}": np.asarray(v) for n, v in optimizer_state.items()})
        self.pending.update({f"{UPDATE}|{n}": after[n] - self._before[n] for n in after})

    def loss(self, k: int, value: float) -> None:
        self.losses.append(value)
        if self.pending:
            self._flush(k)

    def _flush(self, k: int) -> None:
        # numpy's stub: the keyword arrays could fill savez's allow_pickle (no key is named so).
        np.savez(self.out / f"step-{k:06d}.npz", **self.pending)  # type: ignore[arg-type]
        self.pending = {}

    def close(self) -> None:
        if self.pending:  # the weights after the last step
            self._flush(len(self.losses))
        write_json_atomic(self.out / "losses.json", self.losses)

    def write_meta(self, blocks: list[str], replicas: int) -> None:
        """The trace's description, written last (by replica 0): the parent's sign that the trace is complete."""
        meta = {"blocks": blocks, "params": self.params, "every": self.every, "replicas": replicas}
        write_json_atomic(Path(self.out).parent.parent / TRACE_FILE, meta)


def replica_folder(out: Path, replica: int) -> Path:
    return out / "trace" / f"r{replica}"


# ---- the parent's side: running the traces -----------------------------------------------------------------


class Trace:
    """A finished trace, read back: the run's loss per step (the mean of its replicas' losses: each replica's is
    the mean over an equal block of the batch), and each replica's recorded tensors on demand."""

    def __init__(self, folder: Path):
        self.folder = folder
        meta = json.loads((folder / TRACE_FILE).read_text())
        self.replicas: int = meta["replicas"]
        per_replica = [
            json.loads((replica_folder(folder, r) / "losses.json").read_text()) for r in range(self.replicas)
        ]
        self.losses = np.mean(np.array(per_replica, dtype=np.float64), axis=0)
        self.blocks: list[str] = meta["blocks"]
        self.params: list[str] = meta["params"]

    def steps(self) -> list[int]:
        return sorted(int(p.stem.split("-")[1]) for p in replica_folder(self.folder, 0).glob("step-*.npz"))

    def tensors(self, k: int, replica: int = 0) -> dict[str, np.ndarray]:
        with np.load(replica_folder(self.folder, replica) / f"step-{k:06d}.npz") as data:
            return {key: data[key] for key in data.files}


def run_trace(run: RunSpec, timeout_s: float, machine, progress) -> Trace:
    """One trace worker, launched as its implementation's runs are; the trace, or a UserError-free failure as
    RuntimeError with the root cause."""
    from xfw.common.execute import runner
    from xfw.common.plan import launch

    run_dir = Path(run.out_dir)
    run_json = run.write(run_dir / "run.json")
    token = uuid.uuid4().hex
    plan = launch.plan(run.impl, run, run_json, machine, token)
    progress.start(f"{run.id} trace", run.config.training.steps)
    outcome = runner.execute(plan, run_dir, timeout_s, token, None, run_dir / TRACE_FILE)
    if outcome.interrupted is not None:
        raise KeyboardInterrupt
    if not (run_dir / TRACE_FILE).exists():
        progress.finish(f"{run.id} trace", "failed", outcome.error(timeout_s).splitlines()[0])
        raise RuntimeError(f"the {run.id} replay failed: {outcome.error(timeout_s)}")
    progress.finish(f"{run.id} trace", "ok", str(run_dir))
    return Trace(run_dir)


# ---- differences -------------------------------------------------------------------------------------------


def relative_difference(a: np.ndarray, b: np.ndarray, against: np.ndarray | None = None) -> float:
    """max |a - b| / max(max |a|, max |b|) (and max |against|, where given): 0 for equal tensors, ~1e-7 for float32
    rounding, 1 for unrelated ones; inf where the shapes differ, nan where either is not finite."""
    if a.shape != b.shape:
        return float("inf")
    a64, b64 = a.astype(np.float64), b.astype(np.float64)
    scale = max(np.abs(a64).max(initial=0.0), np.abs(b64).max(initial=0.0))
    if against is not None:
        scale = max(scale, float(np.abs(against.astype(np.float64)).max(initial=0.0)))
    if scale == 0:
        return 0.0
    return float(np.abs(a64 - b64).max() / scale)


def where_largest(a: np.ndarray, b: np.ndarray) -> list[int]:
    """The index (one per dimension) of the largest difference."""
    return [int(i) for i in np.unravel_index(np.argmax(np.abs(a.astype(np.float64) - b.astype(np.float64))), a.shape)]


class TensorDiff(Record):
    kind: str  # weights (before the step), activation (a block's output), loss, gradient, optimizer_state, update
    name: str  # block or canonical parameter (optimizer state: "<parameter>:m" / ":v")
    relative: float
    at: list[int] | None = None  # where the largest difference is
    replica: int | None = None  # whose copy (a data-parallel run's replica); None: both runs are one device

    @property
    def label(self) -> str:
        return self.name if self.replica is None else f"{self.name} (replica {self.replica})"


ORDER = ("weights", "activation", "loss", "gradient", "optimizer_state", "update")
PREFIX = {
    "weights": WEIGHTS,
    "activation": ACTIVATIONS,
    "gradient": GRADIENTS,
    "optimizer_state": STATE,
    "update": UPDATE,
}


class Pairing(NamedTuple):
    """Which replica of each trace is compared with which. A data-parallel replica against a one-device run: the
    replica's block outputs against the rows of the one-device run's that are its block of the batch; its weights,
    (averaged) gradients, optimizer state and update against the whole of the one-device run's."""

    replica: int | None  # the label; None where both runs are one device
    a: int
    b: int
    rows_a: slice | None = None  # the rows of a's block outputs that replica holds (a one-device a only)
    rows_b: slice | None = None


def pairings(ta: Trace, tb: Trace, global_batch: int) -> list[Pairing]:
    from xfw.common.spec.data import replica_slice

    if ta.replicas == tb.replicas:
        return [Pairing(r if ta.replicas > 1 else None, r, r) for r in range(ta.replicas)]
    if 1 not in (ta.replicas, tb.replicas):
        raise UserError(f"the runs have {ta.replicas} and {tb.replicas} replicas; localize pairs equal counts or one")
    n = max(ta.replicas, tb.replicas)
    rows = [replica_slice(global_batch, r, n) for r in range(n)]
    return [
        Pairing(
            r,
            0 if ta.replicas == 1 else r,
            0 if tb.replicas == 1 else r,
            rows[r] if ta.replicas == 1 else None,
            rows[r] if tb.replicas == 1 else None,
        )
        for r in range(n)
    ]


class View(NamedTuple):
    """One pairing's tensors at one step, block outputs cut to the replica's rows."""

    pairing: Pairing
    a: dict[str, np.ndarray]
    b: dict[str, np.ndarray]


def views(ta: Trace, tb: Trace, k: int, pairs: list[Pairing]) -> list[View]:
    def cut(tensors: dict, rows: slice | None) -> dict:
        if rows is None:
            return tensors
        return {key: v[rows] if key.startswith(f"{ACTIVATIONS}|") else v for key, v in tensors.items()}

    loaded_a = {r: ta.tensors(k, r) for r in {p.a for p in pairs}}
    loaded_b = {r: tb.tensors(k, r) for r in {p.b for p in pairs}}
    return [View(p, cut(loaded_a[p.a], p.rows_a), cut(loaded_b[p.b], p.rows_b)) for p in pairs]


def step_differences(step_views: list[View], blocks: list[str], params: list[str], la: float, lb: float):
    """Every tensor both traces hold for one step, in the order the step computes them: the weights it starts from,
    block outputs forward, the loss, gradients from the loss backwards (last parameter first), optimizer state, the
    update; each for every replica pairing."""
    out = []
    first = step_views[0].a
    names = {
        "weights": params,
        "activation": blocks,
        "gradient": list(reversed(params)),
        "optimizer_state": sorted({k.split("|", 1)[1] for k in first if k.startswith(f"{STATE}|")}),
        "update": params,
    }
    for kind in ORDER:
        if kind == "loss":
            if np.isfinite(la) and np.isfinite(lb):
                out.append(TensorDiff(kind="loss", name="loss", relative=abs(la - lb) / max(abs(la), abs(lb), 1e-30)))
            continue
        for name in names[kind]:
            key = f"{PREFIX[kind]}|{name}"
            for view in step_views:
                ta, tb = view.a, view.b
                if key in ta and key in tb:
                    a, b = ta[key], tb[key]
                    # An update is measured against the weights it changes: w + update is rounded to the weights'
                    # float32 grid, so two updates of a weight near 1 cannot agree better than 6e-8 absolute.
                    scale = ta.get(f"{WEIGHTS}|{name}") if kind == "update" else None
                    out.append(
                        TensorDiff(
                            kind=kind,
                            name=name,
                            relative=relative_difference(a, b, scale),
                            at=where_largest(a, b),
                            replica=view.pairing.replica,
                        )
                    )
    return out


class ReluFlips(Record):
    """Units of a relu block on (> 0) in one run and off (= 0) in the other, at one step: the kink effect. Each
    flipped unit's value where it is on, against the block's median active value, says whether it sat within
    rounding of zero."""

    block: str
    replica: int | None = None
    flipped: int
    units: int
    largest_flipped_value: float  # the largest value a flipped unit has in the run where it is on
    median_active_value: float


def relu_flips(block: str, a: np.ndarray, b: np.ndarray, replica: int | None = None) -> ReluFlips | None:
    on_a, on_b = a > 0, b > 0
    if (a < 0).any() or (b < 0).any():
        return None  # not a relu output
    flipped = on_a != on_b
    values = np.where(on_a, a, b)[flipped]
    active = np.concatenate([a[on_a], b[on_b]])
    return ReluFlips(
        block=block,
        replica=replica,
        flipped=int(flipped.sum()),
        units=int(a.size),
        largest_flipped_value=float(values.max(initial=0.0)),
        median_active_value=float(np.median(active)) if active.size else 0.0,
    )


class PoolSwitches(Record):
    """2x2 max-pooling windows whose largest input is another element in one run than in the other, at one step:
    a kink like relu's (the output barely moves, the gradient goes to another input). For each switched window the
    gap between its two largest inputs, in the run where it is smaller, against the median gap over all windows,
    says whether the two sat within rounding of each other."""

    block: str
    replica: int | None = None
    switched: int
    windows: int
    largest_switched_gap: float
    median_gap: float


def pool_switches(block: str, a: np.ndarray, b: np.ndarray, replica: int | None = None) -> PoolSwitches:
    """a, b: the NHWC inputs of a 2x2, stride-2 max pool (odd sizes rounded down, as both frameworks do)."""

    def windows(x: np.ndarray) -> np.ndarray:  # [N, H/2, W/2, C, 4]
        n, h, w, c = x.shape
        x = x[:, : h // 2 * 2, : w // 2 * 2].reshape(n, h // 2, 2, w // 2, 2, c)
        return x.transpose(0, 1, 3, 5, 2, 4).reshape(n, h // 2, w // 2, c, 4).astype(np.float64)

    wa, wb = windows(a), windows(b)
    switched = wa.argmax(-1) != wb.argmax(-1)

    def gap(w: np.ndarray) -> np.ndarray:
        top = np.sort(w, axis=-1)
        return top[..., -1] - top[..., -2]

    gaps = np.minimum(gap(wa), gap(wb))
    return PoolSwitches(
        block=block,
        replica=replica,
        switched=int(switched.sum()),
        windows=int(switched.size),
        largest_switched_gap=float(gaps[switched].max(initial=0.0)),
        median_gap=float(np.median(gaps)),
    )


class AdamCheck(Record):
    """Adam's update recomputed in float64 from one step's captured moments, both ways the frameworks place epsilon:
    Keras adds it to sqrt(v) and corrects the bias in the step size (lr sqrt(1 - b2^t) / (1 - b1^t)), torch adds it
    to sqrt(v / (1 - b2^t)). Which formula each run's actual update follows (relative error of each)."""

    parameter: str
    step: int
    a_error: dict[str, float]  # formula ("keras", "torch") -> relative error of run a's update against it
    b_error: dict[str, float]
    formulas_differ: float  # relative difference of the two formulas' updates: what the placement alone does


def adam_updates(m, v, w, t: int, lr: float, opt) -> dict[str, np.ndarray]:
    m, v, w = (x.astype(np.float64) for x in (m, v, w))
    b1, b2, eps = opt.beta1, opt.beta2, opt.epsilon
    decay = -lr * getattr(opt, "weight_decay", 0.0) * w
    keras = -lr * np.sqrt(1 - b2**t) / (1 - b1**t) * m / (np.sqrt(v) + eps)
    torch = -lr * (m / (1 - b1**t)) / (np.sqrt(v / (1 - b2**t)) + eps)
    return {"keras": decay + keras, "torch": decay + torch}


def adam_check(config: Config, k: int, da: dict, db: dict, parameter: str) -> AdamCheck | None:
    """None where the optimizer is not Adam(W) or the step's moments were not captured."""
    from xfw.common.spec.schedules import learning_rates

    opt = config.optimizer
    keys = [f"{STATE}|{parameter}:m", f"{STATE}|{parameter}:v", f"{WEIGHTS}|{parameter}", f"{UPDATE}|{parameter}"]
    if opt.kind not in ("adam", "adamw") or not all(key in da and key in db for key in keys):
        return None
    lr = float(learning_rates(opt.lr, opt.schedule, config.training.steps)[k])
    errors = []
    for d in (da, db):
        formulas = adam_updates(d[keys[0]], d[keys[1]], d[keys[2]], k + 1, lr, opt)
        errors.append(
            {name: relative_difference(d[keys[3]], f.astype(np.float32), d[keys[2]]) for name, f in formulas.items()}
        )
    formulas = adam_updates(da[keys[0]], da[keys[1]], da[keys[2]], k + 1, lr, opt)
    return AdamCheck(
        parameter=parameter,
        step=k,
        a_error=errors[0],
        b_error=errors[1],
        formulas_differ=relative_difference(formulas["keras"], formulas["torch"], da[keys[2]]),
    )


# ---- the search --------------------------------------------------------------------------------------------


class StepTable(Record):
    kind: str
    name: str
    replica: int | None = None
    relative: dict[int, float]  # step -> relative difference


class RoundingGrowth(Record):
    """The first tensor over the tolerance, followed back over the captured steps: where it started at rounding
    level (a few float32 ulps of its magnitude) and grew step by step without a jump, the runs differ by the order
    of their floating-point sums, amplified by training, not by one operation computing something else."""

    tensor: str
    from_step: int
    from_relative: float
    to_step: int
    to_relative: float
    growth_per_step: float  # geometric mean factor
    largest_jump: float  # the largest factor from one captured step to the next

    @property
    def is_rounding(self) -> bool:
        return self.from_relative <= ROUNDING_LEVEL and self.largest_jump <= SMOOTH_JUMP


ROUNDING_LEVEL = 64 * 2.0**-24  # 64 float32 ulps, relative to the tensor's largest magnitude
SMOOTH_JUMP = 100.0  # a step that multiplies the difference by more is an event, not accumulated rounding


class BorderCheck(Record):
    """An image block's output that differs, from an input that agrees: how many of the elements over the tolerance
    lie on the image's border (first or last row or column). All of them: the blocks pad differently."""

    block: str
    replica: int | None = None
    over: int
    on_border: int


class BatchNormCheck(Record):
    """A data-parallel replica's BatchNorm block output against the one-device run's rows, without and with
    synchronised statistics (the replica replayed with model.sync_batchnorm true): where the synchronised replay
    agrees, the replicas normalised by their own block's statistics."""

    block: str
    replica: int | None
    relative: float
    relative_synchronised: float


class Localization(Record):
    a: str
    b: str
    tolerance: float
    steps: int
    every: int
    parted: bool
    replicas: list[int] = [1, 1]  # each run's replica count
    first_step: int | None = None  # None: never parted by more than the tolerance
    first_loss_step: int | None = None  # where the loss itself first differs by more than the tolerance
    first: TensorDiff | None = None  # the first tensor over the tolerance, in the step's order
    first_activation: TensorDiff | None = None
    first_gradient: TensorDiff | None = None  # from the loss backwards
    first_update: TensorDiff | None = None
    relu: list[ReluFlips] = []
    pooling: list[PoolSwitches] = []
    adam: AdamCheck | None = None
    rounding: RoundingGrowth | None = None
    border: BorderCheck | None = None
    batchnorm: BatchNormCheck | None = None
    explanation: str
    window: list[int] = []  # the steps captured in full
    tables: list[StepTable] = []
    verdict: str


def first_over(diffs: list[TensorDiff], tolerance: float, kind: str | None = None) -> TensorDiff | None:
    return next((d for d in diffs if (kind is None or d.kind == kind) and not d.relative <= tolerance), None)


def scan(ta: Trace, tb: Trace, tolerance: float, pairs: list[Pairing]) -> tuple[int, int] | None:
    """Bisection's first pass, over the scan traces: (start, end), where `start` is the last checkpoint whose weights
    and gradients agree within the tolerance for every replica and `end` the first step known to have parted (a
    checkpoint whose weights or gradients differ, or the first step whose loss does); None: none parts."""
    from xfw.common.judge.compare import loss_diff

    over_loss = np.flatnonzero(~(loss_diff(ta.losses, tb.losses)[1] <= tolerance))
    loss_step = int(over_loss[0]) if over_loss.size else None
    start = 0
    for k in sorted(set(ta.steps()) & set(tb.steps())):
        if loss_step is not None and k > loss_step:
            return start, loss_step
        differ = {
            key.split("|", 1)[0]
            for view in views(ta, tb, k, pairs)
            for key in view.a
            if key in view.b and not relative_difference(view.a[key], view.b[key]) <= tolerance
        }
        if WEIGHTS in differ:  # the step before parted
            return start, k
        start = k
        if differ:  # the weights agree, the gradients not: this step parts
            return start, k
    return None if loss_step is None else (start, loss_step)


def checkpoint_tables(ta: Trace, tb: Trace, pairs: list[Pairing], before: int) -> dict[tuple, dict[int, float]]:
    """(kind, name, replica) -> {checkpoint: relative difference} for the scan's weights and gradients before a
    step: how a tensor's difference grew up to the zoom's window."""
    tables: dict[tuple, dict[int, float]] = {}
    for k in sorted(set(ta.steps()) & set(tb.steps())):
        if k >= before:
            break
        for view in views(ta, tb, k, pairs):
            for key in view.a:
                prefix, name = key.split("|", 1)
                kind = {WEIGHTS: "weights", GRADIENTS: "gradient"}.get(prefix)
                if kind and key in view.b:
                    tables.setdefault((kind, name, view.pairing.replica), {})[k] = relative_difference(
                        view.a[key], view.b[key]
                    )
    return tables


def rounding_growth(first: TensorDiff, tables: list[StepTable], step: int) -> RoundingGrowth | None:
    table = next(t for t in tables if (t.kind, t.name, t.replica) == (first.kind, first.name, first.replica))
    seen = [(k, v) for k, v in sorted(table.relative.items()) if k <= step and v > 0]
    if len(seen) < 2:
        return None
    (k0, v0), (k1, v1) = seen[0], seen[-1]
    jumps = [b / a for (_, a), (_, b) in zip(seen, seen[1:])]
    return RoundingGrowth(
        tensor=f"{first.kind} {first.label}",
        from_step=k0,
        from_relative=v0,
        to_step=k1,
        to_relative=v1,
        growth_per_step=(v1 / v0) ** (1 / (k1 - k0)),
        largest_jump=max(jumps),
    )


def border_check(block: str, a: np.ndarray, b: np.ndarray, tolerance: float, replica: int | None) -> BorderCheck:
    """a, b: NHWC block outputs."""
    scale = max(np.abs(a).max(initial=0.0), np.abs(b).max(initial=0.0))
    over = np.abs(a.astype(np.float64) - b.astype(np.float64)) > tolerance * scale
    border = np.zeros(a.shape[1:3], dtype=bool)
    border[[0, -1], :] = border[:, [0, -1]] = True
    return BorderCheck(
        block=block, replica=replica, over=int(over.sum()), on_border=int((over & border[None, :, :, None]).sum())
    )


def analyse(
    a_id: str,
    b_id: str,
    ta: Trace,
    tb: Trace,
    tolerance: float,
    every: int,
    config: Config,
    earlier: dict[tuple, dict[int, float]] | None = None,
) -> tuple[Localization, dict]:
    """From the zoom traces: the first step and tensors over the tolerance, the checks that explain them, the
    tables (with the scan's `earlier` checkpoints, checkpoint_tables); and the parted step's views by replica (for
    checks that replay)."""
    steps = len(ta.losses)
    from xfw.common.judge.compare import loss_diff
    from xfw.common.spec.models import MaxPool, blocks_of

    pairs = pairings(ta, tb, config.training.global_batch)
    over_loss = np.flatnonzero(~(loss_diff(ta.losses, tb.losses)[1] <= tolerance))
    first_loss = int(over_loss[0]) if over_loss.size else None
    window = [k for k in sorted(set(ta.steps()) & set(tb.steps())) if k < steps]
    per_step = {}
    for k in window:
        if not any(key.startswith(f"{ACTIVATIONS}|") for key in ta.tensors(k)):
            continue  # a checkpoint only
        step_views = views(ta, tb, k, pairs)
        per_step[k] = (step_views, step_differences(step_views, ta.blocks, ta.params, ta.losses[k], tb.losses[k]))
    parted_at = next((k for k, (_, d) in per_step.items() if first_over(d, tolerance)), None)
    base: dict[str, Any] = {
        "a": a_id,
        "b": b_id,
        "tolerance": tolerance,
        "steps": steps,
        "every": every,
        "replicas": [ta.replicas, tb.replicas],
        "window": sorted(per_step),
    }
    if parted_at is None:
        return Localization(
            **base,
            parted=False,
            first_loss_step=first_loss,
            explanation="no captured tensor differs by more than the tolerance",
            verdict=f"{a_id} and {b_id} do not part by more than {tolerance:g} in the captured steps",
        ), {}
    step_views, diffs = per_step[parted_at]
    by_replica = {v.pairing.replica: v for v in step_views}
    first = first_over(diffs, tolerance)
    assert first is not None  # parted_at: the first step with a tensor over the tolerance
    act, grad, upd = (first_over(diffs, tolerance, kind) for kind in ("activation", "gradient", "update"))
    blocks = {b.name: b for b in blocks_of(config.model)}
    relu_blocks = [name for name in ta.blocks if getattr(blocks.get(name), "activation", None) == "relu"]
    adam = None
    if upd is not None:
        view = by_replica[upd.replica]
        adam = adam_check(config, parted_at, view.a, view.b, upd.name)
    flips = [
        f
        for view in step_views
        for name in relu_blocks
        if (
            f := relu_flips(
                name, view.a[f"{ACTIVATIONS}|{name}"], view.b[f"{ACTIVATIONS}|{name}"], view.pairing.replica
            )
        )
        and f.flipped
    ]
    pool_blocks = [(i, name) for i, name in enumerate(ta.blocks) if i and isinstance(blocks.get(name), MaxPool)]
    switches = [
        sw
        for view in step_views
        for i, name in pool_blocks
        if (
            sw := pool_switches(
                name,
                view.a[f"{ACTIVATIONS}|{ta.blocks[i - 1]}"],
                view.b[f"{ACTIVATIONS}|{ta.blocks[i - 1]}"],
                view.pairing.replica,
            )
        ).switched
    ]
    tables = [
        StepTable(
            kind=d.kind,
            name=d.name,
            replica=d.replica,
            relative=(earlier or {}).get((d.kind, d.name, d.replica), {})
            | {
                k: next(
                    x.relative for x in per_step[k][1] if (x.kind, x.name, x.replica) == (d.kind, d.name, d.replica)
                )
                for k in per_step
            },
        )
        for d in diffs
    ]
    border = None
    if first.kind == "activation" and first.relative != float("inf"):
        view = by_replica[first.replica]
        key = f"{ACTIVATIONS}|{first.name}"
        position = ta.blocks.index(first.name)
        before = f"{ACTIVATIONS}|{ta.blocks[position - 1]}" if position else None
        input_agrees = before is None or relative_difference(view.a[before], view.b[before]) <= tolerance
        if view.a[key].ndim == 4 and input_agrees:
            border = border_check(first.name, view.a[key], view.b[key], tolerance, first.replica)
    growth = rounding_growth(first, tables, parted_at)
    result = Localization(
        **base,
        parted=True,
        first_step=parted_at,
        first_loss_step=first_loss,
        first=first,
        first_activation=act,
        first_gradient=grad,
        first_update=upd,
        relu=flips,
        pooling=switches,
        adam=adam,
        rounding=growth,
        border=border,
        tables=tables,
        explanation="",
        verdict="",
    )
    return explained(result, (a_id, b_id)), by_replica


def explained(result: Localization, ids) -> Localization:
    """The Localization with its explanation and verdict written from its checks."""
    return result.model_copy(
        update={
            "explanation": explain(result, ids),
            "verdict": verdict_line(result),
        }
    )


def which(replica: int | None) -> str:
    return "" if replica is None else f" (replica {replica})"


def explain(r: Localization, ids) -> str:
    first, step, adam = r.first, r.first_step, r.adam
    assert first is not None  # explained() is given parted results: analyse() set their first tensor
    parts = []
    if first.kind == "weights":
        parts.append(
            f"the runs start step {step} from different weights ({first.label}, relative difference "
            f"{first.relative:.3g} at {first.at})" + (": the initial weights differ" if step == 0 else "")
        )
    for f in r.relu:
        rounding = f.largest_flipped_value <= 1e-4 * max(f.median_active_value, 1e-30)
        parts.append(
            f"{f.flipped} of {f.units} units of {f.block}{which(f.replica)} are on in one run and off in the other; "
            f"where on, the largest is {f.largest_flipped_value:.3g} against the block's median active value "
            f"{f.median_active_value:.3g}"
            + (": they sat within rounding of zero (the relu kink)" if rounding else ": not a rounding-level flip")
        )
    for sw in r.pooling:
        rounding = sw.largest_switched_gap <= 1e-4 * max(sw.median_gap, 1e-30)
        parts.append(
            f"{sw.switched} of {sw.windows} windows of {sw.block}{which(sw.replica)} take their maximum from another "
            f"input in one run than in the other; their two largest inputs are at most {sw.largest_switched_gap:.3g} "
            f"apart against a median gap of {sw.median_gap:.3g}"
            + (
                ": near-ties within rounding (max pooling's kink: the gradient goes to the other input)"
                if rounding
                else ": not a rounding-level switch"
            )
        )
    if first.kind == "update" and r.first_gradient is None:
        parts.append(
            f"the gradients agree within the tolerance but the update of {first.label} differs: the optimizers "
            "compute it differently from the same gradients"
        )
    if adam is not None:
        follows = [min(errors, key=errors.get) for errors in (adam.a_error, adam.b_error)]  # type: ignore[arg-type]
        shown = ", ".join(
            f"{run} follows the {f} formula (error {errors[f]:.2g})"
            for run, f, errors in zip(ids, follows, (adam.a_error, adam.b_error))
        )
        parts.append(
            f"Adam's epsilon, recomputed from step {adam.step}'s moments of {adam.parameter}: {shown}; the two "
            f"placements alone differ by {adam.formulas_differ:.2g}"
            + (
                " (Keras: epsilon added to sqrt(v) before the bias correction, torch: after it)"
                if follows[0] != follows[1]
                else ""
            )
        )
    if r.batchnorm is not None:
        bn = r.batchnorm
        synchronised = bn.relative_synchronised <= r.tolerance
        parts.append(
            f"{bn.block}{which(bn.replica)} normalises by BatchNorm statistics: its output differs from the one-device "
            f"run's rows by {bn.relative:.2g}; replayed with model.sync_batchnorm true it differs by "
            f"{bn.relative_synchronised:.2g}"
            + (
                ": each replica normalised by its own block's statistics, the one device by the global batch's"
                if synchronised
                else ": synchronising the statistics does not close the gap, so they are not the cause"
            )
        )
    if r.border is not None and r.border.over and r.border.on_border == r.border.over:
        parts.append(
            f"all {r.border.over} elements of {r.border.block}{which(r.border.replica)} over the tolerance lie on the "
            "image's border, from inputs that agree: the blocks pad differently"
        )
    grows = r.rounding
    kinks = r.relu or r.pooling
    if grows is not None and grows.is_rounding and not kinks and first.kind != "weights" and r.batchnorm is None:
        parts.append(
            f"{grows.tensor} differed by {grows.from_relative:.2g} at step {grows.from_step} (rounding level: "
            f"{grows.from_relative / 2.0**-24:.0f} float32 ulps of its magnitude) and grew by "
            f"{grows.growth_per_step:.3g}x a step, never more than {grows.largest_jump:.3g}x from one captured step "
            "to the next, to "
            f"{grows.to_relative:.2g} at step {grows.to_step}, and no kink, optimizer or statistics check found a "
            "cause: what floating-point sums taken in another order produce, amplified by training (compare's "
            "rounding envelope measures how far rounding alone goes)"
        )
    elif first.kind == "activation" and not kinks and r.batchnorm is None:
        parts.append(f"{first.label} is the first block whose output differs, from weights and inputs that agree")
    return "; ".join(parts) or f"first over the tolerance: the {first.kind} {first.label}"


def verdict_line(r: Localization) -> str:
    first, act, grad, adam = r.first, r.first_activation, r.first_gradient, r.adam
    assert first is not None  # explained() is given parted results: analyse() set their first tensor
    text = f"first parted at step {r.first_step}, {first.kind} {first.label} ({first.relative:.2g})"
    if act is not None:
        text += f"; first block output: {act.label}"
    for f in r.relu:
        text += f"; {f.block}{which(f.replica)} (relu): {f.flipped} unit(s) on in one run, off in the other"
    for sw in r.pooling:
        text += f"; {sw.block}{which(sw.replica)} (max pool): {sw.switched} window(s) take another input's maximum"
    if grad is not None:
        text += f"; gradients part at {grad.label}"
    if adam is not None and min(adam.a_error, key=adam.a_error.get) != min(adam.b_error, key=adam.b_error.get):  # type: ignore[arg-type]
        text += "; Adam's epsilon is placed differently"
    if r.batchnorm is not None and r.batchnorm.relative_synchronised <= r.tolerance:
        text += "; BatchNorm statistics per replica"
    if r.border is not None and r.border.over and r.border.on_border == r.border.over:
        text += "; padding (differences on the border only)"
    return text


# ---- the command -------------------------------------------------------------------------------------------


def trace_spec(config: Config, framework: str, implementation: str, out: Path, trace: dict) -> RunSpec:

    impl = find(framework, implementation)
    return RunSpec(config, framework, impl.strategy, impl.name, str(out), trace=trace)


def check_localizable(config: Config, framework: str, implementation: str) -> None:

    impl = find(framework, implementation)
    if not impl.traced:
        # The implementations a trace worker replays (tf_impl/trace.py, torch_impl/trace.py): the custom loops on
        # one device and the synchronous data-parallel engines whose replicas it can see (Implementation.traced).
        traced = ", ".join(i.id for i in REGISTRY if i.traced)
        raise UserError(f"localize replays {traced}; not {impl.id} ({impl.description})")
    if config.runtime.precision != "float32":
        raise UserError(f"localize replays float32 runs; this config has runtime.precision {config.runtime.precision}")
    if config.runtime.compile:
        raise UserError("localize replays eager steps; this config has runtime.compile true")
    if config.training.accumulation_steps != 1:
        raise UserError("localize replays runs without gradient accumulation (training.accumulation_steps 1)")


def localize(
    config: Config,
    a: tuple[str, str],
    b: tuple[str, str],
    out: Path,
    tolerance: float,
    every: int,
    around: int,
    machine,
    progress,
    at: int | None = None,
) -> Localization:
    """a, b: (framework, implementation). Scan, then zoom (this module's docstring); with `at`, no scan: the
    zoom captures the steps around that one."""
    for fw, name in (a, b):
        check_localizable(config, fw, name)
    steps = config.training.steps
    if at is not None and not 0 <= at < steps:
        raise UserError(f"--at {at} is not a step of the run (steps 0..{steps - 1})")
    timeout = config.runtime.timeout_s * 3
    sides = {"a": a, "b": b}
    ids = (f"{a[0]}-{a[1]}", f"{b[0]}-{b[1]}")

    def traces(stage: str, trace: dict, cfg: Config = config, which=sides) -> dict[str, Trace]:
        return {
            side: run_trace(trace_spec(cfg, fw, name, out / f"{stage}-{side}", trace), timeout, machine, progress)
            for side, (fw, name) in which.items()
        }

    earlier = None
    if at is None:
        scans = traces("scan", {"every": every})
        pairs = pairings(scans["a"], scans["b"], config.training.global_batch)
        interval = scan(scans["a"], scans["b"], tolerance, pairs)
        if interval is None:
            loss = scans["a"].losses - scans["b"].losses
            return Localization(
                a=ids[0],
                b=ids[1],
                tolerance=tolerance,
                steps=steps,
                every=every,
                replicas=[scans["a"].replicas, scans["b"].replicas],
                parted=False,
                explanation="no checkpoint's weights or gradients and no step's loss differ by more than "
                f"{tolerance:g} (largest loss difference {np.abs(loss).max():.3g})",
                verdict=f"{ids[0]} and {ids[1]} never part by more than {tolerance:g} in {steps} steps",
            )
        start, end = interval
        first, last = max(0, start - around), min(steps - 1, end + around)
        earlier = checkpoint_tables(scans["a"], scans["b"], pairs, first)
    else:
        first, last = max(0, at - around), min(steps - 1, at + around)
    zooms = traces("zoom", {"every": every, "capture": [first, last]})
    result, by_replica = analyse(ids[0], ids[1], zooms["a"], zooms["b"], tolerance, every, config, earlier)
    if batchnorm_in_question(result, config):
        result = explained(
            result.model_copy(update={"batchnorm": batchnorm_replay(result, config, by_replica, traces)}), ids
        )
    return result


def batchnorm_in_question(r: Localization, config: Config) -> bool:
    """A data-parallel run against a one-device run, parted first at a BatchNorm block's output, with statistics
    per replica: replaying with them synchronised says whether they are the cause."""
    from xfw.common.spec.models import blocks_of

    if not r.parted:
        return False
    assert r.first is not None  # parted: analyse() set the first tensor over the tolerance
    if r.first.kind != "activation" or sorted(r.replicas)[0] != 1 or max(r.replicas) == 1:
        return False
    block = next(b for b in blocks_of(config.model) if b.name == r.first.name)
    return getattr(block, "batchnorm", None) is not None and not getattr(config.model, "sync_batchnorm", True)


def batchnorm_replay(r: Localization, config: Config, by_replica: dict, traces) -> BatchNormCheck:
    from xfw.common.spec.config import config_from_dict

    data = config.model_dump(mode="json")
    data["model"]["sync_batchnorm"] = True
    synchronised = config_from_dict(data)
    side = "a" if r.replicas[0] > 1 else "b"
    k = r.first_step
    assert r.first is not None and k is not None  # batchnorm_in_question: a parted result
    trace = traces("batchnorm", {"every": r.steps + 1, "capture": [k, k]}, synchronised, {side: sides_of(r)[side]})[
        side
    ]
    view = by_replica[r.first.replica]
    key = f"{ACTIVATIONS}|{r.first.name}"
    replayed = trace.tensors(k, r.first.replica)[key]
    single = view.b[key] if side == "a" else view.a[key]
    return BatchNormCheck(
        block=r.first.name,
        replica=r.first.replica,
        relative=r.first.relative,
        relative_synchronised=relative_difference(replayed, single),
    )


def sides_of(r: Localization) -> dict[str, tuple[str, ...]]:
    return {side: tuple(run_id.split("-", 1)) for side, run_id in (("a", r.a), ("b", r.b))}


def write_outputs(result: Localization, out: Path) -> None:
    from xfw.common.report.comparison import save_figure, write_atomically

    write_json_atomic(out / "localize.json", result.to_json())
    lines = [f"# Where {result.a} and {result.b} part", "", f"**{result.verdict}**", "", result.explanation, ""]
    lines.append(
        f"Tolerance {result.tolerance:g} (relative: max |a - b| / the larger magnitude); {result.steps} steps "
        f"replayed, weights compared every {result.every} steps, every tensor at steps "
        f"{result.window[0] if result.window else '-'}..{result.window[-1] if result.window else '-'}."
    )
    if result.tables:
        steps = result.window
        shown = [k for k in steps if result.first_step is None or abs(k - result.first_step) <= 2]
        lines += ["", "| tensor | " + " | ".join(f"step {k}" for k in shown) + " |", "|---" * (len(shown) + 1) + "|"]
        quiet = 0
        for t in result.tables:
            if max(t.relative.get(k, 0.0) for k in shown) < result.tolerance / 100:
                quiet += 1  # rounding-level all along: in localize.json, not in the way here
                continue
            cells = [f"{t.relative[k]:.2e}" if k in t.relative else "-" for k in shown]
            lines.append(f"| {t.kind} {t.name}{which(t.replica)} | " + " | ".join(cells) + " |")
        if quiet:
            lines += ["", f"{quiet} more tensors stay below tolerance / 100 at these steps (all are in localize.json)."]
    write_atomically(out / "localize.md", lambda tmp: tmp.write_text("\n".join(lines) + "\n"))
    if result.tables:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, axs = plt.subplots(1, 2, figsize=(11, 4))
        for ax, kind in zip(axs, ("activation", "gradient")):
            for t in result.tables:
                if t.kind == kind:
                    ks = sorted(t.relative)
                    ax.plot(
                        ks, [max(t.relative[k], 1e-12) for k in ks], marker=".", label=f"{t.name}{which(t.replica)}"
                    )
            ax.axhline(result.tolerance, color="black", linestyle=":", linewidth=1, label="tolerance")
            ax.set(yscale="log", xlabel="step", ylabel="relative difference", title=f"{kind}s, per block / parameter")
            ax.legend(fontsize=6)
        fig.tight_layout()
        save_figure(fig, out / "localize.png")


# ---- compare --localize ------------------------------------------------------------------------------------


def localize_failures(summary, config: Config, out: Path, machine, progress):
    """The summary with `localizations`: for the first failing comparison of each kind (same framework, across
    frameworks) whose two runs a trace worker replays, where they part, in <out>/localize/<a>-vs-<b>/. Failing
    pairs it does not replay are left to `xfw localize`; a replay that fails is recorded with its error."""
    from xfw.common.records import LocalizedPair

    def traced(run_id: str) -> bool:
        try:
            impl = find_id(run_id)
        except UserError:  # a slot that is not an implementation (an envelope's ~ulp run)
            return False
        return impl.traced

    failing = [
        c
        for c in summary.comparisons
        if c.status == "ok" and c.within_tolerance is False and traced(c.a) and traced(c.b)
    ]
    chosen = [next(c for c in failing if c.kind == kind) for kind in dict.fromkeys(c.kind for c in failing)]
    pairs = []
    for c in chosen:
        a, b = find_id(c.a), find_id(c.b)
        folder = out / "localize" / f"{c.a}-vs-{c.b}"
        base = {"a": c.a, "b": c.b, "folder": str(folder.relative_to(out))}
        try:
            every = max(1, config.training.steps // 20)
            result = localize(
                config, (a.framework, a.name), (b.framework, b.name), folder, c.tolerance, every, 2, machine, progress
            )
        except RuntimeError as err:
            pairs.append(LocalizedPair(**base, parted=None, verdict="not localised", explanation="", error=str(err)))
            continue
        write_outputs(result, folder)
        pairs.append(
            LocalizedPair(
                **base,
                parted=result.parted,
                first_step=result.first_step,
                verdict=result.verdict,
                explanation=result.explanation,
            )
        )
    return summary.model_copy(update={"localizations": pairs})
