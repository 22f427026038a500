"""Build secrets: checked before the build, mounted for one run step, never written to the tree.

A secret's bytes are read from its file or variable only when a step needs them, written to a
file of mode 0400 in a scratch folder on a memory filesystem (/dev/shm; the temporary folder
on a system without one), bind-mounted read-only
for that step, and removed with the build (or, after SIGKILL, by the next one: the folder is
``dualbuild-secrets-PID-…``). They never enter a cache key: a step that asks to rerun when a
secret changes is keyed by an HMAC under a key only this machine holds, so the key says nothing
of a short secret.
"""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import os
import secrets as random_source
import shutil
import stat
import tempfile
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

from dualbuild.errors import BuildError, Problem, RecipeError
from dualbuild.files import scratch_prefix, temporary_name, write_atomically
from dualbuild.leftovers import SECRETS_KIND, SECRETS_SCRATCH
from dualbuild.plan import BuildPlan
from dualbuild.recipe.model import RunStep
from dualbuild.settings import SecretSource

# BuildKit's limit: a secret is a token or a config file, never a payload.
MAX_SECRET_BYTES = 500 * 1024
_DIGEST_KEY = "secret-digest.key"
_KEY_BYTES = 32


def secret_ids(plan: BuildPlan) -> set[str]:
    """The ids of every secret a run step of the plan reads."""
    return {
        secret.id
        for stage in plan.stages
        for step in stage.steps
        if isinstance(step.step, RunStep)
        for secret in step.step.secrets
    }


def check_secrets(
    ids: Iterable[str], sources: Mapping[str, SecretSource], context: Path, environ: Mapping[str, str]
) -> None:
    """Every secret ``ids`` names can be read: before anything is built.

    Raises:
        RecipeError: a secret has no source, its file or variable is missing, too large, or a
            context file that leads out of the context (exit 2, where it was named).
    """
    problems: list[Problem] = []
    for secret_id in sorted(set(ids)):
        source = sources[secret_id]
        try:
            read_secret(source, context, environ)
        except RecipeError as error:
            problems.extend(error.problems)
    if problems:
        raise RecipeError(problems)


def read_secret(source: SecretSource, context: Path, environ: Mapping[str, str]) -> bytes:
    """The secret's bytes.

    Raises:
        RecipeError: see check_secrets.
    """
    if source.env is not None:
        if source.env not in environ:
            raise RecipeError.of(
                source.problem(
                    f"secret {source.id!r}: the variable {source.env} is not set",
                    f"export {source.env}, or pass --secret id={source.id},src=FILE",
                )
            )
        data = os.fsencode(environ[source.env])
    elif source.file is not None:
        data = _read_file(source, context)
    else:
        raise RecipeError.of(
            source.problem(
                f"secret {source.id!r} has no source",
                f"add src or env, or pass --secret id={source.id},src=FILE (or env=VAR)",
            )
        )
    if len(data) > MAX_SECRET_BYTES:
        raise RecipeError.of(
            source.problem(
                f"secret {source.id!r} holds {len(data)} bytes, more than {MAX_SECRET_BYTES}",
                "a secret is a token or a small file; copy larger files in a build step",
            )
        )
    return data


def _read_file(source: SecretSource, context: Path) -> bytes:
    assert source.file is not None
    real = Path(os.path.realpath(source.file))
    # The recipe's files are the context's (symlinks included); the command line names any.
    if source.named != "--secret" and not real.is_relative_to(os.path.realpath(context)):
        raise RecipeError.of(
            source.problem(
                f"secret {source.id!r}: {source.file} leads out of the build context (-> {real})",
                f"pass a file outside the context on the command line: --secret id={source.id},src={real}",
            )
        )
    try:
        fd = os.open(real, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC | os.O_NOCTTY)
    except OSError as error:
        raise RecipeError.of(
            source.problem(
                f"secret {source.id!r}: cannot read {source.file}: {error.strerror or error}",
                "check the path (a recipe's src is relative to the build context)",
            )
        ) from None
    with os.fdopen(fd, "rb") as file:
        if not stat.S_ISREG(os.fstat(file.fileno()).st_mode):
            raise RecipeError.of(
                source.problem(f"secret {source.id!r}: {source.file} is not a regular file", "name a file")
            )
        return file.read(MAX_SECRET_BYTES + 1)


def secret_digest(cache_dir: Path, data: bytes) -> str:
    """A digest of a secret that only this machine can make (HMAC-SHA256 under a key of its own)."""
    return hmac.new(_digest_key(cache_dir), data, hashlib.sha256).hexdigest()


def _digest_key(cache_dir: Path) -> bytes:
    """This machine's key: made once, whole (linked into place), never replaced while it is good."""
    path = cache_dir / _DIGEST_KEY
    for _ in range(3):
        with contextlib.suppress(FileNotFoundError):
            key = path.read_bytes()
            if len(key) == _KEY_BYTES:
                return key
            path.unlink()  # cut short (a full disk, an old bug): the next one makes it again
        cache_dir.mkdir(parents=True, exist_ok=True)
        temporary = temporary_name(path)
        fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
        try:
            with os.fdopen(fd, "wb") as file:
                file.write(random_source.token_bytes(_KEY_BYTES))
                file.flush()
                os.fsync(file.fileno())
            with contextlib.suppress(FileExistsError):  # another build made it first: theirs counts
                os.link(temporary, path)
        finally:
            temporary.unlink(missing_ok=True)
    raise BuildError(
        f"cannot make the secret digest key {path}", hint="check that the cache folder is writable"
    )


@dataclass
class SecretFiles:
    """This build's secrets as files for bind mounts, made on first use, removed by close()."""

    sources: Mapping[str, SecretSource]
    context: Path
    environ: Mapping[str, str] = field(default_factory=lambda: os.environ)
    folder: Path | None = None

    def path(self, secret_id: str) -> Path:
        """A file of mode 0400 holding the secret.

        Raises:
            RecipeError: its file or variable went since the build was checked.
        """
        if self.folder is None:
            SECRETS_SCRATCH.mkdir(parents=True, exist_ok=True)
            self.folder = Path(tempfile.mkdtemp(prefix=scratch_prefix(SECRETS_KIND), dir=SECRETS_SCRATCH))
        path = self.folder / secret_id
        if not path.exists():
            write_atomically(
                path, read_secret(self.sources[secret_id], self.context, self.environ), mode=0o400
            )
        return path

    def close(self) -> None:
        """Remove every secret file."""
        if self.folder is not None:
            shutil.rmtree(self.folder, ignore_errors=True)
            self.folder = None
