"""gpg through run.py (key checks, signatures, verification), gpg-agent over its socket.

gpg-agent is spoken to in its own protocol (Assuan) to sign a digest dualbuild computed.
Every call names its GNUPGHOME explicitly; temporary homes have their agent stopped afterwards.
"""

from __future__ import annotations

import os
import re
import shutil
import socket
import tempfile
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import BinaryIO

from dualbuild import run
from dualbuild.errors import CommandError, SigningError
from dualbuild.files import scratch_prefix


def gpg_env(gnupghome: Path | None) -> dict[str, str]:
    """The environment for gpg: the caller's, with GNUPGHOME when given."""
    env = dict(os.environ)
    if gnupghome is not None:
        env["GNUPGHOME"] = os.fspath(gnupghome)
    return env


@contextmanager
def temporary_home() -> Iterator[Path]:
    """A throwaway GNUPGHOME (short path: gpg-agent's socket path is limited to ~100 bytes)."""
    home = Path(tempfile.mkdtemp(prefix=scratch_prefix("gpg"), dir="/tmp"))
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


def verify_in_keyring(data: Path, signature: Path, gnupghome: Path | None = None) -> str:
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
            env=gpg_env(gnupghome),
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
    """``gpg --list-secret-keys --with-colons --with-keygrip`` records for ``key`` (empty if unknown)."""
    gpg = run.find_tool("gpg", "sign the ACI")
    result = run.run(
        [gpg, "--batch", "--with-colons", "--with-keygrip", "--list-secret-keys", "--", key],
        env=env,
        check=False,
    )
    if result.returncode != 0:
        return []
    return [line.split(":") for line in result.stdout.splitlines()]


# --- gpg-agent --------------------------------------------------------------------------------

# Assuan (the agent's protocol) escapes %, CR and LF in data lines, whose length is limited to
# 1000 bytes: a piece of 300 bytes stays under it even with every byte escaped.
_ESCAPE = re.compile(rb"[%\r\n]")
_UNESCAPE = re.compile(rb"%([0-9A-Fa-f]{2})")
_ASSUAN_PIECE = 300


def _escaped(match: re.Match[bytes]) -> bytes:
    return b"%%%02X" % match[0][0]


def agent_socket(gnupghome: Path | None) -> Path:
    """The socket of the gpg-agent serving ``gnupghome``, started if it was not running.

    Raises:
        CommandError: gpgconf failed (no agent can run for this home).
    """
    gpgconf = run.find_tool("gpgconf", "talk to gpg-agent")
    env = gpg_env(gnupghome)
    run.run([gpgconf, "--launch", "gpg-agent"], env=env)
    return Path(run.run([gpgconf, "--list-dirs", "agent-socket"], env=env).stdout.strip())


def agent_sign(
    socket_path: Path, gnupghome: Path | None, keygrip: str, digest: bytes, passphrase: str | None
) -> bytes:
    """Ask gpg-agent to sign a SHA-256 ``digest`` with the key ``keygrip``; its S-expression.

    A passphrase is handed over when the agent asks for it (loopback pinentry), through the
    socket only. Without one the agent uses its cache, or its pinentry. An agent that is no
    longer running (stopped since the key check) is started again, as gpg would.

    Raises:
        SigningError: the agent cannot be reached or refuses (unknown key, bad passphrase).
    """
    try:
        try:
            connection = _connect(socket_path)
        except (FileNotFoundError, ConnectionRefusedError):
            socket_path = agent_socket(gnupghome)
            connection = _connect(socket_path)
        with connection, connection.makefile("rb") as replies:
            session = _Assuan(connection, replies, passphrase)
            session.expect_ok()  # the greeting
            if passphrase is not None:
                session.command("OPTION pinentry-mode=loopback")
            session.command(f"SIGKEY {keygrip}")
            session.command(f"SETHASH 8 {digest.hex().upper()}")  # 8: SHA-256 (libgcrypt)
            return session.command("PKSIGN")
    except OSError as error:
        why = error.strerror or str(error)
        raise SigningError(f"gpg-agent at {socket_path} cannot be reached: {why}") from None
    except CommandError as error:
        raise SigningError(f"gpg-agent cannot be started: {error.output_tail.strip()}") from None


def _connect(socket_path: Path) -> socket.socket:
    connection = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        connection.connect(os.fspath(socket_path))
    except OSError:
        connection.close()
        raise
    return connection


class _Assuan:
    def __init__(self, connection: socket.socket, replies: BinaryIO, passphrase: str | None) -> None:
        self._send = connection.sendall
        self._replies = replies
        self._passphrase = passphrase

    def command(self, line: str) -> bytes:
        self._send(line.encode() + b"\n")
        return self.expect_ok()

    def expect_ok(self) -> bytes:
        """Read to the command's OK; its data lines, unescaped. INQUIREs are answered."""
        data = bytearray()
        while line := self._replies.readline():
            line = line.rstrip(b"\n")
            if line == b"OK" or line.startswith(b"OK "):
                return bytes(data)
            if line.startswith(b"ERR "):
                raise SigningError(f"gpg-agent refused: {line[4:].decode('utf-8', 'replace')}")
            if line.startswith(b"D "):
                data += _UNESCAPE.sub(lambda match: bytes([int(match[1], 16)]), line[2:])
            elif line.startswith(b"INQUIRE PASSPHRASE") and self._passphrase is not None:
                self._send_passphrase(self._passphrase.encode())
            elif line.startswith(b"INQUIRE "):
                self._send(b"END\n")  # e.g. PINENTRY_LAUNCHED: nothing to add
        raise SigningError("gpg-agent closed the connection")

    def _send_passphrase(self, secret: bytes) -> None:
        pieces = [secret[i : i + _ASSUAN_PIECE] for i in range(0, len(secret), _ASSUAN_PIECE)]
        self._send(b"".join(b"D " + _ESCAPE.sub(_escaped, piece) + b"\n" for piece in pieces) + b"END\n")
