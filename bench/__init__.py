"""Benchmarks of the smarter-edge programs beside the reference implementations."""
