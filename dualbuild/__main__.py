"""``python -m dualbuild``."""

from dualbuild.cli import main

main()
