//! `Window::without_fault_handler`: a window for a VMM's SHMEM_MAP, with no userfaultfd and
//! no handler thread. Raw maps, unmaps, read-only file maps, copies and page states work; a
//! writable `map_file` (holes with the write upgrade) is refused with `Error::NoFaultHandler`.
//!
//! One test in this binary: it counts the process's userfaultfds and handler threads, which
//! a concurrent test's windows would change.

mod common;

use std::os::fd::AsFd;

use common::*;
use dax_window::{Error, PageState, Window, PAGE_SIZE};

/// Descriptors of this process that are userfaultfds.
fn userfaultfds() -> usize {
    std::fs::read_dir("/proc/self/fd")
        .unwrap()
        .filter_map(|e| std::fs::read_link(e.ok()?.path()).ok())
        .filter(|l| l.as_os_str() == "anon_inode:[userfaultfd]")
        .count()
}

/// Threads of this process named as the window's fault handler.
fn handler_threads() -> usize {
    std::fs::read_dir("/proc/self/task")
        .unwrap()
        .filter_map(|e| std::fs::read_to_string(e.ok()?.path().join("comm")).ok())
        .filter(|c| c.trim_end() == "dax-window-uffd")
        .count()
}

/// `(userfaultfds(), handler_threads())` once it equals `want`, or after 5 s: a new thread
/// names itself when it starts running, and a joined one leaves /proc a moment later.
fn settled(want: (usize, usize)) -> (usize, usize) {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    loop {
        let now = (userfaultfds(), handler_threads());
        if now == want || std::time::Instant::now() > deadline {
            return now;
        }
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
}

#[test]
fn window_without_fault_handler_maps_raw_ranges_and_opens_no_userfaultfd() {
    let _dog = Watchdog::new("no_handler", 120);
    let (fds0, threads0) = (userfaultfds(), handler_threads());

    // The probes see a window with a handler: one userfaultfd, one thread, both gone on drop.
    {
        let w = Window::new(2 * MIB).unwrap();
        assert!(w.has_fault_handler());
        assert_eq!(settled((fds0 + 1, threads0 + 1)), (fds0 + 1, threads0 + 1));
    }
    assert_eq!(settled((fds0, threads0)), (fds0, threads0));

    let fs = Ext4::with_mkfs_args(64, &["-b", "4096"]);
    let path = fs.path("f");
    let data = vec![0x5au8; 8 * PAGE_SIZE];
    let file = sparse_file(&path, (4 * MIB) as u64, &[(0, &data)]);
    let blocks0 = blocks_bytes(&path);

    let w = Window::without_fault_handler(4 * MIB).unwrap();
    assert!(!w.has_fault_handler());
    assert!(!w.kernel_faults());
    // Given the time a handler would take to show up (as above), none does.
    std::thread::sleep(std::time::Duration::from_millis(200));
    assert_eq!(
        (userfaultfds(), handler_threads()),
        (fds0, threads0),
        "no userfaultfd, no handler thread"
    );

    // Unmapped space reads zeros, from the zero page.
    assert!(read_all_zero(&w, 0, w.len()));
    let s = w.page_states(0, w.len()).unwrap();
    assert_eq!(s.zero_total(), (w.len() / PAGE_SIZE) as u64, "{s:?}");

    // SHMEM_MAP read-only: exactly the range, file pages; unmap returns zeros.
    let info = w
        .map_fd_raw(MIB, 8 * PAGE_SIZE, file.as_fd(), 0, false)
        .unwrap();
    assert_eq!(info.len, 8 * PAGE_SIZE);
    let mut buf = vec![0u8; 8 * PAGE_SIZE];
    w.read_at(MIB, &mut buf).unwrap();
    assert_eq!(buf, data);
    assert_eq!(state_at(&w, MIB), PageState::File);
    assert!(read_all_zero(&w, MIB + 8 * PAGE_SIZE, PAGE_SIZE));
    assert!(matches!(w.write_at(MIB, b"x"), Err(Error::ReadOnly)));
    assert!(matches!(
        w.map_fd_raw(MIB, PAGE_SIZE, file.as_fd(), 0, false),
        Err(Error::Overlap)
    ));
    w.unmap(MIB, 8 * PAGE_SIZE).unwrap();
    assert!(w.mappings().is_empty());
    assert!(read_all_zero(&w, MIB, 8 * PAGE_SIZE));

    // SHMEM_MAP writable, over data and over a hole: stores go to the file (the hole is
    // allocated by the filesystem's page_mkwrite, as with any shared mapping).
    let rw = open_rw(&path);
    w.map_fd_raw(0, 2 * MIB, rw.as_fd(), 0, true).unwrap();
    w.write_at(10, b"hello").unwrap();
    w.write_at(MIB + 20, b"world").unwrap();
    w.unmap(0, 2 * MIB).unwrap();
    assert!(read_all_zero(&w, 0, 2 * MIB));
    assert_eq!(read_file(&path, 10, 5), b"hello");
    assert_eq!(read_file(&path, MIB as u64 + 20, 5), b"world");
    let blocks1 = blocks_bytes(&path);

    // Holes with the write upgrade need the handler: refused, nothing mapped or allocated.
    for off in [0, 2 * MIB] {
        let e = w
            .map_file(off, 2 * MIB, &rw, 2 * MIB as u64, true)
            .unwrap_err();
        assert!(matches!(e, Error::NoFaultHandler), "{e}");
    }
    assert!(w.mappings().is_empty());
    assert!(read_all_zero(&w, 0, w.len()));
    assert!(matches!(w.write_at(2 * MIB, b"x"), Err(Error::ReadOnly)));
    assert_eq!(blocks_bytes(&path), blocks1);
    assert!(blocks1 > blocks0);

    // Read-only map_file needs no handler: data as file pages, holes as the zero page.
    let m = w.map_file(0, 2 * MIB, &file, 0, false).unwrap();
    assert!(!m.writable);
    w.read_at(0, &mut buf).unwrap();
    assert_eq!(&buf[..10], &data[..10]);
    assert_eq!(&buf[10..15], b"hello");
    assert_eq!(state_at(&w, 0), PageState::File);
    assert!(read_all_zero(&w, 512 << 10, 256 << 10));
    assert!(matches!(
        state_at(&w, 512 << 10),
        PageState::Zero | PageState::HugeZero
    ));
    w.unmap(0, 2 * MIB).unwrap();

    assert_eq!(w.stats(), Default::default());
    assert_no_private(&w);
    assert_eq!((userfaultfds(), handler_threads()), (fds0, threads0));
    drop(w);
    assert_eq!((userfaultfds(), handler_threads()), (fds0, threads0));
}
