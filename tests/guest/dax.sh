# shellcheck shell=bash
# The `dax` scenario's host side, sourced by run.sh: the files the guest reads through the DAX
# window, and what the host checks afterwards. Every file is made from a LIST of `OFF LEN SEED`
# data ranges (seekmap make), so the guest and the host both know every byte it must hold.

MIB=1048576
RANGE=$((2 * MIB)) # the guest's DAX mapping unit (fs/fuse/dax.c)

# dax_window EXTRA: the window zerodax offers with these flags (DaxConfig::offered_window):
# --cache-size cut to whole ranges --dax-slots can map at once (1 region a range in map mode, 3
# in zero mode, and one for a last partial page), then to a power of two.
dax_window() {
    local extra=$1 mode=map slots=256 cache=0 per=2 len
    [[ $extra =~ --dax-holes[=\ ]([a-z]+) ]] && mode=${BASH_REMATCH[1]}
    [[ $extra =~ --dax-slots[=\ ]([0-9]+) ]] && slots=${BASH_REMATCH[1]}
    if [[ $extra =~ --cache-size[=\ ]([0-9]+)([MG]) ]]; then
        cache=$((BASH_REMATCH[1] << 20))
        [[ ${BASH_REMATCH[2]} == G ]] && cache=$((cache << 10))
    fi
    [[ $mode == zero ]] && per=4
    len=$((slots / per * RANGE))
    ((cache < len)) && len=$cache
    local p=$RANGE
    while ((p * 2 <= len)); do p=$((p * 2)); done
    echo $p
}

# dax_files EXTRA: NAME SIZE, one file a line; many/ holds the small files read all at once.
dax_files() {
    echo "sparse $((64 * MIB))"
    echo "big $((2 * $(dax_window "$1")))"
    echo "frag $((64 * MIB))"
    local i
    for i in $(seq -w 0 31); do echo "many/f$i $MIB"; done
}

# dax_list NAME: the data ranges of NAME.
#   sparse, big: 1% data, 256 KiB extents spread over the file, never across a 2 MiB range;
#   big is twice the window, so the guest must reclaim ranges to read it;
#   frag: 4 KiB of data every 64 KiB (1024 extents: the file that drove QEMU past its slots);
#   many/fNN: 64 KiB at 256 KiB.
dax_list() {
    local name=$1 n i
    case $name in
        sparse | big)
            n=$((${2} / MIB * 4 / 100)) # 4 x 256 KiB per 100 MiB: 1% data
            for i in $(seq 0 $((n - 1))); do
                # Extent i sits in range i*stride, at a page offset that varies with i.
                echo "$((i * (${2} / n / RANGE) * RANGE + (i * 7 % 28) * 65536)) 262144 $((i + 1))"
            done
            ;;
        frag) for i in $(seq 0 1023); do echo "$((i * 65536)) 4096 $((i + 100))"; done ;;
        many/*) echo "262144 65536 ${name#many/f}" ;;
    esac
}

# dax_make_files DIR SEEKMAP EXTRA: the files and their lists, on the host; NAME.alloc keeps
# the file's allocation as made.
dax_make_files() {
    local dir=$1 seekmap=$2 extra=$3 name size
    mkdir -p "$dir/many"
    while read -r name size; do
        dax_list "$name" "$size" >"$dir/$name.list"
        "$seekmap" make "$dir/$name" "$size" "$dir/$name.list" >/dev/null
        stat -c %b "$dir/$name" >"$dir/$name.alloc"
    done < <(dax_files "$extra")
    chmod -R a+rX "$dir"
}

# dax_make_bench DIR SEEKMAP: the benchmark's file: 1 GiB, 1% data (docs/benchmarks.md).
dax_make_bench() {
    local dir=$1 seekmap=$2
    mkdir -p "$dir"
    dax_list big $((1024 * MIB)) >"$dir/file.list"
    "$seekmap" make "$dir/file" $((1024 * MIB)) "$dir/file.list" >/dev/null
    chmod -R a+rX "$dir"
}

# Page-cache tracing of the shared filesystem while the guest runs, to tell who brought a
# file's pages in (best effort: without tracefs the run goes on untraced).
TRACE=/sys/kernel/tracing
PC_EVENTS=(mm_filemap_add_to_page_cache mm_filemap_delete_from_page_cache mm_filemap_fault)

# dax_trace_start DIR: trace page-cache additions, removals and faults on DIR's filesystem.
dax_trace_start() {
    [[ -d $TRACE/events/filemap ]] || mount -t tracefs nodev "$TRACE" 2>/dev/null || return 0
    [[ -d $TRACE/events/filemap ]] || return 0
    local kdev ev
    kdev=$(($(stat -c %Hd "$1") * 1048576 + $(stat -c %Ld "$1")))
    echo 0 >"$TRACE/tracing_on"
    echo 65536 >"$TRACE/buffer_size_kb" 2>/dev/null
    echo >"$TRACE/trace"
    for ev in "${PC_EVENTS[@]}"; do
        echo "s_dev == $kdev" >"$TRACE/events/filemap/$ev/filter" 2>/dev/null || true
        echo 1 >"$TRACE/events/filemap/$ev/enable" 2>/dev/null || true
    done
    echo 1 >"$TRACE/tracing_on"
    DAX_TRACING=1
}

# dax_trace_stop OUT: stop tracing and keep what was traced in OUT/pagecache-trace.txt.
dax_trace_stop() {
    [[ ${DAX_TRACING:-0} == 1 ]] || return 0
    DAX_TRACING=0
    local ev
    echo 0 >"$TRACE/tracing_on"
    cp "$TRACE/trace" "$1/pagecache-trace.txt" 2>/dev/null || true
    for ev in "${PC_EVENTS[@]}"; do
        echo 0 >"$TRACE/events/filemap/$ev/enable" 2>/dev/null || true
        echo 0 >"$TRACE/events/filemap/$ev/filter" 2>/dev/null || true
    done
    echo >"$TRACE/trace"
}

# dax_trace_who FILE OUT: which tasks added, removed and faulted FILE's pages (from the trace).
dax_trace_who() {
    local t=$2/pagecache-trace.txt
    [[ -s $t ]] || { echo "no trace"; return; }
    grep " ino $(printf %x "$(stat -c %i "$1")") " "$t" | awk '
        { task = $1; ev = "?" }
        /mm_filemap_add_to_page_cache/ { ev = "add" }
        /mm_filemap_delete_from_page_cache/ { ev = "del" }
        /mm_filemap_fault/ { ev = "fault" }
        { n[ev " " task]++ }
        END { for (k in n) printf "%s x%d; ", k, n[k] }'
}

# dax_span_pages LIST: pages from the first data page to the last in each 2 MiB range, summed:
# what `--dax-holes zero` maps, and so may bring into the page cache, of a file read whole.
dax_span_pages() {
    awk -v R=$RANGE '!/^#/ {
        for (o = $1; o < $1 + $2; o = e) {
            b = int(o / R); e = (b + 1) * R; if (e > $1 + $2) e = $1 + $2
            if (!(b in lo) || o < lo[b]) lo[b] = o
            if (!(b in hi) || e > hi[b]) hi[b] = e
        }
    } END { for (b in lo) p += (hi[b] - lo[b]) / 4096; print p + 0 }' "$1"
}

# dax_host_checks DIR SEEKMAP OUT EXTRA: after the guest read every file (run.sh's results).
dax_host_checks() {
    local dir=$1 seekmap=$2 out=$3 extra=$4 mode=map slots=256 name size
    [[ $extra =~ --dax-holes[=\ ]([a-z]+) ]] && mode=${BASH_REMATCH[1]}
    [[ $extra =~ --dax-slots[=\ ]([0-9]+) ]] && slots=${BASH_REMATCH[1]}
    while read -r name size; do
        local list=$dir/$name.list alloc made data cache spans
        # The page cache first: the host's own checks below read the file through it.
        cache=$("$seekmap" cachestat "$dir/$name" | sed -n 's/^cache=\([0-9]*\).*/\1/p')
        spans=$(dax_span_pages "$list")
        data=$(awk '!/^#/ {s += $2} END {print s + 0}' "$list")
        alloc=$(stat -c %b "$dir/$name")
        made=$(cat "$dir/$name.alloc")
        if ((alloc == made)); then
            result "dax/host/$name-alloc" PASS "$((alloc * 512)) bytes allocated for $data of data, as made"
        else
            result "dax/host/$name-alloc" FAIL "$((alloc * 512)) bytes allocated, $((made * 512)) when made"
        fi
        if "$seekmap" verify "$dir/$name" "$list" read >/dev/null; then
            result "dax/host/$name-intact" PASS
        else
            result "dax/host/$name-intact" FAIL "the host file changed"
        fi
        if [[ $mode == zero ]] && ((cache > spans)); then
            result "dax/host/$name-page-cache" FAIL "$cache pages cached, the data spans are $spans; $("$seekmap" resident "$dir/$name"); $(dax_trace_who "$dir/$name" "$out")"
        else
            result "dax/host/$name-page-cache" PASS "$cache pages cached ($mode mode; data $((data / 4096)), spans $spans, size $((size / 4096)))"
        fi
    done < <(dax_files "$extra")
    local peak_maps=0 peak_rss=0 peak_regions
    [[ -s $out/vmm-peak ]] && read -r peak_maps peak_rss <"$out/vmm-peak"
    if ((peak_maps <= slots)); then
        result dax/vmm-mappings PASS "at most $peak_maps file mappings in the VMM (slots $slots), peak RSS $((peak_rss / 1024)) MiB"
    else
        result dax/vmm-mappings FAIL "$peak_maps file mappings in the VMM, more than --dax-slots $slots"
    fi
    peak_regions=$(grep -o 'peak_regions=[0-9]*' "$out/backend.log" | tail -1 | cut -d= -f2)
    if [[ -n $peak_regions ]] && ((peak_regions > 0 && peak_regions <= slots)); then
        result dax/backend-regions PASS "$(grep -o 'setupmapping=.*' "$out/backend.log" | tail -1)"
    else
        result dax/backend-regions FAIL "peak_regions=${peak_regions:-none reported} (slots $slots)"
    fi
}
