"""`xfw study`: grids of matched comparisons over workloads, swept keys and seeds."""
