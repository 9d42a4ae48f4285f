"""How each optimizer and loss maps onto each framework's own implementation, and where they differ.

The mapping is recorded in every run's `env.hyperparameters`, and the notes are printed in the report,
so a difference between the frameworks is never a silent default.
"""

from __future__ import annotations

from xfw.common.spec.config import AdamWConfig, Config, ModelSpec, ResNetSpec, SGDConfig, TransformerSpec
from xfw.common.strategies.base import Framework

# Dynamic loss scaling under mixed_float16, the same in both frameworks (Keras's LossScaleOptimizer and torch's
# GradScaler start and grow differently by default: 2^15 / 2^16): the scale starts here, halves on a step with
# a non-finite gradient (that step is skipped) and doubles after this many finite steps.
LOSS_SCALE = {"initial": 2.0**15, "growth_interval": 2000}

# What the matmul peak of a run is measured in (common/worker/peak.py).
MATMUL_DTYPE = {"float32": "float32", "mixed_bfloat16": "bfloat16", "mixed_float16": "float16"}

NOTES = {
    "mixed_precision": (
        "Mixed precision follows each framework's own policy. Both keep the weights and the optimizer in float32 "
        "and xfw computes the loss in float32. Keras's mixed policy runs every layer in the low dtype (variables "
        "cast on read; its BatchNormalization and LayerNormalization compute in float32); torch.autocast runs "
        "matmuls and convolutions in it and softmax, layer_norm and losses in float32, while elementwise ops "
        "(activations, residual additions) take their inputs' dtype. So the two round at different places, and "
        "their curves part by more than in float32: parity.mixed_bfloat16 / parity.mixed_float16 hold the "
        "tolerances. mixed_float16 scales the loss dynamically in both (initial scale 2^15, doubled after 2000 "
        "finite steps, halved and the step skipped on a non-finite gradient)."
    ),
    "sgd": (
        "SGD with momentum: Keras keeps v = m*v - lr*g and adds v; torch keeps b = m*b + g and subtracts lr*b. "
        "With a constant learning rate the two are the same update (nesterov too), so runs agree to float rounding."
    ),
    "adam": (
        "Adam epsilon is placed differently: Keras adds epsilon to sqrt(v) and folds the bias corrections into the "
        "step size (w -= lr_t * m / (sqrt(v) + eps)), torch adds it to sqrt(v_hat) (w -= lr * m_hat / (sqrt(v_hat) "
        "+ eps)). "
        "The same epsilon is passed to both; no constant epsilon makes them equal while 1 - beta2^t changes, so "
        "TF and torch Adam runs drift apart by design. The comparison measures by how much."
    ),
    "adamw": (
        "AdamW: keras.optimizers.AdamW and torch.optim.AdamW both decay the weights apart from the gradient "
        "(w -= lr * weight_decay * w, every parameter, biases and norms included, at the step's learning rate). "
        "Adam's epsilon is placed differently in the two (see adam), so TF and torch AdamW runs drift apart by "
        "design; the comparison measures by how much."
    ),
    "weight_decay": (
        "Weight decay with SGD: Keras (every Keras 3 optimizer) decays the weights apart from the gradient, "
        "w -= lr*wd*w; torch SGD adds wd*w to the gradient, so with momentum the decay also enters the velocity. "
        "Without momentum the two updates are the same; with it they differ by design."
    ),
    "schedule": (
        "Learning-rate schedule: tabulated once per run (common/spec/schedules.py) and read by Keras through a "
        "LearningRateSchedule and by torch through LambdaLR, so both use the same rate at every step. SGD with "
        "momentum then differs by design: Keras keeps v = m*v - lr_t*g (each step's rate folded into the "
        "velocity), torch keeps b = m*b + g and subtracts lr_t*b (today's rate applied to all past gradients)."
    ),
    "clipping": (
        "Gradient clipping by global norm, over every parameter, after averaging over replicas: Keras "
        "global_clipnorm scales by c / max(norm, c); torch clip_grad_norm_ by c / (norm + 1e-6), clamped to 1 "
        "(its 1e-6 makes clipped steps differ by about 1e-6/norm, relative). Keras's clipnorm (not used) would "
        "clip each variable separately."
    ),
    "mse": "MSE: mean over outputs and batch in both (keras.losses.MeanSquaredError, torch.nn.functional.mse_loss).",
    "cross_entropy": (
        "Cross-entropy on logits: keras.losses.SparseCategoricalCrossentropy(from_logits=True) and "
        "torch.nn.functional.cross_entropy, both averaged over the batch."
    ),
    "data_parallel_loss": (
        "Under data parallelism each replica averages its own shard and the gradients are averaged over replicas "
        "(equal shards: the same as the global-batch mean). MirroredStrategy sums per-replica gradients, so its "
        "loss is "
        "tf.nn.compute_average_loss(per_example, global_batch_size)."
    ),
}


def model_notes(spec: ModelSpec) -> dict[str, str]:
    """What each framework's layers are told for this model, with the value used and why: the conventions in
    which Keras and torch differ (common/spec/models.py's blocks, tf_impl/blocks.py, torch_impl/blocks.py)."""
    if isinstance(spec, ResNetSpec):
        bn = spec.batchnorm
        return {
            "batchnorm_momentum": (
                f"The moving statistics keep {bn.decay} of their old value each step: Keras "
                f"BatchNormalization(momentum={bn.decay}), torch BatchNorm2d(momentum={1 - bn.decay:.6g}) (torch's "
                "momentum weighs the new value, Keras's the old; their defaults 0.99 and 0.1 are not the same rate)."
            ),
            "batchnorm_epsilon": (
                f"epsilon {bn.epsilon:g} in both (model.batchnorm.epsilon; the defaults differ: Keras 1e-3, "
                "torch 1e-5)."
            ),
            "batchnorm_statistics": (
                "Training normalises by the batch's mean and biased variance in both; evaluation by the moving "
                "statistics. torch updates its running variance with the UNBIASED batch variance (x n/(n-1), n = "
                "samples x height x width per channel), Keras with the biased one: no setting of either layer "
                "changes this, so test metrics (not the training curve) differ by about 1/n."
            ),
            "batchnorm_replicas": (
                "model.sync_batchnorm "
                + ("on: " if spec.sync_batchnorm else "off: ")
                + "with it, data-parallel replicas normalise by the global batch's statistics (Keras "
                "BatchNormalization(synchronized=True) under tf.distribute, Horovod: moments summed with "
                "hvd.allreduce; torch SyncBatchNorm / hvd.SyncBatchNorm on a GPU, the same computation by "
                "all-reduce on a CPU), and match one device; without it each replica normalises its own shard, "
                "which differs from one device by design (the comparison shows by how much, unjudged). "
                "Pipeline micro-batches are always normalised one by one."
            ),
            "stride2_padding": (
                "Every 3x3 convolution pads one pixel on each side. With stride 2, TensorFlow's padding='same' "
                "would pad only the bottom and right (and sample other pixels than torch's padding=1), so Keras "
                "pads explicitly: ZeroPadding2D(1) then Conv2D(strides=2, padding='valid'). 1x1 projection "
                "shortcuts take no padding in either."
            ),
            "conv_bias": "Convolutions followed by BatchNorm have no bias in either framework (BN's beta is the bias).",
        }
    if isinstance(spec, TransformerSpec):
        approximate = spec.gelu == "tanh"
        return {
            "layer_norm_epsilon": (
                f"LayerNorm epsilon {spec.layer_norm_epsilon:g} in both (defaults: Keras 1e-3, torch 1e-5)."
            ),
            "gelu": (
                f"GELU {spec.gelu}: keras.activations.gelu(approximate={approximate}), torch "
                f"nn.GELU(approximate={'tanh' if approximate else 'none'!r}) (Keras's gelu defaults to the tanh "
                "approximation, torch's to the exact erf form)."
            ),
            "attention": (
                "Causal multi-head self-attention, scale 1/sqrt(head_dim), no dropout: keras.layers.MultiHeadAttention"
                "(use_causal_mask=True) masks future positions by adding a large negative number before the softmax, "
                "torch nn.MultiheadAttention (attn_mask above the diagonal) by -inf; both give those positions "
                "weight 0. Keras keeps query/key/value kernels of shape (E, heads, head_dim); torch packs them into "
                "one in_proj_weight (3E, E): the same initial weights are converted, not redrawn."
            ),
            "sequence_loss": (
                "Next-token cross-entropy averaged over every position of every sequence in both (Keras: per "
                "sequence then over the batch; torch: over the flattened positions; equal lengths make these equal)."
            ),
            "embedding_gradients": (
                "TensorFlow's embedding gradients are sparse (tf.IndexedSlices), torch's dense. xfw makes them dense "
                "before every Keras update (tf_impl/training.py DenseGradients): left sparse, Keras's global_clipnorm "
                "takes a norm over the slices' rows (a token seen twice counts twice) and Adam updates its moments "
                "only on the rows present, both unlike torch."
            ),
        }
    return {}


def optimizer_hyperparameters(config: Config, framework: str) -> dict:
    """The exact constructor arguments each framework receives for the configured optimizer, plus how the
    learning rate is scheduled and the gradients clipped."""
    opt = config.optimizer
    clip = config.training.clip_global_norm
    schedule = "constant" if opt.schedule.kind == "constant" else f"tabulated {opt.schedule.kind}"
    if framework == Framework.TF:
        args: dict = {"learning_rate": opt.lr if opt.schedule.kind == "constant" else f"{schedule} (xfw table)"}
        if isinstance(opt, SGDConfig):
            args |= {"class": "keras.optimizers.SGD", "momentum": opt.momentum, "nesterov": opt.nesterov}
        else:
            args |= {"beta_1": opt.beta1, "beta_2": opt.beta2, "epsilon": opt.epsilon, "amsgrad": False}
            args["class"] = "keras.optimizers.AdamW" if isinstance(opt, AdamWConfig) else "keras.optimizers.Adam"
        if getattr(opt, "weight_decay", 0.0):
            args["weight_decay"] = opt.weight_decay  # type: ignore[union-attr]  # the getattr: Adam has none
        if clip is not None:
            args["global_clipnorm"] = clip
        if config.runtime.precision == "mixed_float16":
            args["loss_scale"] = f"keras.optimizers.LossScaleOptimizer ({_loss_scale_text()})"
        return dict(sorted(args.items(), key=lambda kv: kv[0] != "class"))
    args = {"lr": opt.lr, "weight_decay": getattr(opt, "weight_decay", 0.0)}
    if isinstance(opt, SGDConfig):
        args |= {"class": "torch.optim.SGD", "momentum": opt.momentum, "nesterov": opt.nesterov, "dampening": 0.0}
    else:
        args |= {"betas": [opt.beta1, opt.beta2], "eps": opt.epsilon, "amsgrad": False}
        args["class"] = "torch.optim.AdamW" if isinstance(opt, AdamWConfig) else "torch.optim.Adam"
    if opt.schedule.kind != "constant":
        args["lr_scheduler"] = f"torch.optim.lr_scheduler.LambdaLR ({schedule}, xfw table)"
    if clip is not None:
        args["clip_grad_norm_"] = clip
    if config.runtime.precision == "mixed_float16":
        args["loss_scale"] = f"torch.amp.GradScaler ({_loss_scale_text()})"
    return dict(sorted(args.items(), key=lambda kv: kv[0] != "class"))


def _loss_scale_text() -> str:
    return f"dynamic, from {LOSS_SCALE['initial']:g}, doubled after {LOSS_SCALE['growth_interval']} finite steps"


def loss_function_name(config: Config, framework: str) -> str:
    if config.loss == "mse":
        return "keras.losses.MeanSquaredError" if framework == Framework.TF else "torch.nn.functional.mse_loss"
    return (
        "keras.losses.SparseCategoricalCrossentropy(from_logits=True)"
        if framework == Framework.TF
        else "torch.nn.functional.cross_entropy"
    )


def notes_for(config: Config) -> dict[str, str]:
    notes = {key: NOTES[key] for key in (config.optimizer.kind, config.loss, "data_parallel_loss")}
    if getattr(config.optimizer, "weight_decay", 0.0) and isinstance(config.optimizer, SGDConfig):
        notes["weight_decay"] = NOTES["weight_decay"]
    if config.optimizer.schedule.kind != "constant":
        notes["schedule"] = NOTES["schedule"]
    if config.training.clip_global_norm is not None:
        notes["clipping"] = NOTES["clipping"]
    if config.runtime.precision != "float32":
        notes["mixed_precision"] = NOTES["mixed_precision"]
    return notes | model_notes(config.model)
