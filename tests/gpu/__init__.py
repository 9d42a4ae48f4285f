"""An NVIDIA GPU: skipped with the reason where none exists (scripts/gpu_check.sh runs them on one)."""
