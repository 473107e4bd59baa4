"""Phase 1 curation, one sub-package per stage: its pure core beside its stage module."""
