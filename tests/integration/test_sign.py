"""Signing with real gpg: key checks before the build, detached signatures, verification."""

from __future__ import annotations

import dataclasses
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from dualbuild.errors import SigningError
from dualbuild.gpg import agent_sign, gpg_env, stop_agent, verify_detached
from dualbuild.sign import openpgp
from dualbuild.sign.keys import check_signing_key, create_key, export_public_key
from dualbuild.sign.signer import sign_file, signing_stream
from tests.support import require_tools


@pytest.fixture
def home() -> Iterator[Path]:
    require_tools("gpg", "gpgconf")

    # Short path: gpg-agent's socket path has a length limit.
    path = Path(tempfile.mkdtemp(prefix="dbk-", dir="/tmp"))
    path.chmod(0o700)
    yield path
    stop_agent(path)
    subprocess.run(["rm", "-rf", str(path)], check=False)


def gpg(home: Path, *args: str, input: bytes | None = None) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(
        ["gpg", "--batch", *args], env=gpg_env(home), input=input, capture_output=True, check=True
    )


def unattended(passphrase: str) -> list[str]:
    """gpg options that give a new key ``passphrase`` without asking (empty: none)."""
    return ["--passphrase", passphrase, "--pinentry-mode", "loopback"]


def quick_key(
    home: Path, user_id: str, algo: str = "rsa2048", expire: str = "0", passphrase: str = ""
) -> str:
    gpg(home, *unattended(passphrase), "--quick-generate-key", user_id, algo, "sign", expire)
    out = gpg(home, "--with-colons", "--list-secret-keys", f"={user_id}").stdout.decode()
    return next(line.split(":")[9] for line in out.splitlines() if line.startswith("fpr"))


def test_create_key_check_sign_and_verify_with_only_the_public_key(home: Path, tmp_path: Path) -> None:
    fingerprint = create_key("Release Bot", "release@example.com", gnupghome=home)
    key, warnings = check_signing_key(fingerprint, gnupghome=home)
    assert key.fingerprint == fingerprint
    assert key.algorithm == "RSA"
    assert warnings == []
    data = tmp_path / "image.aci"
    data.write_bytes(b"\x1f\x8b pretend aci bytes" * 100)
    signature = sign_file(data, key)
    assert signature.name == "image.aci.asc"
    assert signature.read_text().startswith("-----BEGIN PGP SIGNATURE-----")
    public = tmp_path / "pubkey.asc"
    export_public_key(fingerprint, public, gnupghome=home)
    assert verify_detached(data, signature, public) == fingerprint
    data.write_bytes(data.read_bytes() + b"x")
    with pytest.raises(SigningError, match="does not verify"):
        verify_detached(data, signature, public)
    assert not list(tmp_path.glob(".tmp-*"))


def test_unknown_key_is_refused(home: Path) -> None:
    with pytest.raises(SigningError, match=r"no secret key 'nobody@example\.com'") as caught:
        check_signing_key("nobody@example.com", gnupghome=home)
    assert caught.value.exit_code == 4


def test_expired_key_is_refused(home: Path) -> None:
    fingerprint = quick_key(home, "Old <old@example.com>", expire="seconds=1")

    time.sleep(2)
    with pytest.raises(SigningError, match="expired"):
        check_signing_key(fingerprint, gnupghome=home)


def test_wrong_or_missing_passphrase_is_refused_up_front(home: Path) -> None:
    fingerprint = quick_key(home, "Locked <locked@example.com>", passphrase="right horse")
    stop_agent(home)  # forget any cached passphrase
    with pytest.raises(SigningError, match="cannot sign here"):
        check_signing_key(fingerprint, gnupghome=home, passphrase="wrong")
    key, _ = check_signing_key(fingerprint, gnupghome=home, passphrase="right horse")
    assert "right horse" not in repr(key)


def test_non_rsa_key_gets_a_warning(home: Path) -> None:
    fingerprint = quick_key(home, "Ed <ed@example.com>", algo="ed25519")
    key, warnings = check_signing_key(fingerprint, gnupghome=home)
    assert key.algorithm == "EdDSA"
    assert any("rkt verifies only RSA and DSA" in w for w in warnings)


def test_signing_while_writing_gives_a_signature_of_exactly_those_bytes(home: Path, tmp_path: Path) -> None:
    fingerprint = quick_key(home, "Locked <stream@example.com>", passphrase="right horse")
    key, _ = check_signing_key(fingerprint, gnupghome=home, passphrase="right horse")
    stop_agent(home)  # the passphrase must come through its own pipe, not the agent's cache
    data = tmp_path / "image.aci"
    signature = tmp_path / "image.aci.asc"
    pieces = [bytes([n]) * (n * 40_000) for n in range(1, 40)]
    with signing_stream(data.name, signature, key) as signer:
        for piece in pieces:
            signer.write(piece)
    data.write_bytes(b"".join(pieces))
    public = tmp_path / "pubkey.asc"
    export_public_key(fingerprint, public, gnupghome=home)
    assert verify_detached(data, signature, public) == fingerprint
    assert sorted(p.name for p in tmp_path.iterdir()) == ["image.aci", "image.aci.asc", "pubkey.asc"]
    packets = gpg(home, "--list-packets", str(signature)).stdout.decode()
    assert "digest algo 8," in packets  # SHA-256 (RFC 4880 §9.4)


def test_a_failed_write_leaves_no_signature_and_stops_gpg(home: Path, tmp_path: Path) -> None:
    key, _ = check_signing_key(create_key("Bot", "bot@example.com", gnupghome=home), gnupghome=home)
    signature = tmp_path / "image.aci.asc"

    def failing_emit() -> None:
        with signing_stream("image.aci", signature, key) as signer:
            signer.write(b"half an image")
            raise RuntimeError("emitter failed")

    with pytest.raises(RuntimeError, match="emitter failed"):
        failing_emit()
    assert list(tmp_path.iterdir()) == []
    assert "--detach-sign" not in subprocess.run(["ps", "-eo", "args"], capture_output=True, text=True).stdout


def test_gpg_failing_mid_stream_is_a_signing_error(home: Path, tmp_path: Path) -> None:
    key, _ = check_signing_key(create_key("Gone", "gone@example.com", gnupghome=home), gnupghome=home)
    signature = tmp_path / "image.aci.asc"
    # The key disappears after the check: gpg starts, then fails to sign.
    gpg(home, "--yes", "--delete-secret-and-public-key", key.fingerprint)

    def emit() -> None:
        with signing_stream("image.aci", signature, key) as signer:
            for _ in range(64):
                signer.write(b"x" * (1 << 20))

    with pytest.raises(SigningError, match=r"signing image\.aci failed"):
        emit()
    assert list(tmp_path.iterdir()) == []


def add_subkey(home: Path, fingerprint: str, algo: str, passphrase: str = "") -> str:
    gpg(home, *unattended(passphrase), "--quick-add-key", fingerprint, algo, "sign")
    out = gpg(home, "--with-colons", "--list-secret-keys", fingerprint).stdout.decode()
    return [line.split(":")[9] for line in out.splitlines() if line.startswith("fpr")][-1]


@pytest.mark.parametrize("subkey", [None, "ed25519"])
def test_agent_signature_is_byte_identical_to_gpgs(home: Path, tmp_path: Path, subkey: str | None) -> None:
    fingerprint = quick_key(home, "Same <same@example.com>")
    signer_fingerprint = add_subkey(home, fingerprint, subkey) if subkey else fingerprint
    key, _ = check_signing_key(fingerprint, gnupghome=home)
    assert key.agent is not None
    # gpg signs with the newest signing subkey; so does the agent path.
    assert key.agent.fingerprint == signer_fingerprint
    data = tmp_path / "image.aci"
    data.write_bytes(b"".join(bytes([n]) * 70_000 for n in range(50)))
    created = int(time.time()) + 5
    expected = tmp_path / "gpg.asc"
    faked = time.strftime("%Y%m%dT%H%M%S!", time.gmtime(created))
    gpg(home, "--armor", "--detach-sign", "--digest-algo", "SHA256", "--local-user", fingerprint,
        "--faked-system-time", faked, "--output", str(expected), str(data))  # fmt: skip
    agent_key = key.agent
    algorithm, signer = agent_key.algorithm, agent_key.fingerprint
    draft = openpgp.SignatureDraft(algorithm=algorithm, fingerprint=signer, created=created)
    with data.open("rb") as source:
        while chunk := source.read(100_000):
            draft.write(chunk)
    digest = draft.digest()
    answer = agent_sign(agent_key.socket, home, agent_key.keygrip, digest, None)
    values = openpgp.signature_values(answer, algorithm)
    # RSA (PKCS #1 v1.5) and Ed25519 signatures are deterministic: same digest, same bytes.
    assert openpgp.armor(draft.packet(digest, values)) == expected.read_text()


def test_a_dsa_key_is_signed_by_gpg_itself(home: Path, tmp_path: Path) -> None:
    fingerprint = quick_key(home, "Dsa <dsa@example.com>", algo="dsa2048")
    key, warnings = check_signing_key(fingerprint, gnupghome=home)
    assert key.agent is None
    assert warnings == []
    data = tmp_path / "image.aci"
    signature = tmp_path / "image.aci.asc"
    with signing_stream(data.name, signature, key) as signer:
        signer.write(b"dsa-signed bytes")
    data.write_bytes(b"dsa-signed bytes")
    public = tmp_path / "pubkey.asc"
    export_public_key(fingerprint, public, gnupghome=home)
    assert verify_detached(data, signature, public) == fingerprint


def test_the_agent_refusing_is_a_signing_error_and_leaves_nothing(home: Path, tmp_path: Path) -> None:
    fingerprint = quick_key(home, "Locked <refuse@example.com>", passphrase="right horse")
    key, _ = check_signing_key(fingerprint, gnupghome=home, passphrase="right horse")
    assert key.agent is not None
    stop_agent(home)  # forget the cached passphrase: the wrong one below is asked for
    wrong = dataclasses.replace(key, passphrase="wrong horse")
    signature = tmp_path / "image.aci.asc"
    refused = r"signing image\.aci failed: gpg-agent refused: .*Bad passphrase"
    with pytest.raises(SigningError, match=refused), signing_stream("image.aci", signature, wrong) as signer:
        signer.write(b"bytes")
    assert list(tmp_path.iterdir()) == []
