"""Aggregation server: round loop, strategies, secure-aggregation server side."""
