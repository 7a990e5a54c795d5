# Shared by the capture_*.sh scripts: a foresync export with ext4 on it, traced while a workload runs.
#
#   source capture_common.sh; trace_begin NAME SIZE; ...workload in "$MNT"...; trace_end
#
# The filesystem is made in an untraced first session (mkfs's discards are not the workload),
# then the export is served again with --trace, nbdfuse turns it into a file and the kernel
# loop-mounts it (as tests/integration/test_ext4.py does). trace_end unmounts (so the workload's
# dirty pages reach the export), stops the server and writes bench/workloads/NAME.fstrace.xz.
# Needs root (mount), nbdfuse, fusermount3, xz. FORESYNC defaults to the repository's .venv.
set -euo pipefail
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
FORESYNC=${FORESYNC:-$HERE/../../.venv/bin/foresync}
PORT=${PORT:-10931}

_serve() {  # _serve [--trace FILE]
    "$FORESYNC" serve --data "$WORK/volume" --size "$SIZE" --listen "127.0.0.1:$PORT" "$@" \
        2>"$WORK/serve.log" &
    SERVE_PID=$!
    for _ in $(seq 100); do nbdinfo --size "nbd://127.0.0.1:$PORT" >/dev/null 2>&1 && return; sleep 0.1; done
    echo "foresync serve did not start:"; cat "$WORK/serve.log"; exit 1
}

_fuse() {
    mkdir -p "$WORK/fuse"
    nbdfuse "$WORK/fuse" "nbd://127.0.0.1:$PORT" </dev/null &
    FUSE_PID=$!
    for _ in $(seq 150); do [ -e "$WORK/fuse/nbd" ] && return; sleep 0.1; done
    echo "nbdfuse did not expose the export"; exit 1
}

_unfuse() {
    fusermount3 -u "$WORK/fuse" 2>/dev/null || true
    wait "$FUSE_PID" 2>/dev/null || true
    kill "$SERVE_PID" 2>/dev/null || true
    wait "$SERVE_PID" 2>/dev/null || true
}

_cleanup() {
    mountpoint -q "$WORK/mnt" 2>/dev/null && { umount "$WORK/mnt" || umount -l "$WORK/mnt"; }
    mountpoint -q "$WORK/fuse" 2>/dev/null && fusermount3 -u -z "$WORK/fuse"
    [ -n "${SERVE_PID:-}" ] && kill "$SERVE_PID" 2>/dev/null
    rm -rf "$WORK"
}

trace_begin() {  # trace_begin NAME SIZE
    NAME=$1 SIZE=$2
    WORK=$(mktemp -d /var/tmp/foresync-capture.XXXXXX)
    trap _cleanup EXIT
    truncate -s "$SIZE" "$WORK/volume"
    _serve
    _fuse
    mkfs.ext4 -q -E nodiscard "$WORK/fuse/nbd"
    _unfuse
    _serve --trace "$WORK/$NAME.fstrace"
    _fuse
    MNT=$WORK/mnt
    mkdir -p "$MNT"
    mount -o loop "$WORK/fuse/nbd" "$MNT"
}

trace_end() {
    sync
    umount "$MNT"
    _unfuse
    xz -9 -T1 -c "$WORK/$NAME.fstrace" > "$HERE/$NAME.fstrace.xz"
    echo "$NAME: $(stat -c %s "$WORK/$NAME.fstrace") bytes raw, $(stat -c %s "$HERE/$NAME.fstrace.xz") compressed"
}
