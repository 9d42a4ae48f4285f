"""PyTorch, one device, replayed for `xfw localize` (common/localize.py): the single-device training step with
every tensor the search needs captured, in the canonical (Keras) layout and names, at the steps it asks for."""

from __future__ import annotations

import numpy as np
import torch

from xfw.common.localize import TraceWriter
from xfw.common.models import Flatten, blocks_of
from xfw.common.runspec import RunSpec
from xfw.torch_impl import training
from xfw.torch_impl.models import build_model, canonical_tensors

# Optimizer state torch keeps per parameter, under the names tf_impl/trace.py gives Keras's.
OPTIMIZER_STATE = {"exp_avg": "m", "exp_avg_sq": "v"}  # Adam, AdamW (SGD's momentum_buffer: another convention)


def canonical_activation(block, output: torch.Tensor, block_input: torch.Tensor) -> np.ndarray:
    """A block's output in Keras's layout: images NHWC; a Flatten's rows in (h, w, c) order, as Keras flattens."""
    if isinstance(block, Flatten):
        output = block_input.permute(0, 2, 3, 1).reshape(len(block_input), -1)
    elif output.dim() == 4:
        output = output.permute(0, 2, 3, 1)
    return output.detach().cpu().numpy()


def trace_run(run: RunSpec, launcher: str) -> None:
    s = training.setup(run)
    blocks = blocks_of(run.config.model)
    model = build_model(run.config.model, s.weights).to(s.device)
    optimizer = training.make_optimizer(run, model.parameters())
    loss_fn = training.loss_function(run)
    # A block's output: that of its last module (a Dense's activation follows it as `<name>_act`).
    children = list(model.named_children())
    last = {b.name: [m for n, m in children if n == b.name or n.startswith(f"{b.name}_")][-1] for b in blocks}
    first = {b.name: next(m for n, m in children if n == b.name) for b in blocks}
    seen: dict[str, tuple] = {}
    for b in blocks:
        first[b.name].register_forward_pre_hook(lambda m, args, name=b.name: seen.__setitem__(f"in:{name}", args[0]))
        last[b.name].register_forward_hook(lambda m, args, out, name=b.name: seen.__setitem__(name, out))
    paths = {p: path for path, p in model.named_parameters()}

    def weights() -> dict[str, np.ndarray]:
        return canonical_tensors(model, blocks, model.state_dict())

    def state() -> dict[str, np.ndarray]:
        per_path = {}
        for p, slots in optimizer.optimizer.state.items():
            for key, short in OPTIMIZER_STATE.items():
                if key in slots:
                    per_path.setdefault(short, {})[paths[p]] = slots[key]
        return {
            f"{name}:{short}": value
            for short, tensors in per_path.items()
            for name, value in canonical_tensors(model, blocks, tensors).items()
        }

    writer = TraceWriter(run, [b.name for b in blocks])
    for k, row in enumerate(s.order):
        capture = writer.captures(k)
        before = weights() if writer.wants_weights(k) else None
        x, y = training.batch_tensors(s, torch.from_numpy(row).to(s.device))
        optimizer.zero_grad()
        seen.clear()
        loss = loss_fn(model(x), y)
        loss.backward()
        grads = {path: p.grad for p, path in paths.items() if p.grad is not None}
        if capture:
            grads = canonical_tensors(model, blocks, grads)
        optimizer.step()
        if before is not None:
            writer.weights(k, before)
        if capture:
            writer.step(
                k,
                activations={b.name: canonical_activation(b, seen[b.name], seen[f"in:{b.name}"]) for b in blocks},
                gradients=grads,
                after=weights(),
                optimizer_state=state(),
            )
        writer.loss(k, float(loss))
    writer.weights(len(s.order), weights())
    writer.close()
