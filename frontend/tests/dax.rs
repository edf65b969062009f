//! The DAX window end to end: `zerodax serve --cache-size ...` behind the built-in frontend,
//! which serves SHMEM_MAP/SHMEM_UNMAP into a dax-window window (VMM side, enforcing the
//! vhost-user rules) and drives it as Linux's fs/fuse/dax.c does (guest side). Everything on
//! a loop-mounted ext4 image, page states read with PAGEMAP_SCAN.
//!
//! zerodax only: neither virtiofsd offers a DAX window.

mod common;

use std::fs::{File, OpenOptions};
use std::os::unix::fs::{FileExt, MetadataExt};
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use common::*;
use dax_window::{procfs, PAGE_SIZE};
use frontend::backend::BackendSpec;
use frontend::dax::{DaxGuest, RANGE_SIZE};
use frontend::driver::DriverConfig;
use frontend::fuse::{FuseClient, FuseError, DEFAULT_INIT_FLAGS};
use protocol::abi::*;
use protocol::Wire;
use vhost::vhost_user::VhostUserProtocolFeatures as P;

const MIB: u64 = 1 << 20;

/// The tests of this file run one at a time: the memory test reads this process's RssAnon.
static SERIAL: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn serial() -> std::sync::MutexGuard<'static, ()> {
    SERIAL.lock().unwrap_or_else(|e| e.into_inner())
}
const PAGE: u64 = PAGE_SIZE as u64;

fn dax_config() -> DriverConfig {
    DriverConfig {
        timeout: TIMEOUT,
        protocol_features: P::MQ | P::REPLY_ACK | P::SHMEM | P::BACKEND_REQ | P::BACKEND_SEND_FD,
        ..Default::default()
    }
}

fn spec(extra: &[&str]) -> BackendSpec {
    let bin = zerodax_bin().expect("zerodax binary (build it, or set ZERODAX_BIN)");
    let mut spec = BackendSpec::zerodax(bin);
    spec.args.extend(extra.iter().map(|s| s.to_string()));
    spec
}

const DAX_INIT: u64 = DEFAULT_INIT_FLAGS | FUSE_MAP_ALIGNMENT | FUSE_HAS_INODE_DAX;

/// A backend with a DAX window serving a fresh ext4 prepared by `prepare`, INIT done.
fn start(test: &str, extra: &[&str], prepare: impl FnOnce(&Path)) -> Harness {
    let scratch = Scratch::new(test);
    prepare(&scratch.mnt);
    let mut h = Harness::start_on(scratch, &spec(extra), &dax_config());
    let out =
        h.fs.init(DAX_INIT)
            .unwrap_or_else(|e| panic!("INIT: {e}\n{}", h.backend.log_tail(2000)));
    assert_eq!(out.map_alignment, 12, "MAP_ALIGNMENT is log2 of 4 KiB");
    assert_ne!(h.fs.accepted_flags() & FUSE_MAP_ALIGNMENT, 0);
    assert_ne!(h.fs.accepted_flags() & FUSE_HAS_INODE_DAX, 0);
    h
}

/// Deterministic bytes, never zero (so a zero read is always a bug).
fn pattern(seed: u64, len: usize) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x as u8) | 1
        })
        .collect()
}

/// A sparse file of `size` with `data` written at the given offsets; synced, cache dropped.
fn make_sparse(path: &Path, size: u64, data: &[(u64, Vec<u8>)]) {
    scratch::sparse_file(path, size, data.iter().map(|(off, bytes)| (*off, bytes))).unwrap();
    drop_cache(path);
}

fn drop_cache(path: &Path) {
    scratch::drop_cache(&File::open(path).unwrap()).unwrap();
}

/// Page-cache pages of `path` (cachestat(2)).
fn cached_pages(path: &Path) -> u64 {
    procfs::cached_pages(&File::open(path).unwrap()).expect("cachestat")
}

fn status_kib(pid: u32, field: &str) -> u64 {
    let text = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    text.lines()
        .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or_else(|| panic!("{field} in /proc/{pid}/status"))
}

/// Data extents of a host file, page-rounded and merged: (start, end) pairs.
fn data_pages(path: &Path) -> Vec<(u64, u64)> {
    let f = File::open(path).unwrap();
    let len = f.metadata().unwrap().len();
    let mut v: Vec<(u64, u64)> = Vec::new();
    for e in dax_window::data_extents(&f, 0, len).unwrap() {
        let s = e.start / PAGE * PAGE;
        let t = e.end.div_ceil(PAGE) * PAGE;
        match v.last_mut() {
            Some(l) if l.1 >= s => l.1 = l.1.max(t),
            _ => v.push((s, t)),
        }
    }
    v
}

fn lookup(h: &mut Harness, name: &str) -> u64 {
    let e = h.fs.lookup(FUSE_ROOT_ID, name).unwrap();
    assert_ne!(
        e.attr.flags & FUSE_ATTR_DAX,
        0,
        "--dax-inodes all marks regular files"
    );
    e.nodeid
}

/// The scattered-extent file of the main test: `extents` extents of `extent_len` bytes at
/// distinct, pseudo-random 2 MiB slots, at a pseudo-random page offset in each.
fn scattered(size: u64, extents: u64, extent_len: u64) -> Vec<(u64, Vec<u8>)> {
    let slots = size / RANGE_SIZE;
    let step = slots / extents;
    (0..extents)
        .map(|i| {
            let slot = i * step + (i * 7919) % step.max(1);
            let in_slot = ((i * 104_729) % ((RANGE_SIZE - extent_len) / PAGE)) * PAGE;
            (
                slot * RANGE_SIZE + in_slot,
                pattern(i + 1, extent_len as usize),
            )
        })
        .collect()
}

struct ReadReport {
    pages: u64,
    data_pages: u64,
    zero: u64,
    file: u64,
    other: u64,
    cache_before: u64,
    cache_after: u64,
    fe_anon_kib: (u64, u64),
    be_anon_kib: (u64, u64),
}

/// Reads the whole file `name` through the window, checks every byte against the host file,
/// and reports page states and memory.
fn read_through_window(h: &mut Harness, name: &str) -> ReadReport {
    let path = h.host(name);
    let size = std::fs::metadata(&path).unwrap().len();
    let node = lookup(h, name);
    let mut guest = DaxGuest::new(&mut h.fs).unwrap();
    assert!(guest.window().len() as u64 >= size, "window holds the file");
    let host = File::open(&path).unwrap();
    let be_pid = h.backend.serving_pid().unwrap();
    let mut buf = vec![0u8; RANGE_SIZE as usize];
    let mut want = vec![0u8; RANGE_SIZE as usize];
    drop_cache(&path);
    let cache_before = cached_pages(&path);
    let fe_before = status_kib(std::process::id(), "RssAnon");
    let be_before = status_kib(be_pid, "RssAnon");

    let mut off = 0;
    while off < size {
        let n = (size - off).min(RANGE_SIZE) as usize;
        guest
            .read(&mut h.fs, node, off, &mut buf[..n])
            .unwrap_or_else(|e| panic!("read at {off}: {e}\n{}", h.backend.log_tail(2000)));
        off += n as u64;
    }
    let cache_after = cached_pages(&path);
    let fe_after = status_kib(std::process::id(), "RssAnon");
    let be_after = status_kib(be_pid, "RssAnon");

    // Byte for byte (host reads after the measurement: they go through the page cache).
    let mut off = 0;
    while off < size {
        let n = (size - off).min(RANGE_SIZE) as usize;
        let w = guest.window_offset(node, off).unwrap();
        guest.window().read_at(w, &mut buf[..n]).unwrap();
        host.read_exact_at(&mut want[..n], off).unwrap();
        assert!(
            buf[..n] == want[..n],
            "window differs from the file at {off}"
        );
        off += n as u64;
    }
    let states = guest.window().page_states(0, size as usize).unwrap();
    let data: u64 = data_pages(&path).iter().map(|(s, e)| (e - s) / PAGE).sum();
    assert_eq!(guest.shmem().stats().refused, 0);
    ReadReport {
        pages: size / PAGE,
        data_pages: data,
        zero: states.zero_total(),
        file: states.file,
        other: states.private_anon + states.marker + states.not_populated,
        cache_before,
        cache_after,
        fe_anon_kib: (fe_before, fe_after),
        be_anon_kib: (be_before, be_after),
    }
}

/// Readahead allowance of the zero-mode memory check: the daemon hands the VMM its
/// descriptor with POSIX_FADV_RANDOM, so a fault reads the faulting page only; what is left
/// is the edge of page-rounded extents. Stated: 16 pages per extent plus 1 MiB.
fn allowance_pages(extents: u64) -> u64 {
    16 * extents + MIB / PAGE
}

#[test]
fn zero_mode_holes_are_zero_pages_and_cost_nothing() {
    let _serial = serial();
    let size = 1 << 30;
    let extents = 40;
    let extent_len = 256 << 10; // 40 x 256 KiB = 10 MiB, ~1% of 1 GiB
    let data = scattered(size, extents, extent_len);
    let mut h = start(
        "dax-zero",
        // The built-in frontend has no memory-slot limit: slots for every range of 1 GiB (four
        // regions each at most).
        &[
            "--cache-size",
            "1G",
            "--dax-holes",
            "zero",
            "--dax-slots",
            "2048",
        ],
        |d| make_sparse(&d.join("sparse"), size, &data),
    );
    let r = read_through_window(&mut h, "sparse");
    let data_bytes = r.data_pages * PAGE;
    eprintln!(
        "zero mode: {} pages: {} zero, {} file ({} data pages), {} other; page cache {} -> {} pages; \
         RssAnon frontend {:?} KiB, backend {:?} KiB",
        r.pages, r.zero, r.file, r.data_pages, r.other, r.cache_before, r.cache_after,
        r.fe_anon_kib, r.be_anon_kib
    );
    assert_eq!(data_bytes, extents * extent_len);
    assert_eq!(
        r.zero,
        r.pages - r.data_pages,
        "every hole page is the zero page"
    );
    assert_eq!(r.file, r.data_pages, "every data page is a file page");
    assert_eq!(r.other, 0);
    let grown = r.cache_after.saturating_sub(r.cache_before);
    assert!(
        grown >= r.data_pages && grown <= r.data_pages + allowance_pages(extents),
        "page cache grew by {grown} pages for {} data pages",
        r.data_pages
    );
    // Zero pages and shared file pages are no anonymous memory; 8 MiB covers allocator
    // and stack noise of either process.
    assert!(
        r.fe_anon_kib.1 <= r.fe_anon_kib.0 + 8192,
        "{:?}",
        r.fe_anon_kib
    );
    assert!(
        r.be_anon_kib.1 <= r.be_anon_kib.0 + 8192,
        "{:?}",
        r.be_anon_kib
    );
}

#[test]
fn map_mode_maps_holes_from_the_file() {
    let _serial = serial();
    let size = 256 * MIB;
    let extents = 10;
    let data = scattered(size, extents, 256 << 10);
    let mut h = start(
        "dax-map",
        &["--cache-size", "256M", "--dax-holes", "map"],
        |d| make_sparse(&d.join("sparse"), size, &data),
    );
    let r = read_through_window(&mut h, "sparse");
    eprintln!(
        "map mode: {} pages: {} zero, {} file; page cache {} -> {} pages",
        r.pages, r.zero, r.file, r.cache_before, r.cache_after
    );
    assert_eq!(
        r.file, r.pages,
        "every page, holes included, is a file page"
    );
    assert_eq!(r.zero, 0);
    assert!(
        r.cache_after - r.cache_before >= r.pages,
        "hole pages cost page cache"
    );
    drop_cache(&h.host("sparse"));
}

#[test]
fn write_into_hole_upgrades_without_readers_seeing_zeros() {
    let _serial = serial();
    let a = pattern(11, 64 << 10);
    let b = pattern(12, 64 << 10);
    let mut h = start(
        "dax-upgrade",
        &["--cache-size", "8M", "--dax-holes", "zero"],
        |d| {
            make_sparse(
                &d.join("f"),
                8 * MIB,
                &[(0, a.clone()), (256 << 10, b.clone())],
            )
        },
    );
    let node = lookup(&mut h, "f");
    let fh = h.fs.open(node, libc::O_RDWR as u32).unwrap().fh;
    let mut guest = DaxGuest::new(&mut h.fs).unwrap();
    // The VMM's window has no userfaultfd handler (as QEMU's region): the guest's write into
    // a hole below is served by the backend's SETUPMAPPING WRITE and SHMEM_MAP alone.
    assert!(!guest.window().has_fault_handler());
    guest.map_for_read(&mut h.fs, node, 0, RANGE_SIZE).unwrap();
    let base = guest.window_offset(node, 0).unwrap();
    let path = h.host("f");
    let blocks_before = std::fs::metadata(&path).unwrap().blocks();
    // A hole between the two extents lies inside the range's one data region (first data
    // page to last: the slot budget's shape), so it is a file page reading zeros; the hole
    // past the last extent is outside it and stays the zero page until written.
    let mut inner = vec![1u8; PAGE_SIZE];
    guest.read(&mut h.fs, node, 128 << 10, &mut inner).unwrap();
    assert!(inner.iter().all(|&b| b == 0));
    assert_eq!(
        guest
            .window()
            .page_states(base + (128 << 10), PAGE_SIZE)
            .unwrap()
            .file,
        1,
        "a hole inside the data span is mapped from the file"
    );
    let hole_off = 1 << 20;
    let mut hole = vec![1u8; PAGE_SIZE];
    guest
        .read(&mut h.fs, node, hole_off as u64, &mut hole)
        .unwrap();
    assert!(hole.iter().all(|&b| b == 0));
    assert_eq!(
        guest
            .window()
            .page_states(base + hole_off, PAGE_SIZE)
            .unwrap()
            .zero_total(),
        1,
        "the hole reads as the zero page before the write"
    );

    // Readers of the neighbouring data pages run through the upgrade.
    let shmem = Arc::clone(guest.shmem());
    let stop = Arc::new(AtomicBool::new(false));
    let zeros_seen = Arc::new(AtomicU64::new(0));
    let reads = Arc::new(AtomicU64::new(0));
    // Reads that overlapped the upgrade in time (the race this test is about), counted rather
    // than hoped for: `phase` is 0 before the upgrade, 1 during it, 2 after; a read
    // overlapped it unless it ended before it began (phase 0 after the read) or began after
    // it ended (phase 2 before the read).
    let phase = Arc::new(AtomicU64::new(0));
    let during = Arc::new(AtomicU64::new(0));
    let readers: Vec<_> = [(0usize, a.clone()), (256usize << 10, b.clone())]
        .into_iter()
        .map(|(off, want)| {
            let (shmem, stop, zeros_seen, reads, phase, during) = (
                Arc::clone(&shmem),
                Arc::clone(&stop),
                Arc::clone(&zeros_seen),
                Arc::clone(&reads),
                Arc::clone(&phase),
                Arc::clone(&during),
            );
            std::thread::spawn(move || {
                let w = shmem.window().unwrap();
                let mut buf = vec![0u8; want.len()];
                while !stop.load(Ordering::Relaxed) {
                    let before = phase.load(Ordering::SeqCst);
                    w.read_at(base + off, &mut buf).unwrap();
                    if before < 2 && phase.load(Ordering::SeqCst) > 0 {
                        during.fetch_add(1, Ordering::Relaxed);
                    }
                    if buf != want {
                        zeros_seen.fetch_add(1, Ordering::Relaxed);
                    }
                    reads.fetch_add(1, Ordering::Relaxed);
                }
            })
        })
        .collect();
    std::thread::sleep(Duration::from_millis(20));
    let maps_before = guest.shmem().stats().maps;
    phase.store(1, Ordering::SeqCst);
    guest
        .write(
            &mut h.fs,
            node,
            fh,
            hole_off as u64 + 100,
            b"written through the window",
        )
        .unwrap();
    phase.store(2, Ordering::SeqCst);
    std::thread::sleep(Duration::from_millis(20));
    stop.store(true, Ordering::Relaxed);
    for r in readers {
        r.join().unwrap();
    }
    assert!(reads.load(Ordering::Relaxed) > 2);
    eprintln!(
        "{} reads, {} of them during the upgrade",
        reads.load(Ordering::Relaxed),
        during.load(Ordering::Relaxed)
    );
    assert!(
        during.load(Ordering::Relaxed) > 0,
        "no read overlapped the upgrade: the test proved nothing"
    );
    assert_eq!(
        zeros_seen.load(Ordering::Relaxed),
        0,
        "a reader of a data page saw other bytes during the upgrade"
    );
    assert!(
        guest.shmem().stats().maps > maps_before,
        "the upgrade mapped the holes"
    );
    assert_eq!(
        guest.shmem().stats().unmaps,
        0,
        "no data was unmapped and remapped"
    );
    assert_eq!(guest.shmem().stats().refused, 0);

    // The page is a file page now; the bytes are in the file; the rest is still a hole.
    assert_eq!(
        guest
            .window()
            .page_states(base + hole_off, PAGE_SIZE)
            .unwrap()
            .file,
        1
    );
    h.fs.fsync(node, fh, false).unwrap();
    let f = File::open(&path).unwrap();
    let mut got = vec![0u8; 26];
    f.read_exact_at(&mut got, hole_off as u64 + 100).unwrap();
    assert_eq!(got, b"written through the window");
    let data = data_pages(&path);
    assert_eq!(
        data,
        vec![
            (0, 64 << 10),
            (256 << 10, 320 << 10),
            (hole_off as u64, hole_off as u64 + PAGE)
        ],
        "only the written page became data"
    );
    let grown = (std::fs::metadata(&path).unwrap().blocks() - blocks_before) * 512;
    assert_eq!(grown, PAGE, "st_blocks grew by one page");
}

/// Checks that every live range of `node` shows exactly the file's bytes up to EOF and that
/// no mapping reaches past EOF.
fn assert_coherent(h: &mut Harness, guest: &DaxGuest, node: u64, name: &str, ranges: u64) {
    let path = h.host(name);
    let size = std::fs::metadata(&path).unwrap().len();
    let host = File::open(&path).unwrap();
    for idx in 0..ranges {
        let foff = idx * RANGE_SIZE;
        if foff >= size {
            continue;
        }
        let n = (size - foff).min(RANGE_SIZE) as usize;
        let w = guest.window_offset(node, foff).unwrap();
        let mut got = vec![0u8; n];
        let mut want = vec![0u8; n];
        guest.window().read_at(w, &mut got).unwrap();
        host.read_exact_at(&mut want, foff).unwrap();
        if let Some(i) = (0..n).find(|&i| got[i] != want[i]) {
            panic!(
                "{name}: window at file offset {} shows {:#x}, file has {:#x}",
                foff + i as u64,
                got[i],
                want[i]
            );
        }
    }
    let eof_page = size.div_ceil(PAGE) * PAGE;
    for m in guest.window().mappings() {
        assert!(
            m.file_offset + m.len as u64 <= eof_page,
            "mapping {:#x}+{:#x} of file offset {:#x} reaches past EOF {size}",
            m.window_offset,
            m.len,
            m.file_offset
        );
    }
    assert_eq!(guest.shmem().stats().refused, 0);
}

#[test]
fn zerodax_keeps_live_ranges_coherent() {
    let _serial = serial();
    let head = pattern(21, 64 << 10);
    let src = pattern(22, 128 << 10);
    let mut h = start(
        "dax-coherence",
        &["--cache-size", "16M", "--dax-holes", "zero"],
        |d| {
            make_sparse(&d.join("f"), 3 * MIB, &[(0, head.clone())]);
            make_sparse(&d.join("src"), MIB, &[(0, src.clone())]);
        },
    );
    let node = lookup(&mut h, "f");
    let src_node = lookup(&mut h, "src");
    let fh = h.fs.open(node, libc::O_RDWR as u32).unwrap().fh;
    let src_fh = h.fs.open(src_node, libc::O_RDONLY as u32).unwrap().fh;
    let mut guest = DaxGuest::new(&mut h.fs).unwrap();
    guest.map_for_read(&mut h.fs, node, 0, 3 * MIB).unwrap();
    assert_eq!(guest.ranges(), 2);
    assert_coherent(&mut h, &guest, node, "f", 2);

    // A FUSE_WRITE into a hole inside a live range.
    h.fs.write(node, fh, 512 << 10, &pattern(23, 8192)).unwrap();
    assert_coherent(&mut h, &guest, node, "f", 2);
    let w = guest.window_offset(node, 512 << 10).unwrap();
    assert_eq!(
        guest.window().page_states(w, 2 * PAGE_SIZE).unwrap().file,
        2
    );

    // An append (file-extending FUSE_WRITE) into the second range, past the old EOF.
    guest
        .write(&mut h.fs, node, fh, 3 * MIB, &pattern(24, 20000))
        .unwrap();
    assert_coherent(&mut h, &guest, node, "f", 2);
    let w = guest.window_offset(node, 3 * MIB).unwrap();
    assert_eq!(guest.window().page_states(w, PAGE_SIZE).unwrap().file, 1);

    // COPY_FILE_RANGE into a hole.
    let arg = FuseCopyFileRangeIn {
        fh_in: src_fh,
        off_in: 0,
        nodeid_out: node,
        fh_out: fh,
        off_out: MIB,
        len: 128 << 10,
        flags: 0,
    };
    assert_eq!(h.fs.copy_file_range(src_node, &arg).unwrap(), 128 << 10);
    assert_coherent(&mut h, &guest, node, "f", 2);

    // FALLOCATE growing the file (unwritten extents read as zeros) and one inside it.
    h.fs.fallocate(node, fh, 3 * MIB + 20000, 300 << 10, 0)
        .unwrap();
    h.fs.fallocate(node, fh, 1536 << 10, 64 << 10, 0).unwrap();
    assert_coherent(&mut h, &guest, node, "f", 2);

    // Truncate down into the first range: nothing may stay mapped past the new EOF.
    let unmaps = guest.shmem().stats().unmaps;
    let set = FuseSetattrIn {
        valid: FATTR_SIZE,
        size: MIB + 100,
        ..Default::default()
    };
    h.fs.setattr(node, &set).unwrap();
    assert!(guest.shmem().stats().unmaps > unmaps);
    assert_coherent(&mut h, &guest, node, "f", 2);
    // The guest refuses access at or past EOF (it would get SIGBUS).
    let mut byte = [0u8; 1];
    assert!(matches!(
        guest.read(&mut h.fs, node, MIB + 100, &mut byte),
        Err(frontend::dax::DaxError::PastEof { .. })
    ));
    guest.read(&mut h.fs, node, MIB + 99, &mut byte).unwrap();

    // And growing it again with SETATTR: the window shows the (zero) bytes, no stale data.
    let set = FuseSetattrIn {
        valid: FATTR_SIZE,
        size: 2 * MIB + 5,
        ..Default::default()
    };
    h.fs.setattr(node, &set).unwrap();
    assert_coherent(&mut h, &guest, node, "f", 2);
}

#[test]
fn outside_writers_are_seen_after_the_range_is_set_up_again() {
    let _serial = serial();
    let mut h = start(
        "dax-outside",
        &["--cache-size", "4M", "--dax-holes", "zero"],
        |d| make_sparse(&d.join("f"), 2 * MIB, &[(0, pattern(31, 4096))]),
    );
    let node = lookup(&mut h, "f");
    let mut guest = DaxGuest::new(&mut h.fs).unwrap();
    guest.map_for_read(&mut h.fs, node, 0, RANGE_SIZE).unwrap();
    let w = guest.window_offset(node, 0).unwrap();
    // A host process writes into a hole of the live range: documented staleness.
    let bytes = pattern(32, 4096);
    OpenOptions::new()
        .write(true)
        .open(h.host("f"))
        .unwrap()
        .write_all_at(&bytes, MIB)
        .unwrap();
    let mut got = vec![0u8; 4096];
    guest.window().read_at(w + MIB as usize, &mut got).unwrap();
    assert!(
        got.iter().all(|&b| b == 0),
        "stale until set up again (docs/dax.md)"
    );
    // The guest sets the range up again (as after reclaim): the new data is mapped.
    h.fs.setupmapping(
        node,
        FuseSetupmappingIn {
            fh: u64::MAX,
            foffset: 0,
            len: RANGE_SIZE,
            flags: FUSE_SETUPMAPPING_FLAG_READ,
            moffset: w as u64,
        },
    )
    .unwrap();
    guest.window().read_at(w + MIB as usize, &mut got).unwrap();
    assert_eq!(got, bytes);
}

#[test]
fn small_window_reclaims_and_holds_two_files() {
    let _serial = serial();
    let mut files = Vec::new();
    let mut h = start(
        "dax-reclaim",
        &["--cache-size", "8M", "--dax-holes", "zero"],
        |d| {
            for (i, name) in ["one", "two"].into_iter().enumerate() {
                let data: Vec<(u64, Vec<u8>)> = (0..6)
                    .map(|k| {
                        (
                            k * 3 * MIB / 2 + 8192,
                            pattern(40 + i as u64 * 10 + k, 12288),
                        )
                    })
                    .collect();
                make_sparse(&d.join(name), 9 * MIB, &data);
            }
        },
    );
    for name in ["one", "two"] {
        files.push((name, lookup(&mut h, name)));
    }
    let mut guest = DaxGuest::new(&mut h.fs).unwrap();
    assert_eq!(guest.window().len() as u64, 8 * MIB);
    let mut buf = vec![0u8; RANGE_SIZE as usize];
    let mut want = vec![0u8; RANGE_SIZE as usize];
    for round in 0..2 {
        for idx in 0..5 {
            for &(name, node) in &files {
                let foff = idx * RANGE_SIZE;
                let n = (9 * MIB - foff).min(RANGE_SIZE) as usize;
                guest.read(&mut h.fs, node, foff, &mut buf[..n]).unwrap();
                File::open(h.host(name))
                    .unwrap()
                    .read_exact_at(&mut want[..n], foff)
                    .unwrap();
                assert!(buf[..n] == want[..n], "{name} range {idx} round {round}");
            }
        }
    }
    assert!(guest.reclaims > 0, "a window of 4 ranges reclaims");
    assert_eq!(guest.ranges(), 4);
    let st = guest.shmem().stats();
    assert_eq!(st.refused, 0);
    assert!(st.unmaps > 0);
    // The live ranges of both files still show zero pages for holes.
    let states = guest.window().page_states(0, 8 * MIB as usize).unwrap();
    assert!(states.zero_total() > 0 && states.file > 0, "{states:?}");
    assert_eq!(states.private_anon, 0);
}

#[test]
fn disconnect_with_live_mappings_ends_the_backend() {
    let _serial = serial();
    let mut h = start(
        "dax-disconnect",
        &["--cache-size", "8M", "--dax-holes", "zero"],
        |d| make_sparse(&d.join("f"), 4 * MIB, &[(4096, pattern(51, 4096))]),
    );
    let node = lookup(&mut h, "f");
    let mut guest = DaxGuest::new(&mut h.fs).unwrap();
    guest.map_for_read(&mut h.fs, node, 0, 4 * MIB).unwrap();
    assert!(guest.shmem().stats().maps > 0);
    let Harness {
        fs, mut backend, ..
    } = h;
    drop(guest);
    drop(fs);
    let status = backend
        .wait_exit(Duration::from_secs(10))
        .unwrap()
        .expect("backend exits after the frontend left");
    assert!(status.success(), "{status}");
}

fn errno_of(r: Result<(), FuseError>) -> i32 {
    match r {
        Err(FuseError::Errno(e)) => e,
        other => panic!("expected an errno, got {other:?}"),
    }
}

#[test]
fn malformed_mapping_requests_get_errors_and_serving_goes_on() {
    let _serial = serial();
    let mut h = start(
        "dax-malformed",
        &["--cache-size", "8M", "--dax-holes", "zero"],
        |d| {
            make_sparse(&d.join("f"), 4 * MIB, &[(0, pattern(61, 8192))]);
            std::fs::create_dir(d.join("dir")).unwrap();
        },
    );
    let node = lookup(&mut h, "f");
    let dir = h.fs.lookup(FUSE_ROOT_ID, "dir").unwrap().nodeid;
    let window = 8 * MIB;
    let setup = |foffset: u64, len: u64, flags: u64, moffset: u64| FuseSetupmappingIn {
        fh: u64::MAX,
        foffset,
        len,
        flags,
        moffset,
    };
    let r = FUSE_SETUPMAPPING_FLAG_READ;
    let rw = r | FUSE_SETUPMAPPING_FLAG_WRITE;
    h.fs.setupmapping(node, setup(0, RANGE_SIZE, r, 0)).unwrap();
    let cases: Vec<(&str, u64, FuseSetupmappingIn, i32)> = vec![
        (
            "outside the window",
            node,
            setup(0, RANGE_SIZE, r, window),
            libc::EINVAL,
        ),
        (
            "straddling the end",
            node,
            setup(0, RANGE_SIZE, r, window - MIB),
            libc::EINVAL,
        ),
        (
            "moffset overflow",
            node,
            setup(0, RANGE_SIZE, r, u64::MAX - 4095),
            libc::EINVAL,
        ),
        (
            "foffset overflow",
            node,
            setup(u64::MAX - 4095, RANGE_SIZE, r, 2 * MIB),
            libc::EINVAL,
        ),
        (
            "unaligned moffset",
            node,
            setup(0, RANGE_SIZE, r, 2 * MIB + 1),
            libc::EINVAL,
        ),
        (
            "unaligned foffset",
            node,
            setup(1, RANGE_SIZE, r, 2 * MIB),
            libc::EINVAL,
        ),
        ("zero length", node, setup(0, 0, r, 2 * MIB), libc::EINVAL),
        (
            "unknown flags",
            node,
            setup(0, RANGE_SIZE, 1 << 7, 2 * MIB),
            libc::EINVAL,
        ),
        (
            "unknown node",
            0xdead_beef,
            setup(0, RANGE_SIZE, r, 2 * MIB),
            libc::ESTALE,
        ),
        (
            "a directory",
            dir,
            setup(0, RANGE_SIZE, r, 2 * MIB),
            libc::EINVAL,
        ),
        (
            "over a live mapping",
            node,
            setup(RANGE_SIZE, RANGE_SIZE, r, 0),
            libc::EBUSY,
        ),
        (
            "into a live mapping",
            node,
            setup(0, RANGE_SIZE, rw, MIB),
            libc::EBUSY,
        ),
    ];
    for (what, n, arg, want) in cases {
        assert_eq!(
            errno_of(h.fs.setupmapping(n, arg)),
            want,
            "SETUPMAPPING {what}"
        );
        h.fs.getattr(FUSE_ROOT_ID, None).unwrap();
    }
    let rm_cases: Vec<(&str, Vec<(u64, u64)>)> = vec![
        ("outside the window", vec![(window, RANGE_SIZE)]),
        ("overflow", vec![(u64::MAX - 4095, RANGE_SIZE)]),
        ("unaligned", vec![(1, RANGE_SIZE)]),
        ("cutting a live range", vec![(0, MIB)]),
        (
            "one bad entry of two",
            vec![(2 * MIB, RANGE_SIZE), (window, 4096)],
        ),
    ];
    for (what, ranges) in rm_cases {
        assert_eq!(
            errno_of(h.fs.removemapping(node, &ranges)),
            libc::EINVAL,
            "REMOVEMAPPING {what}"
        );
    }
    // A count that lies: 5 entries announced, 1 sent.
    let mut body = 5u32.to_ne_bytes().to_vec();
    body.extend_from_slice(&0u64.to_ne_bytes());
    body.extend_from_slice(&RANGE_SIZE.to_ne_bytes());
    let unique = h.fs.next_unique();
    let mut req = FuseInHeader {
        len: (FuseInHeader::SIZE + body.len()) as u32,
        opcode: protocol::Opcode::RemoveMapping as u32,
        unique,
        nodeid: node,
        ..Default::default()
    }
    .to_vec();
    req.extend_from_slice(&body);
    let c = h.fs.send_bytes(1, &req, 16).unwrap();
    let reply = FuseClient::check_reply(protocol::Opcode::RemoveMapping, unique, &c).unwrap();
    assert_eq!(reply.error, -libc::EINVAL, "lying count");

    // The live mapping survived every bad request, and the daemon still serves.
    let guest = DaxGuest::new(&mut h.fs).unwrap();
    let mut buf = vec![0u8; 8192];
    guest.window().read_at(0, &mut buf).unwrap();
    assert_eq!(buf, pattern(61, 8192));
    assert_eq!(
        guest.shmem().stats().refused,
        0,
        "the backend never broke a rule"
    );
    h.fs.removemapping(node, &[(0, RANGE_SIZE)]).unwrap();
    assert!(guest.window().mappings().is_empty());
    h.fs.setupmapping(node, setup(0, RANGE_SIZE, rw, 6 * MIB))
        .unwrap();
    h.fs.getattr(FUSE_ROOT_ID, None).unwrap();
}

#[test]
fn read_only_export_and_flags() {
    let _serial = serial();
    let mut h = start(
        "dax-ro",
        &["--cache-size", "4M", "--read-only", "--dax-inodes", "none"],
        |d| make_sparse(&d.join("f"), MIB, &[(0, pattern(71, 4096))]),
    );
    let e = h.fs.lookup(FUSE_ROOT_ID, "f").unwrap();
    assert_eq!(e.attr.flags & FUSE_ATTR_DAX, 0, "--dax-inodes none");
    let arg = |flags| FuseSetupmappingIn {
        fh: u64::MAX,
        foffset: 0,
        len: RANGE_SIZE,
        flags,
        moffset: 0,
    };
    assert_eq!(
        errno_of(h.fs.setupmapping(
            e.nodeid,
            arg(FUSE_SETUPMAPPING_FLAG_READ | FUSE_SETUPMAPPING_FLAG_WRITE)
        )),
        libc::EROFS
    );
    // map mode (the default): the whole file up to EOF, read-only.
    h.fs.setupmapping(e.nodeid, arg(FUSE_SETUPMAPPING_FLAG_READ))
        .unwrap();
    let guest = DaxGuest::new(&mut h.fs).unwrap();
    let m = guest.window().mappings();
    assert_eq!(m.len(), 1);
    assert_eq!((m[0].len as u64, m[0].writable), (MIB, false));
}

#[test]
fn without_shmem_the_opcodes_are_enosys() {
    let _serial = serial();
    let scratch = Scratch::new("dax-noshmem");
    make_sparse(&scratch.mnt.join("f"), MIB, &[]);
    let config = DriverConfig {
        timeout: TIMEOUT,
        ..Default::default()
    };
    let mut h = Harness::start_on(scratch, &spec(&["--cache-size", "4M"]), &config);
    h.fs.init(DAX_INIT).unwrap();
    assert_eq!(
        h.fs.accepted_flags() & (FUSE_MAP_ALIGNMENT | FUSE_HAS_INODE_DAX),
        0
    );
    let node = h.fs.lookup(FUSE_ROOT_ID, "f").unwrap().nodeid;
    let arg = FuseSetupmappingIn {
        fh: u64::MAX,
        foffset: 0,
        len: RANGE_SIZE,
        flags: FUSE_SETUPMAPPING_FLAG_READ,
        moffset: 0,
    };
    assert_eq!(errno_of(h.fs.setupmapping(node, arg)), libc::ENOSYS);
    assert_eq!(
        errno_of(h.fs.removemapping(node, &[(0, RANGE_SIZE)])),
        libc::ENOSYS
    );
}

#[test]
fn write_setup_of_a_file_zerodax_cannot_write_is_eacces() {
    let _serial = serial();
    let mut h = start(
        "dax-eacces",
        &["--cache-size", "4M", "--dax-holes", "zero"],
        |d| {
            let path = d.join("f");
            make_sparse(&path, MIB, &[(0, pattern(81, 4096))]);
            let st = std::process::Command::new("chattr")
                .arg("+i")
                .arg(&path)
                .status()
                .unwrap();
            assert!(st.success(), "chattr +i");
        },
    );
    let node = lookup(&mut h, "f");
    let arg = |flags, moffset| FuseSetupmappingIn {
        fh: u64::MAX,
        foffset: 0,
        len: RANGE_SIZE,
        flags,
        moffset,
    };
    // Immutable: even root cannot open it for writing.
    let rw = FUSE_SETUPMAPPING_FLAG_READ | FUSE_SETUPMAPPING_FLAG_WRITE;
    assert_eq!(errno_of(h.fs.setupmapping(node, arg(rw, 0))), libc::EACCES);
    // Reading still maps, read-only.
    h.fs.setupmapping(node, arg(FUSE_SETUPMAPPING_FLAG_READ, 0))
        .unwrap();
    let guest = DaxGuest::new(&mut h.fs).unwrap();
    let m = guest.window().mappings();
    assert_eq!(m.len(), 1);
    assert!(!m[0].writable);
    // The upgrade of that range is refused too, and the data stays mapped.
    assert_eq!(errno_of(h.fs.setupmapping(node, arg(rw, 0))), libc::EACCES);
    let mut buf = vec![0u8; 4096];
    guest.window().read_at(0, &mut buf).unwrap();
    assert_eq!(buf, pattern(81, 4096));
    let _ = std::process::Command::new("chattr")
        .arg("-i")
        .arg(h.host("f"))
        .status();
}

/// OPEN with O_TRUNC (a hostile guest may send it; Linux sends it on CREATE) empties a file
/// that has live ranges: the backend unmaps them before it truncates, and nothing is left
/// mapped past the new EOF, where an access would be SIGBUS for the VMM.
#[test]
fn open_with_o_trunc_leaves_no_mapping_past_eof() {
    let _serial = serial();
    for holes in ["map", "zero"] {
        let mut h = start(
            &format!("dax-otrunc-{holes}"),
            &["--cache-size", "8M", "--dax-holes", holes],
            |d| make_sparse(&d.join("f"), 3 * MIB, &[(0, pattern(91, 3 * MIB as usize))]),
        );
        let node = lookup(&mut h, "f");
        let mut guest = DaxGuest::new(&mut h.fs).unwrap();
        guest.map_for_read(&mut h.fs, node, 0, RANGE_SIZE).unwrap();
        guest
            .map_for_read(&mut h.fs, node, RANGE_SIZE, RANGE_SIZE)
            .unwrap();
        assert!(!guest.window().mappings().is_empty());
        let opened =
            h.fs.open(node, (libc::O_RDWR | libc::O_TRUNC) as u32)
                .unwrap();
        assert_eq!(std::fs::metadata(h.host("f")).unwrap().len(), 0);
        assert!(
            guest.window().mappings().is_empty(),
            "{holes}: mapped past EOF after O_TRUNC: {:?}",
            guest.window().mappings()
        );
        h.fs.release(node, opened.fh, 0).unwrap();
        assert_eq!(guest.shmem().stats().refused, 0);
    }
}

/// DESTROY (a guest's unmount sends no REMOVEMAPPING) and a second INIT (a guest that reset
/// its device) end the session: the window is emptied in the VMM, and the old session's node
/// ids and handles are gone (ESTALE, EBADF), never another file's.
#[test]
fn destroy_and_a_second_init_end_the_session() {
    let _serial = serial();
    for end in ["destroy", "init"] {
        let mut h = start(
            &format!("dax-session-{end}"),
            &["--cache-size", "8M", "--dax-holes", "zero"],
            |d| make_sparse(&d.join("f"), 3 * MIB, &[(0, pattern(95, 4096))]),
        );
        let node = lookup(&mut h, "f");
        let fh = h.fs.open(node, libc::O_RDONLY as u32).unwrap().fh;
        let mut guest = DaxGuest::new(&mut h.fs).unwrap();
        guest.map_for_read(&mut h.fs, node, 0, RANGE_SIZE).unwrap();
        assert!(!guest.window().mappings().is_empty());
        let flags = h.fs.accepted_flags();
        if end == "destroy" {
            h.fs.destroy().unwrap();
        }
        h.fs.init(flags).unwrap();
        assert!(
            guest.window().mappings().is_empty(),
            "{end}: the VMM still maps {:?}",
            guest.window().mappings()
        );
        assert_eq!(guest.shmem().stats().refused, 0, "{end}");
        assert_eq!(
            h.fs.getattr(node, None).err().map(|e| errno_of(Err(e))),
            Some(libc::ESTALE),
            "{end}: an old node id"
        );
        assert_eq!(
            h.fs.read(node, fh, 0, 4096).err().map(|e| errno_of(Err(e))),
            Some(libc::EBADF),
            "{end}: an old handle"
        );
        // The new session works, and maps the window offset the old one held.
        let node = lookup(&mut h, "f");
        h.fs.setupmapping(
            node,
            FuseSetupmappingIn {
                fh: u64::MAX,
                foffset: 0,
                len: RANGE_SIZE,
                flags: FUSE_SETUPMAPPING_FLAG_READ,
                moffset: 0,
            },
        )
        .unwrap();
        let mut got = vec![0u8; 4096];
        guest.window().read_at(0, &mut got).unwrap();
        assert_eq!(got, pattern(95, 4096), "{end}");
    }
}

/// A VMM that stops answering SHMEM_MAP: the SETUPMAPPING waiting on it fails (EIO) once
/// `--dax-ack-timeout` passes, every later one fails at once, and the rest of the
/// filesystem keeps serving.
#[test]
fn a_vmm_that_stops_answering_fails_the_mapping_not_the_daemon() {
    let _serial = serial();
    let mut h = start(
        "dax-hung-vmm",
        &["--cache-size", "8M", "--dax-ack-timeout", "1"],
        |d| make_sparse(&d.join("f"), 3 * MIB, &[(0, pattern(97, 8192))]),
    );
    let node = lookup(&mut h, "f");
    let guest = DaxGuest::new(&mut h.fs).unwrap();
    let setup = |moffset| FuseSetupmappingIn {
        fh: u64::MAX,
        foffset: 0,
        len: RANGE_SIZE,
        flags: FUSE_SETUPMAPPING_FLAG_READ,
        moffset,
    };
    guest.shmem().stall_next_map(Duration::from_secs(3));
    assert_eq!(errno_of(h.fs.setupmapping(node, setup(0))), libc::EIO);
    assert_eq!(
        errno_of(h.fs.setupmapping(node, setup(RANGE_SIZE))),
        libc::EIO,
        "the window is closed for the connection"
    );
    // Everything else is served.
    let fh = h.fs.open(node, libc::O_RDONLY as u32).unwrap().fh;
    assert_eq!(h.fs.read(node, fh, 0, 8192).unwrap(), pattern(97, 8192));
    h.fs.release(node, fh, 0).unwrap();
    assert!(h
        .backend
        .log_tail(4000)
        .contains("did not answer SHMEM_MAP"));
}

/// Unmounts a bind mount (lazily: the backend may still hold descriptors under it).
struct BindMount(std::path::PathBuf);

impl Drop for BindMount {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount")
            .arg("-l")
            .arg(&self.0)
            .status();
    }
}

/// One file through two node ids (a bind mount inside the share gives each side its own):
/// a truncate through one id unmaps what the other id's live range maps past the new EOF,
/// and a write through one shows in the other's range.
#[test]
fn coherence_is_per_file_across_node_ids() {
    let _serial = serial();
    let mut h = start(
        "dax-two-ids",
        &["--cache-size", "8M", "--dax-holes", "map"],
        |d| {
            std::fs::create_dir(d.join("a")).unwrap();
            std::fs::create_dir(d.join("b")).unwrap();
            make_sparse(
                &d.join("a/f"),
                3 * MIB,
                &[(0, pattern(99, 3 * MIB as usize))],
            );
        },
    );
    let b = h.host("b");
    let st = std::process::Command::new("mount")
        .args(["--bind", h.host("a").to_str().unwrap(), b.to_str().unwrap()])
        .status()
        .unwrap();
    assert!(st.success(), "mount --bind");
    let _bind = BindMount(b);
    let dir_a = h.fs.lookup(FUSE_ROOT_ID, "a").unwrap().nodeid;
    let dir_b = h.fs.lookup(FUSE_ROOT_ID, "b").unwrap().nodeid;
    let via_a = h.fs.lookup(dir_a, "f").unwrap();
    let via_b = h.fs.lookup(dir_b, "f").unwrap();
    assert_ne!(
        via_a.nodeid, via_b.nodeid,
        "the bind mount gives its own node id"
    );
    let mut guest = DaxGuest::new(&mut h.fs).unwrap();
    guest
        .map_for_read(&mut h.fs, via_a.nodeid, RANGE_SIZE, RANGE_SIZE)
        .unwrap();
    assert!(!guest.window().mappings().is_empty());

    // A write through b shows in a's range at once.
    let fh = h.fs.open(via_b.nodeid, libc::O_RDWR as u32).unwrap().fh;
    h.fs.write(via_b.nodeid, fh, RANGE_SIZE + 4096, b"through b")
        .unwrap();
    let w = guest
        .window_offset(via_a.nodeid, RANGE_SIZE + 4096)
        .unwrap();
    let mut got = vec![0u8; 9];
    guest.window().read_at(w, &mut got).unwrap();
    assert_eq!(got, b"through b");

    // A truncate through b leaves nothing of a's range mapped past the new EOF.
    h.fs.setattr(
        via_b.nodeid,
        &FuseSetattrIn {
            valid: FATTR_SIZE,
            size: MIB,
            ..Default::default()
        },
    )
    .unwrap();
    assert!(
        guest.window().mappings().is_empty(),
        "mapped past EOF through the other node id: {:?}",
        guest.window().mappings()
    );
    h.fs.release(via_b.nodeid, fh, 0).unwrap();
    assert_eq!(guest.shmem().stats().refused, 0);
}

/// What a range maps stays in the host page cache while it is mapped, whatever the host
/// evicts (proactive reclaim, FADV_DONTNEED): a VMM fault on an evicted page would read 2 MiB
/// around it through a MADV_HUGEPAGE mapping. Released when the range is removed.
#[test]
fn mapped_pages_stay_resident_until_the_range_is_removed() {
    let _serial = serial();
    let data = pattern(93, 64 << 10);
    let mut h = start(
        "dax-pinned",
        &["--cache-size", "8M", "--dax-holes", "zero"],
        |d| make_sparse(&d.join("f"), 2 * MIB, &[(256 << 10, data.clone())]),
    );
    let node = lookup(&mut h, "f");
    let path = h.host("f");
    drop_cache(&path);
    let mut guest = DaxGuest::new(&mut h.fs).unwrap();
    guest.map_for_read(&mut h.fs, node, 0, RANGE_SIZE).unwrap();
    assert_eq!(cached_pages(&path), 16, "the data span, preloaded");
    drop_cache(&path);
    assert_eq!(
        cached_pages(&path),
        16,
        "still resident after the host dropped its cache"
    );
    let be = h.backend.serving_pid().unwrap();
    assert!(status_kib(be, "VmLck") >= 64, "locked by the backend");
    guest.evict(&mut h.fs, node).unwrap();
    drop_cache(&path);
    assert_eq!(cached_pages(&path), 0, "released with the range");
    assert_eq!(status_kib(be, "VmLck"), 0);
}
