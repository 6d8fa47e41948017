"""Ctrl-C / SIGTERM as a request: a loop finishes its current unit of work, saves, and stops."""

from __future__ import annotations

import signal


class StopSignal:
    """Catch SIGINT/SIGTERM inside a loop: `stop.requested` turns true and the loop checkpoints
    and exits at its next safe point. A second Ctrl-C raises KeyboardInterrupt at once."""

    def __init__(self):
        self.requested: str | None = None
        self._old = {}

    def _handler(self, signum, frame):
        if self.requested is not None and signum == signal.SIGINT:
            raise KeyboardInterrupt
        self.requested = signal.Signals(signum).name

    def __enter__(self):
        for s in (signal.SIGINT, signal.SIGTERM):
            try:
                self._old[s] = signal.signal(s, self._handler)
            except ValueError:  # not the main thread
                pass
        return self

    def __exit__(self, *exc):
        for s, h in self._old.items():
            signal.signal(s, h)
        return False
