"""``python -m dualbuild``."""

from dualbuild.cli.entry import main

main()
