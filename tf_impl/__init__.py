"""TensorFlow / Keras 3 implementations. Every module here runs inside a worker process only."""
