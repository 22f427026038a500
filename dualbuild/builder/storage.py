"""Where buildah keeps its images and containers: a store's flags, and throwaway stores."""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from dualbuild import run
from dualbuild.files import scratch_prefix
from dualbuild.leftovers import STORE_DIR, STORE_KIND


@dataclass(frozen=True, kw_only=True)
class StorageOptions:
    """Where buildah keeps images and containers (default: its own configuration)."""

    root: Path | None = None
    runroot: Path | None = None
    driver: str | None = None

    def argv(self) -> list[str]:
        """Global buildah flags for this storage."""
        flags = []
        if self.root is not None:
            flags += ["--root", os.fspath(self.root)]
        if self.runroot is not None:
            flags += ["--runroot", os.fspath(self.runroot)]
        if self.driver is not None:
            flags += ["--storage-driver", self.driver]
        return flags


@contextmanager
def temporary_storage() -> Iterator[StorageOptions]:
    """A fresh, empty buildah store for one build, removed afterwards (mounts included)."""
    base = Path(tempfile.mkdtemp(prefix=scratch_prefix(STORE_KIND), dir=STORE_DIR))
    storage = StorageOptions(root=base / "root", runroot=base / "run")
    try:
        yield storage
    finally:
        binary = shutil.which("buildah")
        if binary:
            run.run([binary, *storage.argv(), "rmi", "--all", "--force"], check=False)
        # Overlay keeps a bind mount of its own directory; unmount before deleting the tree.
        run.run(["umount", "-R", os.fspath(base / "root" / "overlay")], check=False)
        shutil.rmtree(base, ignore_errors=True)
