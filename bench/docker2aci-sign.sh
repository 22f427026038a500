#!/usr/bin/env bash
# Benchmark "convert" (issue 19), the reference side: a Docker image tarball to a signed ACI the
# seed's way.
#
#   TARBALL ─ docker2aci (squashed, its default) → NAME.aci
#           ─ gpg --armor --detach-sign           → NAME.aci.asc
#
# usage: docker2aci-sign.sh TARBALL OUT_DIR GPG_KEY DOCKER2ACI
# gpg's keyring comes from GNUPGHOME. Prints "phase NAME SECONDS" lines on stderr.
# docker2aci's scratch folder (its TMPDIR and working directory) goes inside the timed run.
set -euo pipefail

if [ $# -ne 4 ]; then
    echo "usage: $0 TARBALL OUT_DIR GPG_KEY DOCKER2ACI" >&2
    exit 2
fi
tarball=$1 out=$2 key=$3 docker2aci=$4
name=minbase-1.0.0-linux-amd64
scratch=""
mkdir -p "$out"

# shellcheck source=phases.sh
. "$(dirname "$0")/phases.sh"

cleanup() {
    [ -n "$scratch" ] && rm -rf "$scratch"
    phase cleanup
    return 0
}
trap cleanup EXIT

docker2aci_and_sign "$tarball"
