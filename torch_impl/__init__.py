"""PyTorch implementations. Every module here runs inside a worker process only."""
