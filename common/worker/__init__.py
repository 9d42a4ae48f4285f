"""The framework-free side of a training process: the timed loop, rank identity and reporting, profiling, fault
injection."""
