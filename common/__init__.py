"""Framework-free parts of xfw: config, model specs, weights, data, registry, launching, results, reports.

Nothing in this package imports TensorFlow, PyTorch or Horovod (tests/unit/test_layout.py checks it)."""
