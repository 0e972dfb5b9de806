"""Benchmarks run by `make bench`: figures and ratios against a baseline, side by side."""
