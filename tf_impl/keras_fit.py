"""TensorFlow the way most Keras users train: model.compile + model.fit, on one device or under
MirroredStrategy / MultiWorkerMirroredStrategy's scope, fed by tf.data in xfw's sample order. No custom loop:
Keras builds the train step, distributes the dataset, averages the gradients and runs steps_per_execution steps per
call. tf_impl/mirrored.py is the custom-loop side of the same strategies; PyTorch has no `fit`, so these runs are
diffed against the TensorFlow custom loop only.

What fit does not hand out is read with Keras's own hooks: the per-step loss through a metric that keeps one value
per step (fit's `loss` log is a running mean over the epoch, and callbacks see only every k-th step), the time
through a callback at execution ends.
"""

from __future__ import annotations

import time

import keras
import numpy as np
import tensorflow as tf

from xfw.common.plan.runspec import RunSpec
from xfw.common.worker.breakdown import step_breakdown
from xfw.common.worker.loop import LoopTiming, progress_writer
from xfw.common.worker.rank import RankContext
from xfw.tf_impl import training
from xfw.tf_impl.mirrored import multi_worker_strategy
from xfw.tf_impl.models import build_model, flat_weights


class StepLosses(keras.metrics.Metric):
    """Every step's training loss: each replica adds its batch's mean loss / replicas at the step's slot, and the
    variable's sum aggregation adds the replicas (and workers) up when it is read after fit. The same loss
    function on the same outputs as the loss fit minimises."""

    def __init__(self, loss_fn, steps: int):
        super().__init__(name="step_losses")
        self.loss_fn = loss_fn
        self.losses = self.add_variable((steps,), "zeros", dtype="float32", name="losses")
        self.step = self.add_variable((), "zeros", dtype="int32", name="step")  # this replica's steps so far

    def update_state(self, y_true, y_pred, sample_weight=None):
        context = tf.distribute.get_replica_context()
        replicas = context.num_replicas_in_sync if context is not None else 1
        loss = tf.reduce_mean(self.loss_fn(y_true, y_pred)) / replicas
        step = self.step.value
        self.losses.assign(tf.tensor_scatter_nd_add(self.losses.value, [[step]], [loss]))
        self.step.assign(step + 1)

    def result(self):
        return self.losses.value


class ExecutionClock(keras.callbacks.Callback):
    """The clock at the end of every execution (steps_per_execution steps; fit converts the logs to numpy before
    calling back, so the execution has finished), the run's progress at the timing windows' ends, and the
    profiler around the executions `profiled` (first step, steps done at the end) of the warm-up."""

    def __init__(self, run: RunSpec, rank: int, window_ends: set[int], profiled: tuple[int, int] | None):
        super().__init__()
        self.report, self.window_ends, self.profiled = progress_writer(run, rank), window_ends, profiled
        self.ends: list[tuple[int, float, float]] = []  # (steps done, clock, clock after reporting progress)
        self.started = self.started_at = 0.0
        self.profiler, self.breakdown = training.StepProfiler(), None

    def on_train_begin(self, logs=None):
        self.started_at, self.started = time.time(), time.perf_counter()

    def on_train_batch_begin(self, batch, logs=None):
        if self.profiled and batch == self.profiled[0]:
            self.profiler.start()
            self.profile_began = time.perf_counter()

    def on_train_batch_end(self, batch, logs=None):
        now, done = time.perf_counter(), batch + 1
        if self.profiled and done == self.profiled[1]:
            steps = done - self.profiled[0]
            # fit reads its batches inside the compiled step: the input is its IteratorGetNext ops
            events = self.profiler.stop()
            self.breakdown = step_breakdown(events, now - self.profile_began, 0.0, steps) | {
                "profiler": f"{self.profiler.description} (inside Keras fit's train function)"
            }
        if done in self.window_ends:
            self.report(done)  # outside the timed windows: the next window starts after it
        self.ends.append((done, now, time.perf_counter()))


def execution_windows(steps: int, warmup_steps: int, windows: int, per_execution: int) -> tuple[int, list[list[int]]]:
    """The warm-up (whole executions covering warmup_steps) and the timed windows as groups of executions, each
    named by the steps done at its end. config.TrainingConfig guarantees at least `windows` timed executions."""
    ends = [*range(per_execution, steps, per_execution), steps]
    warmup_end = next(e for e in ends if e >= warmup_steps)
    timed = [e for e in ends if e > warmup_end]
    return warmup_end, [group.tolist() for group in np.array_split(np.array(timed), windows)]


def profiled_executions(t, rank: int, warmup_end: int) -> tuple[int, int] | None:
    """The warm-up executions rank 0 profiles: whole executions covering training.profile_steps steps at the end of
    the warm-up, never the first (tracing); None where the warm-up has only the one."""
    k = t.steps_per_execution
    first = max(warmup_end - k * -(-t.profile_steps // k), k)
    return (first, warmup_end) if rank == 0 and t.profile_steps and first < warmup_end else None


def loop_timing(clock: ExecutionClock, warmup_end: int, groups: list[list[int]]) -> LoopTiming:
    at = {done: (end, resumed) for done, end, resumed in clock.ends}
    windows, start, steps_before = [], at[warmup_end][1], warmup_end
    for group in groups:
        end, resumed = at[group[-1]]
        windows.append((group[-1] - steps_before, end - start))
        start, steps_before = resumed, group[-1]
    timed_started_at = clock.started_at + (at[warmup_end][1] - clock.started)
    return LoopTiming(
        warmup_steps=warmup_end,
        warmup_s=at[warmup_end][0] - clock.started,
        windows=windows,
        started_at=clock.started_at,
        timed_started_at=timed_started_at,
        ended_at=time.time(),
        input_wait_s=[],  # inside fit's compiled loop: not separable (the report shows "-")
        breakdown=clock.breakdown,
    )


def _fit(ctx: RankContext, s, strategy) -> None:
    """compile + fit under `strategy`'s scope (the default strategy: one device), then the shared report."""
    run = ctx.run
    cfg = run.config
    t = cfg.training
    with strategy.scope():  # tf.distribute: variables mirrored, fit's step runs on every replica
        model = build_model(cfg.model, s.weights)
        step_losses = StepLosses(training.loss_function(run), t.steps)
        model.compile(
            optimizer=training.make_optimizer(run),
            loss=training.loss_function(run),
            metrics=[step_losses],
            steps_per_execution=t.steps_per_execution,
            jit_compile=cfg.runtime.compile,  # explicit: Keras's "auto" turns XLA on for one GPU
        )
    batches = training.native_dataset(run, s)  # (indices, x, y); fit takes (x, y)
    warmup_end, groups = execution_windows(t.steps, t.warmup_steps, t.timing_windows, t.steps_per_execution)
    profiled = profiled_executions(t, ctx.rank, warmup_end)
    clock = ExecutionClock(run, ctx.rank, {g[-1] for g in groups} | {warmup_end}, profiled)
    model.fit(batches.map(lambda idx, x, y: (x, y)), epochs=1, steps_per_epoch=t.steps, verbose=0, callbacks=[clock])
    losses = step_losses.result().numpy().astype(np.float64)  # cross-replica read: the sum over replicas
    timing = loop_timing(clock, warmup_end, groups)
    local = strategy.num_replicas_in_sync // ctx.world_size
    copies = [
        flat_weights([strategy.experimental_local_results(v.value)[i] for v in model.trainable_variables])
        for i in range(local)
    ]
    # What each replica was fed, read from the same pipeline distributed as fit distributes it (its own batches are
    # not handed out): the indices of every step, per replica.
    delivered = strategy.experimental_distribute_dataset(batches.map(lambda idx, x, y: idx))
    per_step = [strategy.experimental_local_results(idx) for idx in delivered]
    fed = [training.fed(ctx.rank * local + i, [step[i] for step in per_step]) for i in range(local)]
    training.report(ctx, s, model, losses, timing, copies, fed=fed)


def run_fit(run: RunSpec, launcher: str) -> None:
    s = training.setup(run)
    _fit(RankContext(run, launcher, devices=(training.default_device(),)), s, tf.distribute.get_strategy())


def run_fit_mirrored(run: RunSpec, launcher: str) -> None:
    s = training.setup(run, local_devices=run.replicas)
    devices = training.logical_devices(run.replicas)
    strategy = tf.distribute.MirroredStrategy(devices=devices, cross_device_ops=training.cross_device_ops())
    _fit(RankContext(run, launcher, devices=tuple(devices)), s, strategy)


def run_fit_multi_worker(run: RunSpec, launcher: str) -> None:
    strategy, ctx = multi_worker_strategy(run, launcher)
    _fit(ctx, training.setup(run), strategy)
