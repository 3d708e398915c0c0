"""Benchmarks: runnable scripts that print edgestore's figures beside their targets and peers.

`python -m bench.ingest` measures the storage engine (stages, full ingest, read-back, re-ingest,
peak RSS); `bench.datasets` generates the data sets the benchmarks share.
"""
