"""The step cache: content keys for every stage position, and why a step ran instead of hitting.

Position 0 of a stage is its base; position k is the tree after step k. The key of a position
is the hash of the previous key, the step after substitution (with its env and workdir) and, for
``copy``, the path, type, mode and content of every input file. ``run`` steps are keyed by their
definition, as Docker does: a command that fetches from the network is not re-run unless its
text changes. The tree at each position is kept as a buildah image tagged with its key, except
position 0 of ``rootfs:`` and bootstrap bases, which is extracted again instead. A tree's digest
is a label of its image, checked before the tree is reused: one damaged in buildah's store is
built again.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import stat
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from dualbuild import __version__
from dualbuild.builder import cachemounts
from dualbuild.builder.buildah import Buildah
from dualbuild.files import file_sha256, write_atomically
from dualbuild.leftovers import reclaim, scratch_directories
from dualbuild.plan import PlannedStep, to_jsonable
from dualbuild.recipe.model import RunStep

CACHE_REPOSITORY = "localhost/dualbuild-cache"


def cache_image(key: str) -> str:
    """The buildah image holding the tree of a position."""
    return f"{CACHE_REPOSITORY}:{key}"


def _digest(*parts: str) -> str:
    hasher = hashlib.sha256()
    for part in parts:
        hasher.update(part.encode("utf-8", "surrogateescape"))
        hasher.update(b"\0")
    return hasher.hexdigest()


@dataclass(frozen=True)
class CopyInput:
    """One file a copy step reads: what decides whether the step's result can be reused."""

    path: str
    kind: str
    mode: int
    content: str


def copy_inputs(context: Path, entries: Sequence[Path]) -> list[CopyInput]:
    """Each file, directory and symlink a copy reads (paths in the context), with its content hash."""
    inputs: list[CopyInput] = []
    for path in entries:
        info = path.lstat()
        relative = os.path.relpath(path, context)
        if stat.S_ISLNK(info.st_mode):
            inputs.append(CopyInput(relative, "symlink", 0o777, os.readlink(path)))
        elif stat.S_ISDIR(info.st_mode):
            inputs.append(CopyInput(relative, "dir", stat.S_IMODE(info.st_mode), ""))
        else:
            inputs.append(CopyInput(relative, "file", stat.S_IMODE(info.st_mode), file_sha256(path)))
    return inputs


def base_key(kind: str, identity: str) -> str:
    """Key of a stage's position 0, from what identifies its base (an image id, a file hash)."""
    return _digest("base", __version__, kind, identity)


def definition(step: PlannedStep) -> str:
    """Hash of a step as it will run: its substituted definition, env and workdir.

    Of a secret only its id and where it is mounted: where its bytes come from (a file, a
    variable, --secret) is not the step's business, and the bytes never are.
    """
    data = {"step": to_jsonable(step.step), "env": dict(step.env), "workdir": step.workdir}
    if isinstance(step.step, RunStep) and step.step.secrets:
        assert isinstance(data["step"], dict)
        data["step"]["secrets"] = [{"id": secret.id, "path": secret.path} for secret in step.step.secrets]
    return _digest(json.dumps(data, sort_keys=True))


def step_key(parent: str, step_definition: str, inputs: Sequence[CopyInput], source: str | None) -> str:
    """Key of the position after a step."""
    listed = json.dumps([[i.path, i.kind, i.mode, i.content] for i in inputs])
    return _digest("step", parent, step_definition, listed, source or "")


@dataclass(frozen=True, kw_only=True)
class Position:
    """What decided one position's key, kept to explain the next miss."""

    key: str
    parent: str
    definition: str
    inputs: Mapping[str, str]


def tree_digest(root: Path) -> str:
    """A digest of what a cached tree holds, taken at its commit and checked when it is reused.

    Each entry's path, type, mode, owner, size (not a directory's), whole-second mtime (what a
    layer keeps), link target and device number: a file removed, added, replaced, truncated or
    rewritten (its mtime moves) changes it. The bytes are not read: that would cost a read of
    the whole tree at every step. Sockets are left out (a layer cannot hold one).
    """
    hasher = hashlib.sha256()
    pending = [root]
    while pending:
        directory = pending.pop()
        with os.scandir(directory) as listing:
            entries = sorted(listing, key=lambda entry: entry.name)
        for entry in entries:
            info = entry.stat(follow_symlinks=False)
            if stat.S_ISSOCK(info.st_mode):
                continue
            is_directory = stat.S_ISDIR(info.st_mode)
            target = os.readlink(entry.path) if stat.S_ISLNK(info.st_mode) else ""
            fields = (
                os.path.relpath(entry.path, root), oct(info.st_mode), str(info.st_uid), str(info.st_gid),
                "" if is_directory else str(info.st_size), str(info.st_mtime_ns // 10**9), target,
                str(info.st_rdev) if stat.S_ISCHR(info.st_mode) or stat.S_ISBLK(info.st_mode) else "",
            )  # fmt: skip
            for part in fields:
                hasher.update(part.encode("utf-8", "surrogateescape") + b"\0")
            if is_directory:
                pending.append(Path(entry.path))
    return hasher.hexdigest()


class StepIndex:
    """The last keys seen for each stage position of one recipe, to say why a step re-ran."""

    def __init__(self, cache_dir: Path, recipe: Path) -> None:
        name = hashlib.sha256(str(recipe.absolute()).encode()).hexdigest()[:24]
        self.path = cache_dir / "index" / f"{name}.json"
        self.positions: dict[str, dict[str, object]] = {}
        try:
            loaded = json.loads(self.path.read_text())
            if isinstance(loaded, dict):
                self.positions = loaded
        except (OSError, ValueError):
            pass

    @staticmethod
    def _slot(stage: str, position: int) -> str:
        return f"{stage}/{position}"

    def record(self, stage: str, position: int, entry: Position) -> None:
        """Remember how a position was keyed in this build."""
        self.positions[self._slot(stage, position)] = {
            "key": entry.key,
            "parent": entry.parent,
            "definition": entry.definition,
            "inputs": dict(entry.inputs),
        }

    def reason(self, stage: str, position: int, entry: Position) -> str:
        """Why a position missed the cache, compared with the last build of this recipe."""
        last = self.positions.get(self._slot(stage, position))
        if not isinstance(last, dict):
            return "no cache entry"
        if position == 0:
            return "the base changed" if last.get("key") != entry.key else "no cache entry"
        if last.get("parent") != entry.parent:
            return "the parent changed"
        if last.get("definition") != entry.definition:
            return "the step changed"
        before = last.get("inputs")
        before = before if isinstance(before, dict) else {}
        for path in sorted(set(before) | set(entry.inputs)):
            if before.get(path) != entry.inputs.get(path):
                what = "added" if path not in before else "removed" if path not in entry.inputs else "changed"
                return f"input {what}: {path}"
        return "no cache entry"

    def save(self) -> None:
        """Write the index (atomically; a lost index only costs explanations)."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        write_atomically(self.path, json.dumps(self.positions, indent=1, sort_keys=True).encode())


# The image_id column of a cache directory of run steps (cache = [...]) in a listing.
MOUNT_ENTRY = "cache-mount"


@dataclass(frozen=True, kw_only=True)
class CacheEntry:
    """One cached tree: its image id, key, creation time (Unix seconds) and size as buildah says.

    Bootstrap tarballs and the cache directories of run steps (``directory``) are listed too.
    """

    image_id: str
    key: str
    created: int
    size: str
    directory: cachemounts.CacheDirectory | None = None


def list_entries(images: Sequence[Mapping[str, object]]) -> list[CacheEntry]:
    """Cache entries from ``buildah images --json`` records of the cache repository, oldest first."""
    entries = []
    for image in images:
        names = image.get("names")
        keys = [
            str(name).rpartition(":")[2]
            for name in (names if isinstance(names, list) else [])
            if str(name).startswith(CACHE_REPOSITORY + ":")
        ]
        created = image.get("created")
        entries.append(
            CacheEntry(
                image_id=str(image.get("id", "")),
                key=keys[0] if keys else "",
                created=created if isinstance(created, int) else 0,
                size=str(image.get("size", "")),
            )
        )
    return sorted(entries, key=lambda entry: entry.created)


def cached_keys(buildah: Buildah) -> set[str]:
    """The keys of every position the step cache holds, from one listing."""
    prefix = CACHE_REPOSITORY + ":"
    keys = set()
    for image in buildah.list_images(CACHE_REPOSITORY):
        names = image.get("names")
        for name in names if isinstance(names, list) else []:
            if str(name).startswith(prefix):
                keys.add(str(name).removeprefix(prefix))
    return keys


def cached(cache_dir: Path, buildah: Buildah | None = None) -> list[CacheEntry]:
    """Every cached tree in buildah's store, bootstrap tarball and run steps' cache directory, oldest first.

    Trees that lost their name to another build committing the same key are listed too (with
    no key), so that prune removes them.
    """
    with _session(buildah) as session:
        entries = list_entries(session.list_images(CACHE_REPOSITORY))
        entries += list_entries(session.list_images(CACHE_REPOSITORY, dangling=True))
    for directory in cachemounts.listing(cache_dir):
        entries.append(
            CacheEntry(
                image_id=MOUNT_ENTRY, key=f"{directory.id} ({directory.arch})", created=directory.last_used,
                size=f"{directory.size / 1e6:.1f} MB", directory=directory,
            )
        )  # fmt: skip
    for tarball in sorted((cache_dir / "bootstrap").glob("*.tar")):
        info = tarball.stat()
        entries.append(
            CacheEntry(
                image_id="bootstrap",
                key=tarball.name,
                created=int(info.st_mtime),
                size=f"{info.st_size / 1e6:.1f} MB",
            )
        )
    return sorted(entries, key=lambda entry: entry.created)


def prune(
    cache_dir: Path,
    *,
    older_than: int | None = None,
    now: float | None = None,
    buildah: Buildah | None = None,
    scratch: list[Path] | None = None,
) -> list[CacheEntry]:
    """Remove cached trees and bootstrap tarballs (those older than ``older_than`` seconds, or all).

    What killed builds left goes first (their containers, and scratch in ``scratch``: by
    default the temporary folders and the cache's own).
    """
    with _session(buildah) as session:
        session.reclaim_dead_sessions()
        if scratch is None:
            outputs = [cache_dir, *(cache_dir / folder for folder in ("bootstrap", "configs", "index"))]
            reclaim(scratch_directories(), outputs=[*outputs, cache_dir / cachemounts.MOUNTS_DIR])
        else:
            reclaim(scratch)
        moment = time.time() if now is None else now
        removed = []
        for entry in cached(cache_dir, session):
            if older_than is not None and moment - entry.created < older_than:
                continue
            if entry.image_id == "bootstrap":
                (cache_dir / "bootstrap" / entry.key).unlink(missing_ok=True)
                removed.append(entry)
            elif entry.directory is not None:
                if cachemounts.remove(entry.directory):
                    removed.append(entry)
            elif session.remove_image(cache_image(entry.key) if entry.key else entry.image_id):
                removed.append(entry)
        return removed


@contextlib.contextmanager
def _session(given: Buildah | None) -> Iterator[Buildah]:
    """The given buildah session, or one of our own, cleaned up after (its TMPDIR goes)."""
    if given is not None:
        yield given
        return
    made = Buildah()
    try:
        yield made
    finally:
        made.cleanup()
