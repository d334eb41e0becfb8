"""Benchmarks: make bench runs them all (python -m bench), each a ratio against a baseline in the same run."""
