#!/usr/bin/env python3
"""The long soak (not part of `make test`): the hardening tests, many times over.

- hypothesis over recipe structures and raw TOML bytes: 10,000 examples per property
  (CI runs 1,000), zero tracebacks allowed;
- SIGINT/SIGTERM at random points of real builds: 200 rounds with a fresh seed (CI runs 20);
- SIGKILL at random points of real builds, each followed by a build that must reclaim all the
  killed one left: 200 rounds (CI runs 20).

Usage: .venv/bin/python soak/run.py [--examples N] [--rounds N] [--kills N] [--seed N]   (as root)
"""

from __future__ import annotations

import argparse
import os
import random
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def main() -> int:
    """Run the soak; return pytest's exit code."""
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--examples", type=int, default=10_000, help="hypothesis examples per property")
    parser.add_argument("--rounds", type=int, default=200, help="random interrupts")
    parser.add_argument("--kills", type=int, default=200, help="random SIGKILLs")
    parser.add_argument(
        "--seed", type=int, default=random.randrange(1 << 30), help="seed for the interrupt delays"
    )
    options = parser.parse_args()
    env = {
        **os.environ,
        "CI": "true",
        "DUALBUILD_FUZZ_EXAMPLES": str(options.examples),
        "DUALBUILD_INTERRUPT_ROUNDS": str(options.rounds),
        "DUALBUILD_INTERRUPT_SEED": str(options.seed),
        "DUALBUILD_SIGKILL_ROUNDS": str(options.kills),
        "DUALBUILD_SIGKILL_SEED": str(options.seed),
    }
    print(
        f"soak: {options.examples} examples per property, {options.rounds} interrupts,"
        f" {options.kills} kills, seed {options.seed}"
    )
    tests = [
        "tests/unit/test_recipe_fuzz.py",
        "tests/integration/test_hardening.py::test_random_interrupts_leave_nothing_behind",
        "tests/integration/test_sigkill.py",
    ]
    return subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", *tests], cwd=ROOT, env=env
    ).returncode


if __name__ == "__main__":
    sys.exit(main())
