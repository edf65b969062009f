//! `Window::read_at` / `write_at`: volatile copies on shared memory. Unaligned offsets and
//! lengths on both sides, round trips through the file, the checks that turn would-be
//! faults into errors, and a writer in another thread storing through a second mapping of
//! the same file while the window reads it.

mod common;

use std::os::fd::AsRawFd;
use std::os::unix::fs::FileExt;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::*;
use dax_window::{Error, Window, PAGE_SIZE};

fn pattern(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

#[test]
fn unaligned_round_trips() {
    let _wd = Watchdog::new("unaligned_round_trips", 120);
    let fs = Ext4::new(64);
    let path = fs.path("f");
    // Data in the first MiB, a hole after it: writes cross data pages, page boundaries and
    // the data/hole edge (the hole part is upgraded on the way).
    let size = 4 * MIB;
    let f = sparse_file(&path, size as u64, &[(0, &pattern(MIB, 1))]);
    let w = Window::new(size).unwrap();
    w.map_file(0, size, &f, 0, true).unwrap();

    let offsets = [
        0,
        1,
        7,
        8,
        9,
        PAGE_SIZE - 3,
        PAGE_SIZE + 5,
        MIB - 13,
        MIB - 1,
        MIB + 3,
        3 * MIB + 4093,
    ];
    let lens = [
        0,
        1,
        3,
        7,
        8,
        9,
        15,
        16,
        17,
        31,
        33,
        63,
        65,
        4095,
        4097,
        3 * PAGE_SIZE + 11,
    ];
    let mut seed = 10;
    for &off in &offsets {
        for &len in &lens {
            if off + len > size {
                continue;
            }
            for skew in [0, 1, 3, 5, 7] {
                seed += 1;
                // Private buffers misaligned by `skew` on both sides.
                let mut src = vec![0u8; len + 8];
                src[skew..skew + len].copy_from_slice(&pattern(len, seed));
                w.write_at(off, &src[skew..skew + len]).unwrap();
                let mut back = vec![0xEEu8; len + 16];
                let rs = (skew * 3) % 8;
                w.read_at(off, &mut back[rs..rs + len]).unwrap();
                assert_eq!(
                    &back[rs..rs + len],
                    &src[skew..skew + len],
                    "{off} {len} {skew}"
                );
                assert!(
                    back[..rs].iter().all(|&b| b == 0xEE),
                    "underrun {off} {len}"
                );
                assert!(
                    back[rs + len..].iter().all(|&b| b == 0xEE),
                    "overrun {off} {len}"
                );
                // The bytes are the file's, and the neighbours untouched by the edges.
                let mut file = vec![0u8; len];
                f.read_exact_at(&mut file, off as u64).unwrap();
                assert_eq!(file, &src[skew..skew + len], "file {off} {len} {skew}");
            }
        }
    }
    // A last check of the whole file against the window, at an odd offset and length.
    let mut whole = vec![0u8; size - 3];
    w.read_at(3, &mut whole).unwrap();
    let mut file = vec![0u8; size - 3];
    f.read_exact_at(&mut file, 3).unwrap();
    assert!(whole == file);
    assert_no_private(&w);
}

#[test]
fn would_be_faults_are_errors() {
    let _wd = Watchdog::new("would_be_faults_are_errors", 120);
    let fs = Ext4::new(64);
    let path = fs.path("f");
    let f = sparse_file(&path, 4 * MIB as u64, &[(0, &[b'd'; 2 * MIB])]);
    let ro_path = fs.path("ro");
    let ro = sparse_file(&ro_path, MIB as u64, &[]);
    let w = Window::new(8 * MIB).unwrap();
    w.map_file(0, 4 * MIB, &f, 0, true).unwrap();
    w.map_file(4 * MIB, MIB, &ro, 0, false).unwrap();

    // Stores outside writable mappings: unmapped, read-only, and straddling the edge of a
    // writable mapping. Nothing is written.
    assert!(matches!(w.write_at(6 * MIB, b"x"), Err(Error::ReadOnly)));
    assert!(matches!(
        w.write_at(4 * MIB + 10, b"x"),
        Err(Error::ReadOnly)
    ));
    assert!(matches!(
        w.write_at(4 * MIB - 2, b"xyzw"),
        Err(Error::ReadOnly)
    ));
    assert_eq!(read_file(&path, 4 * MIB as u64 - 2, 2), [0, 0]);
    // Loads there are fine: zeros.
    let mut buf = [1u8; 16];
    w.read_at(6 * MIB, &mut buf).unwrap();
    assert_eq!(buf, [0; 16]);
    w.read_at(4 * MIB - 8, &mut buf).unwrap();
    assert_eq!(buf, [0; 16]);
    // Out of the window.
    assert!(matches!(
        w.read_at(8 * MIB - 1, &mut buf),
        Err(Error::InvalidRange(_))
    ));

    // Truncation under the mapping: file pages past the new EOF would be SIGBUS for a load
    // or a store; read_at and write_at refuse them instead. Holes past EOF still read zeros,
    // stores there are refused too (their upgrade would fail).
    open_rw(&path).set_len(MIB as u64 + 100).unwrap();
    assert!(matches!(
        w.read_at(MIB + PAGE_SIZE, &mut buf),
        Err(Error::BeyondEof)
    ));
    assert!(matches!(
        w.read_at(MIB + PAGE_SIZE - 8, &mut buf),
        Err(Error::BeyondEof)
    ));
    assert!(matches!(
        w.write_at(MIB + PAGE_SIZE, b"x"),
        Err(Error::BeyondEof)
    ));
    assert!(matches!(w.write_at(3 * MIB, b"x"), Err(Error::BeyondEof)));
    w.read_at(3 * MIB, &mut buf).unwrap();
    assert_eq!(buf, [0; 16]);
    // Up to the end of EOF's page both work, as through mmap: the file's bytes, then the
    // zeros past EOF in its last page.
    w.read_at(MIB + 92, &mut buf).unwrap();
    assert_eq!(buf, *b"dddddddd\0\0\0\0\0\0\0\0");
    w.read_at(MIB + PAGE_SIZE - 16, &mut buf).unwrap();
    assert_eq!(buf, [0; 16]);
    w.write_at(MIB + 10, b"in").unwrap();
    assert_eq!(read_file(&path, MIB as u64 + 10, 2), b"in");
    // A read-only mapping of holes truncated away still reads zeros.
    open_rw(&ro_path).set_len(0).unwrap();
    w.read_at(4 * MIB, &mut buf).unwrap();
    assert_eq!(buf, [0; 16]);
    assert_no_private(&w);
}

/// Another thread stores generation after generation through its own `MAP_SHARED` mapping
/// of the file while this one reads the same bytes through the window (a file mapping of
/// the same page-cache pages). Every aligned word the reader sees is one the writer
/// stored, whole (the copy's bulk is aligned 8-byte volatile loads), and the reader does
/// see the writer's progress.
#[test]
fn concurrent_writer_through_a_second_mapping() {
    let _wd = Watchdog::new("concurrent_writer", 120);
    let fs = Ext4::new(64);
    let path = fs.path("f");
    let len = 256 * 1024;
    let f = sparse_file(&path, MIB as u64, &[(0, &vec![0u8; len])]);
    let w = Window::new(MIB).unwrap();
    w.map_file(0, MIB, &f, 0, false).unwrap();

    let other = open_rw(&path);
    // SAFETY: a fresh shared mapping of the file's first `len` bytes; the writer thread
    // only stores into it with volatile stores, and it is unmapped after the join.
    let second = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            len,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_SHARED,
            other.as_raw_fd(),
            0,
        )
    };
    assert_ne!(second, libc::MAP_FAILED);
    let second = second as usize;
    let done = Arc::new(AtomicBool::new(false));
    let generation = Arc::new(AtomicU64::new(0));
    let reads_done = Arc::new(AtomicU64::new(0));
    let writer = {
        let (done, generation, reads_done) = (done.clone(), generation.clone(), reads_done.clone());
        std::thread::spawn(move || {
            let deadline = Instant::now() + Duration::from_secs(30);
            for g in 1u64..=100 {
                let word = g * 0x0101_0101_0101_0101;
                for k in 0..len / 8 {
                    // SAFETY: an aligned word inside the second mapping (page aligned
                    // base, `k < len/8`); memory outside any Rust allocation, shared with
                    // the window's mapping, so only volatile accesses touch it.
                    unsafe { ((second + k * 8) as *mut u64).write_volatile(word) };
                }
                generation.store(g, Ordering::Release);
                // Pace: the next generation starts once the reader finished a copy begun
                // after this one was published (so it runs during the next one's stores).
                let r0 = reads_done.load(Ordering::Acquire);
                while reads_done.load(Ordering::Acquire) < r0 + 2 && Instant::now() < deadline {
                    std::thread::yield_now();
                }
            }
            done.store(true, Ordering::Release);
        })
    };

    let mut buf = vec![0u8; len + 8];
    let mut seen = std::collections::BTreeSet::new();
    let mut mixed = 0;
    let mut reads = 0;
    while !done.load(Ordering::Acquire) || reads < 10 {
        // Window offset 0 and an odd one (then the edges are bytes, the bulk still aligned
        // words in the window); the private buffer misaligned by 3.
        let skew = if reads % 2 == 0 { 0 } else { 5 };
        let n = len - 16;
        let after = generation.load(Ordering::Acquire);
        w.read_at(skew, &mut buf[3..3 + n]).unwrap();
        let got = &buf[3..3 + n];
        let latest = generation.load(Ordering::Acquire) + 1;
        // Window-aligned words: whole values of one generation, not older than the one
        // published before the copy began, not newer than the one being written after it.
        let first_word = (8 - skew % 8) % 8;
        for chunk in got[first_word..].chunks_exact(8) {
            let g = chunk[0] as u64;
            assert!(chunk.iter().all(|&b| b as u64 == g), "torn word {chunk:?}");
            assert!(
                g <= latest,
                "generation {g} seen before {latest} was written"
            );
            assert!(
                g >= after,
                "generation {g} seen after {after} was published"
            );
            seen.insert(g);
        }
        if got.first() != got.last() {
            mixed += 1;
        }
        reads += 1;
        reads_done.store(reads, Ordering::Release);
    }
    writer.join().unwrap();
    // SAFETY: our own mapping; the writer has finished.
    unsafe { libc::munmap(second as *mut libc::c_void, len) };
    let last = generation.load(Ordering::Acquire);
    let mut end = vec![0u8; len];
    w.read_at(0, &mut end).unwrap();
    assert!(end.iter().all(|&b| b as u64 == last), "final state");
    assert!(
        seen.len() > 50,
        "the reader saw only generations {seen:?} in {reads} reads"
    );
    eprintln!(
        "concurrent writer: {reads} reads, {} generations seen, {mixed} reads spanning two",
        seen.len()
    );
}
