"""OpenPGP framing: the armor checksum, the agent's S-expressions, the packet's rules.

The byte-for-byte comparison with gpg's own signatures is in test_sign.py (it needs gpg).
"""

from __future__ import annotations

import base64

import pytest

from dualbuild.sign import openpgp

FINGERPRINT = "8DE66325106622CE43AD1910A6ECEB1CEF2E4B61"


def test_crc24_is_the_openpgp_checksum() -> None:
    assert openpgp.crc24(b"") == 0xB704CE  # the initial value (RFC 4880 §6.1)
    assert openpgp.crc24(b"123456789") == 0x21CF02  # CRC-24/OPENPGP check value


def test_armor_wraps_at_64_columns_and_ends_with_the_checksum() -> None:
    packet = bytes(range(256)) * 2
    lines = openpgp.armor(packet).splitlines()
    assert lines[:2] == ["-----BEGIN PGP SIGNATURE-----", ""]
    assert lines[-1] == "-----END PGP SIGNATURE-----"
    body = lines[2:-2]
    assert all(len(line) == 64 for line in body[:-1])
    assert base64.b64decode("".join(body)) == packet
    assert lines[-2] == "=" + base64.b64encode(openpgp.crc24(packet).to_bytes(3, "big")).decode()


def test_signature_values_are_read_from_the_agents_answer() -> None:
    rsa = b"(7:sig-val(3:rsa(1:s3:\x01\x00\x01)))"
    assert openpgp.signature_values(rsa, openpgp.RSA) == [65537]
    eddsa = b"(7:sig-val(5:eddsa(1:r2:\x00\x05)(1:s1:\x07)))"
    assert openpgp.signature_values(eddsa, openpgp.EDDSA) == [5, 7]


@pytest.mark.parametrize(
    "answer",
    [
        b"",
        b"(7:sig-val(3:rsa(1:s3:\x01\x00",  # truncated
        b"(7:sig-val(3:rsa(1:s9:\x01)))",  # a length past the end
        b"(6:public(3:rsa(1:s1:\x01)))",  # not a signature
        b"(7:sig-val(3:rsa(1:r1:\x01)))",  # no s
        b"(7:sig-val(3:rsa(1:s1:\x01)))trailing",
    ],
)
def test_a_malformed_answer_is_refused(answer: bytes) -> None:
    with pytest.raises(ValueError, match=r"S-expression|lacks"):
        openpgp.signature_values(answer, openpgp.RSA)


def test_the_digest_covers_the_data_and_the_hashed_part() -> None:
    first = openpgp.SignatureDraft(algorithm=openpgp.RSA, fingerprint=FINGERPRINT, created=1)
    second = openpgp.SignatureDraft(algorithm=openpgp.RSA, fingerprint=FINGERPRINT, created=1)
    later = openpgp.SignatureDraft(algorithm=openpgp.RSA, fingerprint=FINGERPRINT, created=2)
    for draft in (first, second, later):
        draft.write(b"the same data")
    assert first.digest() == second.digest()
    assert first.digest() != later.digest()  # the creation time is signed too
    second.write(b"!")
    assert first.digest() != second.digest()
    # Old-format signature packet (tag 2) with a two-octet length, as gpg writes an RSA 2048
    # signature; then a version 4 signature of a binary document, SHA-256.
    packet = first.packet(first.digest(), [(1 << 2047) + 1])
    assert packet[0] == 0x80 | 2 << 2 | 1
    assert int.from_bytes(packet[1:3], "big") == len(packet) - 3
    assert packet[3:7] == bytes([4, 0x00, openpgp.RSA, openpgp.HASH_SHA256])
    assert packet[-258:-256] == (2048).to_bytes(2, "big")  # the MPI's bit count


def test_only_framed_algorithms_and_v4_fingerprints_are_accepted() -> None:
    with pytest.raises(ValueError, match="algorithm 17"):
        openpgp.SignatureDraft(algorithm=17, fingerprint=FINGERPRINT, created=0)
    with pytest.raises(ValueError, match="v4 fingerprint"):
        openpgp.SignatureDraft(algorithm=openpgp.RSA, fingerprint="ABCD", created=0)
    draft = openpgp.SignatureDraft(algorithm=openpgp.EDDSA, fingerprint=FINGERPRINT, created=0)
    with pytest.raises(ValueError, match="number of signature values"):
        draft.packet(draft.digest(), [1])
