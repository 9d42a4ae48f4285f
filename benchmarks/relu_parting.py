"""Where and why two ResNet runs part with relu: the first step and the first block.

Trains the same ResNet (configs/resnet.yaml, or --config, with --set overrides) for --steps steps of plain SGD
in TensorFlow and in PyTorch (one process each, xfw's model builders, xfw's data and sample order), saving
every block's weights after every step in the canonical layout. It then prints, per step, the largest relative
weight difference of each block, the first step at which any block differs by more than --threshold, and which
block that is; and, for the tanh variant of the same model (--set model.activation=tanh) the same, for
contrast. It also counts how many relu inputs of the first forward pass lie within 1e-6 of zero, the units
whose on/off state rounding can flip.

    python benchmarks/relu_parting.py --set "model.widths=[4,8,8]" --set "model.input_shape=[16,16,3]" \\
        --set data.samples=640 --steps 30
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
from rich.console import Console
from rich.table import Table

from xfw.common.spec.config import load_config
from xfw.common.spec.data import load_dataset, sample_order
from xfw.common.spec.models import blocks_of, is_state
from xfw.common.spec.weights import initial_weights

ROOT = Path(__file__).resolve().parent.parent


def _trained(weights: dict[str, np.ndarray], block: str) -> np.ndarray:
    """A block's trained parameters, flattened: BatchNorm's moving statistics left out (torch updates its
    variance unbiased, Keras biased: they differ by design, and training does not read them)."""
    return np.concatenate([v.ravel() for k, v in weights.items() if k.startswith(f"{block}/") and not is_state(k)])


def _train(framework: str, config_path: str, overrides: list[str], steps: int, out: str) -> None:
    """One framework's run: plain SGD with momentum on xfw's model, weights of every block after each step."""
    cfg = load_config(config_path, [*overrides, f"training.steps={steps}"])
    data = load_dataset(cfg)
    order = sample_order(data.train_size, cfg.training.global_batch, steps, cfg.seed)
    weights = initial_weights(cfg.model, cfg.weights_seed)
    blocks = blocks_of(cfg.model)
    history: dict[str, list[np.ndarray]] = {b.name: [] for b in blocks if b.has_weights}
    if framework == "tf":
        import keras
        import tensorflow as tf

        tf.config.threading.set_intra_op_parallelism_threads(1)
        tf.config.experimental.enable_op_determinism()
        from xfw.tf_impl.models import build_model

        model = build_model(cfg.model, weights)
        opt = keras.optimizers.SGD(learning_rate=cfg.optimizer.lr, momentum=cfg.optimizer.momentum)
        loss_fn = keras.losses.SparseCategoricalCrossentropy(from_logits=True)
        x, y = tf.constant(data.x_train), tf.constant(data.y_train)

        @tf.function
        def step(idx):
            with tf.GradientTape() as tape:
                loss = loss_fn(tf.gather(y, idx), model(tf.gather(x, idx), training=True))
            opt.apply_gradients(zip(tape.gradient(loss, model.trainable_variables), model.trainable_variables))

        def snapshot() -> dict[str, np.ndarray]:
            out = {}
            for b in blocks:
                layer = model.get_layer(b.name)
                if hasattr(layer, "canonical_variables"):
                    out.update({k: v.numpy() for k, v in layer.canonical_variables().items()})
                elif b.has_weights:
                    out.update(dict(zip([n for n, _ in b.parameter_shapes()], layer.get_weights())))
            return out

        for idx in order:
            step(tf.constant(idx))
            w = snapshot()
            for name in history:
                history[name].append(_trained(w, name))
    else:
        import torch

        torch.set_num_threads(1)
        torch.use_deterministic_algorithms(True)
        from xfw.torch_impl.models import build_model, export_weights, to_torch_layout

        model = build_model(cfg.model, weights)
        opt = torch.optim.SGD(model.parameters(), lr=cfg.optimizer.lr, momentum=cfg.optimizer.momentum)
        x, y = torch.from_numpy(to_torch_layout(data.x_train)), torch.from_numpy(data.y_train)
        for idx in order:
            idx = torch.from_numpy(idx)
            opt.zero_grad()
            torch.nn.functional.cross_entropy(model(x[idx]), y[idx]).backward()
            opt.step()
            w = export_weights(model, blocks)
            for name in history:
                history[name].append(_trained(w, name))
    np.savez(out, **{name: np.stack(values) for name, values in history.items()})


def _near_kink(config_path: str, overrides: list[str]) -> tuple[int, int]:
    """(relu inputs within 1e-6 of zero, all relu inputs) in the first training-mode forward pass (torch)."""
    import torch

    from xfw.torch_impl import blocks as torch_blocks
    from xfw.torch_impl.models import build_model, to_torch_layout

    cfg = load_config(config_path, overrides)
    data = load_dataset(cfg)
    model = build_model(cfg.model, initial_weights(cfg.model, cfg.weights_seed))
    counts = [0, 0]
    seen = []
    original = torch_blocks.ACTIVATIONS["relu"]

    def watching(t):
        seen.append(t.detach())
        return original(t)

    for m in model.modules():
        if getattr(m, "activation", None) is original:
            m.activation = watching
    order = sample_order(data.train_size, cfg.training.global_batch, 1, cfg.seed)
    with torch.no_grad():
        model(torch.from_numpy(to_torch_layout(data.x_train[order[0]])))
    for t in seen:
        counts[0] += int((t.abs() < 1e-6).sum())
        counts[1] += t.numel()
    return counts[0], counts[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default=str(ROOT / "configs" / "resnet.yaml"))
    parser.add_argument("--set", dest="overrides", action="append", default=[])
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--threshold", type=float, default=1e-5)
    parser.add_argument("--worker", nargs=2, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        framework, out = args.worker
        _train(framework, args.config, args.overrides, args.steps, out)
        return
    env = os.environ | {"TF_ENABLE_ONEDNN_OPTS": "0", "TF_CPP_MIN_LOG_LEVEL": "3", "OMP_NUM_THREADS": "1"}
    console = Console(width=160)
    for activation in ("relu", "tanh"):
        overrides = [*args.overrides, f"model.activation={activation}"]
        with tempfile.TemporaryDirectory() as tmp:
            histories = {}
            for fw in ("tf", "torch"):
                out = f"{tmp}/{fw}.npz"
                cmd = [
                    sys.executable,
                    __file__,
                    "--config",
                    args.config,
                    "--steps",
                    str(args.steps),
                    "--worker",
                    fw,
                    out,
                ]
                cmd += [a for o in overrides for a in ("--set", o)]
                subprocess.run(cmd, check=True, env=env)
                with np.load(out) as arrays:
                    histories[fw] = dict(arrays)
        names = list(histories["tf"])
        rel = {
            n: np.abs(histories["tf"][n] - histories["torch"][n]).max(axis=1)
            / np.abs(histories["torch"][n]).max(axis=1)
            for n in names
        }
        table = Table(
            title=f"{activation}: largest relative weight difference TF vs torch, per block, after step",
            title_justify="left",
        )
        table.add_column("step")
        for n in names:
            table.add_column(n)
        shown = sorted({0, 1, 2, 3, 4, 5, 6, 8, 10, 15, 20, args.steps - 1} & set(range(args.steps)))
        for s in shown:
            table.add_row(str(s), *(f"{rel[n][s]:.1e}" for n in names))
        console.print(table)
        over = [(int(np.argmax(rel[n] > args.threshold)), n) for n in names if (rel[n] > args.threshold).any()]
        if over:
            step, block = min(over)
            console.print(f"{activation}: first over {args.threshold:g}: step {step}, block {block}")
        else:
            console.print(f"{activation}: no block over {args.threshold:g} in {args.steps} steps")
        if activation == "relu":
            near, total = _near_kink(args.config, overrides)
            console.print(f"relu inputs within 1e-6 of zero in the first forward pass: {near} of {total:,}")


if __name__ == "__main__":
    main()
