"""Malformed data refused in one line before any worker starts, through the real `xfw` command. The output folder:
tests/frameworks/test_out_folder.py, and (root, a small tmpfs) tests/hosts/test_out_folder_tmpfs.py."""

import numpy as np

from tests.helpers.cli import assert_one_line_error, run_xfw


def test_malformed_npz_is_refused_before_any_worker_starts(tmp_path):
    path = tmp_path / "d.npz"
    np.savez(path, x_train=np.zeros((100, 10)), y_train=np.zeros((99, 10)))
    out = tmp_path / "out"
    proc = run_xfw(
        "compare", "--strategy", "mirrored", "--set", "data.kind=npz", "--set", f"data.path={path}", "--out", str(out)
    )
    assert_one_line_error(proc, f"data.path {path}: x_train has 100 samples but y_train has 99")
    assert not out.exists()  # created by this invocation, nothing written: removed again
