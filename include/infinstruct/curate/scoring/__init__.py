"""Quality, difficulty and domain per record: signals, model scorers, domains, and their stage."""
