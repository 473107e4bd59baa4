"""Rule filters: measurements per record and thresholds over them (`filters`), and their stage."""
