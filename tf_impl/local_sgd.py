"""TensorFlow local SGD (periodic model averaging): every worker steps on its block of each global batch with its
own optimizer, and the workers' weights are averaged after steps 0, k, 2k, ... (k = sync.every_k_steps) and after
the last step. run_local_sgd: TF_CONFIG workers and MultiWorkerMirroredStrategy's collectives (all_reduce in a
replica context; the model itself lives outside the strategy's scope, one copy per worker); run_local_sgd_horovod:
horovodrun and hvd.grouped_allreduce of the weights. torch_impl/local_sgd.py is the PyTorch side.

Both average as PyTorch's PeriodicModelAverager does: each weight divided by the number of workers, then summed
over them. Only trainable variables are averaged (BatchNorm's moving statistics stay each worker's own), and each
worker's optimizer state (momentum) stays its own. Lines that exist only because of parallelism are tagged
`# tf.distribute:` or `# Horovod:`.
"""

from __future__ import annotations

from collections.abc import Callable

import tensorflow as tf

from xfw.common.plan.runspec import RunSpec
from xfw.common.spec.data import replica_slice
from xfw.common.strategies.local_sgd import averages_after
from xfw.common.worker.rank import RankContext
from xfw.tf_impl import mirrored, training
from xfw.tf_impl.models import build_model, flat_weights
from xfw.tf_impl.single import step_body


def _train_locally(
    run: RunSpec, ctx: RankContext, s: training.Setup, model, average_now: Callable[[int], None], average: Callable
) -> None:
    """The loop both engines share: a local step, then the engine's averaging where the schedule says.
    average_now(step) averages where its schedule says; average() averages unconditionally (after the last step)."""
    local_step = tf.function(step_body(run, s, model))  # one device's step, on this worker's block
    steps_done = [0]

    def train_step(batch):
        loss = local_step(batch)
        average_now(steps_done[0])
        steps_done[0] += 1
        return loss

    block = replica_slice(run.config.training.global_batch, ctx.rank, ctx.world_size)  # this worker's block
    batches = training.step_batches(run, s, preloaded=lambda: [tf.constant(row[block]) for row in s.order], block=block)
    losses, timing = training.train(run, train_step, batches, ctx.rank)
    if not averages_after(run.config, steps_done[0] - 1):
        average()  # the model local SGD ends with: the workers' average
    fed = [training.fed(ctx.rank, batches.indices)]
    training.report(ctx, s, model, losses, timing, [flat_weights(model.trainable_variables)], fed=fed)


def run_local_sgd(run: RunSpec, launcher: str) -> None:
    strategy, ctx = mirrored.multi_worker_strategy(run, launcher)  # tf.distribute: for its collectives only
    s = training.setup(run)
    model = build_model(run.config.model, s.weights)  # tf.distribute: outside the scope, this worker's own copy
    variables = model.trainable_variables
    workers = ctx.world_size

    @tf.function
    def average() -> None:
        def summed(values):
            # tf.distribute: each weight divided by the workers, then summed over them (the averager's arithmetic)
            return tf.distribute.get_replica_context().all_reduce(
                tf.distribute.ReduceOp.SUM, [v / workers for v in values]
            )

        result = strategy.run(summed, args=([v.value for v in variables],))
        for v, value in zip(variables, result):
            v.assign(strategy.experimental_local_results(value)[0])

    def average_now(step: int) -> None:
        if averages_after(run.config, step):
            average()

    _train_locally(run, ctx, s, model, average_now, average)


def run_local_sgd_horovod(run: RunSpec, launcher: str) -> None:
    import horovod.tensorflow as hvd

    from xfw.tf_impl import horovod

    horovod.start(run)
    s = training.setup(run)
    model = build_model(run.config.model, s.weights)  # Horovod: this rank's own copy
    variables = model.trainable_variables
    for v in model.variables:  # Horovod: start from rank 0's weights (identical by construction anyway)
        v.assign(hvd.broadcast(v.value, root_rank=0))

    @tf.function
    def average() -> None:
        # Horovod: each weight divided by the ranks, then summed over them (the averager's arithmetic), in one call
        summed = hvd.grouped_allreduce([v.value / hvd.size() for v in variables], op=hvd.Sum)
        for v, value in zip(variables, summed):
            v.assign(value)

    def average_now(step: int) -> None:
        if averages_after(run.config, step):
            average()

    _train_locally(run, horovod.rank_context(run, launcher), s, model, average_now, average)
    hvd.join()  # Horovod: every rank waits here until rank 0 has written the result, then all shut down
