"""The rounding envelope (parity.envelope_factor): each framework's single-device run once more from weights moved
one ulp. A pair that differs by rounding only stays within it on a long run that a fixed tolerance fails; an
injected real difference leaves it."""

from __future__ import annotations

from tests.helpers.cli import load_summary, run_xfw

COMPARE = [
    "compare",
    "--strategy",
    "single",
    "--only",
    "tf-single",
    "--only",
    "torch-single",
    "--config",
    "configs/cnn_digits.yaml",
    "--set",
    "parity.envelope_factor=10",
]


def pair(summary: dict) -> dict:
    (c,) = [c for c in summary["comparisons"] if (c["a"], c["b"]) == ("tf-single", "torch-single")]
    return c


def test_the_envelope_tells_rounding_from_a_real_difference(tmp_path):
    rounding = run_xfw(*COMPARE, "--set", "training.steps=1000", "--out", str(tmp_path / "rounding"))
    summary = load_summary(tmp_path / "rounding")
    assert {r["id"] for r in summary["runs"]} == {"tf-single", "torch-single", "tf-single~ulp", "torch-single~ulp"}
    assert set(summary["envelopes"]) == {"tf", "torch"}
    for curve in summary["envelopes"].values():
        assert len(curve) == 1000 and curve[0] < 1e-6 < curve[-1]  # from one ulp, rounding alone grows
    c = pair(summary)
    assert c["within_envelope"] is True and c["envelope_first_over"] is None, (c, rounding.stdout)
    assert "within rounding (10x the envelope)" in (tmp_path / "rounding" / "report.md").read_text()

    perturb = {"XFW_PERTURB": "torch-single:dense0/kernel:5:1e-3"}
    real = run_xfw(*COMPARE, "--set", "training.steps=300", "--out", str(tmp_path / "real"), env=perturb)
    c = pair(load_summary(tmp_path / "real"))
    assert c["within_envelope"] is False and c["envelope_first_over"] is not None, real.stdout
    assert "a real difference from step" in (tmp_path / "real" / "report.md").read_text()
