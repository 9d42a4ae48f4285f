"""Architecture rules: common/ and cli/ import no framework; the registry is complete and points at
functions that exist; tf_impl/ and torch_impl/ have the same files, and the same public names in each."""

import ast
import subprocess
import sys

from tests.helpers.cli import ROOT
from xfw.common.plan.registry import REGISTRY, STRATEGIES
from xfw.common.strategies.base import FRAMEWORKS


def test_common_and_cli_import_no_framework():
    code = (
        "import sys, pkgutil, importlib, xfw.common, xfw.cli\n"
        "for pkg in (xfw.common, xfw.cli):\n"
        "    for m in pkgutil.iter_modules(pkg.__path__):\n"
        "        importlib.import_module(f'{pkg.__name__}.{m.name}')\n"
        "bad = [m for m in ('tensorflow', 'torch', 'horovod', 'keras') if m in sys.modules]\n"
        "print(','.join(bad))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "", f"framework modules imported: {out.stdout}"


def test_every_strategy_has_an_implementation_on_each_side():
    for strategy in STRATEGIES:
        for fw in FRAMEWORKS:
            assert any(i.framework == fw and i.strategy == strategy for i in REGISTRY), (fw, strategy)


def test_registry_points_at_existing_functions():
    for impl in REGISTRY:
        folder, module = impl.module.split(".")[1:]
        tree = ast.parse((ROOT / folder / f"{module}.py").read_text())
        names = {n.name for n in tree.body if isinstance(n, ast.FunctionDef)}
        assert impl.function in names, impl


def test_ids_are_unique():
    ids = [i.id for i in REGISTRY]
    assert len(ids) == len(set(ids))


# Files only one framework has: file -> why.
ONE_SIDE_FILES = {
    ("tf", "keras_fit.py"): "Keras model.compile + model.fit; PyTorch has no fit (its training loop is the user's own, "
    "which torch_impl/ already is)",
}


def test_tf_and_torch_folders_mirror_each_other():
    files = {side: {p.name for p in (ROOT / f"{side}_impl").glob("*.py")} for side in ("tf", "torch")}
    for side, other in (("tf", "torch"), ("torch", "tf")):
        only_here = {name for s, name in ONE_SIDE_FILES if s == side}
        assert only_here <= files[side] and not only_here & files[other], only_here
        assert files[side] - only_here == files[other] - {name for s, name in ONE_SIDE_FILES if s == other}


# What one framework has and the other cannot (or does through another route), per file: name -> why.
# Every other public function or class of tf_impl/X.py must exist in torch_impl/X.py and back.
ONE_SIDE_ONLY = {
    ("torch", "models.py"): {
        "ContiguousBoundary": "gloo sends only contiguous tensors; TensorFlow's device copies need no boundary",
        "export_weights": "stages in other processes send their weights back; TensorFlow's stages share one process",
        "to_torch_layout": "torch is NCHW, the canonical data NHWC (Keras's own)",
        "torch_sample_shape": "torch is NCHW, the canonical data NHWC (Keras's own)",
        "Placement": "where a canonical (Keras-layout) parameter lives in torch's modules and how it converts",
        "TorchBlock": "a block's torch modules plus its parameter placements; Keras loads the canonical layout as is",
        "canonical_tensors": "torch's tensors convert to the canonical layout through their placements; Keras's are "
        "canonical as they are",
    },
    ("tf", "trace.py"): {
        "canonical_variables": "Keras's variables hold the canonical layout and are found by layer; torch's tensors "
        "convert through models.canonical_tensors",
    },
    ("torch", "trace.py"): {
        "canonical_activation": "torch's images are NCHW and flatten in (c, h, w) order; Keras's outputs are "
        "canonical as they are",
    },
    ("torch", "blocks.py"): {
        "CrossReplicaBatchNorm": "torch's SyncBatchNorm refuses CPU tensors; Keras's synchronized BatchNormalization "
        "runs on any device",
        "synchronized_batchnorm": "picks SyncBatchNorm or CrossReplicaBatchNorm; Keras's layer takes synchronized=",
    },
    ("tf", "parameter_server.py"): {
        "serve": "TensorFlow's worker and ps tasks only run a tf.distribute.Server, which the chief's coordinator "
        "drives; torch's servers and workers run xfw's own code (Server, Dealer, work)",
    },
    ("torch", "parameter_server.py"): {
        "Server": "a torch server is xfw's object answering RPCs; TensorFlow's ps task is the engine's Server",
        "Dealer": "torch's server 0 deals out the steps; TensorFlow's coordinator schedules them itself",
        "work": "a torch worker runs xfw's pull-step-push loop; a TensorFlow worker runs what the coordinator sends",
    },
    ("tf", "horovod.py"): {
        "HorovodBatchNormalization": "Keras 3 has no Horovod-aware BatchNormalization; torch's hvd.SyncBatchNorm "
        "exists (GPU) and CrossReplicaBatchNorm covers the CPU",
        "horovod_batchnorm": "the factory that makes HorovodBatchNormalization where model.sync_batchnorm is set",
    },
    ("tf", "training.py"): {
        "configure": "TensorFlow's threads, logical devices and determinism must be set before its runtime starts",
        "logical_devices": "TensorFlow splits the CPU into logical devices; torch places by torch.device",
        "placed": "a tensor is put on a device by tf.device scope; torch has tensor.to(device)",
        "TabulatedSchedule": "Keras reads a schedule object; torch's LambdaLR (in ScheduledOptimizer) reads the table",
        "DenseGradients": "TensorFlow's embedding gradients are sparse (IndexedSlices); torch's are dense",
        "splits_gpus": "TensorFlow cuts one GPU into logical GPUs for several replicas; torch puts ranks on one GPU",
        "cross_device_ops": "MirroredStrategy's all-reduce; torch's one-process data parallelism is nn.DataParallel",
        "native_dataset": "tf.data builds the pipeline as one dataset; torch's is a Dataset, sampler and DataLoader",
    },
    ("torch", "training.py"): {
        "init_process_group": "torchrun's process group; TensorFlow's multi-process runs build their strategy",
        "barrier": "a barrier of the process group's gloo side; TensorFlow's workers synchronise in the strategy",
        "all_gather_object": "torch.distributed gathers picklable objects; TensorFlow's strategies gather tensors",
        "ScheduledOptimizer": "torch clips and schedules outside its optimizer; Keras does both inside its own",
        "autocast": "torch.autocast wraps each forward pass; Keras's mixed policy is set once, in configure",
        "TrainingSet": "a DataLoader reads a map-style Dataset; tf.data maps a gather over index batches",
        "StepOrderSampler": "a DistributedSampler decides which rank gets which samples; tf.data is split by the "
        "strategy (experimental_distribute_dataset) or by the block it is built from",
    },
    ("tf", "mirrored.py"): {
        "run_mirrored_strategy": "tf.distribute.MirroredStrategy (one process, N devices)",
        "run_multi_worker": "tf.distribute.MultiWorkerMirroredStrategy (TF_CONFIG)",
        "run_manual_placement": "tf.device per replica in one graph",
        "multi_worker_strategy": "the TF_CONFIG worker's strategy, shared with Keras fit (keras_fit.py); torch's "
        "processes join their group in training.init_process_group",
        "mirrored_strategy": "MirroredStrategy over this process's devices, shared with localize's replay (trace.py); "
        "torch's one-process data parallelism (nn.DataParallel) is not replayed",
        "strategy_model": "the model and optimizer built in the strategy's scope (mirrored variables), shared with "
        "trace.py; torch builds one module per rank in process_group_replica",
        "replica_blocks": "each replica's block as a PerReplica value, shared with trace.py; a torch rank cuts its "
        "own block with replica_slice",
    },
    ("torch", "mirrored.py"): {
        "run_ddp": "DistributedDataParallel",
        "run_allreduce": "an explicit torch.distributed.all_reduce of the gradients",
        "run_data_parallel": "nn.DataParallel (GPUs only)",
        "ProcessGroupReplica": "one rank's replica (device, rank, world, module, wrapper), shared with trace.py; "
        "TensorFlow's replicas live in its strategy (strategy_model)",
        "process_group_replica": "a rank joins its process group and builds its replica; TensorFlow builds the "
        "strategy (mirrored_strategy, multi_worker_strategy)",
        "ddp": "DistributedDataParallel around the module; TensorFlow's mirrored variables need no wrapper",
        "unwrapped": "the explicit all_reduce trains the bare module",
        "averaged_by_ddp": "DDP averages during backward(); Keras's apply_gradients all-reduces inside",
        "all_reduce_average": "the explicit torch.distributed.all_reduce; TensorFlow's manual placement averages "
        "inside its one graph",
    },
    ("torch", "model_parallel.py"): {
        "run_send_recv": "one process per stage; TensorFlow runs every stage in one process (run_placed_stages)",
        "run_gpipe": "torch.distributed.pipelining; TensorFlow's pipeline is run_placed_stages with micro-batches",
        "run_1f1b": "torch.distributed.pipelining's 1F1B schedule; TensorFlow's executor has no schedule to pick",
        "run_hybrid": "a pipeline per replica in R x S processes; TensorFlow's hybrid is run_placed_stages",
    },
    ("tf", "networks.py"): {
        "run_placed_networks": "several networks in one tf.function, one tf.device each; torch has no such graph",
    },
    ("torch", "networks.py"): {
        "run_cuda_streams": "a CUDA stream per network thread; TensorFlow exposes no streams",
    },
    ("torch", "collaborative.py"): {
        "run_mutual_distributed": "one process per network, dist.all_gather; TensorFlow places by tf.device",
        "run_chain_send_recv": "encoder and head in two processes with dist.send/recv; TensorFlow places by tf.device",
    },
}


def _public_names(path) -> set[str]:
    tree = ast.parse(path.read_text())
    return {n.name for n in tree.body if isinstance(n, (ast.FunctionDef, ast.ClassDef)) and not n.name.startswith("_")}


def test_twin_files_have_the_same_public_names():
    """The same role has the same name on both sides; what only one side has is listed in ONE_SIDE_ONLY."""
    for path in sorted((ROOT / "tf_impl").glob("*.py")):
        if ("tf", path.name) in ONE_SIDE_FILES:
            continue
        names = {"tf": _public_names(path), "torch": _public_names(ROOT / "torch_impl" / path.name)}
        for side, other in (("tf", "torch"), ("torch", "tf")):
            allowed = ONE_SIDE_ONLY.get((side, path.name), {})
            assert not set(allowed) - names[side], f"{side}_impl/{path.name}: allow-list names what does not exist"
            assert not set(allowed) & names[other], f"{path.name}: allow-listed names exist on both sides"
            missing = names[side] - names[other] - set(allowed)
            assert not missing, f"{side}_impl/{path.name} has {sorted(missing)}, {other}_impl/ has not"
