#!/usr/bin/env bash
# Benchmark (a)'s seed pipeline (issue 19): the job of the (a) recipe as the project's seed did it.
#
#   CONTEXT_DIR (Dockerfile: FROM scratch, ADD minbase.tar /, COPY bench-marker /etc/bench-marker)
#     ─ DOCKER_BUILDKIT=0 docker build --no-cache (the classic builder)
#     ─ docker save                                → NAME.docker.tar
#     ─ docker2aci of the saved tarball (squashed) → NAME.aci
#     ─ gpg --armor --detach-sign                  → NAME.aci.asc
#
# usage: seed-pipeline.sh CONTEXT_DIR OUT_DIR GPG_KEY DOCKER2ACI IMAGE
# The daemon comes from DOCKER_HOST (bench/run.py starts a private dockerd), gpg's keyring from
# GNUPGHOME. IMAGE is a fresh name per run. Prints "phase NAME SECONDS" lines on stderr.
# Removes the image (and docker2aci's scratch files) on the way out, like existing-tools.sh
# removes its container and image: both sides pay for leaving nothing behind.
set -euo pipefail

if [ $# -ne 5 ]; then
    echo "usage: $0 CONTEXT_DIR OUT_DIR GPG_KEY DOCKER2ACI IMAGE" >&2
    exit 2
fi
context=$1 out=$2 key=$3 docker2aci=$4 image=$5
name=minbase-1.0.0-linux-amd64
scratch=""
mkdir -p "$out"

# shellcheck source=phases.sh
. "$(dirname "$0")/phases.sh"

cleanup() {
    docker rmi --force "$image" >/dev/null 2>&1 || true
    [ -n "$scratch" ] && rm -rf "$scratch"
    phase cleanup
    return 0
}
trap cleanup EXIT

DOCKER_BUILDKIT=0 docker build --quiet --no-cache --tag "$image" "$context" >/dev/null
phase build
docker save --output "$out/$name.docker.tar" "$image"
phase save
docker2aci_and_sign "$out/$name.docker.tar"
