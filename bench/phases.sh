# Sourced by the bench's pipeline scripts. `phase NAME` prints, on stderr, the seconds since the
# previous phase ended (or since this file was sourced), as `phase NAME SECONDS`.
now() { date +%s.%N; }
t=$(now)
phase() {
    local end
    end=$(now)
    awk -v a="$end" -v b="$t" -v n="$1" 'BEGIN { printf "phase %s %.3f\n", n, a - b }' >&2
    t=$end
}

# `docker2aci_and_sign TARBALL`: docker2aci (squashed) → $out/$name.aci, then its detached
# signature by $key → $out/$name.aci.asc, timed as the phases docker2aci and sign. docker2aci
# writes its ACI into the current directory and extracts the layer under TMPDIR: both are
# $scratch, inside $out, which the caller's cleanup removes.
docker2aci_and_sign() {
    scratch=$(mktemp -d "$out/.docker2aci.XXXXXX")
    (cd "$scratch" && TMPDIR="$scratch" "$docker2aci" "$1" >/dev/null)
    local acis=("$scratch"/*.aci)
    if [ ${#acis[@]} -ne 1 ] || [ ! -f "${acis[0]}" ]; then
        echo "docker2aci made ${#acis[@]} ACIs, expected one squashed: ${acis[*]}" >&2
        exit 1
    fi
    mv "${acis[0]}" "$out/$name.aci"
    phase docker2aci
    gpg --batch --yes --armor --detach-sign --local-user "$key" --output "$out/$name.aci.asc" "$out/$name.aci"
    phase sign
}
