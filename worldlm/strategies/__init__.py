"""Aggregation strategies: pure, synchronous, deterministic, on plain tensors."""
