"""What the several-network tests share: the compare each runs once (cli.compare_once) and how they read
its curves. Curves are re-diffed from the raw per-step lists, not through xfw's comparison code."""

from tests.helpers.cli import compare_once

STEPS = 200

# The verdict logic itself is tested on known inputs in tests/unit/test_judgements.py; here, that a verdict was given.
VERDICTS = {"helps", "hurts", "no clear difference"}
WIDTH = 16  # one end-to-end point of the shared-device sweep (the sweep's logic: tests/unit/test_judgements.py)


def curves(run: dict) -> dict[str, list[float]]:
    return {n["name"]: n["loss"] for n in run["networks"] if n["loss"] is not None}


def compare(tmp_path_factory, strategy: str, config: str, *overrides: str):
    args = [a for o in (f"training.steps={STEPS}", *overrides) for a in ("--set", o)]
    return compare_once(tmp_path_factory, strategy, "--strategy", strategy, "--config", config, *args)
