#!/usr/bin/env bash
# Installs everything the build and the test suites need on Debian 12, as root. Idempotent.
set -euo pipefail
cd "$(dirname "$0")/.."

if ! command -v cargo >/dev/null; then
    echo "setup: cargo not found: install a Rust toolchain (1.85 or later) first" >&2
    exit 1
fi
[[ $(id -u) -eq 0 ]] || { echo "setup: run as root (apt-get, loop mounts, FUSE mounts)" >&2; exit 1; }

export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
# e2fsprogs + util-linux: the loop-mounted ext4 images the suites test on;
# libacl1-dev + acl: pjdfstest builds against libacl; kmod: modprobe fuse/loop where modular;
# qemu-system-common: the C virtiofsd, a reference backend for the frontend tests;
# libseccomp-dev + libcap-ng-dev: building Rust virtiofsd, the other reference backend;
# uidmap: newuidmap/newgidmap, which `serve --uid-map/--gid-map` runs when unprivileged.
apt-get install -y -qq --no-install-recommends \
    e2fsprogs util-linux mount libacl1-dev acl kmod pkg-config \
    qemu-system-common libseccomp-dev libcap-ng-dev uidmap >/dev/null

[[ -e /dev/fuse ]] || modprobe fuse 2>/dev/null || true
[[ -e /dev/loop-control ]] || modprobe loop 2>/dev/null || true

# The POSIX suites, pinned so that results are comparable from run to run.
have() { command -v "$1" >/dev/null && "$1" --version 2>/dev/null | grep -q "$2"; }
have pjdfstest 0.2.2 || cargo install --locked --quiet pjdfstest@0.2.2
have fsx 0.3.2 || cargo install --locked --quiet fsx@0.3.2
# Rust virtiofsd: the reference vhost-user-fs backend the frontend tests compare against.
have virtiofsd 1.14.0 || cargo install --locked --quiet virtiofsd@1.14.0
# The protocol fuzz target runs for a minute in CI (tests/fuzz/run.sh).
have cargo-fuzz 0.13.2 || cargo install --locked --quiet cargo-fuzz@0.13.2

# pjdfstest switches to these users; Debian has them, but make sure.
getent passwd nobody >/dev/null && getent passwd daemon >/dev/null
getent group nogroup >/dev/null && getent group daemon >/dev/null
# The real-guest suite: QEMU, Debian's 6.12 cloud kernel, a busybox initramfs with the suites.
bash tests/guest/prepare.sh
echo "setup: done"
