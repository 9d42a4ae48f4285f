"""How much xfw's training loop costs over a minimal hand-written loop on the same model.

Per framework, in its own process: the same model, initial weights, batches, optimizer and thread count,
trained by (a) xfw's single-device implementation, exactly as `xfw run` runs it, and (b) the shortest
loop a practitioner would write. Both do the same work per step: select the step's samples from the
in-memory training set by index (inside the tf.function on the TensorFlow side), forward, backward, update. Rounds
alternate a, b, a, b, ...
so that both see the same machine state; the figure is the ratio of median throughputs, warm-up excluded.
Target: xfw within 3% of the hand-written loop (ratio >= 0.97).

For an MLP the hand-written side writes its model too. For the ResNet and the Transformer it builds the model
with xfw's own builder (tf_impl/torch_impl models.py: the frameworks' own layers, nothing of xfw runs in the
forward pass) and writes only the loop, which is what this benchmark measures.

    python benchmarks/loop_overhead.py [--config FILE] [--rounds 5] [--steps 2000]
    python benchmarks/loop_overhead.py --config configs/resnet.yaml --steps 200 --rounds 3
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from rich.console import Console
from rich.table import Table

from xfw.common.plan.launch import base_env
from xfw.common.plan.runspec import RunSpec
from xfw.common.spec.config import load_config
from xfw.common.spec.data import load_dataset, sample_order
from xfw.common.spec.models import training_flops_per_sample
from xfw.common.spec.weights import initial_weights


def xfw_throughput(run: RunSpec) -> float:
    """xfw's own single-device run, in this process; throughput over its timed windows."""
    module = __import__(f"xfw.{run.framework}_impl.single", fromlist=["run_single"])
    module.run_single(run, "process")
    result = json.loads((Path(run.out_dir) / "result.json").read_text())
    windows = result["timing"]["windows"]
    return result["timing"]["global_batch"] * sum(w["steps"] for w in windows) / sum(w["seconds"] for w in windows)


def hand_written_torch(run: RunSpec) -> float:
    import torch
    from torch import nn

    cfg = run.config
    data, w = load_dataset(cfg), initial_weights(cfg.model, cfg.weights_seed)
    if cfg.model.kind == "mlp":
        sizes = cfg.model.layers
        layers = []
        for i in range(len(sizes) - 1):
            layers.append(nn.Linear(sizes[i], sizes[i + 1]))
            if i < len(sizes) - 2:
                layers.append(nn.ReLU())
        model = nn.Sequential(*layers)
        with torch.no_grad():
            for i, linear in enumerate(m for m in model if isinstance(m, nn.Linear)):
                linear.weight.copy_(torch.from_numpy(w[f"dense{i}/kernel"].T.copy()))
                linear.bias.copy_(torch.from_numpy(w[f"dense{i}/bias"]))
    else:
        from xfw.torch_impl.models import build_model, to_torch_layout

        model = build_model(cfg.model, w)
        data = data.__class__(to_torch_layout(data.x_train), data.y_train, data.x_test, data.y_test, True)

    def loss_fn(out, target):
        if cfg.loss == "mse":
            return nn.functional.mse_loss(out, target)
        return nn.functional.cross_entropy(out.flatten(0, -2), target.flatten())

    opt = torch.optim.SGD(model.parameters(), lr=cfg.optimizer.lr, momentum=cfg.optimizer.momentum)
    order = sample_order(data.train_size, cfg.training.global_batch, cfg.training.steps, cfg.seed)
    x, y = torch.from_numpy(data.x_train), torch.from_numpy(data.y_train)
    indices = list(torch.from_numpy(order))
    warm = cfg.training.warmup_steps
    losses = []  # the loss curve is what any comparison loop must record
    for s, idx in enumerate(indices):
        if s == warm:
            start = time.perf_counter()
        xb, yb = x[idx], y[idx]
        opt.zero_grad()
        loss = loss_fn(model(xb), yb)
        loss.backward()
        opt.step()
        losses.append(loss.detach())
    losses[-1].item()
    return cfg.training.global_batch * (len(indices) - warm) / (time.perf_counter() - start)


def hand_written_tf(run: RunSpec) -> float:
    import keras
    import tensorflow as tf

    cfg = run.config
    data, w = load_dataset(cfg), initial_weights(cfg.model, cfg.weights_seed)
    if cfg.model.kind == "mlp":
        sizes = cfg.model.layers
        model = keras.Sequential(
            [keras.Input((sizes[0],))]
            + [
                keras.layers.Dense(n, activation="relu" if i < len(sizes) - 2 else None)
                for i, n in enumerate(sizes[1:])
            ]
        )
        model.set_weights([a for i in range(len(sizes) - 1) for a in (w[f"dense{i}/kernel"], w[f"dense{i}/bias"])])
    else:
        from xfw.tf_impl.models import build_model

        model = build_model(cfg.model, w)
    opt = keras.optimizers.SGD(learning_rate=cfg.optimizer.lr, momentum=cfg.optimizer.momentum)
    mse = (
        keras.losses.MeanSquaredError()
        if cfg.loss == "mse"
        else keras.losses.SparseCategoricalCrossentropy(from_logits=True)
    )

    x, y = tf.constant(data.x_train), tf.constant(data.y_train)

    @tf.function
    def step(idx):
        xb, yb = tf.gather(x, idx), tf.gather(y, idx)
        with tf.GradientTape() as tape:
            loss = mse(yb, model(xb, training=True))
        opt.apply_gradients(zip(tape.gradient(loss, model.trainable_variables), model.trainable_variables))
        return loss

    order = sample_order(data.train_size, cfg.training.global_batch, cfg.training.steps, cfg.seed)
    indices = [tf.constant(idx) for idx in order]
    warm = cfg.training.warmup_steps
    losses = []  # the loss curve is what any comparison loop must record
    for s, idx in enumerate(indices):
        if s == warm:
            start = time.perf_counter()
        losses.append(step(idx))
    losses[-1].numpy()
    return cfg.training.global_batch * (len(indices) - warm) / (time.perf_counter() - start)


def worker(framework: str, config_path: str | None, rounds: int, steps: int) -> dict:
    cfg = load_config(config_path, [f"training.steps={steps}"])
    if cfg.optimizer.kind != "sgd" or cfg.optimizer.schedule.kind != "constant" or cfg.training.clip_global_norm:
        raise SystemExit("the hand-written loops use SGD at a constant rate, unclipped: use such a config")
    if cfg.model.kind == "mlp" and cfg.loss != "mse":
        raise SystemExit("the hand-written MLP loop uses MSE: use such a config")
    hand = hand_written_tf if framework == "tf" else hand_written_torch
    xfw_rates, hand_rates = [], []
    with tempfile.TemporaryDirectory() as tmp:
        for r in range(rounds):
            run = RunSpec(cfg, framework, "single", "single", f"{tmp}/round-{r}")
            xfw_rates.append(xfw_throughput(run))  # the first call also applies xfw's thread settings
            hand_rates.append(hand(run))
        peak = json.loads((Path(tmp) / "round-0" / "result.json").read_text())["peak_flops_per_s"]
    xfw_median = statistics.median(xfw_rates)
    return {
        "framework": framework,
        "xfw": xfw_median,
        "hand": statistics.median(hand_rates),
        "xfw_rounds": xfw_rates,
        "hand_rounds": hand_rates,
        "achieved_flops": xfw_median * training_flops_per_sample(cfg.model),
        "peak_flops": peak,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--steps", type=int, default=2000, help="training steps per round (long enough to time)")
    parser.add_argument("--worker", choices=["tf", "torch"], help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        print(json.dumps(worker(args.worker, args.config, args.rounds, args.steps)))
        return
    cfg = load_config(args.config)
    env = os.environ | {k: v for k, v in base_env(RunSpec(cfg, "tf", "single", "single", "."), "bench").items()}
    rows = []
    for fw in ("tf", "torch"):  # one framework per process
        cmd = [sys.executable, __file__, "--worker", fw, "--rounds", str(args.rounds), "--steps", str(args.steps)] + (
            ["--config", args.config] if args.config else []
        )
        out = subprocess.run(cmd, capture_output=True, text=True, env=env, check=False)
        if out.returncode != 0:
            raise SystemExit(f"{fw} benchmark failed:\n{out.stderr[-3000:]}")
        rows.append(json.loads(out.stdout.strip().splitlines()[-1]))
    table = Table(
        title=f"xfw loop vs hand-written loop, model {cfg.model.kind} ({args.rounds} alternating rounds, median, "
        f"{args.steps} steps, {cfg.parallel.threads_per_replica} thread(s), batch {cfg.training.global_batch})",
        title_justify="left",
    )
    for h in (
        "framework",
        "hand-written samples/s",
        "xfw samples/s",
        "xfw / hand",
        "within 3%",
        "xfw GFLOP/s",
        "matmul peak GFLOP/s",
        "utilization",
    ):
        table.add_column(h)
    for r in rows:
        ratio = r["xfw"] / r["hand"]
        table.add_row(
            r["framework"],
            f"{r['hand']:,.0f}",
            f"{r['xfw']:,.0f}",
            f"{ratio:.3f}",
            "yes" if ratio >= 0.97 else "NO",
            f"{r['achieved_flops'] / 1e9:.2f}",
            f"{r['peak_flops'] / 1e9:.1f}",
            f"{r['achieved_flops'] / r['peak_flops']:.2%}",
        )
    console = Console()
    (console if console.is_terminal else Console(width=160)).print(table)


if __name__ == "__main__":
    main()
