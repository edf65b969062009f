#!/usr/bin/env bash
# mount(8) helper that lets fstests (xfstests) mount `zerodax mount` as FSTYP=fuse, installed
# as /sbin/mount.fuse.zerodax (docs/mount.md, *fstests*). Called by mount(8) as
#   mount.fuse.zerodax DEV MOUNTPOINT -o OPTIONS
# with the shared directory in `source=`. DEV becomes the mount's source (fstests finds its
# mounts by it), the type stays plain `fuse`, and mount(8)'s conventions hold: suid and dev
# unless nosuid/nodev are given (zerodax's own default is nosuid,nodev). A remount is the
# kernel's business and goes straight to mount(2). ZERODAX (the binary, default `zerodax`)
# and ZERODAX_PASSTHROUGH (auto|on|off, default off) come from the environment.
set -euo pipefail
dev=$1 mnt=$2
shift 2
opts=""
while [ $# -gt 0 ]; do
    case $1 in
        -o) opts=$2; shift 2 ;;
        *) shift ;;
    esac
done
case ",$opts," in *,remount,*) exec mount -i -o "$opts" "$mnt" ;; esac
src="" pass=()
IFS=, read -ra words <<< "$opts"
for w in "${words[@]}"; do
    case $w in
        source=*) src=${w#source=} ;;
        allow_other) pass+=(--allow-other) ;;
        default_permissions | rw | "") ;;
        *) pass+=(-o "$w") ;;
    esac
done
[ -n "$src" ] || { echo "mount.fuse.zerodax: no source=DIR among the options" >&2; exit 1; }
case ",$opts," in *,nosuid,*) ;; *) pass+=(-o suid) ;; esac
case ",$opts," in *,nodev,*) ;; *) pass+=(-o dev) ;; esac
log=${TMPDIR:-/tmp}/zerodax-$(basename "$mnt").log
setsid "${ZERODAX:-zerodax}" mount "$src" "$mnt" -o "fsname=$dev,subtype=" \
    --passthrough "${ZERODAX_PASSTHROUGH:-off}" "${pass[@]}" >> "$log" 2>&1 < /dev/null &
for _ in $(seq 100); do
    if grep -q " $mnt fuse " /proc/mounts; then exit 0; fi
    sleep 0.05
done
echo "mount.fuse.zerodax: zerodax did not mount $mnt (log: $log)" >&2
exit 1
