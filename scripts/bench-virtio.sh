#!/usr/bin/env bash
# Reads one sparse file (1 GiB, 1% data in 41 scattered extents, on a loop-mounted ext4) through
# the built-in frontend, as a guest would: through zerodax's DAX window (--dax-holes zero and map)
# and with FUSE_READ requests (zerodax serve, Rust virtiofsd 1.14, C virtiofsd). Each path cold
# (page cache dropped first) and warm (straight after), with the growth of the file's page cache
# (cachestat) and of both processes' RSS. Run as root; prints a Markdown table.
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release --quiet -p zerodax
ZERODAX=${CARGO_TARGET_DIR:-$PWD/target}/release/zerodax
# shellcheck source=../tests/lib.sh
source tests/lib.sh
make_backing 2G
file=$ZD_BACKING/sparse.img
make_sparse_file "$file"

rust_virtiofsd=$(command -v virtiofsd || true)
paths=("window zero|--dax-holes zero" "window map|--dax-holes map"
    "FUSE_READ zerodax|--read fuse --backend zerodax")
[[ -n $rust_virtiofsd ]] && paths+=("FUSE_READ virtiofsd 1.14|--read fuse --backend virtiofsd --backend-bin $rust_virtiofsd")
[[ -x /usr/lib/qemu/virtiofsd ]] && paths+=("FUSE_READ C virtiofsd|--read fuse --backend c-virtiofsd --backend-bin /usr/lib/qemu/virtiofsd")

row() {
    python3 - "$@" <<'PY'
import json, sys
name = sys.argv[1]
cold, warm = (json.loads(x) for x in sys.argv[2:4])
def gib(r):
    return r["size"] / r["time"]["read_s"] / 2**30
m = cold["memory"]
cells = [name, "%.2f" % gib(cold), "%.2f" % gib(warm), str(cold.get("pages_after_read", {}).get("zero", "-")),
         "%.1f" % (m["file_page_cache_growth"] / 2**20), "%.1f" % (m["rss_growth"] / 2**20),
         "%.1f" % (m["backend_rss_growth"] / 2**20)]
print("| " + " | ".join(cells) + " |")
PY
}

echo "| path | cold GiB/s | warm GiB/s | zero pages | file page cache MiB (cold) | frontend RSS MiB | backend RSS MiB |"
echo "|---|---|---|---|---|---|---|"
for p in "${paths[@]}"; do
    name=${p%%|*}
    read -r -a args <<< "${p#*|}"
    sync; echo 3 > /proc/sys/vm/drop_caches
    cold=$("$ZERODAX" probe --via virtio --json "${args[@]}" "$file" 2>/dev/null)
    warm=$("$ZERODAX" probe --via virtio --json "${args[@]}" "$file" 2>/dev/null)
    row "$name" "$cold" "$warm"
done
