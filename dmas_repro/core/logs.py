"""Diagnostics through stdlib `logging`: one logger tree ("dmas_repro.*"), one convention.

Every module logs with `log = logging.getLogger(__name__)`. Messages go to stderr as plain lines;
`setup(verbosity)` sets the level for a command (`--quiet`: warnings and errors only; default:
progress; `--verbose`: debug). Under torchrun only rank 0 speaks, except for errors. A command's
results (tables, paths) go to stdout with print, apart from the log.
"""

from __future__ import annotations

import logging
import os
import sys

ROOT = "dmas_repro"


class _Stderr(logging.StreamHandler):
    """Writes to whatever sys.stderr is at the time (test capture, redirection)."""

    def __init__(self):
        super().__init__(sys.stderr)

    @property
    def stream(self):
        return sys.stderr

    @stream.setter
    def stream(self, value):  # logging.StreamHandler.__init__ assigns it
        pass


class _RankFilter(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return rank() == 0 or record.levelno >= logging.ERROR


def rank() -> int:
    return int(os.environ.get("RANK", "0"))


def _install() -> logging.Logger:
    logger = logging.getLogger(ROOT)
    if not any(isinstance(h, _Stderr) for h in logger.handlers):
        h = _Stderr()
        h.setFormatter(logging.Formatter("%(message)s"))
        h.addFilter(_RankFilter())
        logger.addHandler(h)
        logger.setLevel(logging.INFO)
        logger.propagate = True  # (pytest's caplog and an application's root handlers see the records too)
    return logger


def setup(verbosity: int = 0) -> None:
    """verbosity < 0: warnings and errors; 0: progress (info); > 0: debug."""
    level = logging.WARNING if verbosity < 0 else logging.DEBUG if verbosity > 0 else logging.INFO
    _install().setLevel(level)


def quiet() -> bool:
    return not _install().isEnabledFor(logging.INFO)


_install()
