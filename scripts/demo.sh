#!/usr/bin/env bash
# The main job on an example it makes itself: a 1 GiB sparse file holding 1% data, served by
# `zerodax serve` (vhost-user virtio-fs with a DAX window, `--dax-holes zero`) and read page by
# page through the built-in frontend's window, as a guest would map it: the holes come back as
# the host's zero page and cost nothing. For comparison the same file with `--dax-holes map`
# (holes mapped from the file, as virtiofsd's DAX did), and through `zerodax mount` on the host.
# Run as root (loop and FUSE mounts). Everything it makes is removed on exit.
set -euo pipefail
cd "$(dirname "$0")/.."

[[ $(id -u) -eq 0 ]] || { echo "demo: run as root (loop and FUSE mounts)" >&2; exit 1; }
command -v mkfs.ext4 >/dev/null || { apt-get update -qq && apt-get install -y -qq e2fsprogs; }
echo "demo: building zerodax (release)"
cargo build --release --quiet -p zerodax
ZERODAX=${CARGO_TARGET_DIR:-$PWD/target}/release/zerodax
# shellcheck source=../tests/lib.sh
source tests/lib.sh

make_backing 2G
file=$ZD_BACKING/sparse.img
make_sparse_file "$file"

echo
echo "== zerodax serve --dax-holes zero: every page read through the frontend's DAX window"
drop_file_cache "$file"
"$ZERODAX" probe --via virtio --dax-holes zero "$file"
echo
echo "== the same, writing 4 KiB into a hole at 512 MiB through the window (SETUPMAPPING WRITE)"
drop_file_cache "$file"
"$ZERODAX" probe --via virtio --dax-holes zero --write 512M:4K "$file"
echo
echo "== zerodax serve --dax-holes map: holes mapped from the file, as virtiofsd's DAX did"
drop_file_cache "$file"
"$ZERODAX" probe --via virtio --dax-holes map "$file"
echo
echo "== on the host: zerodax mount, its holes through the mount (SEEK_DATA/SEEK_HOLE answered by"
echo "   zerodax), read through a window in the probe's own process"
start_zerodax --passthrough auto
ls -ls --block-size=K "$ZD_MNT/sparse.img"
"$ZERODAX" probe "$ZD_MNT/sparse.img"
