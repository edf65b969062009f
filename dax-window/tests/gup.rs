//! Kernel-mode access to window holes (GUP): O_DIRECT, vmsplice, process_vm_writev and
//! io_uring buffer registration, each beside the kernel's rule for the zero page.

mod common;

use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::fs::OpenOptionsExt;

use common::*;
use dax_window::{PageState, Window, PAGE_SIZE};

fn window_with_hole_file(fs: &Ext4) -> (Window, std::fs::File, std::path::PathBuf) {
    let path = fs.path("target");
    let f = sparse_file(&path, 8 * MIB as u64, &[(0, &[b'T'; 4096])]);
    let w = Window::new(8 * MIB).unwrap();
    w.map_file(0, 8 * MIB, &f, 0, true).unwrap();
    assert!(
        w.kernel_faults(),
        "tests run as root: kernel-mode faults must reach us"
    );
    (w, f, path)
}

/// A 4 KiB-aligned O_DIRECT source file holding `byte`.
fn direct_source(fs: &Ext4, byte: u8) -> std::fs::File {
    let p = fs.path("source");
    sparse_file(&p, 4096, &[(0, &[byte; 4096])]);
    std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_DIRECT)
        .open(&p)
        .unwrap()
}

#[test]
fn o_direct_read_into_hole_reaches_the_file() {
    let _wd = Watchdog::new("o_direct_read", 120);
    let fs = Ext4::new(256);
    let (w, f, path) = window_with_hole_file(&fs);
    let src = direct_source(&fs, b'R');
    let hole = 2 * MIB + 3 * PAGE_SIZE;
    assert!(matches!(state_at(&w, hole), PageState::HugeZero));
    // SAFETY: reads 4096 bytes into a window page (a writable hole), which stays mapped.
    let n = unsafe {
        libc::pread(
            src.as_raw_fd(),
            w.as_ptr().add(hole) as *mut libc::c_void,
            4096,
            0,
        )
    };
    assert_eq!(n, 4096, "{}", std::io::Error::last_os_error());
    assert_eq!(state_at(&w, hole), PageState::File);
    f.sync_all().unwrap();
    assert_eq!(read_file(&path, hole as u64, 4096), vec![b'R'; 4096]);
    assert_eq!(w.stats().upgrades, 1);
    assert_no_private(&w);
}

#[test]
fn o_direct_write_from_hole_writes_zeros_and_keeps_the_zero_page() {
    let _wd = Watchdog::new("o_direct_write", 120);
    let fs = Ext4::new(256);
    let (w, _f, path) = window_with_hole_file(&fs);
    let dest = fs.path("dest");
    sparse_file(&dest, 8192, &[(0, &[0xff; 8192])]);
    let d = std::fs::OpenOptions::new()
        .write(true)
        .custom_flags(libc::O_DIRECT)
        .open(&dest)
        .unwrap();
    let hole = MIB;
    // SAFETY: the kernel reads 4096 bytes from a window page, which stays mapped.
    let n = unsafe {
        libc::pwrite(
            d.as_raw_fd(),
            w.as_ptr().add(hole) as *const libc::c_void,
            4096,
            4096,
        )
    };
    assert_eq!(n, 4096, "{}", std::io::Error::last_os_error());
    assert_eq!(read_file(&dest, 4096, 4096), vec![0u8; 4096]);
    assert_eq!(read_file(&dest, 0, 4096), vec![0xffu8; 4096]);
    assert!(matches!(
        state_at(&w, hole),
        PageState::Zero | PageState::HugeZero
    ));
    assert_eq!(w.stats().upgrades, 0);
    // Nothing allocated in the window's file.
    assert_eq!(
        data_of(&path),
        vec![dax_window::Extent {
            start: 0,
            end: 4096
        }]
    );
    assert_no_private(&w);
}

#[test]
fn vmsplice_from_hole_gives_zeros_and_keeps_the_zero_page() {
    let _wd = Watchdog::new("vmsplice", 120);
    let fs = Ext4::new(256);
    let (w, _f, _path) = window_with_hole_file(&fs);
    let mut fds = [0; 2];
    // SAFETY: pipe2 fills two descriptors we then own.
    assert_eq!(unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) }, 0);
    // SAFETY: both descriptors were just created by pipe2.
    let (r, wr) = unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) };
    let hole = 5 * MIB;
    let iov = libc::iovec {
        // SAFETY: in-bounds pointer into the window.
        iov_base: unsafe { w.as_ptr().add(hole) } as *mut libc::c_void,
        iov_len: 4096,
    };
    // SAFETY: splices one window page (still mapped while the pipe is read) into the pipe.
    let n = unsafe { libc::vmsplice(wr.as_raw_fd(), &iov, 1, 0) };
    assert_eq!(n, 4096, "{}", std::io::Error::last_os_error());
    let mut buf = vec![0xaau8; 4096];
    // SAFETY: reads into our own buffer.
    let n = unsafe { libc::read(r.as_raw_fd(), buf.as_mut_ptr() as *mut libc::c_void, 4096) };
    assert_eq!(n, 4096);
    assert_eq!(buf, vec![0u8; 4096]);
    assert!(matches!(
        state_at(&w, hole),
        PageState::Zero | PageState::HugeZero
    ));
    assert_eq!(w.stats().upgrades, 0);
    assert_no_private(&w);
}

#[test]
fn process_vm_writev_into_hole_reaches_the_file() {
    let _wd = Watchdog::new("process_vm_writev", 120);
    let fs = Ext4::new(256);
    let (w, f, path) = window_with_hole_file(&fs);
    let hole = 6 * MIB + 12 * PAGE_SIZE + 10;
    let data = b"written by process_vm_writev";
    let local = libc::iovec {
        iov_base: data.as_ptr() as *mut libc::c_void,
        iov_len: data.len(),
    };
    let remote = libc::iovec {
        // SAFETY: in-bounds pointer into the window.
        iov_base: unsafe { w.as_ptr().add(hole) } as *mut libc::c_void,
        iov_len: data.len(),
    };
    // SAFETY: writes into our own process's window, a writable mapping.
    let n = unsafe { libc::process_vm_writev(libc::getpid(), &local, 1, &remote, 1, 0) };
    assert_eq!(
        n as usize,
        data.len(),
        "{}",
        std::io::Error::last_os_error()
    );
    f.sync_all().unwrap();
    assert_eq!(read_file(&path, hole as u64, data.len()), data);
    assert_eq!(state_at(&w, hole), PageState::File);
    assert_no_private(&w);
}

const IORING_REGISTER_BUFFERS: libc::c_uint = 0;

fn io_uring() -> OwnedFd {
    // struct io_uring_params is 120 bytes; all zero asks for defaults.
    let mut params = [0u64; 15];
    // SAFETY: io_uring_setup reads and fills the 120-byte params we pass.
    let fd = unsafe { libc::syscall(libc::SYS_io_uring_setup, 4u32, params.as_mut_ptr()) };
    assert!(
        fd >= 0,
        "io_uring_setup: {}",
        std::io::Error::last_os_error()
    );
    // SAFETY: the syscall returned a new descriptor we own.
    unsafe { OwnedFd::from_raw_fd(fd as i32) }
}

fn register_buffer(ring: &OwnedFd, addr: *mut u8, len: usize) -> std::io::Result<()> {
    let iov = libc::iovec {
        iov_base: addr as *mut libc::c_void,
        iov_len: len,
    };
    // SAFETY: registers one iovec describing memory of this process.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_io_uring_register,
            ring.as_raw_fd(),
            IORING_REGISTER_BUFFERS,
            &iov as *const libc::iovec,
            1u32,
        )
    };
    if rc < 0 {
        Err(std::io::Error::last_os_error())
    } else {
        Ok(())
    }
}

#[test]
fn io_uring_long_term_pin_over_holes_fails_efault() {
    let _wd = Watchdog::new("io_uring", 120);
    let fs = Ext4::new(256);
    let (w, f, path) = window_with_hole_file(&fs);
    let ring = io_uring();
    let hole = 3 * MIB;
    let blocks = blocks_bytes(&path);
    // SAFETY: in-bounds pointer into the window.
    let err = register_buffer(&ring, unsafe { w.as_ptr().add(hole) }, 2 * PAGE_SIZE).unwrap_err();
    assert_eq!(err.raw_os_error(), Some(libc::EFAULT));
    // The pin's write fault came first: the first granule is allocated and file-backed,
    // the second page is untouched; then the long-term pin of a shared file page was
    // refused (before the file page itself was faulted in: it is mapped, not populated).
    assert_eq!(state_at(&w, hole), PageState::NotPopulated);
    assert!(w.mappings()[0]
        .file_backed
        .contains(&(hole, hole + PAGE_SIZE)));
    assert!(matches!(
        state_at(&w, hole + PAGE_SIZE),
        PageState::Zero | PageState::HugeZero
    ));
    assert_eq!(w.stats().upgrades, 1);
    f.sync_all().unwrap();
    assert_eq!(blocks_bytes(&path) - blocks, PAGE_SIZE as u64);
    assert_no_private(&w);

    // Over a read-only mapping's hole the write pin fails as well and changes nothing.
    let ro = fs.path("ro");
    let fro = sparse_file(&ro, 4 * MIB as u64, &[]);
    let w2 = Window::new(4 * MIB).unwrap();
    w2.map_file(0, 4 * MIB, &fro, 0, false).unwrap();
    let mut b = [0u8; 1];
    w2.read_at(MIB, &mut b).unwrap();
    // SAFETY: in-bounds pointer into the window.
    let err = register_buffer(&ring, unsafe { w2.as_ptr().add(MIB) }, PAGE_SIZE).unwrap_err();
    assert_eq!(err.raw_os_error(), Some(libc::EFAULT));
    assert!(matches!(
        state_at(&w2, MIB),
        PageState::Zero | PageState::HugeZero
    ));
    assert_no_private(&w2);
}

/// One IORING_OP_READ of `len` bytes from `fd` at 0 into `buf`, through raw io_uring
/// syscalls and ring mmaps. Returns the completion's result.
fn io_uring_read(fd: i32, buf: *mut u8, len: u32) -> i32 {
    let mut p = [0u32; 30]; // struct io_uring_params, 120 bytes
                            // SAFETY: io_uring_setup reads and fills the 120-byte params we pass.
    let ring = unsafe { libc::syscall(libc::SYS_io_uring_setup, 4u32, p.as_mut_ptr()) };
    assert!(ring >= 0, "{}", std::io::Error::last_os_error());
    // SAFETY: a descriptor the syscall just returned to us.
    let ring = unsafe { OwnedFd::from_raw_fd(ring as i32) };
    let (sq_entries, cq_entries) = (p[0] as usize, p[1] as usize);
    // sq_off at byte 40 (u32 index 10), cq_off at byte 80 (index 20).
    let (sq_tail, sq_mask, sq_array) = (p[11], p[12], p[16]);
    let (cq_head, cq_tail, cq_mask, cqes) = (p[20], p[21], p[22], p[25]);
    let sq_len = sq_array as usize + sq_entries * 4;
    let cq_len = cqes as usize + cq_entries * 16;
    let map = |len: usize, off: i64| {
        // SAFETY: maps the ring's shared memory; lives until the process ends.
        let m = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED | libc::MAP_POPULATE,
                ring.as_raw_fd(),
                off,
            )
        };
        assert_ne!(m, libc::MAP_FAILED);
        m as *mut u8
    };
    let sq = map(sq_len, 0);
    let cq = map(cq_len, 0x800_0000);
    let sqes = map(sq_entries * 64, 0x1000_0000);
    // SAFETY: all offsets come from the kernel's params and lie inside the ring mappings;
    // ring indices are read and published with the orderings the io_uring ABI asks for.
    unsafe {
        use std::sync::atomic::{AtomicU32, Ordering};
        let at = |base: *mut u8, off: u32| &*(base.add(off as usize) as *const AtomicU32);
        let tail = at(sq, sq_tail).load(Ordering::Acquire);
        let idx = tail & *(sq.add(sq_mask as usize) as *const u32);
        let sqe = sqes.add(idx as usize * 64);
        std::ptr::write_bytes(sqe, 0, 64);
        *sqe = 22; // IORING_OP_READ
        *(sqe.add(4) as *mut i32) = fd;
        *(sqe.add(8) as *mut u64) = 0;
        *(sqe.add(16) as *mut u64) = buf as u64;
        *(sqe.add(24) as *mut u32) = len;
        *(sq.add(sq_array as usize) as *mut u32).add(idx as usize) = idx;
        at(sq, sq_tail).store(tail + 1, Ordering::Release);
        let n = libc::syscall(
            libc::SYS_io_uring_enter,
            ring.as_raw_fd(),
            1u32,
            1u32,
            1u32, // IORING_ENTER_GETEVENTS
            std::ptr::null::<libc::c_void>(),
            0usize,
        );
        assert_eq!(n, 1, "{}", std::io::Error::last_os_error());
        let head = at(cq, cq_head).load(Ordering::Acquire);
        assert_ne!(head, at(cq, cq_tail).load(Ordering::Acquire));
        let cidx = head & *(cq.add(cq_mask as usize) as *const u32);
        let res = *(cq.add(cqes as usize + cidx as usize * 16 + 8) as *const i32);
        at(cq, cq_head).store(head + 1, Ordering::Release);
        res
    }
}

#[test]
fn io_uring_read_into_hole_reaches_the_file() {
    let _wd = Watchdog::new("io_uring_read", 120);
    let fs = Ext4::new(256);
    let (w, f, path) = window_with_hole_file(&fs);
    let src = fs.path("uring-src");
    let s = sparse_file(&src, 8192, &[(0, &[b'U'; 8192])]);
    let hole = 7 * MIB;
    // SAFETY: in-bounds pointer into a writable hole of the window.
    let res = io_uring_read(s.as_raw_fd(), unsafe { w.as_ptr().add(hole) }, 8192);
    assert_eq!(res, 8192);
    f.sync_all().unwrap();
    assert_eq!(read_file(&path, hole as u64, 8192), vec![b'U'; 8192]);
    assert_eq!(state_at(&w, hole), PageState::File);
    assert_eq!(state_at(&w, hole + PAGE_SIZE), PageState::File);
    assert_eq!(w.stats().upgrades, 2);
    assert_no_private(&w);
}
