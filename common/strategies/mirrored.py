"""Synchronous data parallelism: tf.distribute, DDP, Horovod and hand-written all-reduce."""

from __future__ import annotations

from xfw.common.plan.library_bugs import KERAS_CLIPS_PER_REPLICA, keras_fit_mirrored_bug, keras_fit_multi_worker_bug
from xfw.common.strategies.base import Strategy, implementation, register

STRATEGY = Strategy(
    "mirrored",
    "synchronous data parallelism: every replica holds the whole model, gradients are averaged each step",
    data_parallel=True,
    device_unit="replicas",
    config_sections=("parallel",),
    whole_model_steps=True,
    profiled=True,
)

IMPLEMENTATIONS = (
    implementation(
        "tf",
        "mirrored",
        "mirrored-strategy",
        "mirrored",
        "run_mirrored_strategy",
        "process",
        "tf.distribute.MirroredStrategy, one process, N devices (GPUs, or logical CPU devices)",
        no_global_clipping=KERAS_CLIPS_PER_REPLICA,
        traced=True,
    ),
    implementation(
        "tf",
        "mirrored",
        "multi-worker",
        "mirrored",
        "run_multi_worker",
        "tf_config",
        "tf.distribute.MultiWorkerMirroredStrategy, N processes with TF_CONFIG",
        engine="tf_collective",
        no_global_clipping=KERAS_CLIPS_PER_REPLICA,
        traced=True,
    ),
    implementation(
        "tf",
        "mirrored",
        "manual-placement",
        "mirrored",
        "run_manual_placement",
        "process",
        "one tf.device per replica, gradients averaged explicitly, one process",
        no_sync_batchnorm="each replica's forward pass runs whole in one graph without a replica context, so "
        "Keras's synchronized BatchNormalization has no replicas to reduce over",
        no_compile="every replica reads the one copy of the weights from its own device, and an XLA cluster "
        "compiled for one device cannot read a variable that lives on another",
    ),
    implementation(
        "tf",
        "mirrored",
        "horovod",
        "horovod",
        "run_horovod",
        "horovodrun",
        "horovod.tensorflow, grouped_allreduce of gradients, launched by horovodrun",
        horovod=True,
        engine="horovod",
    ),
    implementation(
        "tf",
        "mirrored",
        "fit-mirrored",
        "keras_fit",
        "run_fit_mirrored",
        "process",
        "Keras model.fit under MirroredStrategy's scope, one process, N devices, fed by tf.data",
        keras_fit=True,
        library_bug=keras_fit_mirrored_bug,
        no_global_clipping=KERAS_CLIPS_PER_REPLICA,
    ),
    implementation(
        "tf",
        "mirrored",
        "fit-multi-worker",
        "keras_fit",
        "run_fit_multi_worker",
        "tf_config",
        "Keras model.fit under MultiWorkerMirroredStrategy's scope, N processes with TF_CONFIG, fed by tf.data",
        keras_fit=True,
        engine="tf_collective",
        library_bug=keras_fit_multi_worker_bug,
        no_global_clipping=KERAS_CLIPS_PER_REPLICA,
    ),
    implementation(
        "torch",
        "mirrored",
        "ddp",
        "mirrored",
        "run_ddp",
        "torchrun",
        "DistributedDataParallel launched by torchrun (gloo on CPU, nccl on GPU)",
        engine="ddp",
        traced=True,
    ),
    implementation(
        "torch",
        "mirrored",
        "allreduce",
        "mirrored",
        "run_allreduce",
        "torchrun",
        "explicit torch.distributed.all_reduce of every gradient, launched by torchrun",
        traced=True,
    ),
    implementation(
        "torch",
        "mirrored",
        "data-parallel",
        "mirrored",
        "run_data_parallel",
        "process",
        "nn.DataParallel, one process scattering each batch over the GPUs",
        gpu_only=True,
        no_sync_batchnorm="nn.DataParallel replicates the module every step; SyncBatchNorm works only under "
        "DistributedDataParallel",
        no_mixed_precision="nn.DataParallel runs each replica's forward in a thread of its own, which torch.autocast "
        "(thread-local) does not reach",
    ),
    implementation(
        "torch",
        "mirrored",
        "horovod",
        "horovod",
        "run_horovod",
        "horovodrun",
        "horovod.torch DistributedOptimizer, launched by horovodrun",
        horovod=True,
        engine="horovod",
    ),
)

register(STRATEGY, IMPLEMENTATIONS)
