"""PyTorch, replayed for `xfw localize` (common/localize/replay.py): the training step of one device, or of one rank of
DDP or the explicit all_reduce, with every tensor the search needs captured, in the canonical (Keras) layout and
names, at the steps it asks for. tf_impl/trace.py is the TensorFlow side."""

from __future__ import annotations

import numpy as np
import torch
import torch.distributed as dist

from xfw.common.localize.replay import TraceWriter
from xfw.common.plan.runspec import RunSpec
from xfw.common.spec.data import replica_slice
from xfw.common.spec.models import Flatten, blocks_of
from xfw.torch_impl import mirrored, training
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
    if run.implementation == "single":
        s = training.setup(run)
        model = build_model(run.config.model, s.weights).to(s.device)
        net, rows, replica, average = model, s.order, 0, None
    else:  # DDP or the explicit all_reduce: this rank's replica, on its block of each batch
        wrap, average = mirrored.PROCESS_GROUP_ENGINES[run.implementation]
        _, replica, world, s, model, net = mirrored.process_group_replica(run, wrap)
        block = replica_slice(run.config.training.global_batch, replica, world)
        rows = [row[block] for row in s.order]
    loss_fn = training.loss_function(run)

    def backward(row: np.ndarray) -> torch.Tensor:
        """The step's loss; the gradients in .grad, averaged over the replicas where there are several."""
        x, y = training.batch_tensors(s, torch.from_numpy(row).to(s.device))
        loss = loss_fn(net(x), y)
        loss.backward()
        if average is not None:
            average(model, dist.get_world_size())
        return loss

    writer = TraceWriter(run, replica)
    traced_steps(run, model, rows, backward, writer)
    if average is not None:
        training.barrier()  # every rank's trace written before rank 0 says the trace is complete
    if replica == 0:
        writer.write_meta([b.name for b in blocks_of(run.config.model)], run.replicas if average else 1)
    if average is not None:
        dist.destroy_process_group()


def traced_steps(run: RunSpec, model, rows, backward, writer: TraceWriter) -> None:
    """The training loop with the writer's captures: forward hooks on each block's first and last module."""
    blocks = blocks_of(run.config.model)
    optimizer = training.make_optimizer(run, model.parameters())
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

    for k, row in enumerate(rows):
        capture, checkpoint = writer.captures(k), writer.wants_weights(k)
        before = weights() if checkpoint else None
        optimizer.zero_grad()
        seen.clear()
        loss = backward(row)
        if checkpoint:
            grads = canonical_tensors(model, blocks, {path: p.grad for p, path in paths.items() if p.grad is not None})
        optimizer.step()
        if checkpoint:
            writer.weights(k, before)
            writer.gradients(k, grads)
        if capture:
            writer.step(
                k,
                activations={b.name: canonical_activation(b, seen[b.name], seen[f"in:{b.name}"]) for b in blocks},
                after=weights(),
                optimizer_state=state(),
            )
        writer.loss(k, float(loss))
    writer.weights(len(rows), weights())
    writer.close()
