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

# docker2aci writes its ACI into the current directory and extracts the layer under TMPDIR.
scratch=$(mktemp -d "$out/.docker2aci.XXXXXX")
(cd "$scratch" && TMPDIR="$scratch" "$docker2aci" "$tarball" >/dev/null)
acis=("$scratch"/*.aci)
if [ ${#acis[@]} -ne 1 ] || [ ! -f "${acis[0]}" ]; then
    echo "docker2aci made ${#acis[@]} ACIs, expected one squashed: ${acis[*]}" >&2
    exit 1
fi
mv "${acis[0]}" "$out/$name.aci"
phase docker2aci
gpg --batch --yes --armor --detach-sign --local-user "$key" --output "$out/$name.aci.asc" "$out/$name.aci"
phase sign
