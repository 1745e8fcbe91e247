"""``UserError``: a problem with what the user gave (a path, a file, a value), not a bug.

Its message is one line that names the input and the fix; the CLI (``cli.LazyGroup.invoke``, the one place
that catches it) prints it as ``Error: ...`` and exits 1, without a traceback. Every error class a user can
cause derives from it, most also from the builtin they are (``ValueError``, ``FileNotFoundError``, ...), so
library callers can catch either. It imports nothing, so any module can raise it; only ``models/`` and ``ops/``
do not, since a checkpoint carries their code without the rest of the package (``models.remote_code``).
"""

from __future__ import annotations


class UserError(Exception):
    """A bad input or an unusable environment the user can fix; ``str(err)`` is the one-line message."""

    def __init__(self, message: str):
        super().__init__(message)
        self.message = message


__all__ = ["UserError"]
