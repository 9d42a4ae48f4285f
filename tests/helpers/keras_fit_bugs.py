"""The smallest Keras programs that show the two fit bugs xfw skips runs for (common.registry.keras_fit_*_bug):
`python keras_fit_bugs.py mirrored-steps-per-execution` (one process, two logical CPU devices) and
`python keras_fit_bugs.py multi-worker INDEX PORT0 PORT1` (one of two TF_CONFIG workers). Each prints FIT-OK when
fit trained, and exits non-zero where the bug stopped it."""

import json
import os
import sys

case = sys.argv[1]
if case == "multi-worker":
    index, ports = int(sys.argv[2]), sys.argv[3:5]
    workers = [f"localhost:{p}" for p in ports]
    os.environ["TF_CONFIG"] = json.dumps({"cluster": {"worker": workers}, "task": {"type": "worker", "index": index}})

import keras  # noqa: E402  (after TF_CONFIG, which the strategy reads)
import tensorflow as tf  # noqa: E402

if case == "multi-worker":
    strategy, steps_per_execution = tf.distribute.MultiWorkerMirroredStrategy(), 1
else:
    cpu = tf.config.list_physical_devices("CPU")[0]
    tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
    strategy, steps_per_execution = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"]), 2
with strategy.scope():
    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(1)])
    model.compile(optimizer="sgd", loss="mse", steps_per_execution=steps_per_execution)
dataset = tf.data.Dataset.from_tensor_slices((tf.ones((64, 4)), tf.ones((64, 1)))).batch(8)
model.fit(dataset, epochs=1, steps_per_epoch=8, verbose=0)
print("FIT-OK")
