"""The console script's first code: catch SIGINT/SIGTERM before the heavier imports run.

A signal that arrives while the command line is still being loaded ends the process with
130/143 and no traceback, like one that arrives during the build. Once the command is done,
the process leaves with ``os._exit``: interpreter shutdown puts the default signal handlers
back, and a signal in that window would otherwise kill the process with no exit code of ours.
"""

from __future__ import annotations

import contextlib
import os
import signal
import sys

from dualbuild.errors import Interrupted
from dualbuild.run import install_interrupt_handlers


def _exit_code(code: object) -> int:
    if code is None:
        return 0
    if isinstance(code, int):
        return code
    sys.stderr.write(f"{code}\n")
    return 1


def main() -> None:
    """Entry point of the ``dualbuild`` console script."""
    install_interrupt_handlers()
    code = 0
    try:
        from dualbuild.cli.main import main as cli_main

        cli_main()
    except SystemExit as leaving:
        code = _exit_code(leaving.code)
    except Interrupted as interrupted:  # before the CLI could handle it, or while exiting
        code = interrupted.exit_code
    # The outcome is decided: later signals change nothing.
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, signal.SIG_IGN)
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(OSError, ValueError):
            stream.flush()
    os._exit(code)
