"""Benchmark orchestration, reports and performance scripts."""
