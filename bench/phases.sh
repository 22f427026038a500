# Sourced by the bench's pipeline scripts: `phase NAME` prints, on stderr, the seconds since the
# previous phase ended (or since this file was sourced), as `phase NAME SECONDS`.
now() { date +%s.%N; }
t=$(now)
phase() {
    local end
    end=$(now)
    awk -v a="$end" -v b="$t" -v n="$1" 'BEGIN { printf "phase %s %.3f\n", n, a - b }' >&2
    t=$end
}
