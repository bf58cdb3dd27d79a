"""Service benchmarks (load test)."""
