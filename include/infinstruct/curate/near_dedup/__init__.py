"""Near-duplicate instructions: MinHash LSH (`minhash`), the stage, and the release audit."""
