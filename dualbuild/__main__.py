"""``python -m dualbuild``."""

from dualbuild.entry import main

main()
