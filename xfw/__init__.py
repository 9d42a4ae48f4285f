"""xfw: run one training configuration under TensorFlow and PyTorch parallel strategies and diff them."""

__version__ = "0.1.0"
