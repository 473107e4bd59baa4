"""The Phase 1 selection: quotas, DSIR importance, DEITA-style diversity, and the stage."""
