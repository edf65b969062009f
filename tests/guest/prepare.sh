#!/usr/bin/env bash
# Prepares what the real-guest suite boots: Debian's newest 6.12 cloud kernel and a busybox-static
# initramfs carrying pjdfstest, fsx, coreutils `sleep`, the seekmap and etxtbsy probes and the
# guest /init.
# Usage: tests/guest/prepare.sh [--with-rust-virtiofsd]
# Also QEMU >= 11.1 (the VMM with a DAX window, from Debian's sid suite) in a chroot at
# $cache/qemu-sid, made with debootstrap once and kept.
# Run as root on Debian 12. Idempotent: the kernel is downloaded only when a newer one appears
# (or none is cached), the initramfs is rebuilt only when one of its inputs changed.
#
# Cache: $ZERODAX_GUEST_CACHE (default /var/cache/zerodax-guest), holding
#   vmlinuz, kernel.txt (package and version), initrd.gz, seekmap (static, also used on the host),
#   etxtbsy (static).
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
cache=${ZERODAX_GUEST_CACHE:-/var/cache/zerodax-guest}
cargo_bin=${CARGO_HOME:-$HOME/.cargo}/bin
export PATH=$cargo_bin:$PATH DEBIAN_FRONTEND=noninteractive

log() { echo "prepare: $*" >&2; }
die() { log "$*"; exit 1; }

[[ $(id -u) -eq 0 ]] || die "run as root (apt-get, mknod)"
mkdir -p "$cache"

# --- host packages -------------------------------------------------------------------------------
# qemu-system-common carries /usr/lib/qemu/virtiofsd (the C reference backend); e2fsprogs and
# util-linux make and loop-mount the ext4 image run.sh shares; libc6-dev has the static libc
# seekmap links against; libacl1-dev for building pjdfstest (as scripts/setup.sh);
# libseccomp-dev/libcap-ng-dev/pkg-config let `cargo install virtiofsd` build.
packages=(qemu-system-x86 qemu-system-common busybox-static coreutils cpio gzip e2fsprogs
    util-linux mount libc6-dev libacl1-dev pkg-config libseccomp-dev libcap-ng-dev debootstrap
    procps)
missing=()
for p in "${packages[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'ok installed' || missing+=("$p")
done
apt_updated=0
if [[ ${#missing[@]} -gt 0 ]]; then
    log "installing ${missing[*]}"
    apt-get update -qq
    apt_updated=1
    apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

# --- the POSIX suites (pinned, as in scripts/setup.sh) --------------------------------------------
have() { command -v "$1" >/dev/null && "$1" --version 2>/dev/null | grep -q "$2"; }
have pjdfstest 0.2.2 || cargo install --locked --quiet pjdfstest@0.2.2
have fsx 0.3.2 || cargo install --locked --quiet fsx@0.3.2

# --- optional: Rust virtiofsd 1.14, the second reference backend (a few minutes to build) --------
if [[ ${1:-} == --with-rust-virtiofsd ]] && ! have virtiofsd 1.14.0; then
    log "building virtiofsd 1.14.0 (CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-default})"
    cargo install --locked --quiet virtiofsd --version 1.14.0
fi

# --- QEMU >= 11.1 for the DAX suite ----------------------------------------------------------------
# Debian 12's QEMU (7.2) and trixie's (10.0) have no vhost-user SHMEM; sid's has. It runs
# chrooted (run.sh --vmm dax), so the host keeps its own QEMU for the other runs.
qemu_root=$cache/qemu-sid
qemu_ok() {
    local v
    v=$(chroot "$qemu_root" qemu-system-x86_64 --version 2>/dev/null | sed -n 's/^QEMU emulator version \([0-9]*\.[0-9]*\).*/\1/p')
    [[ -n $v ]] && dpkg --compare-versions "$v" ge 11.1
}
if qemu_ok; then
    log "QEMU for the DAX suite: $(chroot "$qemu_root" qemu-system-x86_64 --version | head -1)"
else
    log "debootstrap of Debian sid with qemu-system-x86 into $qemu_root (about a minute)"
    rm -rf "$qemu_root.new"
    debootstrap --variant=minbase --include=qemu-system-x86 sid "$qemu_root.new" \
        >"$cache/debootstrap.log" 2>&1 || die "debootstrap failed: $(tail -5 "$cache/debootstrap.log")"
    rm -rf "$qemu_root"
    mv "$qemu_root.new" "$qemu_root"
    qemu_ok || die "the sid chroot has no QEMU >= 11.1"
    log "QEMU for the DAX suite: $(chroot "$qemu_root" qemu-system-x86_64 --version | head -1)"
fi

# --- kernel: the newest linux-image-6.12.*-cloud-amd64 -------------------------------------------
# Prefer the -unsigned package (same vmlinuz, no shim/signing dependencies); fall back to the
# signed one. Versions are compared with dpkg, never hard-coded.
newest_kernel() {
    local best='' best_ver='' name ver suffix
    for suffix in -unsigned ''; do
        while read -r name; do
            [[ $name =~ ^linux-image-6\.12\.[0-9]+\+deb[0-9]+-cloud-amd64${suffix}$ ]] || continue
            ver=$(apt-cache policy "$name" | awk '/Candidate:/ {print $2}')
            [[ -n $ver && $ver != '(none)' ]] || continue
            if [[ -z $best_ver ]] || dpkg --compare-versions "$ver" gt "$best_ver"; then
                best=$name best_ver=$ver
            fi
        done < <(apt-cache pkgnames linux-image-6.12. | sort)
        [[ -z $best ]] || break
    done
    [[ -n $best ]] && echo "$best $best_ver"
}

kernel=$(newest_kernel || true)
if [[ -z $kernel && $apt_updated -eq 0 ]]; then
    apt-get update -qq
    kernel=$(newest_kernel || true)
fi
if [[ -z $kernel ]]; then
    [[ -s $cache/vmlinuz ]] || die "no linux-image-6.12.*-cloud-amd64 package known to apt"
    log "apt knows no 6.12 cloud kernel; keeping the cached $(cat "$cache/kernel.txt")"
elif [[ -s $cache/vmlinuz && $(cat "$cache/kernel.txt" 2>/dev/null) == "$kernel" ]]; then
    log "kernel $kernel already cached"
else
    read -r kpkg kver <<<"$kernel"
    log "downloading $kpkg $kver"
    work=$(mktemp -d "$cache/kernel.XXXXXX")
    trap 'rm -rf "$work"' EXIT
    # apt-get download drops privileges to _apt, which must be able to write here.
    chown _apt "$work" 2>/dev/null || true
    (cd "$work" && apt-get download -qq "$kpkg=$kver")
    dpkg-deb -x "$work"/*.deb "$work/x"
    vmlinuz=$(find "$work/x/boot" -name 'vmlinuz-*' | head -1)
    [[ -n $vmlinuz ]] || die "no vmlinuz in $kpkg"
    install -m 0644 "$vmlinuz" "$cache/vmlinuz.new"
    mv "$cache/vmlinuz.new" "$cache/vmlinuz"
    echo "$kernel" >"$cache/kernel.txt"
    rm -rf "$work"
    trap - EXIT
fi

# --- the static probes: seekmap (sparse files, guest and host), etxtbsy (guest) ------------------
for probe in seekmap etxtbsy; do
    if [[ ! -x $cache/$probe || $here/$probe.rs -nt $cache/$probe ]]; then
        log "building $probe"
        rustc --edition 2021 -O -C target-feature=+crt-static -C strip=symbols \
            -o "$cache/$probe.new" "$here/$probe.rs"
        mv "$cache/$probe.new" "$cache/$probe"
    fi
done

# --- initramfs --------------------------------------------------------------------------------------
busybox=/bin/busybox
sleep_bin=$(readlink -f "$(type -P sleep)")
pjdfstest=$(type -P pjdfstest)
fsx=$(type -P fsx)
dynamic=("$sleep_bin" "$pjdfstest" "$fsx")
inputs=("$0" "$here/init" "$here/reset-init" "$here/pjdfstest.toml" "$here/fsx.toml" "$busybox" "$cache/seekmap"
    "$cache/etxtbsy" "${dynamic[@]}")
stamp=$( (sha256sum "${inputs[@]}" | awk '{print $1}'; echo "${dynamic[*]}") | sha256sum | cut -c1-64)
if [[ -s $cache/initrd.gz && $(cat "$cache/initrd.stamp" 2>/dev/null) == "$stamp" ]]; then
    log "initramfs up to date"
    log "ready: $(cat "$cache/kernel.txt"), $cache/vmlinuz, $cache/initrd.gz"
    exit 0
fi

log "building the initramfs"
stage=$(mktemp -d /tmp/zdg-initramfs.XXXXXX)
trap 'rm -rf "$stage"' EXIT
# The stage becomes the guest's / : mktemp's 0700 would lock every non-root user out of the
# whole tree (pjdfstest's nobody/daemon cases would fail with EACCES).
chmod 0755 "$stage"
mkdir -p "$stage"/{bin,sbin,usr/bin,usr/sbin,etc/zdg,proc,sys,dev,tmp,mnt,root,lib/x86_64-linux-gnu,lib64}
chmod 1777 "$stage/tmp"

install -m 0755 "$busybox" "$stage/bin/busybox"
# Every applet but sleep: pjdfstest copies `which sleep` and runs it for its ETXTBSY cases, and
# busybox's applet exits at once when run under another name; coreutils' sleep doesn't.
while read -r applet; do
    [[ $applet == */sleep || -e $stage/$applet ]] && continue
    ln -s /bin/busybox "$stage/$applet"
done < <("$busybox" --list-full)

# copy_dynamic BIN DEST: the binary and every library ldd resolves for it, at the same paths.
copy_dynamic() {
    install -m 0755 "$1" "$stage/$2"
    local lib
    while read -r lib; do
        mkdir -p "$stage$(dirname "$lib")"
        cp -L "$lib" "$stage$lib"
    done < <(ldd "$1" | awk '$2 == "=>" && $3 ~ /^\// {print $3} $1 ~ /^\// {print $1}')
}
copy_dynamic "$sleep_bin" bin/sleep
copy_dynamic "$pjdfstest" bin/pjdfstest
copy_dynamic "$fsx" bin/fsx
install -m 0755 "$cache/seekmap" "$stage/bin/seekmap"
install -m 0755 "$cache/etxtbsy" "$stage/bin/etxtbsy"
[[ -e $stage/lib64/ld-linux-x86-64.so.2 ]] || die "the dynamic loader was not copied"

install -m 0755 "$here/init" "$stage/init"
install -m 0755 "$here/reset-init" "$stage/reset-init"
install -m 0644 "$here/pjdfstest.toml" "$stage/etc/zdg/pjdfstest.toml"
install -m 0644 "$here/fsx.toml" "$stage/etc/zdg/fsx.toml"
cat >"$stage/etc/passwd" <<'EOF'
root:x:0:0:root:/root:/bin/sh
daemon:x:1:1:daemon:/usr/sbin:/bin/false
nobody:x:65534:65534:nobody:/nonexistent:/bin/false
EOF
cat >"$stage/etc/group" <<'EOF'
root:x:0:
daemon:x:1:
nogroup:x:65534:
EOF
printf 'passwd: files\ngroup: files\nshadow: files\n' >"$stage/etc/nsswitch.conf"
mknod -m 0600 "$stage/dev/console" c 5 1
mknod -m 0666 "$stage/dev/null" c 1 3

(cd "$stage" && find . -print0 | cpio --null -o -H newc --quiet --owner=0:0 | gzip -6) \
    >"$cache/initrd.gz.new"
mv "$cache/initrd.gz.new" "$cache/initrd.gz"
echo "$stamp" >"$cache/initrd.stamp"
log "ready: $(cat "$cache/kernel.txt"), $cache/vmlinuz, $cache/initrd.gz ($(du -h "$cache/initrd.gz" | cut -f1))"
