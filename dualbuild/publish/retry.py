"""Bounded retries: a transient failure (5xx, a reset or refused connection) is tried again.

Every network operation of publish goes through :func:`with_retries`, with exponential backoff
and a bounded number of attempts; :func:`short_reason` says in one line why one failed.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TypeVar

from dualbuild.errors import CommandError
from dualbuild.log import log

T = TypeVar("T")
# The message of a logrus line, as skopeo prints its fatal error.
_GO_LOG = re.compile(r'level=\w+ msg="(.*)"$')


@dataclass(frozen=True, kw_only=True)
class RetryPolicy:
    """How often a transient failure (5xx, reset or refused connection) is retried.

    Attributes:
        attempts: Tries in all, the first included.
        first_delay: Seconds before the first retry; each later wait doubles.
        max_delay: Upper bound of one wait.
        timeout: Seconds one registry operation (a push, a manifest read) may take: a registry
            that accepts and never answers fails after it, as a transient failure.
    """

    attempts: int = 4
    first_delay: float = 1.0
    max_delay: float = 8.0
    timeout: float = 1800.0

    def delay(self, retry: int) -> float:
        """Seconds to wait before retry number ``retry`` (1-based)."""
        return float(min(self.first_delay * 2 ** (retry - 1), self.max_delay))


def with_retries(
    what: str, action: Callable[[], T], *, policy: RetryPolicy, transient: Callable[[Exception], bool]
) -> T:
    """Run ``action``; retry it with exponential backoff while it fails transiently.

    Raises:
        Exception: whatever the last attempt raised (at once if it is not transient).
    """
    attempt = 1
    while True:
        try:
            return action()
        except Exception as error:
            if attempt >= policy.attempts or not transient(error):
                raise
            wait = policy.delay(attempt)
            log.warning(
                "%s failed (%s); retry %d of %d in %.1fs",
                what, short_reason(error), attempt, policy.attempts - 1, wait,
            )  # fmt: skip
            time.sleep(wait)
            attempt += 1


def short_reason(error: BaseException) -> str:
    """One line saying why something failed: a command's last output line, else the message."""
    if isinstance(error, CommandError):
        # Tools such as skopeo print the cause last: time="…" level=fatal msg="…".
        lines = [line.strip() for line in error.output_tail.splitlines() if line.strip()]
        if lines:
            fatal = _GO_LOG.search(lines[-1])
            reason = fatal.group(1).replace('\\"', '"') if fatal else lines[-1]
            # skopeo inspect blames every failure on the name; the cause follows.
            return re.sub(r'^Error parsing image name "[^"]*": ', "", reason)
    text = str(error).strip() or type(error).__name__
    return text.splitlines()[0]
