"""``UserError``: a problem with what the user gave (a path, a file, a value), not a bug.

Its message is one line that names the input and the fix; the CLI (``cli.LazyGroup.invoke``, the one place
that catches it) prints it as ``Error: ...`` and exits 1, without a traceback. Every error class a user can
cause derives from it, most also from the builtin they are (``ValueError``, ``FileNotFoundError``, ...), so
library callers can catch either. It imports nothing, so any module can raise it; only ``models/`` and ``ops/``
do not, since a checkpoint carries their code without the rest of the package (``models.remote_code``).
"""

from __future__ import annotations


class UserError(Exception):
    """A bad input or an unusable environment the user can fix; ``str(err)`` is the one-line message.

    ``what``: the offending input (a recipe key, an option, a path), put in front as ``WHAT: problem``;
    ``fix``: what to do instead, put after as ``problem: FIX``. Where the message already says them, as most
    do, both stay None.
    """

    def __init__(self, message: str, *, what: str | None = None, fix: str | None = None):
        text = f"{what}: {message}" if what else message
        super().__init__(f"{text}: {fix}" if fix else text)
        self.message, self.what, self.fix = message, what, fix

    def one_line(self) -> str:
        """The message as the CLI prints it: on one line even where a library's text inside it had several."""
        return " ".join(line.strip() for line in str(self).splitlines() if line.strip())


__all__ = ["UserError"]
