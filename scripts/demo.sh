#!/usr/bin/env bash
# The main job on an example it makes itself: a 1 GiB sparse file holding 1% data, served by
# `zerodax mount`, its holes shown through the mount, then read page by page through a DAX
# window with `zerodax probe`: holes come back as the kernel's zero page.
# Run as root (loop and FUSE mounts). Everything it makes is removed on exit.
set -euo pipefail
cd "$(dirname "$0")/.."

[[ $(id -u) -eq 0 ]] || { echo "demo: run as root (loop and FUSE mounts)" >&2; exit 1; }
command -v mkfs.ext4 >/dev/null || { apt-get update -qq && apt-get install -y -qq e2fsprogs; }
echo "demo: building zerodax (release)"
cargo build --release --quiet -p zerodax
ZERODAX=$PWD/target/release/zerodax
# shellcheck source=../tests/lib.sh
source tests/lib.sh

make_backing 2G
file=$ZD_BACKING/sparse.img
# 1 GiB apparent size; 1% data: 41 extents of 256 KiB scattered through it.
truncate -s 1G "$file"
for i in $(seq 0 40); do
    dd if=/dev/urandom of="$file" bs=256K count=1 seek=$((i * 97 % 4096)) conv=notrunc status=none
done
sync "$file"

start_zerodax --passthrough auto
served=$ZD_MNT/sparse.img
echo
echo "== the file through the mount: apparent size vs blocks allocated"
ls -ls --block-size=K "$served"
echo
echo "== zerodax probe: every page read through a DAX window, holes as zero pages"
"$ZERODAX" probe "$served"
echo
echo "== the same, writing 4 KiB into a hole at 512 MiB through the window"
"$ZERODAX" probe "$served" --write 512M:4K
