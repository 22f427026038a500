"""Reading a run step's ``secrets`` and ``cache``: what is mounted for that step only.

A secret is a file the step reads at ``/run/secrets/ID`` (or ``target``); a cache is a
directory kept between builds on this machine. Neither ever reaches the tree, a layer or a
cache key (recipe format v1.1).
"""

from __future__ import annotations

import posixpath
import re

from dualbuild.recipe.model import CacheMount, CacheSharing, SecretMount
from dualbuild.recipe.positions import KeyPath, line_of
from dualbuild.recipe.reader import Reader, describe_value, render_path
from dualbuild.recipe.rules import check_context_path

# A secret's id names a file under /run/secrets: no slash, nothing a shell or a mount option
# would read otherwise (buildah's --mount splits on ",", its --secret on "=").
SECRET_ID = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}")
# POSIX's portable environment variable names: what `--secret id=X,env=VAR` reads.
ENV_VARIABLE = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_SECRET_KEYS = ("id", "src", "env", "target")
_CACHE_KEYS = ("target", "id", "sharing")


def read_secrets(reader: Reader, value: object, path: KeyPath) -> tuple[SecretMount, ...] | None:
    """``secrets = [{ id, src | env, target }]``: src a file in the context, env a variable."""
    if not isinstance(value, list):
        reader.error(path, f"expected an array of secret tables, got {describe_value(value)}")
        return None
    secrets: list[SecretMount] = []
    ok = len(reader.problems)
    for index, item in enumerate(value):
        here = (*path, index)
        table = reader.table(item, here, _SECRET_KEYS, required=("id",), what="secret table")
        if table is None or "id" not in table:
            continue
        secret_id = reader.string(
            table["id"], (*here, "id"), pattern=SECRET_ID, rule="a secret id",
            hint="letters, digits, '_', '.' and '-' (it names the file under /run/secrets)",
        )  # fmt: skip
        src = env = target = None
        if "src" in table and "env" in table:
            reader.error(
                (*here, "env"), "a secret comes from a file or a variable, not both", "drop src or env"
            )
            continue
        if "src" in table:
            src = reader.string(table["src"], (*here, "src"))
            if src is not None and src.startswith("/"):
                # A recipe may come from elsewhere: only the user running the build names host files.
                reader.error(
                    (*here, "src"),
                    f"{src!r} is absolute: a recipe names secrets in the build context only",
                    f"pass a file elsewhere on the command line: --secret id={secret_id or 'ID'},src={src}",
                )
            elif src is not None:
                check_context_path(reader, src, (*here, "src"))
        if "env" in table:
            env = reader.string(table["env"], (*here, "env"), pattern=ENV_VARIABLE, rule="a variable name")
        if "target" in table:
            target = _mount_path(reader, table["target"], (*here, "target"))
        if secret_id is not None:
            secrets.append(
                SecretMount(
                    id=secret_id, src=src, env=env, target=target, key=render_path(here),
                    line=line_of(reader.lines, here),
                )
            )  # fmt: skip
    _no_two(reader, path, [(secret.id, "id") for secret in secrets], "secret id")
    _no_two(reader, path, [(secret.path, "target") for secret in secrets], "secret target")
    return tuple(secrets) if len(reader.problems) == ok else None


def read_cache(reader: Reader, value: object, path: KeyPath) -> tuple[CacheMount, ...] | None:
    """``cache = ["/var/cache/apt", { target, id, sharing = "shared" | "locked" }]``."""
    if not isinstance(value, list):
        reader.error(path, f"expected an array of paths or cache tables, got {describe_value(value)}")
        return None
    mounts: list[CacheMount] = []
    ok = len(reader.problems)
    for index, item in enumerate(value):
        here = (*path, index)
        if isinstance(item, str):
            target = _mount_path(reader, item, here)
            if target is not None:
                mounts.append(CacheMount(target=target))
            continue
        table = reader.table(item, here, _CACHE_KEYS, required=("target",), what="path or cache table")
        if table is None or "target" not in table:
            continue
        target = _mount_path(reader, table["target"], (*here, "target"))
        cache_id = None
        if "id" in table:
            cache_id = reader.string(table["id"], (*here, "id"))
            if cache_id is not None and ("\0" in cache_id or "\n" in cache_id):
                reader.error((*here, "id"), "the id holds a NUL or newline character")
                cache_id = None
        sharing = CacheSharing.SHARED
        if "sharing" in table:
            text = reader.string(table["sharing"], (*here, "sharing"))
            if text is not None and text not in CacheSharing.__members__.values():
                reader.error(
                    (*here, "sharing"), f"{text!r} is not a sharing mode", 'use "shared" or "locked"'
                )
            elif text is not None:
                sharing = CacheSharing(text)
        if target is not None:
            mounts.append(CacheMount(target=target, id=cache_id, sharing=sharing))
    _no_two(reader, path, [(mount.target, "target") for mount in mounts], "cache target")
    # One folder twice would be locked twice by one step: a "locked" one would wait for itself.
    _no_two(reader, path, [(mount.id or mount.target, "id") for mount in mounts], "cache folder (id)")
    return tuple(mounts) if len(reader.problems) == ok else None


def check_overlaps(
    reader: Reader, path: KeyPath, secrets: tuple[SecretMount, ...], cache: tuple[CacheMount, ...]
) -> None:
    """Refuse a secret mounted at or below one of the step's cache folders.

    Its mount point would be made in the folder kept on this machine, and of two mounts at one
    place buildah drops one.
    """
    for index, secret in enumerate(secrets):
        for mount in cache:
            if secret.path == mount.target or secret.path.startswith(mount.target.rstrip("/") + "/"):
                reader.error(
                    (*path, "secrets", index, "target"),
                    f"the secret {secret.id!r} at {secret.path} would be mounted inside the cache"
                    f" folder {mount.target}",
                    "give the secret a target outside the step's cache folders",
                )


def _mount_path(reader: Reader, value: object, path: KeyPath) -> str | None:
    """Where a mount goes in the container: absolute, normal, not the root."""
    text = reader.string(value, path)
    if text is None:
        return None
    if "\0" in text or "\n" in text or "," in text:
        reader.error(path, "the path holds a NUL, newline or comma character")
        return None
    if not text.startswith("/"):
        reader.error(path, f"{text!r} is not an absolute path", f"write it as {'/' + text!r}")
        return None
    normal = posixpath.normpath(text)
    if normal == "/" or ".." in normal.split("/"):
        reader.error(path, f"{text!r} cannot be mounted over", "name a directory or file below /")
        return None
    return normal


def _no_two(reader: Reader, path: KeyPath, values: list[tuple[str, str]], what: str) -> None:
    seen: set[str] = set()
    for index, (value, _) in enumerate(values):
        if value in seen:
            reader.error((*path, index), f"the {what} {value!r} is given twice in this step")
        seen.add(value)
