"""The one base class for errors that retrying cannot fix."""
from __future__ import annotations


class DataError(Exception):
    """Bad input data, a bad recipe or settings, a failed quality gate: the same task fails the same way
    when retried. The DAG fails a task that raises one at once, without retries; anything else (a lost
    connection, a timeout, a crashed server) is retried."""
