"""Exact and same-instruction deduplication across the dataset."""
