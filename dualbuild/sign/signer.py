"""Signing the ACI while it is written: an armored detached OpenPGP signature → ``.aci.asc``.

For RSA and EdDSA keys dualbuild hashes the ACI itself while writing it and asks gpg-agent to
sign the digest (sign/openpgp.py frames the packet): gpg's own hashing ran at a quarter of
the speed and took CPU the export needed. That path is used only after a trial signature made
through it verifies with gpg (sign/keys.py); other keys, or an agent that cannot be used so
(no socket, a pinentry that needs a terminal), sign with ``gpg --detach-sign`` reading the
bytes as they are written.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import IO

from dualbuild import gpg, run
from dualbuild.errors import CommandError, SigningError
from dualbuild.files import atomic_output, atomic_path
from dualbuild.log import log
from dualbuild.sign import openpgp


@dataclass(frozen=True, kw_only=True)
class AgentKey:
    """The (sub)key gpg-agent signs with (keygrip, fingerprint, OpenPGP algorithm id), and where."""

    socket: Path
    keygrip: str
    fingerprint: str
    algorithm: int


@dataclass(frozen=True, kw_only=True)
class SigningKey:
    """A secret key checked to be able to sign; ``agent`` when its agent signs our digests."""

    selector: str
    fingerprint: str
    algorithm: str
    user_id: str
    gnupghome: Path | None
    passphrase: str | None = None
    agent: AgentKey | None = None

    def __repr__(self) -> str:
        # Never show the passphrase, not even in a debug dump.
        return f"SigningKey(fingerprint={self.fingerprint!r}, algorithm={self.algorithm!r})"


def sign_argv(
    key: SigningKey, output: Path, data: Path | None, passphrase_fd: int = 0
) -> tuple[list[str], bytes | None]:
    """The gpg argv, and the passphrase bytes for stdin when it is read from fd 0."""
    gpg_binary = run.find_tool("gpg", "sign the ACI")
    argv = [gpg_binary, "--batch", "--yes", "--armor", "--detach-sign", "--local-user", key.fingerprint]
    # gpg's SHA-256 hashes 1.5x as fast as the SHA-512 it picks for RSA keys (measured: 4.6 vs
    # 6.8 s per GiB); rkt's Go openpgp and every gpg verify it.
    argv += ["--digest-algo", "SHA256"]
    stdin = None
    if key.passphrase is not None:
        # The passphrase goes through a pipe, never the command line (which is logged).
        argv += ["--pinentry-mode", "loopback", "--passphrase-fd", str(passphrase_fd)]
        if passphrase_fd == 0:
            stdin = key.passphrase.encode() + b"\n"
    argv += ["--output", os.fspath(output)]
    if data is not None:
        argv.append(os.fspath(data))
    return argv, stdin


def sign_file(data: Path, key: SigningKey) -> Path:
    """Write ``data``.asc, an armored detached signature, atomically.

    Raises:
        SigningError: gpg failed; no signature file is left.
    """
    signature = data.with_name(data.name + ".asc")
    with signing_stream(data.name, signature, key) as signer, data.open("rb") as source:
        while chunk := source.read(1 << 20):
            signer.write(chunk)
    return signature


class _PipeSink:
    """The signer's stdin as a writer; a gpg that stopped reading becomes a SigningError."""

    def __init__(self, pipe: IO[bytes], name: str) -> None:
        self._pipe = pipe
        self._name = name

    def write(self, data: bytes | bytearray | memoryview, /) -> None:
        try:
            self._pipe.write(data)
        except BrokenPipeError:
            raise SigningError(f"signing {self._name} failed: gpg stopped reading its input") from None


@contextmanager
def signing_stream(
    data_name: str, signature: Path, key: SigningKey
) -> Iterator[openpgp.SignatureDraft | _PipeSink]:
    """Sign bytes while they are being written, so signing costs no pass over the file.

    The block's writes are hashed here (a key with ``agent``) or go to gpg's stdin (it runs on
    another core); leaving the block without an error has the digest signed by gpg-agent, or
    waits for gpg, and writes the armored detached signature to ``signature``. On an error
    gpg is stopped and no signature is left. The caller must write exactly the bytes of the
    file it signs, in order.

    Args:
        data_name: The signed file's name, for messages.
        signature: Where the ``.asc`` goes.
        key: A key checked by :func:`check_signing_key`.

    Raises:
        SigningError: gpg or gpg-agent failed.
    """
    if key.agent is None:
        with _gpg_signing_stream(data_name, signature, key) as pipe:
            yield pipe
        return
    draft = openpgp.SignatureDraft(
        algorithm=key.agent.algorithm, fingerprint=key.agent.fingerprint, created=int(time.time())
    )
    yield draft
    digest = draft.digest()
    try:
        answer = gpg.agent_sign(key.agent.socket, key.gnupghome, key.agent.keygrip, digest, key.passphrase)
        values = openpgp.signature_values(answer, key.agent.algorithm)
    except SigningError as error:
        raise SigningError(f"signing {data_name} failed: {error.message}", hint=error.hint) from None
    except ValueError as error:
        raise SigningError(f"signing {data_name} failed: gpg-agent answered no signature ({error})") from None
    with atomic_output(signature) as file:
        file.write(openpgp.armor(draft.packet(digest, values)).encode("ascii"))
    log.debug("signed %s with %s through gpg-agent", data_name, key.agent.fingerprint)


@contextmanager
def _gpg_signing_stream(data_name: str, signature: Path, key: SigningKey) -> Iterator[_PipeSink]:
    """Sign through gpg: it reads the data from its stdin while the block writes it there."""
    passphrase_read = None
    pass_fds: tuple[int, ...] = ()
    if key.passphrase is not None:
        # A pipe of its own (stdin carries the data); a passphrase fits its buffer.
        passphrase_read, passphrase_write = os.pipe()
        os.write(passphrase_write, key.passphrase.encode() + b"\n")
        os.close(passphrase_write)
        pass_fds = (passphrase_read,)
    try:
        with atomic_path(signature) as partial:
            argv, _ = sign_argv(key, partial, None, passphrase_fd=passphrase_read or 0)
            with run.stream_stdin(argv, env=gpg.gpg_env(key.gnupghome), pass_fds=pass_fds) as pipe:
                if passphrase_read is not None:
                    os.close(passphrase_read)
                    passphrase_read = None
                yield _PipeSink(pipe, data_name)
    except CommandError as error:
        raise SigningError(f"signing {data_name} failed: {error.output_tail.strip()}") from None
    finally:
        if passphrase_read is not None:
            os.close(passphrase_read)
    log.debug("signed %s with %s", data_name, key.fingerprint)
