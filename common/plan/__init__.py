"""Planning a run in the parent: strategies, implementations, what this machine can run, the run spec a worker reads,
launch plans."""
