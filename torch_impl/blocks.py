"""The multi-layer blocks of common/spec/models.py as torch modules, each made of torch.nn's own layers (Conv2d,
BatchNorm2d, Embedding, LayerNorm, MultiheadAttention, Linear, GELU). tf_impl/blocks.py builds the same
blocks from Keras layers.

Module attribute names follow the canonical parameter names (conv1, bn1, ...), so that a block's torch
paths read like its canonical names (torch_impl/models.py maps the two).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from xfw.common.spec import models as spec
from xfw.common.spec.config import BatchNormConfig

# Builds one BatchNorm: (config, synchronized, channels) -> module. Data-parallel runs pass one whose batch
# statistics are the global batch's (CrossReplicaBatchNorm, or the engine's own SyncBatchNorm on a GPU).
BatchNormFactory = Callable[[BatchNormConfig, bool, int], nn.Module]


def batchnorm(cfg: BatchNormConfig, synchronized: bool, channels: int) -> nn.Module:
    """torch's `momentum` is the weight of the NEW batch statistic: 1 - the config's decay. One device:
    synchronized or not, the batch is the global batch."""
    return nn.BatchNorm2d(channels, eps=cfg.epsilon, momentum=1.0 - cfg.decay)


class CrossReplicaBatchNorm(nn.BatchNorm2d):
    """BatchNorm2d whose training statistics are the GLOBAL batch's: per-channel sums, sums of squares and
    sample counts are summed over the replicas by `all_reduce_sum`, a differentiable all-reduce (its
    backward all-reduces the gradients), then the mean and biased variance normalise the local shard. The
    same computation as torch's nn.SyncBatchNorm and Horovod's SyncBatchNorm, which refuse CPU tensors
    ("SyncBatchNorm expected input tensor to be on GPU"); on a GPU those are used instead. Like them, the
    running variance is updated with the unbiased variance (n / (n - 1)), torch's convention."""

    def __init__(self, cfg: BatchNormConfig, channels: int, all_reduce_sum: Callable[[torch.Tensor], torch.Tensor]):
        super().__init__(channels, eps=cfg.epsilon, momentum=1.0 - cfg.decay)
        self.all_reduce_sum = all_reduce_sum

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training:
            return super().forward(x)
        # Mixed precision: statistics and normalisation in float32, as Keras's BatchNormalization computes them
        # (and a bfloat16 sum is one Horovod cannot all-reduce).
        x = x.float()
        c = x.shape[1]
        count = x.new_full((1,), x.numel() // c)
        total = self.all_reduce_sum(torch.cat([x.sum((0, 2, 3)), (x * x).sum((0, 2, 3)), count]))
        n = total[2 * c]
        mean = total[:c] / n
        var = total[c : 2 * c] / n - mean * mean
        with torch.no_grad():
            self.running_mean.mul_(1 - self.momentum).add_(self.momentum * mean)
            self.running_var.mul_(1 - self.momentum).add_(self.momentum * var * n / (n - 1))
            self.num_batches_tracked.add_(1)
        scale = self.weight * torch.rsqrt(var + self.eps)
        return x * scale[None, :, None, None] + (self.bias - mean * scale)[None, :, None, None]


ACTIVATIONS = {"relu": torch.relu, "tanh": torch.tanh}


def synchronized_batchnorm(all_reduce_sum: Callable[[torch.Tensor], torch.Tensor], engine_class=nn.SyncBatchNorm):
    """The BatchNorm factory of a data-parallel run: where model.sync_batchnorm is set, the engine's own
    SyncBatchNorm on a GPU, CrossReplicaBatchNorm (same computation, `all_reduce_sum`) on a CPU."""

    def make(cfg: BatchNormConfig, synchronized: bool, channels: int) -> nn.Module:
        if not synchronized:
            return batchnorm(cfg, False, channels)
        if torch.cuda.is_available():
            return engine_class(channels, eps=cfg.epsilon, momentum=1.0 - cfg.decay)
        return CrossReplicaBatchNorm(cfg, channels, all_reduce_sum)

    return make


class ConvBN(nn.Module):
    def __init__(self, block: spec.ConvBN, make_batchnorm: BatchNormFactory = batchnorm):
        super().__init__()
        self.conv = nn.Conv2d(block.channels_in, block.channels_out, 3, padding=1, bias=False)
        self.bn = make_batchnorm(block.batchnorm, block.sync_batchnorm, block.channels_out)
        self.activation = ACTIVATIONS[block.activation]

    def forward(self, x):
        return self.activation(self.bn(self.conv(x)))


class ResidualBlock(nn.Module):
    def __init__(self, block: spec.ResidualBlock, make_batchnorm: BatchNormFactory = batchnorm):
        super().__init__()
        cin, cout, stride, bn, sync = (
            block.channels_in,
            block.channels_out,
            block.stride,
            block.batchnorm,
            block.sync_batchnorm,
        )
        # padding=1 on every side, stride 1 or 2: what tf_impl/blocks.py pads explicitly
        self.conv1 = nn.Conv2d(cin, cout, 3, stride=stride, padding=1, bias=False)
        self.bn1 = make_batchnorm(bn, sync, cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, padding=1, bias=False)
        self.bn2 = make_batchnorm(bn, sync, cout)
        self.shortcut = None
        if block.projection:
            self.shortcut = nn.Conv2d(cin, cout, 1, stride=stride, bias=False)
            self.shortcut_bn = make_batchnorm(bn, sync, cout)
        self.activation = ACTIVATIONS[block.activation]

    def forward(self, x):
        h = self.activation(self.bn1(self.conv1(x)))
        h = self.bn2(self.conv2(h))
        skip = x if self.shortcut is None else self.shortcut_bn(self.shortcut(x))
        return self.activation(h + skip)


class Embedding(nn.Module):
    def __init__(self, block: spec.Embedding):
        super().__init__()
        self.token = nn.Embedding(block.vocab, block.width)
        self.position = nn.Embedding(block.seq_len, block.width)

    def forward(self, ids):
        positions = torch.arange(ids.shape[1], device=ids.device)
        return self.token(ids) + self.position(positions)[None]


class DecoderBlock(nn.Module):
    def __init__(self, block: spec.DecoderBlock):
        super().__init__()
        self.ln1 = nn.LayerNorm(block.width, eps=block.epsilon)
        # torch scales q.k^T by 1/sqrt(head_dim) inside scaled_dot_product_attention; masked scores are -inf.
        self.attention = nn.MultiheadAttention(block.width, block.heads, batch_first=True)
        self.ln2 = nn.LayerNorm(block.width, eps=block.epsilon)
        self.mlp_in = nn.Linear(block.width, block.hidden)
        self.gelu = nn.GELU(approximate="tanh" if block.gelu == "tanh" else "none")
        self.mlp_out = nn.Linear(block.hidden, block.width)

    def forward(self, x):
        a = self.ln1(x)
        t = x.shape[1]
        # True above the diagonal: position i attends to positions <= i
        causal = torch.ones(t, t, dtype=torch.bool, device=x.device).triu(1)
        attended, _ = self.attention(a, a, a, attn_mask=causal, need_weights=False)
        x = x + attended
        return x + self.mlp_out(self.gelu(self.mlp_in(self.ln2(x))))
