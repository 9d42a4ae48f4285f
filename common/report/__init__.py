"""What a person reads: tables, report.md and plots, for compares and studies."""
