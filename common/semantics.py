"""How each optimizer and loss maps onto each framework's own implementation, and where they differ.

The mapping is recorded in every run's `env.hyperparameters`, and the notes are printed in the report,
so a difference between the frameworks is never a silent default.
"""

from __future__ import annotations

from xfw.common.config import AdamConfig, Config, SGDConfig

NOTES = {
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


def optimizer_hyperparameters(config: Config, framework: str) -> dict:
    """The exact constructor arguments each framework receives for the configured optimizer."""
    opt = config.optimizer
    if isinstance(opt, SGDConfig):
        if framework == "tf":
            return {
                "class": "keras.optimizers.SGD",
                "learning_rate": opt.lr,
                "momentum": opt.momentum,
                "nesterov": opt.nesterov,
            }
        return {
            "class": "torch.optim.SGD",
            "lr": opt.lr,
            "momentum": opt.momentum,
            "nesterov": opt.nesterov,
            "dampening": 0.0,
            "weight_decay": 0.0,
        }
    assert isinstance(opt, AdamConfig)
    if framework == "tf":
        return {
            "class": "keras.optimizers.Adam",
            "learning_rate": opt.lr,
            "beta_1": opt.beta1,
            "beta_2": opt.beta2,
            "epsilon": opt.epsilon,
            "amsgrad": False,
        }
    return {
        "class": "torch.optim.Adam",
        "lr": opt.lr,
        "betas": [opt.beta1, opt.beta2],
        "eps": opt.epsilon,
        "amsgrad": False,
        "weight_decay": 0.0,
    }


def loss_function_name(config: Config, framework: str) -> str:
    if config.loss == "mse":
        return "keras.losses.MeanSquaredError" if framework == "tf" else "torch.nn.functional.mse_loss"
    return (
        "keras.losses.SparseCategoricalCrossentropy(from_logits=True)"
        if framework == "tf"
        else "torch.nn.functional.cross_entropy"
    )


def notes_for(config: Config) -> dict[str, str]:
    return {key: NOTES[key] for key in (config.optimizer.kind, config.loss, "data_parallel_loss")}
