"""The console script's first code: catch SIGINT/SIGTERM before the heavier imports run.

A signal that arrives while the command line is still being loaded then ends the process
with 130/143 and no traceback, like one that arrives during the build.
"""

from __future__ import annotations

import sys

from dualbuild.errors import Interrupted
from dualbuild.run import install_interrupt_handlers


def main() -> None:
    """Entry point of the ``dualbuild`` console script."""
    install_interrupt_handlers()
    try:
        from dualbuild.cli import main as cli_main

        cli_main()
    except Interrupted as interrupted:  # before the CLI could handle it, or while exiting
        sys.exit(interrupted.exit_code)
