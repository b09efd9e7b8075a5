"""tbench: a benchmarking harness and leaderboard for long-sequence attention kernels."""

__version__ = "0.1.0"
