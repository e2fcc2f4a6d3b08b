"""Benchmarks of clr_loop, run from the repository root (`python -m benchmarks.bench`); not part of the package."""
