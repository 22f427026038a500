"""Signing the ACI: armored detached OpenPGP signatures over the exact ``.aci`` bytes.

``keys`` checks a key before the build and exports public keys; ``signer`` signs while the
ACI is written; ``openpgp`` frames the packet around the digest gpg-agent signs.
"""
