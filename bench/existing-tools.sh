#!/usr/bin/env bash
# Benchmark (a)'s baseline: the job of the (a) recipe done with existing tools, one after the other.
#
#   rootfs tarball ─ buildah from scratch + buildah add (extract) ─ write /etc/bench-marker
#     ─ buildah commit ─ buildah push docker-archive:   → NAME.docker.tar
#     ─ cp -a of the mounted tree into an ACI layout (minus device nodes, which make
#       actool hang) + manifest ─ actool build → NAME.aci
#     ─ gpg --armor --detach-sign                      → NAME.aci.asc
#
# usage: existing-tools.sh ROOTFS.tar OUT_DIR GPG_KEY
# buildah's store comes from the environment (bench/run.py sets CONTAINERS_STORAGE_CONF to a
# private store), gpg's keyring from GNUPGHOME. Prints "phase NAME SECONDS" lines on stderr.
# Leaves no container, image, mount or layout copy behind, whatever happens.
set -euo pipefail

if [ $# -ne 3 ]; then
    echo "usage: $0 ROOTFS.tar OUT_DIR GPG_KEY" >&2
    exit 2
fi
tarball=$1 out=$2 key=$3
name=minbase-1.0.0-linux-amd64
image=localhost/dualbuild-bench-existing:1.0.0
ctr="" layout="" image_id=""
mkdir -p "$out"

cleanup() {
    [ -n "$ctr" ] && buildah rm "$ctr" >/dev/null 2>&1
    [ -n "$image_id" ] && buildah rmi --force "$image_id" >/dev/null 2>&1
    [ -n "$layout" ] && rm -rf "$layout"
    return 0
}
trap cleanup EXIT

# shellcheck source=phases.sh
. "$(dirname "$0")/phases.sh"

ctr=$(buildah from --quiet scratch)
phase from
buildah add --quiet "$ctr" "$tarball" /
phase extract
mnt=$(buildah mount "$ctr")
printf 'built by the dualbuild benchmark\n' > "$mnt/etc/bench-marker"
phase write
image_id=$(buildah commit --quiet "$ctr" "$image")
phase commit
buildah push --quiet "$image_id" "docker-archive:$out/$name.docker.tar:example.com/bench/minbase:1.0.0"
phase push
layout=$(mktemp -d "$out/.layout.XXXXXX")
mkdir "$layout/rootfs"
cp -a "$mnt/." "$layout/rootfs/"
# actool build opens every file it archives, device nodes too, and blocks forever reading
# /dev/console: the copy has to go without them (so this ACI lacks minbase's /dev nodes).
find "$layout/rootfs" \( -type c -o -type b -o -type p -o -type s \) -delete
cat > "$layout/manifest" <<'EOF'
{"acKind":"ImageManifest","acVersion":"0.8.11","name":"example.com/bench/minbase",
 "labels":[{"name":"version","value":"1.0.0"},{"name":"os","value":"linux"},{"name":"arch","value":"amd64"}],
 "app":{"exec":["/bin/bash"],"user":"0","group":"0"}}
EOF
phase copy
actool build --overwrite "$layout" "$out/$name.aci"
phase actool
gpg --batch --yes --armor --detach-sign --local-user "$key" --output "$out/$name.aci.asc" "$out/$name.aci"
phase sign
