"""Analysis of stored results: speedups, reports, the performance gate and its baselines (no torch)."""
