"""What the tests share, imported as `tests.helpers.x` (never from a test module or conftest.py): driving xfw
(cli), re-diffing curves (curves), hand-made records (records), finding a test's processes (processes), the
several-network compares (several_networks), the work each rank must have done (work_split), and two scripts run
by path, one framework per process (forward_pass.py, keras_fit_bugs.py)."""
