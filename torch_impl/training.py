"""What every PyTorch strategy shares: process set-up, data, optimizer and loss mapping, the timed loop
and the final report. tf_impl/training.py mirrors this file function by function."""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from xfw.common.data import Dataset, load_dataset, sample_order
from xfw.common.loop import RankOutcome, common_env, finish_run, peak_rss_bytes, progress_writer, timed_loop
from xfw.common.runspec import RunSpec
from xfw.common.semantics import optimizer_hyperparameters
from xfw.common.weights import initial_weights
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
    torch.manual_seed(cfg.seed)  # no layer draws random numbers (weights are loaded), but be sure
    device = device or torch.device("cuda:0" if torch.cuda.is_available() else "cpu")
    data = load_dataset(cfg)
    order = sample_order(data.train_size, cfg.training.global_batch, cfg.training.steps, cfg.seed)
    x = torch.from_numpy(to_torch_layout(data.x_train)).to(device)
    y = torch.from_numpy(data.y_train).to(device)
    return Setup(device, data, order, initial_weights(cfg.model, cfg.seed), x, y)


def make_optimizer(run: RunSpec, parameters):
    params = optimizer_hyperparameters(run.config, "torch")
    cls = {"torch.optim.SGD": torch.optim.SGD, "torch.optim.Adam": torch.optim.Adam}[params.pop("class")]
    if "betas" in params:
        params["betas"] = tuple(params["betas"])
    return cls(parameters, **params)


def per_example_loss(run: RunSpec):
    """Unreduced loss: each strategy decides how to average."""
    if run.config.loss == "mse":
        return lambda out, y: F.mse_loss(out, y, reduction="none").mean(dim=1)
    return lambda out, y: F.cross_entropy(out, y, reduction="none")


def mean_loss(run: RunSpec):
    """The batch-mean loss, through torch's own reduction."""
    if run.config.loss == "mse":
        return F.mse_loss
    return F.cross_entropy


def train(run: RunSpec, step, step_inputs: list, rank: int = 0) -> tuple[np.ndarray, object]:
    """Runs the shared timed loop over precomputed per-step inputs; returns per-step losses as numpy."""
    t = run.config.training
    losses, timing = timed_loop(
        step, step_inputs,
        lambda loss: loss.item(),  # forces the pending step to finish before the clock is read
        t.warmup_steps, t.timing_windows, progress_writer(run, rank),
    )
    return torch.stack(losses).double().cpu().numpy(), timing


@torch.no_grad()
def evaluate(run: RunSpec, s: Setup, model) -> dict:
    x = torch.from_numpy(to_torch_layout(s.data.x_test)).to(s.device)
    y = torch.from_numpy(s.data.y_test).to(s.device)
    logits = model(x)
    metrics = {"test_loss": float(mean_loss(run)(logits, y))}
    if s.data.classification:
        metrics["test_accuracy"] = float((logits.argmax(dim=1) == y).double().mean())
    return metrics


def matmul_peak_flops(n: int = 1024, repeats: int = 5) -> float:
    """Best fp32 matmul rate of this process with its thread settings: the peak a run is measured against."""
    device = torch.device("cuda:0" if torch.cuda.is_available() else "cpu")
    a, b = torch.randn(n, n, device=device), torch.randn(n, n, device=device)
    (a @ b).sum().item()
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        (a @ b)[0, 0].item()
        best = min(best, time.perf_counter() - start)
    return 2 * n**3 / best


def report(run: RunSpec, s: Setup, model, losses: np.ndarray, timing, weight_copies: list, gather, rank: int,
           launcher: str, world_size: int, devices: list[str]) -> None:
    def rank0_extras() -> dict:
        env = common_env(run, launcher, world_size) | {
            "framework_versions": {"torch": torch.__version__},
            "devices": devices,
            "intra_op_threads": torch.get_num_threads(),
            "inter_op_threads": torch.get_num_interop_threads(),
        }
        if launcher == "horovodrun":
            import horovod

            env["framework_versions"]["horovod"] = horovod.__version__
        # Peak of one replica's share of the machine, times the replicas: what the run could reach at most.
        return {"eval": evaluate(run, s, model), "env": env, "peak_flops_per_s": matmul_peak_flops() * run.replicas}

    outcome = RankOutcome(losses, timing, weight_copies, peak_rss_bytes())
    finish_run(run, outcome, gather, rank, rank0_extras)
