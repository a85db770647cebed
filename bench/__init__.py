"""Benchmarks: each module compares side by side in one run and prints ratios (see RESULTS.md)."""
