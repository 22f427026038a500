"""Signing keys: checked before a build starts, created, and their public half exported.

The key is checked before the build starts (it exists, can sign, is not expired, its
passphrase works), so a release never fails after minutes of building because of a key
problem. rkt verifies only RSA and DSA signatures (appc.md §3), so another algorithm gets a
warning.
"""

from __future__ import annotations

import dataclasses
import itertools
from collections.abc import Sequence
from pathlib import Path

from dualbuild import gpg, run
from dualbuild.errors import CommandError, SigningError, ToolNotFoundError
from dualbuild.files import scratch_directory, write_atomically
from dualbuild.log import log
from dualbuild.settings import PASSPHRASE_ENV
from dualbuild.sign import openpgp
from dualbuild.sign.signer import AgentKey, SigningKey, sign_argv, sign_file

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
        with scratch_directory("sign") as scratch:
            probe = _probe(scratch)
            signature = sign_file(probe, dataclasses.replace(key, agent=agent_key))
            gpg.verify_in_keyring(probe, signature, key.gnupghome)
    except (SigningError, CommandError) as error:
        log.debug("gpg signs %s itself: signing through gpg-agent failed (%s)", key.fingerprint, error)
        return None
    return agent_key


def _where(gnupghome: Path | None) -> str:
    return f" ({gnupghome})" if gnupghome else ""


def _trial_signature(key: SigningKey) -> None:
    with gpg.temporary_home() as scratch:
        probe = _probe(scratch)
        argv, stdin = sign_argv(key, scratch / "probe.asc", probe)
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


def export_public_key(
    fingerprint: str, destination: Path, *, gnupghome: Path | None = None, key_file: Path | None = None
) -> str:
    """Write the armored public key of ``fingerprint``, that one key alone; return its algorithm.

    From ``key_file`` when given (publishing on a machine without the secret key), else from
    the keyring. It is re-exported from a keyring holding nothing else: one armored key per
    file, as rkt reads only the first key of a file (appc.md §3).

    Raises:
        SigningError: the keyring (or the file) does not hold that key.
    """
    gpg_binary = run.find_tool("gpg", "export a public key")
    with gpg.temporary_home() as home:
        source = key_file
        if source is None:
            exported = run.run(
                [gpg_binary, "--batch", "--armor", "--export", fingerprint], env=gpg.gpg_env(gnupghome)
            ).stdout
            # gpg exits 0 and prints nothing for a key it does not have.
            if "BEGIN PGP PUBLIC KEY BLOCK" not in exported:
                raise SigningError(
                    f"the signing key {fingerprint} is not in the keyring{_where(gnupghome)}",
                    hint=f"pass --public-key FILE (made with `gpg --armor --export {fingerprint}`)",
                )
            source = home / "exported.asc"
            source.write_text(exported)
        env = gpg.gpg_env(home)
        imported = run.run([gpg_binary, "--batch", "--quiet", "--import", source], env=env, check=False)
        listing = run.run(
            [gpg_binary, "--batch", "--with-colons", "--list-keys", "--", fingerprint], env=env, check=False
        )
        if imported.returncode != 0 or listing.returncode != 0:
            raise SigningError(
                f"{source} does not hold the signing key {fingerprint}",
                hint=f"export it with `gpg --armor --export {fingerprint}`",
            )
        primary = next(line.split(":") for line in listing.stdout.splitlines() if line.startswith("pub:"))
        armored = run.run([gpg_binary, "--batch", "--armor", "--export", fingerprint], env=env).stdout
    write_atomically(destination, armored.encode())
    return ALGORITHMS.get(primary[3], f"algorithm {primary[3]}")
