"""TensorFlow synchronous data parallelism: MirroredStrategy, MultiWorkerMirroredStrategy, and manual
placement with explicit gradient averaging. torch_impl/mirrored.py is the PyTorch side.

Every replica reads its block of the global batch through common.data.replica_slice. Lines that exist
only because of parallelism are tagged `# tf.distribute:` or `# placement:`.
"""

from __future__ import annotations

import os

import tensorflow as tf

from xfw.common.plan.launch import SHARED_GPU_VAR
from xfw.common.plan.runspec import RunSpec
from xfw.common.spec.data import replica_slice
from xfw.common.worker.rank import RankContext
from xfw.tf_impl import training
from xfw.tf_impl.models import build_model, flat_weights


def strategy_model(run: RunSpec, s, strategy: tf.distribute.Strategy):
    """The model and optimizer, their variables mirrored over the strategy's replicas."""
    with strategy.scope():  # tf.distribute: variables become mirrored, one copy per replica
        model = build_model(run.config.model, s.weights)
        optimizer = training.make_optimizer(run)
        # tf.distribute: a Keras 3 optimizer used in a custom loop must be built inside the scope.
        optimizer.build(model.trainable_variables)
    return model, optimizer


def replica_blocks(run: RunSpec, strategy: tf.distribute.Strategy):
    """row -> each replica's block of that global batch, on its own device (a PerReplica value)."""
    global_batch, replicas = run.config.training.global_batch, run.replicas
    local_devices = strategy.extended.worker_devices  # tf.distribute: this process's replicas' devices, in order

    def shard(row):
        def block(replica):
            r = replica.replica_id_in_sync_group
            return training.placed(row[replica_slice(global_batch, r, replicas)], local_devices[r % len(local_devices)])

        return strategy.experimental_distribute_values_from_function(block)

    return shard


def _run_strategy(ctx: RankContext, s, strategy) -> None:
    """The training loop shared by MirroredStrategy and MultiWorkerMirroredStrategy: they differ only in
    how the strategy is built and how results are gathered across processes."""
    run = ctx.run
    cfg = run.config
    global_batch = cfg.training.global_batch
    model, optimizer = strategy_model(run, s, strategy)
    loss_fn = training.loss_function(run)

    # A micro-batch's objective is divided by the accumulation steps again in training.gradients.
    micro_global_batch = global_batch // cfg.training.accumulation_steps

    @training.compiled(run)
    def forward(batch):
        x, y = training.batch_tensors(s, batch)
        per_example = loss_fn(y, model(x, training=True))
        # tf.distribute: gradients are summed over replicas, so each replica divides by the global batch.
        return tf.nn.compute_average_loss(per_example, global_batch_size=micro_global_batch), tf.reduce_mean(
            per_example
        )

    def replica_step(batch):
        grads, loss = training.gradients(run, batch, model.trainable_variables, forward, optimizer)
        optimizer.apply_gradients(zip(grads, model.trainable_variables))  # tf.distribute: all-reduce inside
        return loss

    @tf.function
    def train_step(per_replica_batch):
        losses = strategy.run(replica_step, args=(per_replica_batch,))
        # The mean over this process's replicas only: no cross-worker collective in the timed step.
        local = strategy.experimental_local_results(losses)
        return tf.add_n(local) / len(local)

    shard = replica_blocks(run, strategy)  # tf.distribute: each replica's block, on its own device

    # tf.distribute: a native pipeline's global batches are split over the replicas (and workers) by the strategy.
    batches = training.step_batches(
        run, s, preloaded=lambda: [shard(row) for row in s.order], distribute=strategy.experimental_distribute_dataset
    )
    losses, timing = training.train(run, train_step, batches, ctx.rank)
    copies = [
        flat_weights([strategy.experimental_local_results(v.value)[i] for v in model.trainable_variables])
        for i in range(strategy.num_replicas_in_sync // ctx.world_size)
    ]
    # tf.distribute: each replica's block as the strategy placed it (one replica per worker under MWMS).
    local = len(copies)
    fed = [
        training.fed(ctx.rank * local + i, [strategy.experimental_local_results(v)[i] for v in batches.indices])
        for i in range(local)
    ]
    training.report(ctx, s, model, losses, timing, copies, fed=fed)


def mirrored_strategy(run: RunSpec, launcher: str):
    """MirroredStrategy over run.replicas devices of this process, its setup and its place in the run."""
    s = training.setup(run, local_devices=run.replicas)
    devices = training.logical_devices(run.replicas)
    # tf.distribute: one process, N devices
    strategy = tf.distribute.MirroredStrategy(devices=devices, cross_device_ops=training.cross_device_ops())
    return strategy, RankContext(run, launcher, devices=tuple(devices)), s


def run_mirrored_strategy(run: RunSpec, launcher: str) -> None:
    strategy, ctx, s = mirrored_strategy(run, launcher)
    _run_strategy(ctx, s, strategy)


def multi_worker_strategy(run: RunSpec, launcher: str) -> tuple[tf.distribute.Strategy, RankContext]:
    """This worker's MultiWorkerMirroredStrategy (from TF_CONFIG) and its place in the run."""
    training.configure(run)
    # tf.distribute: built before any op, from TF_CONFIG (AUTO picks ring collectives on CPU, NCCL on GPU), with
    # the CommunicationOptions of parallel.engine.tf_collective.
    given = run.config.parallel.engine.given("tf_collective")
    implementation = given.pop("implementation", "auto")
    if os.environ.get(SHARED_GPU_VAR):
        # Workers on one GPU: NCCL refuses two ranks on one device; ring collectives (over gRPC) do not.
        implementation = "ring"
    options = tf.distribute.experimental.CommunicationOptions(
        implementation=getattr(tf.distribute.experimental.CommunicationImplementation, implementation.upper()),
        **given,
    )
    strategy = tf.distribute.MultiWorkerMirroredStrategy(communication_options=options)
    resolver = strategy.cluster_resolver
    rank, world_size = resolver.task_id, strategy.num_replicas_in_sync
    if world_size != run.replicas:
        raise RuntimeError(f"TF_CONFIG has {world_size} workers but the run asks for {run.replicas} replicas")
    ctx = RankContext(
        run, launcher, rank, world_size, (training.default_device(),), training.collective_gather(strategy)
    )
    return strategy, ctx


def run_multi_worker(run: RunSpec, launcher: str) -> None:
    strategy, ctx = multi_worker_strategy(run, launcher)
    _run_strategy(ctx, training.setup(run), strategy)


def run_manual_placement(run: RunSpec, launcher: str) -> None:
    s = training.setup(run, local_devices=run.replicas)
    cfg = run.config
    devices = training.logical_devices(run.replicas)
    global_batch, replicas = cfg.training.global_batch, run.replicas
    model = build_model(cfg.model, s.weights)  # one copy of the weights, on the default device
    optimizer = training.make_optimizer(run)
    loss_fn = training.loss_function(run)
    blocks = [replica_slice(global_batch, r, replicas) for r in range(replicas)]

    @training.compiled(run)
    def forward(batch):
        x, y = training.batch_tensors(s, batch)
        loss = tf.reduce_mean(loss_fn(y, model(x, training=True)))
        return loss, loss

    @tf.function
    def train_step(replica_batches):
        replica_grads, replica_losses = [], []
        for device, batch in zip(devices, replica_batches):
            with tf.device(device):  # placement: this replica's forward and backward run on its device
                grads, loss = training.gradients(run, batch, model.trainable_variables, forward, optimizer)
                replica_grads.append(grads)
                replica_losses.append(loss)
        # placement: average the replicas' gradients by hand (named, so the step profiler counts it as
        # communication), then one update of the single weight copy.
        with tf.name_scope(training.COMMUNICATION_SCOPE):
            grads = [tf.add_n(list(g)) / replicas for g in zip(*replica_grads)]
        optimizer.apply_gradients(zip(grads, model.trainable_variables))
        return tf.add_n(replica_losses) / replicas

    def split(dataset):
        # placement: each replica's block of a native pipeline's batch, copied to its device
        for batch in dataset:
            yield tuple(
                tf.nest.map_structure(lambda t, b=b, d=d: training.placed(t[b], d), batch)
                for b, d in zip(blocks, devices)
            )

    batches = training.step_batches(
        run,
        s,
        preloaded=lambda: [tuple(training.placed(row[b], d) for b, d in zip(blocks, devices)) for row in s.order],
        distribute=split,
        indices=lambda parts: tuple(part[0] for part in parts),
    )
    losses, timing = training.train(run, train_step, batches)
    fed = [training.fed(r, [replica_idx[r] for replica_idx in batches.indices]) for r in range(replicas)]
    ctx = RankContext(run, launcher, devices=tuple(devices))
    training.report(ctx, s, model, losses, timing, [flat_weights(model.trainable_variables)], fed=fed)
