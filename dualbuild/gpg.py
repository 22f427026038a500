"""gpg, driven through run.py: key checks, detached signatures, verification.

Every call names its GNUPGHOME explicitly; temporary homes have their agent stopped afterwards.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path

from dualbuild import run
from dualbuild.errors import CommandError, SigningError


def gpg_env(gnupghome: Path | None) -> dict[str, str]:
    """The environment for gpg: the caller's, with GNUPGHOME when given."""
    env = dict(os.environ)
    if gnupghome is not None:
        env["GNUPGHOME"] = os.fspath(gnupghome)
    return env


@contextmanager
def temporary_home() -> Iterator[Path]:
    """A throwaway GNUPGHOME (short path: gpg-agent's socket path is limited to ~100 bytes)."""
    home = Path(tempfile.mkdtemp(prefix="dbg-", dir="/tmp"))
    home.chmod(0o700)
    try:
        yield home
    finally:
        stop_agent(home)
        shutil.rmtree(home, ignore_errors=True)


def stop_agent(gnupghome: Path | None) -> None:
    """Stop the gpg-agent a home started, so no process outlives the build."""
    gpgconf = run.find_tool("gpgconf", "stop gpg-agent")
    run.run([gpgconf, "--kill", "all"], env=gpg_env(gnupghome), check=False)


def verify_detached(data: Path, signature: Path, keyring: Path) -> str:
    """Verify ``signature`` over ``data`` with only the keys in ``keyring`` (armored or binary).

    Returns:
        The fingerprint of the key that made the signature.

    Raises:
        SigningError: the signature is missing, bad, or by a key not in the keyring.
    """
    gpg = run.find_tool("gpg", "verify signatures")
    if not signature.exists():
        raise SigningError(
            f"{data}: no signature {signature.name} next to it", hint="--keyring needs the .asc"
        )
    with temporary_home() as home:
        env = gpg_env(home)
        try:
            run.run([gpg, "--batch", "--quiet", "--import", os.fspath(keyring)], env=env)
            result = run.run(
                [gpg, "--batch", "--status-fd", "1", "--verify", os.fspath(signature), os.fspath(data)],
                env=env,
            )
        except CommandError as error:
            raise SigningError(
                f"{data}: the signature does not verify with {keyring}\n{error.output_tail}"
            ) from None
    return _valid_fingerprint(result.stdout) or ""


def verify_in_keyring(data: Path, signature: Path) -> str:
    """Verify ``signature`` over ``data`` with the user's keyring ($GNUPGHOME).

    Raises:
        SigningError: the signature is missing, bad, or by an unknown key.
    """
    gpg = run.find_tool("gpg", "verify signatures")
    if not signature.exists():
        raise SigningError(f"{data.name}: no signature {signature.name} next to it")
    try:
        result = run.run(
            [gpg, "--batch", "--status-fd", "1", "--verify", os.fspath(signature), os.fspath(data)],
            env=gpg_env(None),
        )
    except CommandError as error:
        raise SigningError(
            f"{data.name}: the signature does not verify\n{error.output_tail}",
            hint="pass the publisher's public key with --keyring",
        ) from None
    return _valid_fingerprint(result.stdout) or ""


def _valid_fingerprint(status: str) -> str | None:
    for line in status.splitlines():
        parts = line.split()
        if len(parts) > 2 and parts[:2] == ["[GNUPG:]", "VALIDSIG"]:
            return parts[2]
    return None


def key_status(key: str, env: Mapping[str, str]) -> list[list[str]]:
    """``gpg --list-secret-keys --with-colons`` records for ``key`` (empty if unknown)."""
    gpg = run.find_tool("gpg", "sign the ACI")
    result = run.run([gpg, "--batch", "--with-colons", "--list-secret-keys", "--", key], env=env, check=False)
    if result.returncode != 0:
        return []
    return [line.split(":") for line in result.stdout.splitlines()]
