"""Semantic duplicates: embedding pairs (`pairs`) and the stage over accepted records."""
