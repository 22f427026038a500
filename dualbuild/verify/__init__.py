"""Reading artifacts back and proving what they hold.

``trees`` compares the Docker layer and the ACI entry by entry; ``views`` checks that the
Docker tarball's manifest.json, index.json, OCI manifest and legacy json name one image;
``configs`` that its config says what the ACI's manifest says; ``aci`` checks appc's rules;
``sets`` checks one build's files together; ``diff`` tells two builds of a recipe apart.
"""
