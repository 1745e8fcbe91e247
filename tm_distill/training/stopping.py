"""Stopping a run cleanly from outside: SIGTERM/SIGINT and a wall-clock budget (``max_time``).

``StopFlag`` is polled by the loop once per optimizer step. While it is installed (a context manager), the
first SIGTERM or SIGINT only raises the flag, so the step in flight finishes and a checkpoint is written; a
second SIGINT interrupts at once (Ctrl-C twice). ``max_time`` (seconds from ``start()``) raises the flag by
itself (``recipe.parse_duration`` reads it).
"""

from __future__ import annotations

import signal
import threading
import time


class StopFlag:
    """Raised by a signal or by the clock; ``reason()`` is None until then ("SIGTERM", "SIGINT", "max_time")."""

    def __init__(self, max_time: float | None = None):
        self.max_time = max_time
        self._started = time.monotonic()
        self._reason: str | None = None
        self._previous: dict[int, object] = {}

    def start(self) -> StopFlag:
        self._started = time.monotonic()
        return self

    def request(self, reason: str) -> None:
        if self._reason is None:
            self._reason = reason

    def reason(self) -> str | None:
        if self._reason is None and self.max_time is not None and time.monotonic() - self._started >= self.max_time:
            self._reason = "max_time"
        return self._reason

    def _handle(self, signum, frame) -> None:
        name = signal.Signals(signum).name
        if self._reason is not None and signum == signal.SIGINT:
            raise KeyboardInterrupt  # a second Ctrl-C: stop now
        self.request(name)

    def __enter__(self) -> StopFlag:
        self.start()
        if threading.current_thread() is threading.main_thread():  # signal handlers live in the main thread
            for sig in (signal.SIGTERM, signal.SIGINT):
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous.clear()


__all__ = ["StopFlag"]
