"""Logging to stderr: plain lines, a context prefix per emitter, timed steps.

stdout is kept for machine output (``plan --json``, ``build --json``).
"""

from __future__ import annotations

import contextvars
import logging
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager

LOGGER_NAME = "dualbuild"
log = logging.getLogger(LOGGER_NAME)
_prefix: contextvars.ContextVar[str] = contextvars.ContextVar("dualbuild_log_prefix", default="")


class _Formatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        prefix = _prefix.get()
        message = record.getMessage()
        if record.levelno >= logging.ERROR:
            message = f"error: {message}"
        elif record.levelno >= logging.WARNING:
            message = f"warning: {message}"
        return f"[{prefix}] {message}" if prefix else message


def setup(verbosity: int = 0, *, quiet: bool = False) -> None:
    """Send dualbuild's log to stderr; -v shows timings, -vv every command run."""
    level = logging.WARNING if quiet else (logging.INFO, logging.DEBUG, logging.DEBUG)[min(verbosity, 2)]
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(_Formatter())
    log.handlers[:] = [handler]
    log.setLevel(level)
    log.propagate = False


@contextmanager
def prefixed(prefix: str) -> Iterator[None]:
    """Prefix every line logged in this context (and threads started with its context)."""
    token = _prefix.set(prefix)
    try:
        yield
    finally:
        _prefix.reset(token)


@contextmanager
def timed(what: str) -> Iterator[dict[str, float]]:
    """Log ``what`` with its duration (at debug level); yields a dict receiving ``seconds``."""
    result: dict[str, float] = {}
    start = time.monotonic()
    try:
        yield result
    finally:
        result["seconds"] = time.monotonic() - start
        log.debug("%s took %.2fs", what, result["seconds"])
