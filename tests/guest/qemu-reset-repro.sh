#!/usr/bin/env bash
# A reproduction of QEMU 11.1's crash on a guest reset with vhost-user SHMEM mappings live,
# without zerodax: qemu-reset-repro.py is a minimal backend that maps one memfd into the shared
# memory region once the guest's driver started the device; the guest (reset-init) boots and
# resets with `reboot -f`, again and again. Two runs:
#   map     the backend maps: QEMU dies at the second boot (SIGSEGV in vhost_dev_start)
#   no-map  the same without the mapping: QEMU keeps rebooting the guest until the time limit
# Prints one verdict line per run; exit 0 when both behave as described (the bug is there),
# 1 otherwise (e.g. a QEMU that fixed it). Needs prepare.sh's chroot and initramfs.
set -uo pipefail
here=$(cd "$(dirname "$0")" && pwd)
cache=${ZERODAX_GUEST_CACHE:-/var/cache/zerodax-guest}
root=$cache/qemu-sid
limit=${LIMIT:-40}
ok=0
for mode in map no-map; do
    dir=$(mktemp -d "$root/repro.XXXXXX")
    cp "$cache/vmlinuz" "$cache/initrd.gz" "$dir/"
    inside=${dir#"$root"}
    flag=()
    [[ $mode == no-map ]] && flag=(--no-map)
    python3 "$here/qemu-reset-repro.py" "$dir/sock" "${flag[@]}" >"$dir/backend.log" 2>&1 &
    backend=$!
    for _ in $(seq 50); do [[ -S $dir/sock ]] && break; sleep 0.1; done
    # (QEMU's own SIGSEGV in the map run is the point; bash reports it.)
    timeout "$limit" chroot "$root" qemu-system-x86_64 -accel tcg -m 512M -smp 1 -machine q35 \
        -object memory-backend-memfd,id=mem,size=512M,share=on -numa node,memdev=mem \
        -chardev "socket,id=c0,path=$inside/sock" \
        -device vhost-user-test-device-pci,chardev=c0,virtio-id=26,num_vqs=2,config_size=40 \
        -kernel "$inside/vmlinuz" -initrd "$inside/initrd.gz" \
        -append "console=ttyS0 rdinit=/reset-init quiet" -nographic \
        >"$dir/console.log" 2>"$dir/qemu.log" </dev/null
    rc=$?
    kill "$backend" 2>/dev/null; wait "$backend" 2>/dev/null
    boots=$(grep -a -c '@@ZDG RESET-BOOT' "$dir/console.log")
    maps=$(grep -c 'SHMEM_MAP acked' "$dir/backend.log")
    echo "$mode: QEMU exit $rc after $boots boot(s), $maps SHMEM_MAP(s) acked"
    case $mode in
        map) [[ $rc == 139 && $boots == 1 && $maps -ge 1 ]] || ok=1 ;;
        no-map) [[ $rc == 124 && $boots -ge 2 ]] || ok=1 ;;
    esac
    rm -rf "$dir"
done
if [[ $ok == 0 ]]; then
    echo "reproduced: QEMU dies at the first device start after a reset that found a SHMEM mapping live"
else
    echo "not reproduced as described"
fi
exit $ok
