"""Benchmark harness, reports and pictures (``fewstep bench``)."""
