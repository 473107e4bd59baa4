"""Great Expectations quality gates between stages."""
