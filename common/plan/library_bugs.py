"""Known bugs of the installed libraries that stop an implementation under some configs, each checked by version
and citing the upstream issue, so that a newer release that fixes it is tried rather than refused."""

from __future__ import annotations

import importlib.metadata

from packaging.version import Version

# Why Keras 3's optimizers cannot clip by the global norm under a strategy with several replicas.
KERAS_CLIPS_PER_REPLICA = (
    "Keras 3 clips inside apply_gradients BEFORE its cross-replica all-reduce "
    "(keras/src/optimizers/base_optimizer.py), so global_clipnorm would clip each replica's share"
)


# The newest Keras seen with the two fit bugs below (xfw's tf-fit-multi-worker, and tf-fit-mirrored with
# steps_per_execution > 1); a newer Keras is tried. Seen: 3.15.1 with TensorFlow 2.21.0 on CPU, and in every Keras 3
# before it according to the issues cited.
KERAS_FIT_LAST_BROKEN = "3.15.1"


def _keras_with_fit_bugs() -> str | None:
    """The installed Keras's version where it is one with the fit bugs; None where it is newer (or absent)."""
    try:
        installed = importlib.metadata.version("keras")
    except importlib.metadata.PackageNotFoundError:
        return None
    return installed if Version(installed) <= Version(KERAS_FIT_LAST_BROKEN) else None


def keras_fit_multi_worker_bug(config=None) -> str | None:
    """Why the installed Keras cannot fit under MultiWorkerMirroredStrategy (whatever the config); None where it may."""
    version = _keras_with_fit_bugs()
    if version is None:
        return None
    return (
        f"Keras {version}'s model.fit stops before its first step under MultiWorkerMirroredStrategy: it reduces "
        "the first (x, y) batch with strategy.reduce, which the multi-worker strategy cannot do for a nest "
        "(keras-team/keras#20585, tensorflow/tensorflow#72388); the custom loop (tf-multi-worker) runs"
    )


def keras_fit_mirrored_bug(config) -> str | None:
    """Why the installed Keras cannot fit under MirroredStrategy with steps_per_execution > 1; None where it may."""
    version = _keras_with_fit_bugs()
    k = config.training.steps_per_execution if config is not None else 1
    if version is None or k == 1:
        return None
    return (
        f"Keras {version}'s model.fit under MirroredStrategy fails with steps_per_execution {k} > 1 (\"You must "
        "feed a value for placeholder tensor 'while/cond/Placeholder'\", keras-team/keras#19246); set "
        "training.steps_per_execution=1"
    )
