"""Signing the ACI: an armored detached OpenPGP signature over the exact .aci bytes → ``.aci.asc``.

The key is checked before the build starts (it exists, can sign, is not expired), so a release
never fails after minutes of building because of a key problem. rkt verifies only RSA and DSA
signatures (appc.md §3), so another algorithm gets a warning.

For RSA and EdDSA keys dualbuild hashes the ACI itself while writing it and asks gpg-agent to
sign the digest (dualbuild.openpgp frames the packet): gpg's own hashing ran at a quarter of
the speed and took CPU the export needed. That path is used only after a trial signature made
through it verifies with gpg; other keys, or an agent that cannot be used so (no socket, a
pinentry that needs a terminal), sign with ``gpg --detach-sign`` reading the bytes as they are
written, as before.
"""

from __future__ import annotations

import dataclasses
import itertools
import os
import tempfile
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import IO

from dualbuild import gpg, run
from dualbuild.errors import CommandError, SigningError, ToolNotFoundError
from dualbuild.files import atomic_output
from dualbuild.log import log
from dualbuild.sign import openpgp

# OpenPGP public-key algorithm ids (RFC 4880 §9.1, RFC 9580) as gpg's --with-colons prints them.
ALGORITHMS = {
    "1": "RSA",
    "2": "RSA",
    "3": "RSA",
    "17": "DSA",
    "16": "ElGamal",
    "18": "ECDH",
    "19": "ECDSA",
    "22": "EdDSA",
}
RKT_ALGORITHMS = ("RSA", "DSA")
KEY_ENV = "DUALBUILD_SIGN_KEY"
PASSPHRASE_ENV = "DUALBUILD_SIGN_PASSPHRASE"


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


def choose_key(option: str | None, environ: Mapping[str, str], recipe_key: str | None) -> str | None:
    """The key to sign with: --sign-key, then $DUALBUILD_SIGN_KEY, then [sign].key."""
    return option or environ.get(KEY_ENV) or recipe_key


def check_signing_key(
    selector: str, *, gnupghome: Path | None = None, passphrase: str | None = None
) -> tuple[SigningKey, list[str]]:
    """Check that ``selector`` names a usable secret signing key; return it and warnings.

    Raises:
        SigningError: gpg is missing, the key is unknown, expired, revoked, cannot sign, or
            its passphrase is wrong (a trial signature is made).
    """
    env = gpg.gpg_env(gnupghome)
    try:
        run.find_tool("gpg", "sign the ACI")
    except ToolNotFoundError as error:
        raise SigningError(str(error), hint="install gnupg, or build with --no-sign") from None
    records = gpg.key_status(selector, env)
    primary = next((r for r in records if r[0] == "sec"), None)
    if primary is None:
        raise SigningError(
            f"no secret key {selector!r} in the keyring{_where(gnupghome)}",
            hint="create one with `dualbuild key create`, set GNUPGHOME, or build with --no-sign",
        )
    if sum(1 for r in records if r[0] == "sec") > 1:
        raise SigningError(f"{selector!r} matches more than one secret key", hint="give the full fingerprint")
    validity = primary[1]
    if validity in ("e", "r"):
        state = "expired" if validity == "e" else "revoked"
        raise SigningError(f"signing key {selector!r} is {state}", hint="extend or replace it, then retry")
    capabilities = primary[11] if len(primary) > 11 else ""
    if "S" not in capabilities:
        raise SigningError(f"key {selector!r} cannot sign (capabilities: {capabilities or 'none'})")
    fingerprint = next((r[9] for r in records if r[0] == "fpr"), selector)
    user_id = next((r[9] for r in records if r[0] == "uid"), "")
    algorithm = ALGORITHMS.get(primary[3], f"algorithm {primary[3]}")
    warnings = []
    if algorithm not in RKT_ALGORITHMS:
        warnings.append(
            f"signing key {fingerprint} is {algorithm}: rkt verifies only RSA and DSA signatures, "
            "so rkt users cannot verify this ACI (create an RSA key with `dualbuild key create`)"
        )
    key = SigningKey(
        selector=selector, fingerprint=fingerprint, algorithm=algorithm, user_id=user_id,
        gnupghome=gnupghome, passphrase=passphrase,
    )  # fmt: skip
    agent_key = _agent_key(key, records)
    if agent_key is not None:
        return dataclasses.replace(key, agent=agent_key), warnings
    _trial_signature(key)
    return key, warnings


def _agent_key(key: SigningKey, records: Sequence[Sequence[str]]) -> AgentKey | None:
    """The key as gpg-agent signs with it, if a trial signature made so verifies; else None.

    The signing key is the one gpg picks for ``--local-user``: the newest usable signing
    subkey whose secret is here, else the primary key.
    """
    candidates = []
    for index, record in enumerate(records):
        if record[0] not in ("sec", "ssb") or len(record) < 15:
            continue
        # Lower-case capabilities are the (sub)key's own. Field 15 is "+" for a secret here, a
        # card's serial number (the agent signs with cards too), or "#" for none.
        usable = record[1] not in ("e", "r", "d", "i") and "s" in record[11]
        if usable and record[14] not in ("", "#"):
            following = records[index + 1 : index + 3]
            fingerprint = next((r[9] for r in following if r[0] == "fpr"), None)
            keygrip = next((r[9] for r in following if r[0] == "grp"), None)
            if fingerprint and keygrip and record[3].isdigit():
                candidates.append(
                    (record[0] == "ssb", int(record[5] or 0), fingerprint, keygrip, int(record[3]))
                )
    if not candidates:
        return None
    _, _, fingerprint, keygrip, algorithm = max(candidates)
    if algorithm not in openpgp.SIGNED_ALGORITHMS:
        return None
    try:
        socket = gpg.agent_socket(key.gnupghome)
        agent_key = AgentKey(socket=socket, keygrip=keygrip, fingerprint=fingerprint, algorithm=algorithm)
        with tempfile.TemporaryDirectory(prefix="dualbuild-sign-") as scratch:
            probe = _probe(Path(scratch))
            signature = sign_file(probe, dataclasses.replace(key, agent=agent_key))
            gpg.verify_in_keyring(probe, signature, key.gnupghome)
    except (SigningError, CommandError) as error:
        log.debug("gpg signs %s itself: signing through gpg-agent failed (%s)", key.fingerprint, error)
        return None
    return agent_key


def _where(gnupghome: Path | None) -> str:
    home = gnupghome or os.environ.get("GNUPGHOME")
    return f" ({home})" if home else ""


def _sign_argv(
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


def _trial_signature(key: SigningKey) -> None:
    with gpg.temporary_home() as scratch:
        probe = _probe(scratch)
        argv, stdin = _sign_argv(key, scratch / "probe.asc", probe)
        try:
            run.run(argv, env=gpg.gpg_env(key.gnupghome), input=stdin)
        except CommandError as error:
            raise SigningError(
                f"key {key.fingerprint} cannot sign here: {error.output_tail.strip() or 'gpg failed'}",
                hint=f"a protected key needs its passphrase in ${PASSPHRASE_ENV}",
            ) from None


def _probe(directory: Path) -> Path:
    """A small file to make a trial signature of."""
    probe = directory / "probe"
    probe.write_bytes(b"dualbuild signing check\n")
    return probe


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
    partial = signature.with_name(f".{signature.name}.{os.getpid()}.tmp")
    passphrase_read = None
    pass_fds: tuple[int, ...] = ()
    if key.passphrase is not None:
        # A pipe of its own (stdin carries the data); a passphrase fits its buffer.
        passphrase_read, passphrase_write = os.pipe()
        os.write(passphrase_write, key.passphrase.encode() + b"\n")
        os.close(passphrase_write)
        pass_fds = (passphrase_read,)
    argv, _ = _sign_argv(key, partial, None, passphrase_fd=passphrase_read or 0)
    try:
        with run.stream_stdin(argv, env=gpg.gpg_env(key.gnupghome), pass_fds=pass_fds) as pipe:
            if passphrase_read is not None:
                os.close(passphrase_read)
                passphrase_read = None
            yield _PipeSink(pipe, data_name)
        partial.replace(signature)
    except CommandError as error:
        raise SigningError(f"signing {data_name} failed: {error.output_tail.strip()}") from None
    finally:
        if passphrase_read is not None:
            os.close(passphrase_read)
        partial.unlink(missing_ok=True)
    log.debug("signed %s with %s", data_name, key.fingerprint)


def create_key(name: str, email: str, *, gnupghome: Path | None = None, comment: str = "") -> str:
    """Create an RSA 4096 signing key without a passphrase; return its fingerprint.

    Raises:
        SigningError: gpg failed.
    """
    gpg_binary = run.find_tool("gpg", "create a signing key")
    user_id = f"{name} ({comment}) <{email}>" if comment else f"{name} <{email}>"
    env = gpg.gpg_env(gnupghome)
    if gnupghome is not None:
        gnupghome.mkdir(mode=0o700, parents=True, exist_ok=True)
    try:
        run.run(
            [
                gpg_binary,
                "--batch",
                "--passphrase",
                "",
                "--quick-generate-key",
                user_id,
                "rsa4096",
                "sign",
                "0",
            ],
            env=env,
        )
    except CommandError as error:
        raise SigningError(f"creating the key failed: {error.output_tail.strip()}") from None
    records = gpg.key_status(f"={user_id}", env)
    # The fingerprint record right after each primary key ("sec"); the newest key is last.
    fingerprints = [b[9] for a, b in itertools.pairwise(records) if a[0] == "sec" and b[0] == "fpr"]
    if not fingerprints:
        raise SigningError(f"gpg made no key for {user_id!r}")
    return fingerprints[-1]


def export_public_key(fingerprint: str, destination: Path, *, gnupghome: Path | None = None) -> None:
    """Write the armored public key (one key per file, as appc discovery expects).

    Raises:
        SigningError: the keyring does not hold that key.
    """
    gpg_binary = run.find_tool("gpg", "export a public key")
    result = run.run([gpg_binary, "--batch", "--armor", "--export", fingerprint], env=gpg.gpg_env(gnupghome))
    # gpg exits 0 and prints nothing for a key it does not have.
    if "BEGIN PGP PUBLIC KEY BLOCK" not in result.stdout:
        raise SigningError(f"no public key {fingerprint} in the keyring{_where(gnupghome)}")
    destination.write_text(result.stdout)
