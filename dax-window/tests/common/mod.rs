//! Shared test fixtures: a loop-mounted ext4 (tmpfs fills holes on mmap reads, so tests
//! need a real block filesystem), a watchdog, and page-state assertions.
#![allow(dead_code)]

use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, SeekFrom};
use std::os::unix::fs::{FileExt, MetadataExt};
use std::path::Path;
use std::sync::mpsc;
use std::time::Duration;

use dax_window::{Extent, PageState, Window, PAGE_SIZE};

pub const MIB: usize = 1 << 20;

/// A fresh ext4 filesystem on a loop device (scratch::Ext4: unmounted and deleted on drop,
/// panics too), with no reserved blocks and its root open to every user.
pub struct Ext4(scratch::Ext4);

impl Ext4 {
    pub fn new(size_mib: u64) -> Ext4 {
        Ext4::with_mkfs_args(size_mib, &[])
    }

    /// As `new`, with extra `mkfs.ext4` arguments (`-b 4096`, say: small images otherwise get
    /// 1 KiB blocks).
    pub fn with_mkfs_args(size_mib: u64, args: &[&str]) -> Ext4 {
        let fs = scratch::Ext4::builder("dax-window-test", size_mib << 20)
            .mkfs_args(&["-m", "0"])
            .mkfs_args(args)
            // A window's mapping may still be going away in a handler thread.
            .umount_tries(50)
            .create()
            .unwrap_or_else(|e| panic!("{e}"));
        std::fs::set_permissions(&fs.mnt, std::os::unix::fs::PermissionsExt::from_mode(0o777))
            .unwrap();
        Ext4(fs)
    }
}

impl std::ops::Deref for Ext4 {
    type Target = scratch::Ext4;

    fn deref(&self) -> &scratch::Ext4 {
        &self.0
    }
}

/// Aborts the test process (after lazily unmounting every test mount) if not dropped in
/// time: a parked fault must fail the run, never hang it.
pub struct Watchdog {
    done: Option<mpsc::Sender<()>>,
}

impl Watchdog {
    pub fn new(name: &'static str, secs: u64) -> Watchdog {
        let (tx, rx) = mpsc::channel::<()>();
        std::thread::spawn(move || {
            if let Err(mpsc::RecvTimeoutError::Timeout) = rx.recv_timeout(Duration::from_secs(secs))
            {
                eprintln!("watchdog: {name} still running after {secs}s, aborting");
                scratch::detach_all_lazily();
                std::process::abort();
            }
        });
        Watchdog { done: Some(tx) }
    }
}

impl Drop for Watchdog {
    fn drop(&mut self) {
        if let Some(tx) = self.done.take() {
            let _ = tx.send(());
        }
    }
}

/// Creates `path` of `size` bytes, sparse, with `data` written at the given offsets.
pub fn sparse_file(path: &Path, size: u64, data: &[(u64, &[u8])]) -> File {
    scratch::sparse_file(path, size, data.iter().copied()).unwrap_or_else(|e| panic!("{e}"))
}

pub fn open_rw(path: &Path) -> File {
    OpenOptions::new()
        .read(true)
        .write(true)
        .open(path)
        .unwrap()
}

/// Data extents through a fresh descriptor (SEEK_DATA moves the offset).
pub fn data_of(path: &Path) -> Vec<Extent> {
    let f = File::open(path).unwrap();
    let len = f.metadata().unwrap().len();
    dax_window::data_extents(&f, 0, len).unwrap()
}

pub fn blocks_bytes(path: &Path) -> u64 {
    std::fs::metadata(path).unwrap().blocks() * 512
}

pub fn read_file(path: &Path, off: u64, len: usize) -> Vec<u8> {
    let mut f = File::open(path).unwrap();
    f.seek(SeekFrom::Start(off)).unwrap();
    let mut v = vec![0u8; len];
    f.read_exact(&mut v).unwrap();
    v
}

/// The window holds no present anonymous page that is not the zero page.
pub fn assert_no_private(w: &Window) {
    let s = w.page_states(0, w.len()).unwrap();
    assert_eq!(
        s.private_anon,
        0,
        "private copies in the window: {:?}",
        s.runs
            .iter()
            .filter(|r| r.state == PageState::PrivateAnon)
            .collect::<Vec<_>>()
    );
}

pub fn state_at(w: &Window, off: usize) -> PageState {
    let s = w
        .page_states(off / PAGE_SIZE * PAGE_SIZE, PAGE_SIZE)
        .unwrap();
    s.runs[0].state
}

/// Root-only cross-check: (present, is the zero page) from pagemap and kpageflags.
pub fn kpage_zero(addr: usize) -> (bool, bool) {
    let pagemap = File::open("/proc/self/pagemap").unwrap();
    let mut e = [0u8; 8];
    pagemap
        .read_exact_at(&mut e, (addr / PAGE_SIZE * 8) as u64)
        .unwrap();
    let entry = u64::from_le_bytes(e);
    let present = entry & (1 << 63) != 0;
    if !present {
        return (false, false);
    }
    let pfn = entry & ((1 << 55) - 1);
    assert_ne!(pfn, 0, "pagemap hides PFNs: not root?");
    let kpf = File::open("/proc/kpageflags").unwrap();
    kpf.read_exact_at(&mut e, pfn * 8).unwrap();
    let flags = u64::from_le_bytes(e);
    (true, flags & (1 << 24) != 0)
}

/// Reads every byte of `[off, off+len)` of the window in 1 MiB chunks and checks it equals
/// `expect` chunk by chunk (`None`: all zero).
pub fn read_all_zero(w: &Window, off: usize, len: usize) -> bool {
    let zero = vec![0u8; MIB];
    let mut buf = vec![0u8; MIB];
    let mut pos = off;
    while pos < off + len {
        let n = MIB.min(off + len - pos);
        w.read_at(pos, &mut buf[..n]).unwrap();
        if buf[..n] != zero[..n] {
            return false;
        }
        pos += n;
    }
    true
}
