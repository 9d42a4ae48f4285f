"""What every TensorFlow strategy shares: process set-up, data, optimizer and loss mapping, the timed
loop and the final report. torch_impl/training.py mirrors this file function by function (tests/unit/test_layout.py);
the framework-free rest is common/worker/rank.py.

TensorFlow and Keras are imported at the top: the worker sets the environment they read before it imports
an implementation. The runtime settings (threads, logical devices, determinism) are made by configure,
before any op runs."""

from __future__ import annotations

import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import keras
import numpy as np
import tensorflow as tf
from tensorflow.tsl.profiler.protobuf import xplane_pb2

from xfw.common.plan.machine import gpu_memory_mib
from xfw.common.plan.runspec import RunSpec
from xfw.common.records import PeakFlops
from xfw.common.spec.data import Dataset, DeliveredBatches, Fed, load_dataset, sample_order
from xfw.common.spec.schedules import learning_rates
from xfw.common.spec.semantics import LOSS_SCALE, MATMUL_DTYPE, optimizer_hyperparameters
from xfw.common.spec.weights import starting_weights
from xfw.common.worker import rank as common_rank
from xfw.common.worker.peak import cpu_name, machine_peak, visible_gpus
from xfw.common.worker.rank import RankContext


@dataclass
class Setup:
    data: Dataset
    order: np.ndarray  # (steps, global_batch) sample indices
    weights: dict[str, np.ndarray]
    x: object  # the training set as tensors
    y: object


_configured = False
GPU_MEMORY_SHARE = 0.9  # of a GPU's memory, split between the logical GPUs cut from it (the rest: CUDA's own)


def configure(run: RunSpec, local_devices: int = 1, inter_op_threads: int | None = None):
    """Threads, determinism, math mode and logical devices: must happen before TensorFlow initialises its runtime
    (MultiWorkerMirroredStrategy does that when it is created, so it calls this first). Idempotent."""
    global _configured
    if _configured:
        return
    cfg = run.config
    tf.config.threading.set_intra_op_parallelism_threads(cfg.parallel.threads_per_replica)
    # One inter-op thread per replica, so replicas placed in one process can run at the same time.
    # (Networks trained in threads of one process: one per network.)
    tf.config.threading.set_inter_op_parallelism_threads(inter_op_threads or max(1, local_devices))
    if cfg.runtime.determinism:
        tf.config.experimental.enable_op_determinism()
    set_math_mode(cfg.runtime.tf32)
    # Keras's mixed policy: variables float32, layers compute in bfloat16/float16 (float32: the default policy).
    keras.mixed_precision.set_global_policy(cfg.runtime.precision)
    gpus = tf.config.list_physical_devices("GPU")
    if local_devices > 1 and not gpus:
        # Split the CPU into N logical devices so that one process can hold N replicas.
        cpu = tf.config.list_physical_devices("CPU")[0]
        tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * local_devices)
    elif local_devices > len(gpus) > 0:
        # Fewer GPUs than devices (one GPU, two replicas): each GPU becomes several logical GPUs, each with an
        # equal share of its memory (TensorFlow needs a limit per logical GPU).
        per_gpu = -(-local_devices // len(gpus))
        for index, gpu in zip(visible_gpus(len(gpus)), gpus):
            limit = int(gpu_memory_mib(index) * GPU_MEMORY_SHARE / per_gpu)
            tf.config.set_logical_device_configuration(gpu, [tf.config.LogicalDeviceConfiguration(limit)] * per_gpu)
    _configured = True


def set_math_mode(tf32: bool) -> None:
    """TensorFloat-32 for float32 matmuls and convolutions on or off (runtime.tf32), set explicitly: TensorFlow's
    default is on for both, PyTorch's differ between the two."""
    tf.config.experimental.enable_tensor_float_32_execution(tf32)


def splits_gpus() -> bool:
    """Whether configure made several logical GPUs of one physical GPU (call after configure)."""
    return len(tf.config.list_logical_devices("GPU")) > len(tf.config.list_physical_devices("GPU"))


def setup(run: RunSpec, local_devices: int = 1, inter_op_threads: int | None = None) -> Setup:
    """Configure TensorFlow (if not yet done), then load data and initial weights."""
    configure(run, local_devices, inter_op_threads)
    cfg = run.config
    keras.utils.set_random_seed(cfg.seed)  # no layer draws random numbers (weights are loaded), but be sure
    data = load_dataset(cfg)
    order = sample_order(data.train_size, cfg.training.global_batch, cfg.training.steps, cfg.seed)
    with tf.device("/cpu:0"):
        x, y = tf.constant(data.x_train), tf.constant(data.y_train)
    return Setup(data, order, starting_weights(run), x, y)


def default_device() -> str:
    """The first GPU's name, or the first CPU's where there is none. Lists devices, which initialises the runtime:
    call after configure."""
    return (tf.config.list_logical_devices("GPU")[:1] or tf.config.list_logical_devices("CPU")[:1])[0].name


def logical_devices(count: int) -> list[str]:
    """The first `count` GPUs, or logical CPU devices where there is no GPU (see configure)."""
    gpus = tf.config.list_logical_devices("GPU")
    devices = gpus or tf.config.list_logical_devices("CPU")
    if len(devices) < count:
        raise RuntimeError(
            f"the run needs {count} devices but TensorFlow sees {len(devices)}: {[d.name for d in devices]}"
        )
    return [d.name for d in devices[:count]]


def cross_device_ops():
    """What MirroredStrategy all-reduces with: its default (NCCL on GPUs), except on logical GPUs that share one
    physical GPU, where NCCL refuses two devices of one GPU and a reduction on one device works everywhere."""
    return tf.distribute.ReductionToOneDevice() if splits_gpus() else None


def collective_gather(strategy):
    """RankContext.gather for MultiWorkerMirroredStrategy's workers."""

    def gather(vector: np.ndarray) -> np.ndarray:
        # tf.distribute: an all-gather across the workers, once after training.
        value = strategy.experimental_distribute_values_from_function(lambda _: tf.constant(vector[None]))
        return strategy.gather(value, axis=0).numpy()

    return gather


class TabulatedSchedule(keras.optimizers.schedules.LearningRateSchedule):
    """The learning rate of each step read from xfw's table (common/spec/schedules.py); Keras calls it with the
    optimizer's iteration count, the number of updates applied so far."""

    def __init__(self, rates: np.ndarray):
        self.rates = np.asarray(rates, dtype=np.float32)

    def __call__(self, step):
        table = keras.ops.convert_to_tensor(self.rates)
        return keras.ops.take(table, keras.ops.minimum(keras.ops.cast(step, "int32"), len(self.rates) - 1))

    def get_config(self) -> dict:
        return {"rates": self.rates.tolist()}


class DenseGradients:
    """Mixed into a Keras optimizer: sparse gradients (tf.IndexedSlices, an embedding's) made dense before the
    update, as torch's are. Left sparse, Keras clips by a norm taken over the slices' rows, which counts a
    token seen twice as two rows (larger than the gradient's true norm), and updates optimizer state only on
    the rows present: both differ from the dense update of torch and of the reference run."""

    def apply(self, grads, trainable_variables=None):
        dense = [tf.convert_to_tensor(g) if isinstance(g, tf.IndexedSlices) else g for g in grads]
        return super().apply(dense, trainable_variables)


def make_optimizer(run: RunSpec):
    """The configured optimizer as Keras's own class (with DenseGradients); schedule and global-norm clipping
    are its arguments."""
    cfg = run.config
    params = optimizer_hyperparameters(cfg, "tf")
    params.pop("loss_scale", None)  # made below
    cls = {
        "keras.optimizers.SGD": keras.optimizers.SGD,
        "keras.optimizers.Adam": keras.optimizers.Adam,
        "keras.optimizers.AdamW": keras.optimizers.AdamW,
    }[params.pop("class")]
    if cfg.optimizer.schedule.kind != "constant":
        params["learning_rate"] = TabulatedSchedule(
            learning_rates(cfg.optimizer.lr, cfg.optimizer.schedule, cfg.training.steps)
        )
    optimizer = type(cls.__name__, (DenseGradients, cls), {})(**params)
    if cfg.runtime.precision == "mixed_float16":
        # Dynamic loss scaling, started and grown as torch's GradScaler is told to (common.semantics.LOSS_SCALE).
        optimizer = keras.optimizers.LossScaleOptimizer(
            optimizer, initial_scale=LOSS_SCALE["initial"], dynamic_growth_steps=LOSS_SCALE["growth_interval"]
        )
    return optimizer


def loss_function(run: RunSpec):
    """loss(targets, outputs): PER-EXAMPLE losses (reduction=None), each strategy decides how to average (mean,
    or compute_average_loss); torch_impl's twin returns the batch mean. A language model's example is a
    sequence: its loss is the mean over its positions, so that every example weighs the same."""
    if run.config.loss == "mse":
        base = keras.losses.MeanSquaredError(reduction=None)
    else:
        base = keras.losses.SparseCategoricalCrossentropy(from_logits=True, reduction=None)

    def per_example(targets, outputs):
        losses = base(targets, keras.ops.cast(outputs, "float32"))  # mixed precision: the loss in float32
        return keras.ops.mean(losses, axis=tuple(range(1, len(losses.shape)))) if len(losses.shape) > 1 else losses

    return per_example


def native_dataset(run: RunSpec, s: Setup, block: slice = slice(None)) -> tf.data.Dataset:
    """data.pipeline native: tf.data over the training arrays in xfw's order (the per-epoch permutations laid end
    to end), `block` of each global batch (a rank's share; the whole batch for a strategy to split), each batch
    gathered as (indices, x, y) in parallel map calls and prefetched. The indices travel with the batch, so what
    reached each replica is read back from it."""
    cfg = run.config
    rows = s.order[:, block]
    dataset = tf.data.Dataset.from_tensor_slices(rows.reshape(-1)).batch(rows.shape[1])
    dataset = dataset.map(
        lambda idx: (idx, tf.gather(s.x, idx), tf.gather(s.y, idx)),
        num_parallel_calls=cfg.data.workers or tf.data.AUTOTUNE,
        deterministic=True,
    )
    options = tf.data.Options()
    # tf.distribute: a multi-worker strategy shards the batches' elements (DATA), not files (there are none).
    options.experimental_distribute.auto_shard_policy = tf.data.experimental.AutoShardPolicy.DATA
    return dataset.with_options(options).prefetch(cfg.data.prefetch)


def step_batches(run: RunSpec, s: Setup, preloaded, block: slice = slice(None), distribute=None, indices=None):
    """What the steps read, as common.data.DeliveredBatches: preloaded, the index tensors `preloaded()` makes from
    s.order; native, native_dataset's batches of `block`, passed through `distribute` (a strategy's
    experimental_distribute_dataset, or a split over devices) where given. `indices(batch)` picks a native
    batch's sample indices (default: its first element)."""
    if run.config.data.pipeline == "preloaded":
        return DeliveredBatches(preloaded(), indices=lambda batch: batch)
    dataset = native_dataset(run, s, block)
    return DeliveredBatches(distribute(dataset) if distribute else dataset, indices or (lambda batch: batch[0]))


def batch_tensors(s: Setup, batch) -> tuple:
    """(x, y) of a step's batch: a native pipeline's (indices, x, y) as delivered, or the samples a preloaded
    step gathers from the training set by index (inside the step, on the step's device)."""
    if isinstance(batch, tuple):
        return batch[1], batch[2]
    return tf.gather(s.x, batch), tf.gather(s.y, batch)


def compiled(run: RunSpec):
    """Decorator: the step's `forward` (a batch's loss) compiled by XLA where runtime.compile says so; its gradient
    is then compiled too. torch_impl's twin hands it to torch.compile."""
    if not run.config.runtime.compile:
        return lambda forward: forward
    return lambda forward: tf.function(forward, jit_compile=True)


def gradients(run: RunSpec, batch, variables, compute, optimizer=None) -> tuple[list, object]:
    """(gradients, loss) of one step on `batch` (sample indices, or a native pipeline's (indices, x, y)).
    compute(batch) -> (objective, loss) runs the
    forward pass. With training.accumulation_steps k > 1: k micro-batches one after another, each objective / k,
    the gradients summed (dense), the loss their mean; torch_impl's twin accumulates in .grad. Under loss scaling
    (`optimizer` a LossScaleOptimizer) the gradients are of the scaled objective: its apply_gradients unscales."""
    k = run.config.training.accumulation_steps
    scaled = optimizer.scale_loss if isinstance(optimizer, keras.optimizers.LossScaleOptimizer) else lambda v: v
    if k == 1:
        with tf.GradientTape() as tape:
            objective, loss = compute(batch)
            objective = scaled(objective)
        return tape.gradient(objective, variables), loss
    n = tf.shape(tf.nest.flatten(batch)[0])[0] // k  # a distributed dataset's batches have no static size
    total, losses = None, []
    for m in range(k):  # unrolled in the tf.function: k is small and fixed
        with tf.GradientTape() as tape:
            objective, loss = compute(tf.nest.map_structure(lambda t, m=m: t[m * n : (m + 1) * n], batch))
            objective = scaled(objective / k)
        grads = [tf.convert_to_tensor(g) for g in tape.gradient(objective, variables)]
        total = grads if total is None else [a + b for a, b in zip(total, grads)]
        losses.append(loss)
    return total, tf.add_n(losses) / k


class StepProfiler:
    """The TensorFlow profiler around a few warm-up steps (common.loop.timed_loop), its op events sorted by op type
    and name scope into common.breakdown's categories. torch_impl's twin reads torch.profiler's events."""

    description = (
        "TensorFlow profiler, op events of every executor thread (and kernels on a GPU): Collective*, Nccl*, "
        "Horovod* and cross-device _Send/_Recv ops, and manual placement's averaging = communication; ops in the "
        "optimizer's name scope and ResourceApply* = update; IteratorGetNext = input; every other op, and XLA's "
        "compiled executables, = compute"
    )

    def start(self) -> None:
        self.folder = tempfile.mkdtemp(prefix="xfw-tf-profile-")
        options = tf.profiler.experimental.ProfilerOptions(host_tracer_level=2, python_tracer_level=0)
        tf.profiler.experimental.start(self.folder, options=options)

    def stop(self) -> dict[str, list[tuple[float, float]]]:
        tf.profiler.experimental.stop()
        events: dict[str, list[tuple[float, float]]] = {}
        try:
            for path in Path(self.folder).rglob("*.xplane.pb"):
                space = xplane_pb2.XSpace()
                space.ParseFromString(path.read_bytes())
                for plane in space.planes:
                    gpu = plane.name.startswith("/device:GPU")
                    if not (gpu or plane.name.startswith("/host:CPU")):
                        continue
                    for line in plane.lines:
                        for event in line.events:
                            meta = plane.event_metadata[event.metadata_id]
                            category = _category(meta.name, meta.display_name, gpu)
                            if category:
                                start = (line.timestamp_ns * 1e3 + event.offset_ps) / 1e12
                                events.setdefault(category, []).append((start, start + event.duration_ps / 1e12))
        finally:
            shutil.rmtree(self.folder, ignore_errors=True)
        return events


_COMMUNICATION = ("Collective", "Nccl", "Horovod", "AllReduce", "AllGather", "_Send", "_Recv")
COMMUNICATION_SCOPE = "xfw_communication"  # ops xfw runs as communication by hand (manual placement's averaging)
# Keras 3 applies gradients under a name scope named after the optimizer (xfw's optimizers, lower-cased)
_OPTIMIZER_SCOPES = ("sgd/", "adam/", "adamw/", "loss_scale_optimizer/")


def _category(name: str, op_type: str, gpu: bool) -> str | None:
    """An event's category: host events that are not ops (the executor's own) have no op type and no category."""
    if gpu:
        return "communication" if "nccl" in name.lower() else "compute"
    if not op_type:
        # XLA (runtime.compile): a compiled cluster (the forward pass, the loss, their backward) runs as one
        # executable, not as ops
        return "compute" if "Executable::Execute" in name else None
    if any(key in op_type for key in _COMMUNICATION) or f"{COMMUNICATION_SCOPE}/" in name:
        return "communication"
    if op_type.startswith("ResourceApply") or any(scope in name.lower() for scope in _OPTIMIZER_SCOPES):
        return "update"
    if "IteratorGetNext" in op_type:
        return "input"
    return "compute"


def train(
    run: RunSpec, step, step_inputs, rank: int = 0, after_warmup=None, profiler=None
) -> tuple[np.ndarray, object]:
    """Runs the shared timed loop over the per-step inputs (a list, or step_batches); returns per-step losses as numpy
    (shape (steps,), or (steps, networks) where one step trains several networks)."""
    # .numpy() forces the pending step to finish before the clock is read.
    losses, timing = common_rank.timed_training(
        run, step, step_inputs, lambda loss: loss.numpy(), rank, after_warmup, profiler or StepProfiler()
    )
    return np.array([np.asarray(v, dtype=np.float64) for v in losses]), timing


def placed(indices: np.ndarray, device: str) -> tf.Tensor:
    """Sample indices as a tensor on `device` (placement: a replica's block, where its step runs)."""
    with tf.device(device):
        return tf.identity(indices)


def fed(replica: int, step_inputs: list) -> Fed:
    """What one replica was fed: its per-step index tensors, read back from where they were placed."""
    return Fed(replica, step_inputs[0].device, np.stack([t.numpy() for t in step_inputs]))


def evaluate(run: RunSpec, s: Setup, model) -> dict:
    if not len(s.data.y_test):  # data.test_fraction 0: nothing held out, no evaluation
        return {}
    logits = model(tf.constant(s.data.x_test), training=False)
    metrics = {"test_loss": float(tf.reduce_mean(loss_function(run)(tf.constant(s.data.y_test), logits)))}
    if s.data.classification:
        # the share of samples (of positions, for a language model) whose top class is the target
        metrics["test_accuracy"] = float(np.mean(np.argmax(logits.numpy(), axis=-1) == s.data.y_test))
    return metrics


def matmul_peak_flops(run: RunSpec) -> PeakFlops:
    """One device's peak (common/worker/peak.py): square matmuls on this process's first device in the run's precision
    (float32, bfloat16, float16), math mode and thread count, measured once per machine and setting."""
    device = default_device()
    gpu = "GPU" in device
    dtype = MATMUL_DTYPE[run.config.runtime.precision]
    setting = {
        "framework": f"tensorflow {tf.__version__}",
        "device": gpu_name() if gpu else cpu_name(),
        "gpu": gpu,
        "precision": dtype,
        "tf32": tf.config.experimental.tensor_float_32_execution_enabled() and gpu,
        "threads": tf.config.threading.get_intra_op_parallelism_threads(),
    }

    def matmul_seconds(n: int, count: int) -> float:
        with tf.device(device):
            a, b = tf.random.normal([n, n], dtype=dtype), tf.random.normal([n, n], dtype=dtype)
            a[0, 0].numpy()  # waits for the device
            start = time.perf_counter()
            for _ in range(count):
                c = tf.linalg.matmul(a, b)
            c[0, 0].numpy()
        return time.perf_counter() - start

    return machine_peak(setting, matmul_seconds, gpu=gpu)


def gpu_name() -> str:
    details = tf.config.experimental.get_device_details(tf.config.list_physical_devices("GPU")[0])
    return details.get("device_name", "GPU")


def gpu_memory() -> dict[int, int]:
    """Peak bytes TensorFlow's allocator held on each GPU this process used ({} without GPUs). Logical GPUs
    (configure) are counted on the physical GPU they were cut from."""
    physical = tf.config.list_physical_devices("GPU")
    logical = tf.config.list_logical_devices("GPU")
    if not logical:
        return {}
    machine_index = visible_gpus(len(physical))
    per_physical = -(-len(logical) // len(physical))  # configure cuts each GPU into this many, in order
    peaks: dict[int, int] = {}
    for i, device in enumerate(logical):
        gpu = machine_index[i // per_physical]
        peaks[gpu] = peaks.get(gpu, 0) + int(tf.config.experimental.get_memory_info(device.name)["peak"])
    return {gpu: peak for gpu, peak in peaks.items() if peak}


def stage_seconds(
    run: RunSpec, model, stage, batch: int, last: bool, device: str, count: int = 1, repeats: int = 20
) -> float:
    """Median time of `count` forward+backward passes of one stage on `batch` samples, alone on its device,
    in one call (so that one call's dispatch cost is paid once per step, as in training)."""
    loss_fn = loss_function(run)
    tokens = stage.layers[0].input_dtype != "float32"  # a first stage reading token ids: no input gradient
    with tf.device(device):
        if tokens:
            x = tf.zeros((batch, *stage.input_shape), tf.int64)
        else:
            x = tf.random.normal((batch, *stage.input_shape))
        y = tf.zeros(batch, tf.int64) if run.config.loss == "cross_entropy" else tf.zeros((batch, *stage.output_shape))
        if run.config.loss == "cross_entropy" and len(stage.output_shape) > 1:  # one target per position
            y = tf.zeros((batch, *stage.output_shape[:-1]), tf.int64)
        out_grad = tf.ones((batch, *stage.output_shape))

    @tf.function
    def forward_backward(x):
        total = tf.constant(0.0)
        for _ in tf.range(count):  # a while loop: the passes run one after another, as a stage does
            with tf.device(device), tf.GradientTape() as tape:
                if not tokens:
                    tape.watch(x)
                out = model(x, training=True)
                objective = tf.reduce_mean(loss_fn(y, out)) if last else tf.reduce_sum(out * out_grad)
            wrt = model.trainable_variables[:1] if tokens else [x]
            total += tf.reduce_sum(tape.gradient(objective, wrt)[0])
        return total

    forward_backward(x).numpy()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        forward_backward(x).numpy()
        times.append(time.perf_counter() - start)
    return float(np.median(times))


def environment(ctx: RankContext) -> dict:
    """What result.json records about the software and the process that produced it."""
    threads = tf.config.threading
    versions = {"tensorflow": tf.__version__, "keras": keras.__version__}
    env = common_rank.environment(
        ctx, versions, threads.get_intra_op_parallelism_threads(), threads.get_inter_op_parallelism_threads()
    )
    env["math_mode"] = {"tensor_float_32_execution": tf.config.experimental.tensor_float_32_execution_enabled()}
    return env


def report(ctx: RankContext, s: Setup, model, losses: np.ndarray, timing, weight_copies: list, **stages) -> None:
    """Gather, then rank 0 evaluates `model` and writes result.json (common.rank.report; `stages`: stage=,
    stage_busy_s= of a model-parallel process)."""
    common_rank.report(ctx, losses, timing, weight_copies, lambda: evaluate(ctx.run, s, model), END, **stages)


# What rank 0 asks this framework for at the end of a run (common.rank.report).
END = common_rank.FrameworkEnd(environment=environment, peak_flops=matmul_peak_flops, gpu_memory=gpu_memory)
