"""Logging to stderr: plain lines, a context prefix per emitter, timed steps.

stdout is kept for machine output (``plan --json``, ``build --json``).
"""

from __future__ import annotations

import contextvars
import logging
import os
import shutil
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager

LOGGER_NAME = "dualbuild"
# Below DEBUG: every command dualbuild runs (-vv); DEBUG holds timings and choices (-v).
TRACE = 5
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


class _Status:
    """On a terminal, one status line under the output: what runs now and for how long.

    Log records and step output clear it before they are written; a ticker thread redraws it.
    Without a terminal (CI, pipes) it does nothing, and output stays plain lines.
    """

    _FRAMES = "|/-\\"

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._text = ""
        self._started = 0.0
        self._stop = threading.Event()
        self._ticker: threading.Thread | None = None

    @staticmethod
    def enabled() -> bool:
        return sys.stderr.isatty() and os.environ.get("TERM", "") != "dumb"

    def write(self, text: str) -> None:
        """Write a line above the status line."""
        with self._lock:
            sys.stderr.write(("\r\x1b[K" if self._text else "") + text + "\n")
            sys.stderr.flush()

    @contextmanager
    def show(self, text: str) -> Iterator[None]:
        if not self.enabled():
            yield
            return
        with self._lock:
            self._text, self._started = text, time.monotonic()
        self._stop.clear()
        self._ticker = threading.Thread(target=self._tick, daemon=True)
        self._ticker.start()
        try:
            yield
        finally:
            self._stop.set()
            self._ticker.join()
            with self._lock:
                self._text = ""
                sys.stderr.write("\r\x1b[K")
                sys.stderr.flush()

    def _tick(self) -> None:
        frame = 0
        while not self._stop.wait(0.1):
            with self._lock:
                elapsed = time.monotonic() - self._started
                width = shutil.get_terminal_size().columns - 12
                line = f"{self._FRAMES[frame % 4]} {self._text[:width]} {elapsed:5.1f}s"
                sys.stderr.write("\r\x1b[K" + line)
                sys.stderr.flush()
            frame += 1


status = _Status()


class _StatusAwareHandler(logging.StreamHandler):  # type: ignore[type-arg]
    def emit(self, record: logging.LogRecord) -> None:
        try:
            status.write(self.format(record))
        except Exception:  # noqa: BLE001 - logging must never raise
            self.handleError(record)


def output_line(line: str) -> None:
    """One line of a step's own output, indented under its header."""
    status.write(f"  | {line}")


def setup(verbosity: int = 0, *, quiet: bool = False) -> None:
    """Send dualbuild's log to stderr; -v shows timings, -vv every command run."""
    level = logging.WARNING if quiet else (logging.INFO, logging.DEBUG, TRACE)[min(verbosity, 2)]
    handler = _StatusAwareHandler(sys.stderr)
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
