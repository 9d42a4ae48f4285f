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

import numpy as np

from xfw.common.config import Config
from xfw.common.errors import UserError
from xfw.common.loop import write_json_atomic
from xfw.common.records import Record
from xfw.common.runspec import RunSpec

TRACE_FILE = "trace.json"  # written last by a trace worker: the parent's sign that it finished
# What a trace holds per captured step, under these key prefixes (npz keys "<prefix>|<name>").
WEIGHTS, ACTIVATIONS, GRADIENTS, STATE, UPDATE = "w", "a", "g", "s", "u"
LOCALIZED_STRATEGY = "single"  # replayed so far: each framework's one-device custom loop


# ---- the trace worker's side -------------------------------------------------------------------------------


class TraceWriter:
    """What a trace worker records, as run.trace asks: {"every": K, "capture": [first, last] or None}. Weights
    before every K-th step (and before each captured step), everything at the captured steps, the loss of every
    step. One .npz per step in <out>/trace/, then trace.json."""

    def __init__(self, run: RunSpec, blocks: list[str]):
        self.out = Path(run.out_dir)
        (self.out / "trace").mkdir(parents=True, exist_ok=True)
        self.every = int(run.trace["every"])
        self.capture = run.trace.get("capture")
        self.blocks = blocks
        self.losses: list[float] = []
        self.pending: dict[str, np.ndarray] = {}
        self.params: list[str] = []

    def captures(self, k: int) -> bool:
        return self.capture is not None and self.capture[0] <= k <= self.capture[1]

    def wants_weights(self, k: int) -> bool:
        return k % self.every == 0 or self.captures(k)

    def weights(self, k: int, values: dict[str, np.ndarray]) -> None:
        self.params = list(values)
        self._before = values
        self.pending.update({f"{WEIGHTS}|{n}": v for n, v in values.items()})

    def step(self, k: int, activations: dict, gradients: dict, after: dict, optimizer_state: dict) -> None:
        self.pending.update({f"{ACTIVATIONS}|{n}": np.asarray(v) for n, v in activations.items()})
        self.pending.update({f"{GRADIENTS}|{n}": np.asarray(v) for n, v in gradients.items()})
        self.pending.update({f"{STATE}|{n}": np.asarray(v) for n, v in optimizer_state.items()})
        self.pending.update({f"{UPDATE}|{n}": after[n] - self._before[n] for n in after})

    def loss(self, k: int, value: float) -> None:
        self.losses.append(value)
        if self.pending:
            self._flush(k)

    def _flush(self, k: int) -> None:
        np.savez(self.out / "trace" / f"step-{k:06d}.npz", **self.pending)
        self.pending = {}

    def close(self) -> None:
        if self.pending:  # the weights after the last step
            self._flush(len(self.losses))
        write_json_atomic(
            self.out / TRACE_FILE,
            {"losses": self.losses, "blocks": self.blocks, "params": self.params, "every": self.every},
        )


# ---- the parent's side: running the traces -----------------------------------------------------------------


class Trace:
    """A finished trace, read back: the losses, and each recorded step's tensors on demand."""

    def __init__(self, folder: Path):
        self.folder = folder
        meta = json.loads((folder / TRACE_FILE).read_text())
        self.losses = np.array(meta["losses"], dtype=np.float64)
        self.blocks: list[str] = meta["blocks"]
        self.params: list[str] = meta["params"]

    def steps(self) -> list[int]:
        return sorted(int(p.stem.split("-")[1]) for p in (self.folder / "trace").glob("step-*.npz"))

    def tensors(self, k: int) -> dict[str, np.ndarray]:
        with np.load(self.folder / "trace" / f"step-{k:06d}.npz") as data:
            return {key: data[key] for key in data.files}


def run_trace(run: RunSpec, timeout_s: float, machine, progress) -> Trace:
    """One trace worker, launched as its implementation's runs are; the trace, or a UserError-free failure as
    RuntimeError with the root cause."""
    from xfw.common import launch, runner

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


ORDER = ("weights", "activation", "loss", "gradient", "optimizer_state", "update")
PREFIX = {
    "weights": WEIGHTS,
    "activation": ACTIVATIONS,
    "gradient": GRADIENTS,
    "optimizer_state": STATE,
    "update": UPDATE,
}


def step_differences(
    ta: dict, tb: dict, blocks: list[str], params: list[str], la: float, lb: float
) -> list[TensorDiff]:
    """Every tensor both traces hold for one step, in the order the step computes them: the weights it starts from,
    block outputs forward, the loss, gradients from the loss backwards (last parameter first), optimizer state, the
    update."""
    out = []
    names = {
        "weights": params,
        "activation": blocks,
        "gradient": list(reversed(params)),
        "optimizer_state": sorted({k.split("|", 1)[1] for k in ta if k.startswith(f"{STATE}|")}),
        "update": params,
    }
    for kind in ORDER:
        if kind == "loss":
            if np.isfinite(la) and np.isfinite(lb):
                out.append(TensorDiff(kind="loss", name="loss", relative=abs(la - lb) / max(abs(la), abs(lb), 1e-30)))
            continue
        for name in names[kind]:
            key = f"{PREFIX[kind]}|{name}"
            if key in ta and key in tb:
                a, b = ta[key], tb[key]
                # An update is measured against the weights it changes: w + update is rounded to the weights'
                # float32 grid, so two updates of a weight near 1 cannot agree better than 6e-8 absolute.
                scale = ta.get(f"{WEIGHTS}|{name}") if kind == "update" else None
                out.append(
                    TensorDiff(kind=kind, name=name, relative=relative_difference(a, b, scale), at=where_largest(a, b))
                )
    return out


class ReluFlips(Record):
    """Units of a relu block on (> 0) in one run and off (= 0) in the other, at one step: the kink effect. Each
    flipped unit's value where it is on, against the block's median active value, says whether it sat within
    rounding of zero."""

    block: str
    flipped: int
    units: int
    largest_flipped_value: float  # the largest value a flipped unit has in the run where it is on
    median_active_value: float


def relu_flips(block: str, a: np.ndarray, b: np.ndarray) -> ReluFlips | None:
    on_a, on_b = a > 0, b > 0
    if (a < 0).any() or (b < 0).any():
        return None  # not a relu output
    flipped = on_a != on_b
    values = np.where(on_a, a, b)[flipped]
    active = np.concatenate([a[on_a], b[on_b]])
    return ReluFlips(
        block=block,
        flipped=int(flipped.sum()),
        units=int(a.size),
        largest_flipped_value=float(values.max(initial=0.0)),
        median_active_value=float(np.median(active)) if active.size else 0.0,
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
    from xfw.common.schedules import learning_rates

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
    relative: dict[int, float]  # step -> relative difference


class Localization(Record):
    a: str
    b: str
    tolerance: float
    steps: int
    every: int
    parted: bool
    first_step: int | None = None  # None: never parted by more than the tolerance
    first_loss_step: int | None = None  # where the loss itself first differs by more than the tolerance
    first: TensorDiff | None = None  # the first tensor over the tolerance, in the step's order
    first_activation: TensorDiff | None = None
    first_gradient: TensorDiff | None = None  # from the loss backwards
    first_update: TensorDiff | None = None
    relu: list[ReluFlips] = []
    adam: AdamCheck | None = None
    explanation: str
    window: list[int] = []  # the steps captured in full
    tables: list[StepTable] = []
    verdict: str


def first_over(diffs: list[TensorDiff], tolerance: float, kind: str | None = None) -> TensorDiff | None:
    return next((d for d in diffs if (kind is None or d.kind == kind) and not d.relative <= tolerance), None)


def scan(ta: Trace, tb: Trace, tolerance: float) -> int | None:
    """The first checkpointed step whose starting weights differ by more than the tolerance (None: none)."""
    for k in sorted(set(ta.steps()) & set(tb.steps())):
        da, db = ta.tensors(k), tb.tensors(k)
        keys = [key for key in da if key.startswith(f"{WEIGHTS}|") and key in db]
        if any(not relative_difference(da[key], db[key]) <= tolerance for key in keys):
            return k
    return None


def analyse(a_id: str, b_id: str, ta: Trace, tb: Trace, tolerance: float, every: int, config: Config) -> Localization:
    """From the zoom traces: the first step and tensors over the tolerance, the relu check, the tables."""
    steps = len(ta.losses)
    from xfw.common.compare import loss_diff

    over_loss = np.flatnonzero(~(loss_diff(ta.losses, tb.losses)[1] <= tolerance))
    first_loss = int(over_loss[0]) if over_loss.size else None
    window = [k for k in sorted(set(ta.steps()) & set(tb.steps())) if k < steps]
    per_step = {}
    for k in window:
        da, db = ta.tensors(k), tb.tensors(k)
        if not any(key.startswith(f"{ACTIVATIONS}|") for key in da):
            continue  # a checkpoint only
        per_step[k] = (da, db, step_differences(da, db, ta.blocks, ta.params, ta.losses[k], tb.losses[k]))
    parted_at = next((k for k, (_, _, d) in per_step.items() if first_over(d, tolerance)), None)
    base = {"a": a_id, "b": b_id, "tolerance": tolerance, "steps": steps, "every": every, "window": sorted(per_step)}
    if parted_at is None:
        return Localization(
            **base,
            parted=False,
            first_loss_step=first_loss,
            explanation="no captured tensor differs by more than the tolerance",
            verdict=f"{a_id} and {b_id} do not part by more than {tolerance:g} in the captured steps",
        )
    da, db, diffs = per_step[parted_at]
    first = first_over(diffs, tolerance)
    act, grad, upd = (first_over(diffs, tolerance, kind) for kind in ("activation", "gradient", "update"))
    from xfw.common.models import blocks_of

    relu_blocks = {b.name for b in blocks_of(config.model) if getattr(b, "activation", None) == "relu"}
    adam = adam_check(config, parted_at, da, db, upd.name) if upd is not None else None
    flips = [
        f
        for name in ta.blocks
        if name in relu_blocks
        and (f := relu_flips(name, da[f"{ACTIVATIONS}|{name}"], db[f"{ACTIVATIONS}|{name}"]))
        and f.flipped
    ]
    tables = [
        StepTable(
            kind=d.kind,
            name=d.name,
            relative={
                k: next(x.relative for x in per_step[k][2] if (x.kind, x.name) == (d.kind, d.name)) for k in per_step
            },
        )
        for d in diffs
    ]
    return Localization(
        **base,
        parted=True,
        first_step=parted_at,
        first_loss_step=first_loss,
        first=first,
        first_activation=act,
        first_gradient=grad,
        first_update=upd,
        relu=flips,
        adam=adam,
        explanation=explain(first, act, grad, upd, flips, parted_at, adam, (a_id, b_id)),
        tables=tables,
        verdict=verdict_line(parted_at, first, act, grad, flips, adam),
    )


def explain(first, act, grad, upd, flips: list[ReluFlips], step: int, adam: AdamCheck | None, ids) -> str:
    parts = []
    if first.kind == "weights":
        parts.append(
            f"the runs start step {step} from different weights ({first.name}, relative difference "
            f"{first.relative:.3g} at {first.at})" + (": the initial weights differ" if step == 0 else "")
        )
    for f in flips:
        rounding = f.largest_flipped_value <= 1e-4 * max(f.median_active_value, 1e-30)
        parts.append(
            f"{f.flipped} of {f.units} units of {f.block} are on in one run and off in the other; where on, the "
            f"largest is {f.largest_flipped_value:.3g} against the block's median active value "
            f"{f.median_active_value:.3g}"
            + (": they sat within rounding of zero (the relu kink)" if rounding else ": not a rounding-level flip")
        )
    if first.kind == "update" and grad is None:
        parts.append(
            f"the gradients agree within the tolerance but the update of {first.name} differs: the optimizers compute "
            "it differently from the same gradients"
        )
    if adam is not None:
        follows = [min(errors, key=errors.get) for errors in (adam.a_error, adam.b_error)]
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
    if first.kind == "activation" and not flips:
        parts.append(f"{first.name} is the first block whose output differs, from weights and inputs that agree")
    return "; ".join(parts) or f"first over the tolerance: the {first.kind} {first.name}"


def verdict_line(step: int, first, act, grad, flips: list[ReluFlips], adam: AdamCheck | None = None) -> str:
    text = f"first parted at step {step}, {first.kind} {first.name} ({first.relative:.2g})"
    if act is not None:
        text += f"; first block output: {act.name}"
    for f in flips:
        text += f"; {f.block} (relu): {f.flipped} unit(s) on in one run, off in the other"
    if grad is not None:
        text += f"; gradients part at {grad.name}"
    if adam is not None and min(adam.a_error, key=adam.a_error.get) != min(adam.b_error, key=adam.b_error.get):
        text += "; Adam's epsilon is placed differently"
    return text


# ---- the command -------------------------------------------------------------------------------------------


def trace_spec(config: Config, framework: str, out: Path, trace: dict) -> RunSpec:
    from xfw.common.registry import find

    impl = find(framework, "single")
    return RunSpec(config, framework, impl.strategy, impl.name, str(out), trace=trace)


def check_localizable(config: Config, framework: str, implementation: str) -> None:
    from xfw.common.registry import find

    impl = find(framework, implementation)
    if impl.strategy != LOCALIZED_STRATEGY or impl.keras_fit:
        raise UserError(
            f"localize replays the single-device custom loops (tf-single, torch-single) so far; {impl.id} is "
            f"{impl.strategy}{' (Keras fit)' if impl.keras_fit else ''}"
        )
    if config.runtime.precision != "float32":
        raise UserError(f"localize replays float32 runs; this config has runtime.precision {config.runtime.precision}")
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
) -> Localization:
    """a, b: (framework, implementation). Scan, then zoom (common/localize.py's docstring)."""
    for fw, name in (a, b):
        check_localizable(config, fw, name)
    steps = config.training.steps
    timeout = config.runtime.timeout_s * 3
    sides = {"a": a, "b": b}
    scans = {
        side: run_trace(trace_spec(config, fw, out / f"scan-{side}", {"every": every}), timeout, machine, progress)
        for side, (fw, _) in sides.items()
    }
    ids = (f"{a[0]}-{a[1]}", f"{b[0]}-{b[1]}")
    c = scan(scans["a"], scans["b"], tolerance)
    if c is None:
        loss = scans["a"].losses - scans["b"].losses
        return Localization(
            a=ids[0],
            b=ids[1],
            tolerance=tolerance,
            steps=steps,
            every=every,
            parted=False,
            explanation=f"no checkpoint's weights differ by more than {tolerance:g} (largest loss difference "
            f"{np.abs(loss).max():.3g})",
            verdict=f"{ids[0]} and {ids[1]} never part by more than {tolerance:g} in {steps} steps",
        )
    first, last = max(0, c - every - around), min(steps - 1, max(c - 1, 0) + around)
    zooms = {
        side: run_trace(
            trace_spec(config, fw, out / f"zoom-{side}", {"every": every, "capture": [first, last]}),
            timeout,
            machine,
            progress,
        )
        for side, (fw, _) in sides.items()
    }
    return analyse(ids[0], ids[1], zooms["a"], zooms["b"], tolerance, every, config)


def write_outputs(result: Localization, out: Path) -> None:
    from xfw.common.report import save_figure, write_atomically

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
            lines.append(f"| {t.kind} {t.name} | " + " | ".join(cells) + " |")
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
                    ax.plot(ks, [max(t.relative[k], 1e-12) for k in ks], marker=".", label=t.name)
            ax.axhline(result.tolerance, color="black", linestyle=":", linewidth=1, label="tolerance")
            ax.set(yscale="log", xlabel="step", ylabel="relative difference", title=f"{kind}s, per block / parameter")
            ax.legend(fontsize=6)
        fig.tight_layout()
        save_figure(fig, out / "localize.png")
