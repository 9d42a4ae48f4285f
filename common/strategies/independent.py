"""Several independent networks trained at the same time (an ensemble)."""

from __future__ import annotations

from xfw.common.strategies.base import DeviceUse, Parity, Strategy, implementation, register

STRATEGY = Strategy(
    "independent",
    "K separate networks (config `networks`) trained at the same time, each on its own device "
    "or process, against the same K one after another; ensemble evaluation at the end",
    several_networks=True,
    ensemble=True,
    reference_strategy=None,
    parity=Parity.IDENTICAL,
    twins="references",
    device_unit="networks, one device each,",
    config_sections=("networks", "shared_device"),
)

IMPLEMENTATIONS = (
    implementation(
        "tf",
        "independent",
        "sequential",
        "networks",
        "run_sequential",
        "process",
        "the K networks one after another in one process, on one device: each network's solo run",
        devices=DeviceUse.ONE,
        reference="sequential",
    ),
    implementation(
        "tf",
        "independent",
        "placed",
        "networks",
        "run_placed_networks",
        "process",
        "one tf.function steps all K networks, each under its own tf.device; the executor runs them at once",
        devices=DeviceUse.EACH,
        reference="sequential",
        twin="processes",
    ),
    implementation(
        "tf",
        "independent",
        "processes",
        "networks",
        "run_processes",
        "tf_config",
        "one process per network (TF_CONFIG), MultiWorkerMirroredStrategy collectives for the start barrier and "
        "the ensemble all-gather",
        devices=DeviceUse.EACH,
        reference="sequential",
    ),
    implementation(
        "torch",
        "independent",
        "sequential",
        "networks",
        "run_sequential",
        "process",
        "the K networks one after another in one process, on one device: each network's solo run",
        devices=DeviceUse.ONE,
        reference="sequential",
    ),
    implementation(
        "torch",
        "independent",
        "processes",
        "networks",
        "run_processes",
        "torchrun",
        "one process per network (torchrun), gloo/nccl for the start barrier and the ensemble all_gather",
        devices=DeviceUse.EACH,
        reference="sequential",
    ),
)

register(STRATEGY, IMPLEMENTATIONS)
