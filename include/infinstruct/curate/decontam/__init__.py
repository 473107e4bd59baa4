"""Benchmark decontamination: n-gram (`ngrams`) and embedding (`embedding`) matchers, and their stage."""
