"""TensorFlow asynchronous training with parameter servers: tf.distribute.ParameterServerStrategy and its
ClusterCoordinator. TF_CONFIG gives 1 + parallel.replicas + sync.parameter_servers processes
(common.launch.tf_cluster): the chief (rank 0), the workers, the ps tasks.

The chief builds the model under the strategy's scope, which places each variable, whole, on a ps task
(round-robin), and schedules the steps in the one-device run's order; the coordinator runs each on whichever worker
is free, which reads the variables from the ps tasks, computes that step's whole-batch gradients and applies them
there at once, from whatever the variables hold by then. A version counter on a ps task gives each update's
staleness: the updates applied between the worker's read of the counter (before the weights) and its own increment
(after its update). Unlike torch_impl/parameter_server.py's servers, a ps task applies an update variable by
variable, without a lock, so two workers' updates can interleave: the counter counts whole updates around that.
With one worker nothing is stale and every update is one device's (test).

Workers and ps tasks only serve (tf.distribute.Server) until the chief has written the result. Lines that exist only
because of the engine are tagged `# tf.distribute:`."""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

import numpy as np
import tensorflow as tf

from xfw.common.plan.runspec import RunSpec
from xfw.common.strategies.parameter_server import asynchrony_record
from xfw.common.worker.faults import maybe_inject
from xfw.common.worker.loop import progress_path
from xfw.common.worker.rank import RankContext, timed_training
from xfw.tf_impl import training
from xfw.tf_impl.models import build_model, flat_weights
from xfw.tf_impl.single import step_body

POLL_S = 0.1


def serve(run: RunSpec, tf_config: dict) -> None:
    """A worker or ps task: an in-process server the chief runs its functions on, until the result is written."""
    task = tf_config["task"]
    # tf.distribute: the task's gRPC server (it never returns from join(); it ends with the process)
    tf.distribute.Server(
        tf.train.ClusterSpec(tf_config["cluster"]), job_name=task["type"], task_index=task["index"], start=True
    )
    out = Path(run.out_dir)
    injected = task["type"] != "worker"
    while not (out / "result.json").exists():
        if not injected and progress_path(out, 0).exists():  # the chief's warm-up is done: training is under way
            maybe_inject(run.id, "training")
            injected = True
        time.sleep(POLL_S)
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)  # a TensorFlow server has no shutdown


def run_parameter_server(run: RunSpec, launcher: str) -> None:
    tf_config = json.loads(os.environ["TF_CONFIG"])
    training.configure(run)
    if tf_config["task"]["type"] != "chief":
        serve(run, tf_config)
    # tf.distribute: the cluster from TF_CONFIG, the coordinator that schedules steps on the workers
    strategy = tf.distribute.ParameterServerStrategy(tf.distribute.cluster_resolver.TFConfigClusterResolver())
    coordinator = tf.distribute.coordinator.ClusterCoordinator(strategy)
    s = training.setup(run)
    with strategy.scope():  # tf.distribute: every variable on a ps task
        model = build_model(run.config.model, s.weights)
        train_step = step_body(run, s, model)
        train_step.optimizer.build(model.trainable_variables)  # its slots on the ps tasks too, not on a worker
        version = tf.Variable(0, dtype=tf.int64, trainable=False, name="updates_applied")

    @tf.function
    def step(indices):
        def update(indices):
            read = version.read_value()
            with tf.control_dependencies([read]):  # the weights are read after the counter
                loss = train_step(indices)
            with tf.control_dependencies([tf.identity(v) for v in model.trainable_variables]):  # after the update
                applied = version.assign_add(1) - 1
            return loss, read, applied

        return strategy.run(update, args=(indices,))  # tf.distribute: on whichever worker is free

    # The shared timed loop: each step is scheduled, and a timing window ends when every step scheduled is done.
    order = [tf.constant(row) for row in s.order]
    scheduled, timing = timed_training(
        run, lambda indices: coordinator.schedule(step, args=(indices,)), order, lambda _: coordinator.join()
    )
    coordinator.join()
    updates = sorted((int(a), int(r), float(loss)) for loss, r, a in (v.fetch() for v in scheduled))
    losses = [loss for _, _, loss in updates]
    record = asynchrony_record(
        [(None, read, applied) for applied, read, _ in updates], run.replicas, "the updates_applied variable"
    )
    # Only the chief reports (the workers and ps tasks run no Python of xfw's once serving): one row to gather.
    ctx = RankContext(run, launcher, world_size=run.processes, devices=(f"chief: {training.default_device()}",))
    weights = [flat_weights(model.trainable_variables)]
    training.report(ctx, s, model, np.array(losses), timing, weights, strategy_fields={"asynchrony": record})
    sys.stdout.flush()
    sys.stderr.flush()
    # The workers and ps tasks leave once result.json is written: the chief must not tear its cluster context
    # down against them (it would log a failed remote call per function).
    os._exit(0)
