"""dualbuild: one TOML recipe → a Docker image tarball and a signed appc ACI."""

from __future__ import annotations

import importlib.machinery
import os
import warnings

__version__ = "0.1.0"

__all__ = ["__version__"]


def _warn_of_stale_compiled_modules() -> None:
    """Warn when a module compiled in place (``make native``) is older than its source.

    Python imports an extension module before the ``.py`` beside it, so after an edit a
    checkout would silently run the old code until it is compiled again.
    """
    here = os.path.dirname(__file__)
    suffix = importlib.machinery.EXTENSION_SUFFIXES[0]
    for name in os.listdir(here):
        source = os.path.join(here, name.removesuffix(suffix) + ".py")
        if not name.endswith(suffix) or not os.path.exists(source):
            continue
        if os.stat(source).st_mtime_ns > os.stat(os.path.join(here, name)).st_mtime_ns:
            warnings.warn(
                f"{source} is newer than its compiled module {name}, which Python imports "
                "instead: run `make native` (or delete the .so to run the source)",
                RuntimeWarning,
                stacklevel=2,
            )


_warn_of_stale_compiled_modules()
