//! Hole reads through a window against plain mmap, read(2) and the anonymous huge zero
//! page limit, cold and warm, plus the cost of one write upgrade and the allocation
//! granule ext4 really gives. Plain std timing; run as root (it loop-mounts an ext4):
//!
//!     cargo bench -p dax-window --bench window
//!
//! Cold includes everything a first reader pays: mapping, populating, write-protecting.

#[path = "../tests/common/mod.rs"]
mod common;

use std::fs::File;
use std::hint::black_box;
use std::os::fd::AsRawFd;
use std::os::unix::fs::FileExt;
use std::time::{Duration, Instant};

use common::{blocks_bytes, sparse_file, Ext4, MIB};
use dax_window::{Window, HUGE_SIZE, PAGE_SIZE};

const GIB: usize = 1 << 30;
const RUNS: usize = 3;

/// Reads every byte of `[p, p+len)` (as u64 words, summed so nothing is optimised away).
fn read_region(p: *const u8, len: usize) -> u64 {
    // SAFETY: callers pass a mapped, readable, 8-byte aligned range of `len` bytes.
    let words = unsafe { std::slice::from_raw_parts(p as *const u64, len / 8) };
    let mut acc = [0u64; 8];
    for c in words.chunks_exact(8) {
        for i in 0..8 {
            acc[i] = acc[i].wrapping_add(c[i]);
        }
    }
    black_box(acc.iter().fold(0, |a, &b| a.wrapping_add(b)))
}

fn drop_cache(f: &File) {
    let _ = f.sync_all();
    // SAFETY: advice on our own descriptor; drops clean page cache of the file.
    unsafe { libc::posix_fadvise(f.as_raw_fd(), 0, 0, libc::POSIX_FADV_DONTNEED) };
}

/// A fresh `MAP_SHARED` read-write mapping of the first `len` bytes of `f`; the caller
/// unmaps it.
fn map_shared(f: &File, len: usize) -> *mut u8 {
    // SAFETY: a new mapping at an address the kernel picks; it replaces nothing.
    let p = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            len,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_SHARED,
            f.as_raw_fd(),
            0,
        )
    };
    assert_ne!(
        p,
        libc::MAP_FAILED,
        "mmap: {}",
        std::io::Error::last_os_error()
    );
    p.cast()
}

fn gibs(len: usize, d: Duration) -> f64 {
    len as f64 / GIB as f64 / d.as_secs_f64()
}

struct Row {
    name: &'static str,
    cold: Duration,
    warm: Duration,
}

fn best<F: FnMut() -> (Duration, Duration)>(mut f: F) -> (Duration, Duration) {
    let mut c = Duration::MAX;
    let mut w = Duration::MAX;
    for _ in 0..RUNS {
        let (a, b) = f();
        c = c.min(a);
        w = w.min(b);
    }
    (c, w)
}

fn window_read(f: &File, len: usize, writable: bool) -> (Duration, Duration) {
    let t = Instant::now();
    let w = Window::new(len).unwrap();
    w.map_file(0, len, f, 0, writable).unwrap();
    read_region(w.as_ptr(), len);
    let cold = t.elapsed();
    let t = Instant::now();
    read_region(w.as_ptr(), len);
    let warm = t.elapsed();
    let s = w.page_states(0, len).unwrap();
    assert_eq!(s.zero_total(), (len / PAGE_SIZE) as u64);
    (cold, warm)
}

fn plain_mmap_read(f: &File, len: usize) -> (Duration, Duration) {
    drop_cache(f);
    let cached0 = dax_window::procfs::meminfo_kib("Cached").unwrap();
    let t = Instant::now();
    // SAFETY: a fresh shared read-only mapping of the file, unmapped below.
    let p = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            len,
            libc::PROT_READ,
            libc::MAP_SHARED,
            f.as_raw_fd(),
            0,
        )
    };
    assert_ne!(p, libc::MAP_FAILED);
    read_region(p as *const u8, len);
    let cold = t.elapsed();
    let cached1 = dax_window::procfs::meminfo_kib("Cached").unwrap();
    println!(
        "  plain mmap cold read: page cache +{} MiB",
        cached1.saturating_sub(cached0) / 1024
    );
    let t = Instant::now();
    read_region(p as *const u8, len);
    let warm = t.elapsed();
    // SAFETY: our own mapping.
    unsafe { libc::munmap(p, len) };
    drop_cache(f);
    (cold, warm)
}

fn read_syscall(f: &File, len: usize) -> (Duration, Duration) {
    drop_cache(f);
    let mut buf = vec![0u8; MIB];
    let mut once = || {
        let t = Instant::now();
        let mut off = 0;
        while off < len {
            f.read_exact_at(&mut buf, off as u64).unwrap();
            read_region(buf.as_ptr(), buf.len());
            off += buf.len();
        }
        t.elapsed()
    };
    let cold = once();
    let warm = once();
    drop_cache(f);
    (cold, warm)
}

fn anon_limit(len: usize) -> (Duration, Duration) {
    let t = Instant::now();
    // SAFETY: a fresh anonymous reservation, 2 MiB aligned by over-allocating.
    let raw = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            len + HUGE_SIZE,
            libc::PROT_READ,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_NORESERVE,
            -1,
            0,
        )
    };
    assert_ne!(raw, libc::MAP_FAILED);
    let p = (raw as usize).next_multiple_of(HUGE_SIZE);
    // SAFETY: advice on our own mapping.
    unsafe { libc::madvise(p as *mut libc::c_void, len, libc::MADV_HUGEPAGE) };
    read_region(p as *const u8, len);
    let cold = t.elapsed();
    let t = Instant::now();
    read_region(p as *const u8, len);
    let warm = t.elapsed();
    // SAFETY: our own mapping.
    unsafe { libc::munmap(raw, len + HUGE_SIZE) };
    (cold, warm)
}

/// Average time of one isolated write upgrade (fault, allocate, map, wake).
fn upgrade_cost(fs: &Ext4, n: usize) -> Duration {
    let path = fs.path("upgrade");
    let len = n * 16 * PAGE_SIZE;
    let f = sparse_file(&path, len as u64, &[]);
    let w = Window::new(len).unwrap();
    w.map_file(0, len, &f, 0, true).unwrap();
    let t = Instant::now();
    for i in 0..n {
        // SAFETY: a store into a writable hole of the window.
        unsafe { std::ptr::write_volatile(w.as_ptr().add(i * 16 * PAGE_SIZE), 1u8) };
    }
    let d = t.elapsed();
    assert_eq!(w.stats().upgrades as usize, n);
    d / n as u32
}

/// Average time of a first write into a hole page through plain MAP_SHARED mmap
/// (page_mkwrite in ext4), for comparison.
fn plain_write_cost(fs: &Ext4, n: usize) -> Duration {
    let path = fs.path("plainwrite");
    let len = n * 16 * PAGE_SIZE;
    let f = sparse_file(&path, len as u64, &[]);
    let p = map_shared(&f, len);
    let t = Instant::now();
    for i in 0..n {
        // SAFETY: in-bounds store into our mapping.
        unsafe { std::ptr::write_volatile(p.add(i * 16 * PAGE_SIZE), 1u8) };
    }
    let d = t.elapsed();
    // SAFETY: our own mapping.
    unsafe { libc::munmap(p as *mut libc::c_void, len) };
    d / n as u32
}

/// Bytes ext4 allocates for a one-byte mmap write into the middle of a 64 MiB hole:
/// through plain mmap (cold, and after read(2) of the neighbourhood) and through a window.
fn granules(fs: &Ext4) -> (u64, u64, u64, u64) {
    let len = 64 * MIB;
    let off = 33 * MIB + 5 * PAGE_SIZE;
    let plain = |name: &str, read_first: u8| {
        let path = fs.path(name);
        let f = sparse_file(&path, len as u64, &[]);
        if read_first == 1 {
            let mut buf = vec![0u8; 4 * MIB];
            f.read_exact_at(&mut buf, (32 * MIB) as u64).unwrap();
        }
        let before = blocks_bytes(&path);
        let p = map_shared(&f, len);
        if read_first == 2 {
            read_region(p.wrapping_add(32 * MIB), 4 * MIB);
        }
        // SAFETY: in-bounds store into our mapping.
        unsafe { std::ptr::write_volatile(p.add(off), 1u8) };
        f.sync_all().unwrap();
        // SAFETY: our own mapping.
        unsafe { libc::munmap(p as *mut libc::c_void, len) };
        blocks_bytes(&path) - before
    };
    let cold = plain("g-cold", 0);
    let after_read = plain("g-read", 1);
    let after_mmap_read = plain("g-mread", 2);
    let path = fs.path("g-window");
    let f = sparse_file(&path, len as u64, &[]);
    let mut buf = vec![0u8; 4 * MIB];
    f.read_exact_at(&mut buf, (32 * MIB) as u64).unwrap();
    let before = blocks_bytes(&path);
    let w = Window::new(len).unwrap();
    w.map_file(0, len, &f, 0, true).unwrap();
    w.write_at(off, &[1]).unwrap();
    f.sync_all().unwrap();
    (
        cold,
        after_read,
        after_mmap_read,
        blocks_bytes(&path) - before,
    )
}

/// GiB/s of `read_at` and `write_at` (volatile word copies) against plain `memcpy` of the
/// same window memory (what they did before), on 64 MiB of file data in the page cache,
/// 1 MiB at a time; at a word-aligned window offset and at an odd one (unaligned edges, and
/// a private buffer misaligned by 3).
fn copy_throughput(fs: &Ext4) -> Vec<(&'static str, f64)> {
    let len = 64 * MIB;
    let path = fs.path("copies");
    let f = sparse_file(&path, len as u64, &[(0, &vec![7u8; len])]);
    let w = Window::new(len).unwrap();
    w.map_file(0, len, &f, 0, true).unwrap();
    let mut buf = vec![0u8; MIB + 8];
    let chunk = MIB;
    let time = |f: &mut dyn FnMut(usize)| {
        let mut best = Duration::MAX;
        for _ in 0..5 {
            let t = Instant::now();
            let mut off = 0;
            while off + chunk + 8 <= len {
                f(off);
                off += chunk;
            }
            best = best.min(t.elapsed());
        }
        gibs(len - chunk, best)
    };
    let base = w.as_ptr();
    let mut rows = Vec::new();
    for (skew, pskew, name_r, name_w, name_m) in [
        (
            0,
            0,
            "read_at aligned",
            "write_at aligned",
            "memcpy aligned",
        ),
        (5, 3, "read_at odd", "write_at odd", "memcpy odd"),
    ] {
        rows.push((
            name_r,
            time(&mut |off| {
                w.read_at(off + skew, &mut buf[pskew..pskew + chunk])
                    .unwrap()
            }),
        ));
        rows.push((
            name_w,
            time(&mut |off| w.write_at(off + skew, &buf[pskew..pskew + chunk]).unwrap()),
        ));
        rows.push((
            name_m,
            time(&mut |off| {
                // SAFETY: in-bounds window memory (mapped, data pages in the page cache)
                // into a distinct buffer; a plain copy, the baseline being replaced.
                unsafe {
                    std::ptr::copy_nonoverlapping(
                        base.add(off + skew),
                        buf.as_mut_ptr().add(pskew),
                        chunk,
                    )
                };
                black_box(&buf);
            }),
        ));
    }
    rows
}

fn main() {
    // `cargo test --benches` runs this with --bench absent; only measure under cargo bench.
    if !std::env::args().any(|a| a == "--bench") {
        return;
    }
    let fs = Ext4::new(1024);
    let len = GIB;
    let path = fs.path("holes");
    let f = sparse_file(&path, len as u64, &[]);
    let mut rows = Vec::new();
    let (cold, warm) = anon_limit(len);
    let (cold, warm) = {
        let (c2, w2) = best(|| anon_limit(len));
        (cold.min(c2), warm.min(w2))
    };
    rows.push(Row {
        name: "limit: anon huge zero",
        cold,
        warm,
    });
    let (cold, warm) = best(|| window_read(&f, len, false));
    rows.push(Row {
        name: "window read-only",
        cold,
        warm,
    });
    let (cold, warm) = best(|| window_read(&f, len, true));
    rows.push(Row {
        name: "window writable",
        cold,
        warm,
    });
    let (cold, warm) = best(|| plain_mmap_read(&f, len));
    rows.push(Row {
        name: "plain mmap of file",
        cold,
        warm,
    });
    let (cold, warm) = best(|| read_syscall(&f, len));
    rows.push(Row {
        name: "read(2) 1 MiB",
        cold,
        warm,
    });

    println!("Hole reads of a 1 GiB sparse file on ext4 (best of {RUNS}):");
    println!(
        "{:<24} {:>10} {:>10} {:>12} {:>12} {:>12}",
        "path", "cold GiB/s", "warm GiB/s", "cold/limit", "cold/mmap", "warm/limit"
    );
    let limit = &rows[0];
    let mmap_cold = rows[3].cold;
    for r in &rows {
        println!(
            "{:<24} {:>10.1} {:>10.1} {:>12.2} {:>12.1} {:>12.2}",
            r.name,
            gibs(len, r.cold),
            gibs(len, r.warm),
            limit.cold.as_secs_f64() / r.cold.as_secs_f64(),
            mmap_cold.as_secs_f64() / r.cold.as_secs_f64(),
            limit.warm.as_secs_f64() / r.warm.as_secs_f64(),
        );
    }
    let n = 2000;
    let up = upgrade_cost(&fs, n);
    let plain = plain_write_cost(&fs, n);
    println!(
        "write upgrade: {:.1} us per isolated hole page through the window ({n} pages); \
         first write to a hole page through plain mmap: {:.1} us ({:.1}x)",
        up.as_secs_f64() * 1e6,
        plain.as_secs_f64() * 1e6,
        up.as_secs_f64() / plain.as_secs_f64()
    );
    for (name, g) in copy_throughput(&fs) {
        println!("copy, 64 MiB of cached file data in 1 MiB pieces: {name:<17} {g:>6.1} GiB/s");
    }
    let (cold, after_read, after_mmap_read, window) = granules(&fs);
    println!(
        "allocation for a 1-byte mmap write into a 64 MiB hole: plain mmap {} KiB, \
         after read(2) of the neighbourhood {} KiB, after reading it through the mapping \
         {} KiB; window (after read(2) of the neighbourhood) {} KiB",
        cold / 1024,
        after_read / 1024,
        after_mmap_read / 1024,
        window / 1024
    );
}
