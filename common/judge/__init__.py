"""Judging runs: per-step parity, comparisons and their verdicts, statistics."""
