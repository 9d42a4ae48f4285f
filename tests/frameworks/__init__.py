"""TensorFlow and PyTorch: in the test process, or as the workers of an `xfw` command that trains."""
