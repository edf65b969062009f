# shellcheck shell=bash
# Shared helpers for the shell-driven suites: a loop-mounted ext4 backing directory the suite makes
# itself (so hole and allocation results don't depend on where the repo is cloned) and a
# `zerodax mount` child that is always unmounted and reaped, on failure too.

set -euo pipefail

ZERODAX=${ZERODAX:-$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)/target/release/zerodax}
ZD_TMP=$(mktemp -d /tmp/zerodax-suite.XXXXXX)
# pjdfstest switches to unprivileged users, who must be able to reach the mount.
chmod 0755 "$ZD_TMP"
ZD_BACKING=$ZD_TMP/backing
ZD_MNT=$ZD_TMP/mnt
ZD_PID=

is_mounted() { grep -qs " $1 " /proc/self/mounts; }

stop_zerodax() {
    if [[ -n $ZD_PID ]] && kill -0 "$ZD_PID" 2>/dev/null; then
        kill -TERM "$ZD_PID" 2>/dev/null || true
        for _ in $(seq 50); do kill -0 "$ZD_PID" 2>/dev/null || break; sleep 0.1; done
        if kill -0 "$ZD_PID" 2>/dev/null; then
            echo "zerodax did not exit on SIGTERM within 5 s" >&2
            kill -KILL "$ZD_PID" 2>/dev/null || true
        fi
        wait "$ZD_PID" 2>/dev/null || true
    fi
    ZD_PID=
    if is_mounted "$ZD_MNT"; then
        echo "mount left behind at $ZD_MNT: lazily unmounting" >&2
        umount -l "$ZD_MNT" || true
        return 1
    fi
}

zd_cleanup() {
    stop_zerodax || true
    if is_mounted "$ZD_BACKING"; then umount "$ZD_BACKING" || umount -l "$ZD_BACKING" || true; fi
    rm -rf "$ZD_TMP"
}
trap zd_cleanup EXIT
trap 'exit 130' INT TERM

# make_backing SIZE: a fresh ext4 image loop-mounted at $ZD_BACKING.
make_backing() {
    truncate -s "${1:-1G}" "$ZD_TMP/img"
    mkfs.ext4 -q -F "$ZD_TMP/img"
    mkdir -p "$ZD_BACKING" "$ZD_MNT"
    mount -o loop "$ZD_TMP/img" "$ZD_BACKING"
    chmod 0755 "$ZD_BACKING"
}

# make_sparse_file PATH: the example file of the demo and the benchmark, 1 GiB apparent size
# holding 1% data: 41 extents of 256 KiB of random bytes scattered through it; synced.
make_sparse_file() {
    local i
    truncate -s 1G "$1"
    for i in $(seq 0 40); do
        dd if=/dev/urandom of="$1" bs=256K count=1 seek=$((i * 97 % 4096)) conv=notrunc status=none
    done
    sync "$1"
}

# drop_file_cache PATH: the file's clean pages out of the host page cache (a cold start).
drop_file_cache() {
    python3 -c 'import os, sys; fd = os.open(sys.argv[1], os.O_RDONLY); os.fsync(fd); os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)' "$1"
}

# start_zerodax ARGS...: `zerodax mount ARGS $ZD_BACKING $ZD_MNT` in the background; waits for the
# mount to appear (10 s at most) and fails if the daemon dies first.
start_zerodax() {
    "$ZERODAX" mount "$@" "$ZD_BACKING" "$ZD_MNT" &
    ZD_PID=$!
    for _ in $(seq 100); do
        if grep -qs " $ZD_MNT fuse" /proc/self/mounts; then return 0; fi
        if ! kill -0 "$ZD_PID" 2>/dev/null; then
            wait "$ZD_PID" || true
            ZD_PID=
            echo "zerodax mount exited before the mount appeared" >&2
            return 1
        fi
        sleep 0.1
    done
    echo "zerodax mount did not appear within 10 s" >&2
    return 1
}
