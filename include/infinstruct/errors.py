"""The one base class for errors that retrying cannot fix."""

from __future__ import annotations

import errno

# a file that is missing, forbidden or not a file is the same on a retry; EIO, ESTALE, a timeout may pass
_PERMANENT_ERRNOS = frozenset(
    {errno.ENOENT, errno.ENOTDIR, errno.EISDIR, errno.EACCES, errno.EPERM, errno.ELOOP, errno.ENAMETOOLONG}
)


class DataError(Exception):
    """Bad input data, a bad recipe or settings, a failed quality gate: the same task fails the same way
    when retried. The DAG fails a task that raises one at once, without retries; anything else (a lost
    connection, a timeout, a crashed server) is retried."""


def permanent_os_error(exc: OSError) -> bool:
    """Whether retrying cannot fix `exc` (the file is missing, forbidden, or not a file): the place it arises
    then raises a DataError naming the file; any other OSError is left to the task's retries."""
    return exc.errno in _PERMANENT_ERRNOS
