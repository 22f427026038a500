"""dualbuild: one TOML recipe → a Docker image tarball and a signed appc ACI."""

from __future__ import annotations

import importlib.machinery
import os
import warnings

__version__ = "0.1.0"

__all__ = ["__version__"]


def _warn_of_stale_compiled_modules() -> None:
    """In a checkout, warn when a module compiled in place (``make native``) is older than its source.

    Python imports an extension module before the ``.py`` beside it, so after an edit a
    checkout would silently run the old code until it is compiled again. Only a checkout
    (``setup.py`` beside the package) is checked: pip gives an installed wheel's files the
    time they were unpacked, in no particular order.
    """
    here = os.path.dirname(__file__)
    if not os.path.exists(os.path.join(here, os.pardir, "setup.py")):
        return
    suffix = importlib.machinery.EXTENSION_SUFFIXES[0]
    for folder, _, names in os.walk(here):
        for name in names:
            source = os.path.join(folder, name.removesuffix(suffix) + ".py")
            if not name.endswith(suffix) or not os.path.exists(source):
                continue
            if os.stat(source).st_mtime_ns > os.stat(os.path.join(folder, name)).st_mtime_ns:
                warnings.warn(
                    f"{source} is newer than its compiled module {name}, which Python imports "
                    "instead: run `make native` (or delete the .so to run the source)",
                    RuntimeWarning,
                    stacklevel=2,
                )


_warn_of_stale_compiled_modules()
