//! Scenarios whose outcome is a signal (SIGBUS, SIGSEGV) or a privilege change, each run
//! in a forked child. This binary has its own main (harness = false) so that it forks
//! while still single-threaded: the child may then create windows and threads freely.
//! The parent only waits, with a deadline, and kills a child that overstays.

mod common;

use std::os::fd::AsRawFd;
use std::os::unix::fs::{FileExt, OpenOptionsExt, PermissionsExt};
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicI32, AtomicU32, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use common::*;
use dax_window::{Granule, PageState, Window, WindowOptions, PAGE_SIZE};

enum Outcome {
    Exit(i32),
    Signal(i32),
}

/// Runs `body` in a child process; a panic there exits 101.
fn in_child(name: &str, body: impl FnOnce()) -> Outcome {
    // SAFETY: this process is single-threaded here (harness = false, no threads spawned
    // by the parent), so the child may allocate and spawn threads after fork.
    let pid = unsafe { libc::fork() };
    assert!(pid >= 0, "fork");
    if pid == 0 {
        let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(body));
        // SAFETY: leave the child without running the parent's destructors (the mount
        // guard belongs to the parent).
        unsafe { libc::_exit(if r.is_ok() { 0 } else { 101 }) };
    }
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let mut status = 0;
        // SAFETY: waits for our own child without blocking.
        let r = unsafe { libc::waitpid(pid, &mut status, libc::WNOHANG) };
        if r == pid {
            if libc::WIFSIGNALED(status) {
                return Outcome::Signal(libc::WTERMSIG(status));
            }
            return Outcome::Exit(libc::WEXITSTATUS(status));
        }
        if Instant::now() > deadline {
            // SAFETY: kills and reaps our own child.
            unsafe {
                libc::kill(pid, libc::SIGKILL);
                libc::waitpid(pid, &mut status, 0);
            }
            panic!("{name}: child hung (a parked fault?) and was killed");
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

fn expect_signal(name: &str, want: i32, body: impl FnOnce()) {
    match in_child(name, body) {
        Outcome::Signal(s) if s == want => eprintln!("{name}: ok (signal {s})"),
        Outcome::Signal(s) => panic!("{name}: signal {s}, wanted {want}"),
        Outcome::Exit(c) => panic!("{name}: exited {c}, wanted signal {want}"),
    }
}

fn expect_success(name: &str, body: impl FnOnce()) {
    match in_child(name, body) {
        Outcome::Exit(0) => eprintln!("{name}: ok"),
        Outcome::Exit(c) => panic!("{name}: exited {c}"),
        Outcome::Signal(s) => panic!("{name}: killed by signal {s}"),
    }
}

fn write_byte(w: &Window, off: usize) {
    // SAFETY: a volatile store into the window; the signal it may raise is the point.
    unsafe { std::ptr::write_volatile(w.as_ptr().add(off), 0x42) };
}

fn read_byte(w: &Window, off: usize) -> u8 {
    // SAFETY: a volatile load from the window.
    unsafe { std::ptr::read_volatile(w.as_ptr().add(off)) }
}

/// O_DIRECT-reads the first page of `src` into the window at `off`, a write by the kernel
/// on the process's behalf: pread's result and the errno right after it.
fn direct_read_into(w: &Window, off: usize, src: &Path) -> (isize, Option<i32>) {
    let s = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_DIRECT)
        .open(src)
        .unwrap();
    assert!(off + 4096 <= w.len());
    // SAFETY: reads into a window page, in bounds (checked above) and mapped for the
    // window's lifetime.
    let n = unsafe {
        libc::pread(
            s.as_raw_fd(),
            w.as_ptr().add(off) as *mut libc::c_void,
            4096,
            0,
        )
    };
    (n, std::io::Error::last_os_error().raw_os_error())
}

/// Fills the filesystem until ENOSPC.
fn fill(path: &Path) {
    let f = std::fs::File::create(path).unwrap();
    let chunk = vec![0x11u8; MIB];
    let mut off = 0u64;
    while f.write_all_at(&chunk, off).is_ok() {
        off += MIB as u64;
    }
    let small = vec![0x11u8; 4096];
    while f.write_all_at(&small, off).is_ok() {
        off += 4096;
    }
    let _ = f.sync_all();
    while f.write_all_at(&small, off).is_ok() {
        off += 4096;
        let _ = f.sync_all();
    }
}

fn enospc(fs: &Ext4) {
    let path = fs.path("sparse");
    let f = sparse_file(&path, 64 * MIB as u64, &[]);
    let src = fs.path("src");
    sparse_file(&src, 4096, &[(0, &[b's'; 4096])]);
    let huge = fs.path("huge");
    sparse_file(&huge, 64 * MIB as u64, &[]);
    let spare = fs.path("spare");
    sparse_file(&spare, 64 * 1024, &[(0, &[1; 64 * 1024])]);
    fill(&fs.path("filler"));
    drop(f);
    // A kernel-mode writer (O_DIRECT read into a hole) gets EFAULT; nothing lands, and the
    // page still reads as the hole it is.
    expect_success("enospc_kernel_writer_efault", || {
        let f = open_rw(&path);
        let w = Window::new(64 * MIB).unwrap();
        w.map_file(0, 64 * MIB, &f, 0, true).unwrap();
        let (n, errno) = direct_read_into(&w, MIB, &src);
        assert_eq!(n, -1);
        assert_eq!(errno, Some(libc::EFAULT));
        assert_eq!(w.stats().failed, 1);
        assert!(w.mappings()[0].poisoned.is_empty());
        assert_eq!(w.mappings()[0].failed_upgrades, vec![MIB]);
        assert_eq!(read_byte(&w, MIB), 0);
        let mut page = vec![1u8; PAGE_SIZE];
        w.read_at(MIB, &mut page).unwrap();
        assert!(page.iter().all(|&b| b == 0));
        // A second attempt is a new allocation attempt (still no space): EFAULT again.
        let (n, errno) = direct_read_into(&w, MIB, &src);
        assert_eq!((n, errno), (-1, Some(libc::EFAULT)));
        assert_eq!(w.page_states(0, 64 * MIB).unwrap().private_anon, 0);
    });
    // A CPU store gets SIGBUS at the fault (default disposition: the process ends).
    expect_signal("enospc_store_sigbus", libc::SIGBUS, || {
        let f = open_rw(&path);
        let w = Window::new(64 * MIB).unwrap();
        w.map_file(0, 64 * MIB, &f, 0, true).unwrap();
        write_byte(&w, 5 * MIB + 17);
    });
    // Nothing silently reached (or vanished from) the file.
    assert!(data_of(&path).is_empty());
    // With a little space back (64 KiB), a 2 MiB granule does not fit but the write does:
    // the faulting page is allocated first, and upgraded alone when the granule fails.
    std::fs::remove_file(&spare).unwrap();
    let dir = std::fs::File::open(&fs.mnt).unwrap();
    // SAFETY: syncfs on a descriptor we own: commits the freed blocks.
    unsafe { libc::syncfs(dir.as_raw_fd()) };
    expect_success("enospc_huge_granule_falls_back_to_the_page", || {
        let f = open_rw(&huge);
        let options = WindowOptions {
            granule: Granule::Huge,
            vma_headroom: None,
        };
        let w = Window::with_options(64 * MIB, options).unwrap();
        w.map_file(0, 64 * MIB, &f, 0, true).unwrap();
        w.write_at(5 * MIB + 17, b"fits").unwrap();
        assert_eq!((w.stats().upgrades, w.stats().failed), (1, 0));
        let m = &w.mappings()[0];
        assert_eq!(m.file_backed, vec![(5 * MIB, 5 * MIB + PAGE_SIZE)]);
        assert!(m.failed_upgrades.is_empty());
        f.sync_all().unwrap();
    });
    assert_eq!(read_file(&huge, 5 * MIB as u64 + 17, 4), b"fits");
    // Full again for what follows.
    fill(&fs.path("filler2"));
    // The failure is that store's alone: reads of the page see the hole, and the same store
    // retried once space is back succeeds and lands in the file.
    let filler = fs.path("filler");
    expect_success("enospc_fails_only_the_write", || {
        enospc_fails_only_the_write(&path, &filler, &src)
    });
    assert_eq!(read_file(&path, 5 * MIB as u64 + 17, 1), [0x42]);
    assert_eq!(read_file(&path, 9 * MIB as u64, 3), b"new");
    assert_eq!(read_file(&path, MIB as u64, 4096), [b's'; 4096]);
}

/// What the SIGBUS handler of `enospc_fails_only_the_write` saw.
static WRITER_TID: AtomicI32 = AtomicI32::new(0);
static SIGBUS_COUNT: AtomicU32 = AtomicU32::new(0);
static SIGBUS_CODE: AtomicI32 = AtomicI32::new(0);
static SIGBUS_ADDR: AtomicUsize = AtomicUsize::new(0);
static RELEASE: AtomicBool = AtomicBool::new(false);

/// SIGBUS in the writer thread: recorded, then held until the test releases it; returning
/// re-executes the store (a new write fault). SIGBUS anywhere else fails the test.
extern "C" fn on_sigbus(_: libc::c_int, info: *mut libc::siginfo_t, _: *mut libc::c_void) {
    // SAFETY: only async-signal-safe calls (gettid, write, _exit, nanosleep) and atomics;
    // `info` is the kernel's siginfo for this signal.
    unsafe {
        if libc::gettid() != WRITER_TID.load(Ordering::SeqCst) {
            let msg = b"SIGBUS outside the writer: a read of the failed page faulted\n";
            libc::write(2, msg.as_ptr() as *const libc::c_void, msg.len());
            libc::_exit(3);
        }
        SIGBUS_CODE.store((*info).si_code, Ordering::SeqCst);
        SIGBUS_ADDR.store((*info).si_addr() as usize, Ordering::SeqCst);
        SIGBUS_COUNT.fetch_add(1, Ordering::SeqCst);
        while !RELEASE.load(Ordering::SeqCst) {
            let ts = libc::timespec {
                tv_sec: 0,
                tv_nsec: 1_000_000,
            };
            libc::nanosleep(&ts, std::ptr::null_mut());
        }
    }
}

fn enospc_fails_only_the_write(path: &Path, filler: &Path, src: &Path) {
    let f = open_rw(path);
    let w = Window::new(64 * MIB).unwrap();
    w.map_file(0, 64 * MIB, &f, 0, true).unwrap();
    // SAFETY: installs a handler for SIGBUS in this (child) process; the handler only uses
    // async-signal-safe calls.
    unsafe {
        let mut sa: libc::sigaction = std::mem::zeroed();
        sa.sa_sigaction = on_sigbus as *const () as usize;
        sa.sa_flags = libc::SA_SIGINFO;
        libc::sigemptyset(&mut sa.sa_mask);
        assert_eq!(libc::sigaction(libc::SIGBUS, &sa, std::ptr::null_mut()), 0);
    }
    // A kernel-mode writer first: EFAULT, as in enospc_kernel_writer_efault.
    let (n, errno) = direct_read_into(&w, MIB, src);
    assert_eq!((n, errno), (-1, Some(libc::EFAULT)));
    let off = 5 * MIB + 17;
    let addr = w.as_ptr() as usize + off;
    let stored = std::sync::Arc::new(AtomicBool::new(false));
    let writer = {
        let stored = stored.clone();
        std::thread::spawn(move || {
            // SAFETY: gettid has no preconditions.
            WRITER_TID.store(unsafe { libc::gettid() }, Ordering::SeqCst);
            // SAFETY: a store into a writable hole of the window, which outlives this thread
            // (joined below); the SIGBUS it takes while the disk is full is the point.
            unsafe { std::ptr::write_volatile(addr as *mut u8, 0x42) };
            stored.store(true, Ordering::SeqCst);
        })
    };
    let deadline = Instant::now() + Duration::from_secs(20);
    while SIGBUS_COUNT.load(Ordering::SeqCst) == 0 {
        assert!(
            !stored.load(Ordering::SeqCst),
            "the store succeeded on a full disk"
        );
        assert!(
            Instant::now() < deadline,
            "the writer neither failed nor finished"
        );
        std::thread::sleep(Duration::from_millis(5));
    }
    // That store failed, at its own address, as fsdax's failing write fault reports it.
    assert_eq!(SIGBUS_ADDR.load(Ordering::SeqCst), addr);
    assert_eq!(SIGBUS_CODE.load(Ordering::SeqCst), libc::BUS_ADRERR);
    assert_eq!(w.stats().failed, 2);
    assert_eq!(w.stats().upgrades, 0);
    // Reads of that page, in this thread, see the hole: zeros, no fault.
    assert_eq!(read_byte(&w, off), 0);
    let mut page = vec![1u8; PAGE_SIZE];
    w.read_at(5 * MIB, &mut page).unwrap();
    assert!(page.iter().all(|&b| b == 0));
    assert_eq!(
        read_file(path, 5 * MIB as u64, PAGE_SIZE),
        vec![0; PAGE_SIZE]
    );
    assert!(data_of(path).is_empty(), "nothing allocated");
    // The page is a plain file page now (the hole's zeros in the page cache), not poison.
    assert_eq!(state_at(&w, off), PageState::File);
    let m = &w.mappings()[0];
    assert!(m.poisoned.is_empty(), "{:?}", m.poisoned);
    assert_eq!(m.failed_upgrades, vec![MIB, 5 * MIB]);
    assert_eq!(w.page_states(0, 64 * MIB).unwrap().private_anon, 0);

    // Space comes back; the writer's store runs again and now allocates.
    std::fs::remove_file(filler).unwrap();
    // SAFETY: syncfs on a descriptor we own: commits the freed blocks.
    unsafe { libc::syncfs(f.as_raw_fd()) };
    RELEASE.store(true, Ordering::SeqCst);
    writer.join().unwrap();
    assert!(stored.load(Ordering::SeqCst));
    assert_eq!(SIGBUS_COUNT.load(Ordering::SeqCst), 1);
    assert_eq!(read_byte(&w, off), 0x42);
    f.sync_all().unwrap();
    assert_eq!(read_file(path, off as u64, 1), [0x42]);
    // The kernel-mode writer's retry succeeds as well, and other holes keep upgrading.
    let (n, _) = direct_read_into(&w, MIB, src);
    assert_eq!(n, 4096);
    w.write_at(9 * MIB, b"new").unwrap();
    assert_eq!(w.stats().upgrades, 1);
    assert_eq!(w.stats().failed, 2);
    f.sync_all().unwrap();
    assert_eq!(w.page_states(0, 64 * MIB).unwrap().private_anon, 0);
}

fn truncation(fs: &Ext4) {
    let path = fs.path("trunc");
    sparse_file(&path, 8 * MIB as u64, &[(7 * MIB as u64, &[b'e'; 4096])]);
    let setup = |p: &Path| {
        let f = open_rw(p);
        let w = Window::new(8 * MIB).unwrap();
        w.map_file(0, 8 * MIB, &f, 0, true).unwrap();
        open_rw(p).set_len(4 * MIB as u64).unwrap();
        // The handler survives the truncation: writes below EOF still upgrade.
        w.write_at(MIB, b"alive").unwrap();
        assert_eq!(read_file(p, MIB as u64, 5), b"alive");
        w
    };
    expect_signal("truncated_file_page_sigbus", libc::SIGBUS, || {
        let w = setup(&path);
        read_byte(&w, 7 * MIB);
    });
    sparse_file(&path, 8 * MIB as u64, &[(7 * MIB as u64, &[b'e'; 4096])]);
    expect_signal("write_to_hole_past_new_eof_sigbus", libc::SIGBUS, || {
        let w = setup(&path);
        // A hole past EOF still reads as zeros (never a file page)...
        assert_eq!(read_byte(&w, 6 * MIB), 0);
        // ...and a write there fails like any mmap write past EOF.
        write_byte(&w, 6 * MIB);
    });
    assert_eq!(std::fs::metadata(&path).unwrap().len(), 4 * MIB as u64);
    assert!(data_of(&path).iter().all(|e| e.end <= 4 * MIB as u64));
}

fn read_only(fs: &Ext4) {
    let path = fs.path("ro");
    sparse_file(&path, 4 * MIB as u64, &[]);
    expect_signal("read_only_hole_write_sigsegv", libc::SIGSEGV, || {
        let f = std::fs::File::open(&path).unwrap();
        let w = Window::new(4 * MIB).unwrap();
        w.map_file(0, 4 * MIB, &f, 0, false).unwrap();
        assert_eq!(read_byte(&w, MIB), 0);
        write_byte(&w, MIB);
    });
    expect_signal("unmapped_window_write_sigsegv", libc::SIGSEGV, || {
        let w = Window::new(4 * MIB).unwrap();
        write_byte(&w, 0);
    });
    assert!(data_of(&path).is_empty());
}

fn unprivileged(fs: &Ext4) {
    let path = fs.path("nobody");
    sparse_file(&path, 8 * MIB as u64, &[]);
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o666)).unwrap();
    let src = fs.path("nobody-src");
    sparse_file(&src, 4096, &[(0, &[b'k'; 4096])]);
    std::fs::set_permissions(&src, std::fs::Permissions::from_mode(0o644)).unwrap();
    expect_success("unprivileged_user_mode_only", || {
        // SAFETY: plain credential changes in the child (nobody/nogroup).
        unsafe {
            assert_eq!(libc::setgid(65534), 0);
            assert_eq!(libc::setuid(65534), 0);
            // setuid cleared "dumpable", which makes /proc/self/* root's; a process
            // started as nobody has it set.
            assert_eq!(libc::prctl(libc::PR_SET_DUMPABLE, 1), 0);
        }
        let f = open_rw(&path);
        let w = Window::new(8 * MIB).unwrap();
        assert!(!w.kernel_faults(), "unprivileged: UFFD_USER_MODE_ONLY");
        w.map_file(0, 8 * MIB, &f, 0, true).unwrap();
        // User-mode writes upgrade as usual.
        w.write_at(MIB, b"user mode").unwrap();
        assert_eq!(read_file(&path, MIB as u64, 9), b"user mode");
        // Kernel-mode writers into holes get EFAULT: O_DIRECT read...
        let (n, errno) = direct_read_into(&w, 3 * MIB, &src);
        assert_eq!(n, -1);
        assert_eq!(errno, Some(libc::EFAULT));
        // ...and process_vm_writev.
        let data = b"pvw";
        let local = libc::iovec {
            iov_base: data.as_ptr() as *mut libc::c_void,
            iov_len: 3,
        };
        let remote = libc::iovec {
            // SAFETY: in-bounds pointer into the window.
            iov_base: unsafe { w.as_ptr().add(4 * MIB) } as *mut libc::c_void,
            iov_len: 3,
        };
        // SAFETY: writes into our own window.
        let n = unsafe { libc::process_vm_writev(libc::getpid(), &local, 1, &remote, 1, 0) };
        assert_eq!(n, -1);
        assert_eq!(
            std::io::Error::last_os_error().raw_os_error(),
            Some(libc::EFAULT)
        );
        // The failed kernel accesses left the pages zero, nothing private, no upgrade.
        assert!(matches!(
            w.page_states(3 * MIB, PAGE_SIZE).unwrap().runs[0].state,
            PageState::Zero | PageState::HugeZero
        ));
        assert_eq!(w.page_states(0, 8 * MIB).unwrap().private_anon, 0);
        assert_eq!(w.stats().upgrades, 1);
        // PAGEMAP_SCAN works without privilege.
        assert!(w.page_states(0, 8 * MIB).unwrap().zero_total() > 0);
    });
    assert_eq!(
        data_of(&path),
        vec![dax_window::Extent {
            start: MIB as u64,
            end: (MIB + PAGE_SIZE) as u64
        }]
    );
}

/// Uses up vm.max_map_count with split anonymous mappings; returns how many were made.
fn exhaust_vmas() -> usize {
    let pages = 70_000;
    // SAFETY: a fresh anonymous mapping, deliberately leaked (the child exits).
    let p = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            pages * 2 * PAGE_SIZE,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_NORESERVE,
            -1,
            0,
        )
    } as usize;
    assert_ne!(p as *mut libc::c_void, libc::MAP_FAILED);
    let mut made = 0;
    for i in 0..pages {
        // SAFETY: changes protection of one page of our own mapping, splitting it.
        let rc = unsafe {
            libc::mprotect(
                (p + i * 2 * PAGE_SIZE) as *mut libc::c_void,
                PAGE_SIZE,
                libc::PROT_READ,
            )
        };
        if rc != 0 {
            break;
        }
        made += 1;
    }
    made
}

fn vma_exhaustion(fs: &Ext4) {
    let path = fs.path("vmas");
    sparse_file(&path, 8 * MIB as u64, &[]);
    expect_signal("max_map_count_reached_sigbus", libc::SIGBUS, || {
        let f = open_rw(&path);
        let w = Window::new(16 * MIB).unwrap();
        w.map_file(0, 8 * MIB, &f, 0, true).unwrap();
        assert!(exhaust_vmas() > 1000);
        // A new mapping is refused with a clear error...
        let err = w.map_file(8 * MIB, 8 * MIB, &f, 0, true).unwrap_err();
        assert!(matches!(err, dax_window::Error::VmaBudget { .. }), "{err}");
        // ...and a write that needs a VMA split gets SIGBUS, never a hang.
        write_byte(&w, 3 * MIB + 5 * PAGE_SIZE);
    });
    // The granule was allocated before the mmap failed: at most that 4 KiB is allocated
    // (zeros, as the hole read); the byte itself never landed.
    let data = data_of(&path);
    assert!(
        data.iter().map(|e| e.len()).sum::<u64>() <= PAGE_SIZE as u64,
        "{data:?}"
    );
    assert!(read_file(&path, 0, 8 * MIB).iter().all(|&b| b == 0));
}

fn fork_child(fs: &Ext4) {
    let path = fs.path("forked");
    sparse_file(&path, 4 * MIB as u64, &[]);
    expect_success("forked_child_has_no_window", || {
        let f = open_rw(&path);
        let w = Window::new(4 * MIB).unwrap();
        w.map_file(0, 4 * MIB, &f, 0, true).unwrap();
        w.write_at(0, b"parent").unwrap();
        // SAFETY: the grandchild only performs one store and _exit.
        let pid = unsafe { libc::fork() };
        if pid == 0 {
            write_byte(&w, MIB);
            // SAFETY: leave without running anything else.
            unsafe { libc::_exit(0) };
        }
        let mut status = 0;
        // SAFETY: reaps our own child.
        assert_eq!(unsafe { libc::waitpid(pid, &mut status, 0) }, pid);
        assert!(libc::WIFSIGNALED(status) && libc::WTERMSIG(status) == libc::SIGSEGV);
        // The parent's window is untouched and keeps working.
        w.write_at(2 * MIB, b"still").unwrap();
        assert_eq!(read_file(&path, 2 * MIB as u64, 5), b"still");
        assert_eq!(read_file(&path, MIB as u64, 1), [0]);
        assert_eq!(w.page_states(0, 4 * MIB).unwrap().private_anon, 0);
    });
}

fn drop_while_writing(fs: &Ext4) {
    let path = fs.path("dropped");
    sparse_file(&path, 16 * MIB as u64, &[]);
    expect_signal("drop_while_writing_sigsegv", libc::SIGSEGV, || {
        let f = open_rw(&path);
        let w = Window::new(16 * MIB).unwrap();
        w.map_file(0, 16 * MIB, &f, 0, true).unwrap();
        let (base, len) = (w.as_ptr() as usize, w.len());
        std::thread::spawn(move || {
            // Upgrade after upgrade until the window disappears under this thread.
            for i in 0.. {
                let p = (base + (i * PAGE_SIZE) % len) as *mut u8;
                // SAFETY: a store into the window, which the main thread drops meanwhile:
                // the fault that follows is the point of the test.
                unsafe { std::ptr::write_volatile(p, 1) };
            }
        });
        std::thread::sleep(Duration::from_millis(20));
        // Dropping stops the handler, makes the window inaccessible and wakes the writer:
        // it must fault, not sleep forever (a hang is caught by the parent's deadline).
        drop(w);
        // Keep the range unusable so the writer cannot land in memory reused by malloc.
        // SAFETY: reserves the freed address range; MAP_FIXED_NOREPLACE never replaces.
        unsafe {
            libc::mmap(
                base as *mut libc::c_void,
                len,
                libc::PROT_NONE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_FIXED_NOREPLACE,
                -1,
                0,
            )
        };
        std::thread::sleep(Duration::from_secs(5));
    });
}

fn main() {
    // `cargo test -- --list` and filters: this binary has no per-test filtering.
    if std::env::args().any(|a| a == "--list") {
        println!("signals: test");
        return;
    }
    {
        let fs = Ext4::new(256);
        truncation(&fs);
        read_only(&fs);
        unprivileged(&fs);
        vma_exhaustion(&fs);
        fork_child(&fs);
        drop_while_writing(&fs);
    }
    {
        // 4 KiB blocks, as fsdax requires: a failing page_mkwrite on a filesystem with
        // smaller blocks keeps the delayed allocation of the blocks it reserved before
        // running out (2 KiB of zeros measured with 1 KiB blocks; docs/dax-window.md).
        let fs = Ext4::with_mkfs_args(32, &["-b", "4096"]);
        enospc(&fs);
    }
    eprintln!("signals: all scenarios passed");
}
