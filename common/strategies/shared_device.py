"""Several networks sharing one device: sequential, threads, processes, CUDA streams."""

from __future__ import annotations

from xfw.common.strategies.base import DeviceUse, Parity, Strategy, implementation, register

STRATEGY = Strategy(
    "shared-device",
    "two (or more) networks on ONE device: one after another, in threads, in processes "
    "(CUDA streams on a GPU); does concurrency help or hurt, over a sweep of model sizes",
    several_networks=True,
    min_networks=2,
    reference_strategy=None,
    parity=Parity.IDENTICAL,
    twins="references",
    sweep="shared_device.hidden_widths",
    config_sections=("networks", "shared_device"),
)

IMPLEMENTATIONS = (
    implementation(
        "tf",
        "shared-device",
        "shared-sequential",
        "networks",
        "run_sequential",
        "process",
        "the networks one after another on the device: each alone",
        devices=DeviceUse.ONE,
        reference="shared-sequential",
    ),
    implementation(
        "tf",
        "shared-device",
        "shared-threads",
        "networks",
        "run_threads",
        "process",
        "one Python thread per network in one process, both on the device at once",
        devices=DeviceUse.ONE,
        reference="shared-sequential",
    ),
    implementation(
        "tf",
        "shared-device",
        "shared-processes",
        "networks",
        "run_processes",
        "tf_config",
        "one process per network (TF_CONFIG), all on the same device",
        devices=DeviceUse.ONE,
        reference="shared-sequential",
    ),
    implementation(
        "torch",
        "shared-device",
        "shared-sequential",
        "networks",
        "run_sequential",
        "process",
        "the networks one after another on the device: each alone",
        devices=DeviceUse.ONE,
        reference="shared-sequential",
    ),
    implementation(
        "torch",
        "shared-device",
        "shared-threads",
        "networks",
        "run_threads",
        "process",
        "one Python thread per network in one process, both on the device at once",
        devices=DeviceUse.ONE,
        reference="shared-sequential",
    ),
    implementation(
        "torch",
        "shared-device",
        "shared-processes",
        "networks",
        "run_processes",
        "torchrun",
        "one process per network (torchrun), all on the same device",
        devices=DeviceUse.ONE,
        reference="shared-sequential",
    ),
    implementation(
        "torch",
        "shared-device",
        "shared-cuda-streams",
        "networks",
        "run_cuda_streams",
        "process",
        "one thread per network, each issuing its kernels on its own CUDA stream of the one GPU",
        devices=DeviceUse.ONE,
        reference="shared-sequential",
        gpu_only=True,
    ),
)

register(STRATEGY, IMPLEMENTATIONS)
