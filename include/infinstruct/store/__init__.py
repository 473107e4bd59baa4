"""The system of record in PostgreSQL: connection and embedded server, migrations, COPY, decisions and
completions, the ledger, caches and vector indexes."""
