//! Fault ordering: reads and writes through a writable window in every order, from many
//! threads, with the file changed underneath. Page states checked after every step.

mod common;

use std::os::unix::fs::FileExt;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;

use common::*;
use dax_window::{Error, Granule, PageState, Window, WindowOptions, HUGE_SIZE, PAGE_SIZE};

#[test]
fn read_then_write_upgrades_one_page() {
    let _wd = Watchdog::new("read_then_write", 120);
    let fs = Ext4::new(256);
    let path = fs.path("f");
    let f = sparse_file(&path, 8 * MIB as u64, &[(0, &[b'A'; 4096])]);
    let w = Window::new(8 * MIB).unwrap();
    let m = w.map_file(0, 8 * MIB, &f, 0, true).unwrap();
    assert_eq!(m.len, 8 * MIB);
    assert_eq!(m.file_backed, vec![(0, PAGE_SIZE)]);

    // Read everything: data is the file's, holes are zero pages (huge where aligned).
    let mut first = [0u8; 4096];
    w.read_at(0, &mut first).unwrap();
    assert_eq!(first, [b'A'; 4096]);
    assert!(read_all_zero(&w, PAGE_SIZE, 8 * MIB - PAGE_SIZE));
    let s = w.page_states(0, 8 * MIB).unwrap();
    assert_eq!(s.file, 1);
    assert_eq!(s.zero_total(), (8 * MIB / PAGE_SIZE - 1) as u64);
    assert!(s.huge_zero >= (6 * MIB / PAGE_SIZE) as u64, "{s:?}");
    assert_no_private(&w);
    let hole = 3 * MIB + 5 * PAGE_SIZE;
    assert_eq!(kpage_zero(w.as_ptr() as usize + hole), (true, true));

    // Write into the hole: the page becomes the file's, its neighbours stay zero pages.
    w.write_at(hole + 100, b"hello").unwrap();
    assert_eq!(read_file(&path, (hole + 100) as u64, 5), b"hello");
    assert_eq!(state_at(&w, hole), PageState::File);
    assert!(matches!(
        state_at(&w, hole - PAGE_SIZE),
        PageState::Zero | PageState::HugeZero
    ));
    assert!(matches!(
        state_at(&w, hole + PAGE_SIZE),
        PageState::Zero | PageState::HugeZero
    ));
    assert_eq!(kpage_zero(w.as_ptr() as usize + hole), (true, false));
    let mut back = [0u8; 5];
    w.read_at(hole + 100, &mut back).unwrap();
    assert_eq!(&back, b"hello");
    assert_eq!(w.stats().upgrades, 1);
    assert_no_private(&w);

    // A second write to the same page takes no fault.
    w.write_at(hole + 200, b"again").unwrap();
    assert_eq!(w.stats().upgrades, 1);
    f.sync_all().unwrap();
    assert_eq!(
        data_of(&path),
        vec![
            dax_window::Extent {
                start: 0,
                end: 4096
            },
            dax_window::Extent {
                start: hole as u64,
                end: (hole + PAGE_SIZE) as u64
            }
        ]
    );
    assert_no_private(&w);
}

#[test]
fn write_first_and_granule_in_large_hole() {
    let _wd = Watchdog::new("write_first", 120);
    let fs = Ext4::new(256);
    let path = fs.path("f");
    let f = sparse_file(&path, 64 * MIB as u64, &[]);
    let blocks_before = blocks_bytes(&path);
    let w = Window::new(64 * MIB).unwrap();
    w.map_file(0, 64 * MIB, &f, 0, true).unwrap();
    let s = w.page_states(0, 64 * MIB).unwrap();
    assert_eq!(
        s.huge_zero,
        (64 * MIB / PAGE_SIZE) as u64,
        "populated huge zero pages: {s:?}"
    );
    let off = 33 * MIB + 7 * PAGE_SIZE;
    w.write_at(off + 1, &[0x5a]).unwrap();
    f.sync_all().unwrap();
    // Only the 4 KiB granule became data: SEEK_DATA/SEEK_HOLE and st_blocks agree.
    assert_eq!(
        data_of(&path),
        vec![dax_window::Extent {
            start: off as u64,
            end: (off + PAGE_SIZE) as u64
        }]
    );
    assert_eq!(blocks_bytes(&path) - blocks_before, PAGE_SIZE as u64);
    assert_eq!(read_file(&path, off as u64, 2), [0, 0x5a]);
    let s = w.page_states(0, 64 * MIB).unwrap();
    assert_eq!(s.file, 1);
    assert_eq!(s.zero_total(), (64 * MIB / PAGE_SIZE - 1) as u64);
    assert_no_private(&w);
}

#[test]
fn huge_granule_stays_inside_its_2mib() {
    let _wd = Watchdog::new("huge_granule", 120);
    let fs = Ext4::new(256);
    let path = fs.path("f");
    let f = sparse_file(&path, 16 * MIB as u64, &[]);
    let w = Window::with_options(
        16 * MIB,
        WindowOptions {
            granule: Granule::Huge,
            vma_headroom: None,
        },
    )
    .unwrap();
    w.map_file(0, 16 * MIB, &f, 0, true).unwrap();
    let off = 5 * MIB + 3 * PAGE_SIZE;
    w.write_at(off, b"huge").unwrap();
    f.sync_all().unwrap();
    let g0 = off / HUGE_SIZE * HUGE_SIZE;
    // The whole granule is now file pages (or not yet faulted file pages), no zero pages.
    let s = w.page_states(g0, HUGE_SIZE).unwrap();
    assert_eq!(s.zero_total(), 0, "{s:?}");
    assert!(s.file >= 1);
    let rest = w.page_states(0, g0).unwrap();
    assert_eq!(rest.zero_total(), (g0 / PAGE_SIZE) as u64);
    for e in data_of(&path) {
        assert!(
            e.start >= g0 as u64 && e.end <= (g0 + HUGE_SIZE) as u64,
            "{e:?}"
        );
    }
    assert_eq!(read_file(&path, off as u64, 4), b"huge");
    assert_no_private(&w);
}

#[test]
fn many_threads_same_and_neighbouring_pages() {
    let _wd = Watchdog::new("many_threads", 180);
    let fs = Ext4::new(256);
    let path = fs.path("f");
    let f = sparse_file(&path, 16 * MIB as u64, &[(8 * MIB as u64, &[b'D'; 8192])]);
    let w = Arc::new(Window::new(16 * MIB).unwrap());
    w.map_file(0, 16 * MIB, &f, 0, true).unwrap();
    let threads = 8;
    let pages = 64; // pages 0..64 of the region at 1 MiB, shared by all threads
    let start = Arc::new(std::sync::Barrier::new(threads));
    let stop = Arc::new(AtomicBool::new(false));
    let mut hs = Vec::new();
    // A reader hammering the same region: it sees zeros or written bytes, never a fault.
    {
        let w = Arc::clone(&w);
        let stop = Arc::clone(&stop);
        hs.push(std::thread::spawn(move || {
            let mut buf = vec![0u8; pages * PAGE_SIZE];
            while !stop.load(Ordering::Relaxed) {
                w.read_at(MIB, &mut buf).unwrap();
                w.read_at(8 * MIB, &mut buf[..8192]).unwrap();
                assert_eq!(&buf[..8192], &[b'D'; 8192][..]);
            }
        }));
    }
    let mut writers = Vec::new();
    for t in 0..threads {
        let w = Arc::clone(&w);
        let start = Arc::clone(&start);
        writers.push(std::thread::spawn(move || {
            start.wait();
            // Every thread writes its own 8-byte slot in every page (same pages), and its
            // own private pages at 4 MiB + t * 64 pages (neighbouring pages).
            for round in 0..3u8 {
                for p in 0..pages {
                    let v = [t as u8 + 1, round, p as u8, 0xEE, 1, 2, 3, 4];
                    w.write_at(MIB + p * PAGE_SIZE + t * 8, &v).unwrap();
                    w.write_at(4 * MIB + (t * pages + p) * PAGE_SIZE, &v)
                        .unwrap();
                }
            }
        }));
    }
    for h in writers {
        h.join().unwrap();
    }
    stop.store(true, Ordering::Relaxed);
    for h in hs {
        h.join().unwrap();
    }
    f.sync_all().unwrap();
    let file = open_rw(&path);
    for t in 0..threads {
        for p in 0..pages {
            let want = [t as u8 + 1, 2, p as u8, 0xEE, 1, 2, 3, 4];
            let mut got = [0u8; 8];
            file.read_exact_at(&mut got, (MIB + p * PAGE_SIZE + t * 8) as u64)
                .unwrap();
            assert_eq!(got, want, "shared page {p} thread {t}");
            file.read_exact_at(&mut got, (4 * MIB + (t * pages + p) * PAGE_SIZE) as u64)
                .unwrap();
            assert_eq!(got, want, "own page {p} thread {t}");
        }
    }
    let s = w.page_states(0, 16 * MIB).unwrap();
    assert_eq!(s.file as usize, pages + threads * pages + 2);
    assert_no_private(&w);
    // Neighbouring upgrades merge into one file VMA (same file, contiguous offsets): the
    // 576 upgraded pages cost a handful of VMAs, not two each.
    let (_, inside) = w.vma_counts().unwrap();
    assert!(inside < 16, "{inside} VMAs in the window");
    // Upgrades never exceed the pages written; duplicates were handled as stale.
    assert!(w.stats().upgrades as usize <= pages + threads * pages);
    assert_eq!(w.stats().failed, 0);
}

/// One unmap of `[0, 4 MiB)` with two readers of it and a writer next to it running; returns
/// how many reads overlapped the unmap. Waits on the readers' counts, not on sleeps: each
/// reader has read before the unmap starts and after it returned.
fn unmap_under_readers(w: &Arc<Window>, counts: &Arc<[AtomicUsize; 3]>) -> usize {
    let stop = Arc::new(AtomicBool::new(false));
    // 0: before the unmap, 1: while it runs, 2: after it returned.
    let phase = Arc::new(AtomicUsize::new(0));
    let mut hs = Vec::new();
    for _ in 0..2 {
        let (w, stop, phase, counts) = (
            Arc::clone(w),
            Arc::clone(&stop),
            Arc::clone(&phase),
            Arc::clone(counts),
        );
        hs.push(std::thread::spawn(move || {
            let mut buf = vec![0u8; 65536];
            while !stop.load(Ordering::Relaxed) {
                // Reads of the range being unmapped see the file or zeros, never garbage: a
                // read done before the unmap sees only the file, one started after it only
                // zeros. A read that overlaps the (atomic) replacement is a copy torn at the
                // moment of the replacement, file bytes on one side and zeros on the other,
                // so there each byte must be one or the other.
                let before = phase.load(Ordering::SeqCst);
                w.read_at(0, &mut buf).unwrap();
                let after = phase.load(Ordering::SeqCst);
                let kind = match (before, after) {
                    (0, 0) => {
                        assert!(buf.iter().all(|&x| x == b'a'), "before the unmap");
                        0
                    }
                    (2, _) => {
                        assert!(buf.iter().all(|&x| x == 0), "after the unmap");
                        2
                    }
                    _ => {
                        assert!(buf.iter().all(|&x| x == b'a' || x == 0), "during the unmap");
                        1
                    }
                };
                counts[kind].fetch_add(1, Ordering::SeqCst);
            }
        }));
    }
    {
        let (w, stop) = (Arc::clone(w), Arc::clone(&stop));
        hs.push(std::thread::spawn(move || {
            let mut i = 0usize;
            while !stop.load(Ordering::Relaxed) {
                // Writers in the neighbouring mapping keep upgrading.
                w.write_at(4 * MIB + (i % 256) * PAGE_SIZE, b"b").unwrap();
                i += 1;
            }
        }));
    }
    let wait_for = |kind: usize, n: usize| {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
        while counts[kind].load(Ordering::SeqCst) < n {
            assert!(std::time::Instant::now() < deadline, "readers stalled");
            std::thread::yield_now();
        }
    };
    wait_for(0, 2);
    phase.store(1, Ordering::SeqCst);
    w.unmap(0, 4 * MIB).unwrap();
    phase.store(2, Ordering::SeqCst);
    assert!(matches!(w.unmap(4 * MIB, MIB), Err(Error::PartialUnmap)));
    wait_for(2, 2);
    stop.store(true, Ordering::Relaxed);
    for h in hs {
        h.join().unwrap();
    }
    counts[1].load(Ordering::SeqCst)
}

#[test]
fn unmap_while_other_threads_touch() {
    let _wd = Watchdog::new("unmap_while_touch", 120);
    let fs = Ext4::new(256);
    let a = fs.path("a");
    let b = fs.path("b");
    let fa = sparse_file(&a, 4 * MIB as u64, &[(0, &[b'a'; 65536])]);
    let fb = sparse_file(&b, 4 * MIB as u64, &[]);
    // The race is proved, not hoped for: reads that overlapped the unmap are counted, and the
    // whole scenario is run again (a fresh window) until one did.
    let mut overlapped = 0;
    let mut attempts = 0;
    let w = loop {
        attempts += 1;
        let w = Arc::new(Window::new(8 * MIB).unwrap());
        w.map_file(0, 4 * MIB, &fa, 0, true).unwrap();
        w.map_file(4 * MIB, 4 * MIB, &fb, 0, true).unwrap();
        w.write_at(MIB, b"before").unwrap();
        // Reads by phase: [before, overlapping, after].
        let counts = Arc::new([
            AtomicUsize::new(0),
            AtomicUsize::new(0),
            AtomicUsize::new(0),
        ]);
        overlapped += unmap_under_readers(&w, &counts);
        if overlapped > 0 || attempts == 200 {
            break w;
        }
    };
    eprintln!("{overlapped} reads overlapped the unmap (attempt {attempts})");
    assert!(
        overlapped > 0,
        "no read overlapped the unmap in {attempts} attempts: the test proved nothing"
    );
    assert!(read_all_zero(&w, 0, 4 * MIB));
    let s = w.page_states(0, 4 * MIB).unwrap();
    assert_eq!(s.file, 0);
    assert_eq!(s.private_anon, 0);
    assert_eq!(read_file(&a, MIB as u64, 6), b"before");
    // The range can be mapped again and shows the file.
    w.map_file(0, 4 * MIB, &fa, 0, false).unwrap();
    let mut got = [0u8; 6];
    w.read_at(MIB, &mut got).unwrap();
    assert_eq!(&got, b"before");
    assert_no_private(&w);
}

#[test]
fn file_changed_through_another_descriptor() {
    let _wd = Watchdog::new("outside_writers", 120);
    let fs = Ext4::new(256);
    let path = fs.path("f");
    let f = sparse_file(&path, 8 * MIB as u64, &[(0, &[b'x'; 2 * MIB])]);
    let w = Window::new(16 * MIB).unwrap();
    let m = w.map_file(0, 16 * MIB, &f, 0, true).unwrap();
    assert_eq!(m.len, 8 * MIB, "clipped to EOF");
    let other = open_rw(&path);

    // Punch: the mapped file pages now read zeros (they are still file pages: writes go to
    // the file).
    // SAFETY: fallocate on a descriptor we own.
    let rc = unsafe {
        libc::fallocate(
            std::os::fd::AsRawFd::as_raw_fd(&other),
            libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE,
            0,
            MIB as i64,
        )
    };
    assert_eq!(rc, 0);
    assert!(read_all_zero(&w, 0, MIB));
    w.write_at(4096, b"after punch").unwrap();
    assert_eq!(read_file(&path, 4096, 11), b"after punch");

    // Data written into a hole by another descriptor: the window keeps its zero page
    // (documented staleness) until remapped; a window write there keeps the other data.
    other.write_all_at(b"outside", 5 * MIB as u64).unwrap();
    let mut got = [0u8; 7];
    w.read_at(5 * MIB, &mut got).unwrap();
    assert_eq!(got, [0u8; 7]);
    w.write_at(5 * MIB + 100, b"!").unwrap();
    assert_eq!(read_file(&path, 5 * MIB as u64, 7), b"outside");
    assert_eq!(read_file(&path, 5 * MIB as u64 + 100, 1), b"!");

    // Extend: the mapping does not grow; remapping shows the new range.
    other.set_len(12 * MIB as u64).unwrap();
    assert_eq!(w.mappings()[0].len, 8 * MIB);

    // Truncate below a hole: holes past the new EOF still read zeros (they were never the
    // file's pages); writes below EOF still upgrade. Past-EOF accesses are SIGBUS, tested in
    // tests/signals.rs.
    other.set_len(6 * MIB as u64).unwrap();
    assert!(read_all_zero(&w, 7 * MIB, MIB));
    w.write_at(3 * MIB, b"below eof").unwrap();
    assert_eq!(read_file(&path, 3 * MIB as u64, 9), b"below eof");
    assert_no_private(&w);
    w.unmap(0, 8 * MIB).unwrap();
    let m = w.map_file(0, 16 * MIB, &f, 0, true).unwrap();
    assert_eq!(m.len, 6 * MIB);
    w.read_at(5 * MIB, &mut got).unwrap();
    assert_eq!(&got, b"outside");
    assert_no_private(&w);
}

#[test]
fn unaligned_eof_is_mapped_to_its_page_and_no_further() {
    let _wd = Watchdog::new("unaligned_eof", 120);
    let fs = Ext4::new(64);
    let path = fs.path("f");
    let size = 3 * MIB as u64 + 10_000;
    let f = sparse_file(&path, size, &[(3 * MIB as u64, &[b'z'; 10_000])]);
    let w = Window::new(8 * MIB).unwrap();
    let m = w.map_file(0, 8 * MIB, &f, 0, true).unwrap();
    assert_eq!(m.len, 3 * MIB + 3 * PAGE_SIZE);
    let mut tail = vec![1u8; 3 * PAGE_SIZE - 10_000];
    w.read_at(3 * MIB + 10_000, &mut tail).unwrap();
    assert!(tail.iter().all(|&b| b == 0));
    // Past the mapping the window is unmapped: zeros, nothing mapped from the file.
    let s = w.page_states(m.len, 8 * MIB - m.len).unwrap();
    assert_eq!(s.file, 0);
    // A hole page just below EOF upgrades; the file keeps its size.
    w.write_at(3 * MIB - PAGE_SIZE, b"last hole page").unwrap();
    assert_eq!(
        read_file(&path, 3 * MIB as u64 - 4096, 14),
        b"last hole page"
    );
    assert_eq!(std::fs::metadata(&path).unwrap().len(), size);
    assert_no_private(&w);
}
