"""Notebook parameter sweeps: search spaces, runners (local processes, Dask), results and report.

``mlenv.sweep.metrics`` is imported inside notebook kernels and must stay dependency-free; the rest
loads papermill and friends lazily, so this package itself imports nothing heavy.
"""
