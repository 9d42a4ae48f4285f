"""What every PyTorch strategy shares: process set-up, data, optimizer and loss mapping, the timed loop
and the final report. tf_impl/training.py mirrors this file function by function (tests/unit/test_layout.py);
the framework-free rest is common/worker/rank.py."""

from __future__ import annotations

import contextlib
import time
from dataclasses import dataclass

import numpy as np
import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch.utils.data import DataLoader, DistributedSampler

from xfw.common.plan.machine import gpu_of_rank, ranks_share_a_gpu
from xfw.common.plan.runspec import RunSpec
from xfw.common.records import PeakFlops
from xfw.common.spec.data import (
    Dataset,
    DeliveredBatches,
    Fed,
    load_dataset,
    replica_slice,
    sample_order,
    steps_per_epoch,
)
from xfw.common.spec.schedules import learning_rates
from xfw.common.spec.semantics import LOSS_SCALE, MATMUL_DTYPE, optimizer_hyperparameters
from xfw.common.spec.weights import starting_weights
from xfw.common.worker import rank as common_rank
from xfw.common.worker.peak import cpu_name, machine_peak, visible_gpus
from xfw.common.worker.rank import RankContext
from xfw.torch_impl.models import to_torch_layout


@dataclass
class Setup:
    device: torch.device
    data: Dataset
    order: np.ndarray  # (steps, global_batch) sample indices
    weights: dict[str, np.ndarray]
    x: torch.Tensor  # the training set as tensors, on `device`
    y: torch.Tensor


def setup(run: RunSpec, device: torch.device | None = None) -> Setup:
    cfg = run.config
    torch.set_num_threads(cfg.parallel.threads_per_replica)
    if cfg.runtime.determinism:
        torch.use_deterministic_algorithms(True)
    set_math_mode(cfg.runtime.tf32)
    torch.manual_seed(cfg.seed)  # no layer draws random numbers (weights are loaded), but be sure
    device = device or default_device()
    data = load_dataset(cfg)
    order = sample_order(data.train_size, cfg.training.global_batch, cfg.training.steps, cfg.seed)
    x = torch.from_numpy(to_torch_layout(data.x_train)).to(device)
    y = torch.from_numpy(data.y_train).to(device)
    return Setup(device, data, order, starting_weights(run), x, y)


def set_math_mode(tf32: bool) -> None:
    """TensorFloat-32 for float32 matmuls and convolutions on or off (runtime.tf32), set explicitly: PyTorch's own
    defaults differ between the two (matmul off, cuDNN convolutions on), TensorFlow's are both on."""
    precision = "tf32" if tf32 else "ieee"
    torch.backends.cuda.matmul.fp32_precision = precision
    torch.backends.cudnn.conv.fp32_precision = precision


def default_device() -> torch.device:
    """The first GPU, or the CPU where there is none."""
    return torch.device("cuda:0" if torch.cuda.is_available() else "cpu")


# The group that carries a run's bookkeeping (start and teardown barriers, the result gathers): gloo on CPU
# tensors, which any ranks can form, those sharing a GPU included. Training collectives use the default group.
_coordination = None


def init_process_group(run: RunSpec) -> torch.device:
    """Join torchrun's process group and take this rank's device. NCCL where every rank has a GPU of its own;
    gloo where ranks share one (several networks on one GPU, more replicas than GPUs), since NCCL refuses two
    ranks on one device: gloo's all_reduce and broadcast, all DDP needs, take CUDA tensors."""
    global _coordination
    gpus = torch.cuda.device_count() if torch.cuda.is_available() else 0
    backend = "nccl" if gpus and not ranks_share_a_gpu(run.processes, gpus, run.devices) else "gloo"
    # torch.distributed: rank, world size and rendezvous come from torchrun's environment.
    dist.init_process_group(backend)
    if dist.get_world_size() != run.processes:
        raise RuntimeError(f"torchrun started {dist.get_world_size()} processes but the run needs {run.processes}")
    _coordination = dist.new_group(backend="gloo") if backend == "nccl" else dist.group.WORLD
    if gpus:
        device = torch.device("cuda", gpu_of_rank(dist.get_rank(), gpus, run.devices))
        torch.cuda.set_device(device)
        return device
    return torch.device("cpu")


def barrier() -> None:
    """torch.distributed: every rank reaches this line before any goes on (the coordination group)."""
    dist.barrier(group=_coordination)


def all_gather_object(parts: list, obj) -> None:
    """torch.distributed: every rank's picklable `obj` into `parts`, in rank order (the coordination group)."""
    dist.all_gather_object(parts, obj, group=_coordination)


def collective_gather():
    """RankContext.gather for a torchrun process group: CPU tensors through the coordination group."""

    def gather(vector: np.ndarray) -> np.ndarray:
        # torch.distributed: one all-gather after training.
        mine = torch.from_numpy(vector)
        parts = [torch.empty_like(mine) for _ in range(dist.get_world_size())]
        dist.all_gather(parts, mine, group=_coordination)
        return torch.stack(parts).numpy()

    return gather


class ScheduledOptimizer:
    """A torch optimizer with what Keras puts inside its own: global-norm clipping before each update and the
    learning-rate schedule after it (LambdaLR over xfw's table, common/spec/schedules.py). Strategies call zero_grad()
    and step() as on any optimizer. Under Horovod, step() first waits for the averaged gradients, so the norm
    clipped is the global batch's."""

    def __init__(self, optimizer: torch.optim.Optimizer, run: RunSpec):
        cfg = run.config
        self.optimizer = optimizer
        self.clip = cfg.training.clip_global_norm
        self.scaler = None
        if cfg.runtime.precision == "mixed_float16":
            # Dynamic loss scaling, started and grown as Keras's LossScaleOptimizer is told to.
            device = next(p for group in optimizer.param_groups for p in group["params"]).device.type
            self.scaler = torch.amp.GradScaler(
                device, init_scale=LOSS_SCALE["initial"], growth_interval=LOSS_SCALE["growth_interval"]
            )
        self.scheduler = None
        if cfg.optimizer.schedule.kind != "constant":
            rates = learning_rates(cfg.optimizer.lr, cfg.optimizer.schedule, cfg.training.steps)
            base = cfg.optimizer.lr
            self.scheduler = torch.optim.lr_scheduler.LambdaLR(
                optimizer, lambda step: float(rates[min(step, len(rates) - 1)]) / base
            )

    def zero_grad(self) -> None:
        self.optimizer.zero_grad()  # set_to_none, torch's default (Horovod's optimizer takes no argument)

    def step(self) -> None:
        if self.clip is None and self.scaler is None and not hasattr(self.optimizer, "synchronize"):
            self.optimizer.step()
        else:
            horovod = hasattr(self.optimizer, "synchronize")
            if horovod:
                # Horovod: the averaged gradients, before they are unscaled or clipped (named for the profiler)
                with torch.profiler.record_function("xfw:communication (Horovod synchronize)"):
                    self.optimizer.synchronize()
            if self.scaler is not None:
                self.scaler.unscale_(self.optimizer)
            if self.clip is not None:
                parameters = [p for group in self.optimizer.param_groups for p in group["params"]]
                torch.nn.utils.clip_grad_norm_(parameters, self.clip)
            with self.optimizer.skip_synchronize() if horovod else contextlib.nullcontext():
                if self.scaler is not None:
                    self.scaler.step(self.optimizer)  # skipped where a gradient is not finite
                    self.scaler.update()
                else:
                    self.optimizer.step()
        if self.scheduler is not None:
            self.scheduler.step()


def make_optimizer(run: RunSpec, parameters, wrap=None):
    """The configured optimizer as torch's own class, inside a ScheduledOptimizer. `wrap`: what an engine puts
    around the bare optimizer first (Horovod's DistributedOptimizer)."""
    params = optimizer_hyperparameters(run.config, "torch")
    cls = {
        "torch.optim.SGD": torch.optim.SGD,
        "torch.optim.Adam": torch.optim.Adam,
        "torch.optim.AdamW": torch.optim.AdamW,
    }[params.pop("class")]
    params.pop("lr_scheduler", None)
    params.pop("clip_grad_norm_", None)
    params.pop("loss_scale", None)  # ScheduledOptimizer's GradScaler
    if "betas" in params:
        params["betas"] = tuple(params["betas"])
    optimizer = cls(parameters, **params)
    return ScheduledOptimizer(wrap(optimizer) if wrap else optimizer, run)


def loss_function(run: RunSpec):
    """loss(outputs, targets): the batch MEAN, through torch's own reduction (tf_impl's twin returns per-example
    losses and leaves the reduction to the caller). A language model's positions are flattened into the
    batch: with equal sequence lengths the mean over positions is the mean of per-sequence means."""
    if run.config.loss == "mse":
        return lambda outputs, targets: F.mse_loss(outputs.float(), targets)  # mixed precision: loss in float32

    def cross_entropy(outputs, targets):
        outputs = outputs.float()
        return (
            F.cross_entropy(outputs.flatten(0, -2), targets.flatten())
            if outputs.dim() > 2
            else F.cross_entropy(outputs, targets)
        )

    return cross_entropy


class TrainingSet(torch.utils.data.Dataset):
    """The training arrays as a map-style Dataset: item i is (i, x[i], y[i]); the index travels with the sample,
    so what reached each replica is read back from its batches."""

    def __init__(self, data: Dataset):
        self.x = torch.from_numpy(to_torch_layout(data.x_train))
        self.y = torch.from_numpy(data.y_train)

    def __len__(self) -> int:
        return len(self.y)

    def __getitem__(self, i: int):
        return i, self.x[i], self.y[i]


class StepOrderSampler(DistributedSampler):
    """A DistributedSampler that yields xfw's order: epoch e (set_epoch) is the e-th stretch of steps_per_epoch
    global batches of common.data.sample_order, of which this rank takes its block (replica_slice) of each. A
    DataLoader of batch size global_batch / replicas then delivers exactly the rows a preloaded run indexes."""

    def __init__(self, dataset: TrainingSet, order: np.ndarray, num_replicas: int, rank: int):
        super().__init__(dataset, num_replicas=num_replicas, rank=rank, shuffle=False)
        self.order = order
        self.block = replica_slice(order.shape[1], rank, num_replicas)
        self.steps_per_epoch = steps_per_epoch(len(dataset), order.shape[1])

    def _rows(self) -> np.ndarray:
        first = self.epoch * self.steps_per_epoch
        return self.order[first : first + self.steps_per_epoch, self.block]

    def __iter__(self):
        return iter(self._rows().reshape(-1).tolist())

    def __len__(self) -> int:
        return self._rows().size


def _loader_batches(run: RunSpec, loader: DataLoader, sampler: StepOrderSampler, device: torch.device):
    """Every step's batch from the DataLoader, epoch after epoch, copied to `device` (asynchronously from
    pinned memory)."""
    epochs = -(-run.config.training.steps // sampler.steps_per_epoch)
    for epoch in range(epochs):
        sampler.set_epoch(epoch)  # as the source documents do: every epoch its own order
        for batch in loader:
            yield tuple(t.to(device, non_blocking=loader.pin_memory) for t in batch)


def step_batches(run: RunSpec, s: Setup, preloaded, rank: int = 0, replicas: int = 1) -> DeliveredBatches:
    """What the steps read, as common.data.DeliveredBatches: preloaded, the index tensors `preloaded()` makes from
    s.order; native, a DataLoader over TrainingSet with a StepOrderSampler for this rank's block of each global
    batch, data.workers loading processes, data.prefetch batches ahead per worker, pinned memory on a GPU."""
    if run.config.data.pipeline == "preloaded":
        return DeliveredBatches(preloaded(), indices=lambda batch: batch)
    d = run.config.data
    dataset = TrainingSet(s.data)
    sampler = StepOrderSampler(dataset, s.order, replicas, rank)
    loader = DataLoader(
        dataset,
        batch_size=len(sampler.order[0, sampler.block]),
        sampler=sampler,
        num_workers=d.workers,
        prefetch_factor=d.prefetch if d.workers else None,
        persistent_workers=d.workers > 0,
        pin_memory=d.pin_memory and s.device.type == "cuda",
    )
    return DeliveredBatches(_loader_batches(run, loader, sampler, s.device), indices=lambda batch: batch[0])


def batch_tensors(s: Setup, batch) -> tuple:
    """(x, y) of a step's batch: a native pipeline's (indices, x, y) as delivered, or the samples a preloaded
    step gathers from the training set by index (inside the step, on the step's device)."""
    if isinstance(batch, tuple):
        return batch[1], batch[2]
    return s.x[batch], s.y[batch]


def autocast(run: RunSpec, device_type: str):
    """The forward pass's precision: torch.autocast to bfloat16/float16 (weights stay float32), or nothing."""
    precision = run.config.runtime.precision
    if precision == "float32":
        return contextlib.nullcontext()
    return torch.autocast(device_type, dtype=torch.bfloat16 if precision == "mixed_bfloat16" else torch.float16)


def compiled(run: RunSpec):
    """Decorator: the step's `forward` (a batch's loss) compiled by torch.compile (inductor; its backward through
    AOTAutograd) where runtime.compile says so. tf_impl's twin hands it to XLA."""
    if not run.config.runtime.compile:
        return lambda forward: forward
    return lambda forward: torch.compile(forward)


def _rows(batch, start: int, stop: int):
    """Rows start:stop of a batch (of each of a native batch's tensors)."""
    return tuple(t[start:stop] for t in batch) if isinstance(batch, tuple) else batch[start:stop]


def gradients(run: RunSpec, batch, compute, no_sync=None, optimizer=None) -> torch.Tensor:
    """Backward of one step on `batch` (sample indices, or a native pipeline's (indices, x, y)), gradients left
    in .grad; returns the loss, detached. compute(batch) -> the loss, run under the configured precision
    (autocast). With training.accumulation_steps k > 1: k micro-batches one after another, each loss / k, torch
    summing their gradients in .grad; `no_sync`: DDP's context that holds its all-reduce back until the last
    micro-batch.
    Under loss scaling (`optimizer`'s GradScaler) the gradients are of the scaled loss: its step() unscales.
    tf_impl's twin sums the gradients itself."""
    k = run.config.training.accumulation_steps
    scaler = getattr(optimizer, "scaler", None)
    scaled = scaler.scale if scaler is not None else lambda v: v
    leading = batch[0] if isinstance(batch, tuple) else batch
    if k == 1:
        with autocast(run, leading.device.type):
            loss = compute(batch)
        scaled(loss).backward()
        return loss.detach()
    n = len(leading) // k
    losses = []
    for m in range(k):
        hold = no_sync() if no_sync is not None and m < k - 1 else contextlib.nullcontext()
        with hold:
            with autocast(run, leading.device.type):
                loss = compute(_rows(batch, m * n, (m + 1) * n))
            scaled(loss / k).backward()
        losses.append(loss.detach())
    return torch.stack(losses).mean()


class StepProfiler:
    """torch.profiler around a few warm-up steps (common.loop.timed_loop), its events sorted by name into
    common.breakdown's categories. tf_impl's twin reads the TensorFlow profiler's op events."""

    description = (
        "torch.profiler, host-side events: c10d/gloo/nccl collectives and xfw:communication (around Horovod's "
        "synchronize) = communication; Optimizer.step/zero_grad = update; DataLoader iteration = input; every other "
        "op = compute. On a GPU the device's work shows as the host waiting for it (compute)"
    )

    def start(self) -> None:
        self.profile = torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU])
        self.profile.start()

    def stop(self) -> dict[str, list[tuple[float, float]]]:
        self.profile.stop()
        events: dict[str, list[tuple[float, float]]] = {}
        for event in self.profile.events():
            span = event.time_range
            events.setdefault(_category(event.name), []).append((span.start / 1e6, span.end / 1e6))
        return events


_COMMUNICATION = ("c10d::", "gloo:", "nccl", "allreduce", "all_reduce", "xfw:communication")


def _category(name: str) -> str:
    lower = name.lower()
    if any(key in lower for key in _COMMUNICATION):
        return "communication"
    if name.startswith(("Optimizer.step", "Optimizer.zero_grad")):
        return "update"
    if name.startswith("enumerate(DataLoader)"):
        return "input"
    return "compute"


def train(
    run: RunSpec, step, step_inputs, rank: int = 0, after_warmup=None, profiler=None
) -> tuple[np.ndarray, object]:
    """Runs the shared timed loop over the per-step inputs (a list, or step_batches); returns per-step losses as numpy
    (shape (steps,), or (steps, networks) where one step trains several networks)."""
    # .cpu() forces the pending step to finish before the clock is read (any shape).
    losses, timing = common_rank.timed_training(
        run, step, step_inputs, lambda loss: loss.cpu(), rank, after_warmup, profiler or StepProfiler()
    )
    return torch.stack(losses).double().cpu().numpy(), timing


def fed(replica: int, step_inputs: list) -> Fed:
    """What one replica was fed: its per-step index tensors, read back from where they were placed."""
    return Fed(replica, str(step_inputs[0].device), torch.stack(step_inputs).cpu().numpy())


@torch.no_grad()
def evaluate(run: RunSpec, s: Setup, model) -> dict:
    if not len(s.data.y_test):  # data.test_fraction 0: nothing held out, no evaluation
        return {}
    x = torch.from_numpy(to_torch_layout(s.data.x_test)).to(s.device)
    y = torch.from_numpy(s.data.y_test).to(s.device)
    model.eval()  # BatchNorm normalises by its moving statistics
    with autocast(run, s.device.type):
        logits = model(x)
    model.train()
    metrics = {"test_loss": float(loss_function(run)(logits, y))}
    if s.data.classification:
        # the share of samples (of positions, for a language model) whose top class is the target
        metrics["test_accuracy"] = float((logits.argmax(dim=-1) == y).double().mean())
    return metrics


def matmul_peak_flops(run: RunSpec) -> PeakFlops:
    """One device's peak (worker/peak.py): square matmuls on this process's device in the run's precision (float32,
    bfloat16, float16), math mode and thread count, measured once per machine and setting."""
    device = torch.device("cuda", torch.cuda.current_device()) if torch.cuda.is_available() else torch.device("cpu")
    tf32 = run.config.runtime.tf32 and device.type == "cuda"
    dtype = MATMUL_DTYPE[run.config.runtime.precision]
    setting = {
        "framework": f"torch {torch.__version__}",
        "device": gpu_name() if device.type == "cuda" else cpu_name(),
        "gpu": device.type == "cuda",
        "precision": dtype,
        "tf32": tf32,
        "threads": torch.get_num_threads(),
    }

    def matmul_seconds(n: int, count: int) -> float:  # in the math mode setup() set from runtime.tf32
        a = torch.randn(n, n, device=device, dtype=getattr(torch, dtype))
        b = torch.randn(n, n, device=device, dtype=getattr(torch, dtype))
        a[0, 0].item()  # waits for the device
        start = time.perf_counter()
        for _ in range(count):
            c = a @ b
        c[0, 0].item()
        return time.perf_counter() - start

    return machine_peak(setting, matmul_seconds, gpu=device.type == "cuda")


def gpu_name() -> str:
    return torch.cuda.get_device_name(torch.cuda.current_device())


def gpu_memory() -> dict[int, int]:
    """Peak bytes PyTorch's caching allocator held on each GPU this process used ({} without CUDA)."""
    if not (torch.cuda.is_available() and torch.cuda.is_initialized()):
        return {}
    visible = visible_gpus(torch.cuda.device_count())
    peaks = {visible[d]: torch.cuda.max_memory_allocated(d) for d in range(torch.cuda.device_count())}
    return {gpu: peak for gpu, peak in peaks.items() if peak}


def stage_seconds(
    run: RunSpec, model, stage, batch: int, last: bool, device: torch.device, count: int = 1, repeats: int = 20
) -> float:
    """Median time of `count` forward+backward passes of one stage on `batch` samples, alone on its device."""
    from xfw.torch_impl.models import torch_sample_shape

    tokens = stage.layers[0].input_dtype != "float32"  # a first stage reading token ids: no input gradient
    in_shape = (batch, *torch_sample_shape(stage.input_shape))
    if tokens:
        x = torch.zeros(in_shape, dtype=torch.int64, device=device)
    else:
        x = torch.randn(in_shape, device=device, requires_grad=True)
    out_shape = (batch, *torch_sample_shape(stage.output_shape))
    y = (
        torch.zeros(out_shape[:-1] if len(out_shape) > 2 else batch, dtype=torch.int64, device=device)
        if run.config.loss == "cross_entropy"
        else torch.zeros(out_shape, device=device)
    )
    out_grad = torch.ones(out_shape, device=device)
    waited = next(model.parameters()) if tokens else x

    def forward_backward():
        for _ in range(count):  # the passes run one after another, as a stage does
            out = model(x)
            if last:
                loss_function(run)(out, y).backward()
            else:
                out.backward(out_grad)
        waited.grad.reshape(-1)[0].item()  # waits for the device

    forward_backward()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        forward_backward()
        times.append(time.perf_counter() - start)
    model.zero_grad(set_to_none=True)
    return float(np.median(times))


def environment(ctx: RankContext) -> dict:
    """What result.json records about the software and the process that produced it."""
    versions = {"torch": torch.__version__}
    env = common_rank.environment(ctx, versions, torch.get_num_threads(), torch.get_num_interop_threads())
    env["math_mode"] = {
        "matmul_fp32_precision": torch.backends.cuda.matmul.fp32_precision,
        "conv_fp32_precision": torch.backends.cudnn.conv.fp32_precision,
    }
    if dist.is_initialized():
        env["process_group_backend"] = dist.get_backend()
    return env


def report(ctx: RankContext, s: Setup, model, losses: np.ndarray, timing, weight_copies: list, **stages) -> None:
    """Gather, then rank 0 evaluates `model` and writes result.json (common.rank.report; `stages`: stage=,
    stage_busy_s= of a model-parallel process)."""
    common_rank.report(ctx, losses, timing, weight_copies, lambda: evaluate(ctx.run, s, model), END, **stages)


# What rank 0 asks this framework for at the end of a run (common.rank.report).
END = common_rank.FrameworkEnd(environment=environment, peak_flops=matmul_peak_flops, gpu_memory=gpu_memory)
