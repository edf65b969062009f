//! Helpers shared by the daemon's integration tests: a temp dir, a loop-mounted ext4 image
//! (so hole and allocation results don't depend on where the repository sits), mount
//! inspection. Everything is undone on drop, on panic too.
#![allow(dead_code)]

use std::fs::{self, File};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicU32, Ordering};

pub const MIB: u64 = 1 << 20;

pub fn zerodax() -> &'static str {
    env!("CARGO_BIN_EXE_zerodax")
}

pub fn run(cmd: &mut Command) {
    let out = cmd.output().unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A directory removed on drop.
pub struct TempDir(pub PathBuf);

impl TempDir {
    pub fn new() -> Self {
        static N: AtomicU32 = AtomicU32::new(0);
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.subsec_nanos())
            .unwrap_or(0);
        let p = std::env::temp_dir().join(format!(
            "zerodax-test-{}-{}-{nanos}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        fs::create_dir_all(&p).expect("create tempdir");
        TempDir(p)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

/// Where `path` is mounted, with its filesystem type, per /proc/self/mountinfo.
pub fn mount_type(path: &Path) -> Option<String> {
    let info = fs::read_to_string("/proc/self/mountinfo").ok()?;
    let want = path.to_string_lossy();
    info.lines().rev().find_map(|l| {
        let f: Vec<&str> = l.split(' ').collect();
        let dash = f.iter().position(|&x| x == "-")?;
        (f.get(4) == Some(&want.as_ref())).then(|| f.get(dash + 1).unwrap_or(&"").to_string())
    })
}

pub fn is_fuse_mounted(path: &Path) -> bool {
    mount_type(path).is_some_and(|t| t.starts_with("fuse"))
}

/// A loop-mounted ext4 image at `mnt`, inside the scratch directory `root`, which also
/// holds the image and whatever else a test needs (sockets, logs, mountpoints). Unmounted,
/// then `root` removed, on drop.
pub struct Ext4 {
    pub mnt: PathBuf,
    pub root: PathBuf,
    /// Removes `root` once `drop` has unmounted `mnt`.
    _root: TempDir,
}

impl Ext4 {
    pub fn new() -> Self {
        assert_eq!(
            // SAFETY: geteuid has no arguments.
            unsafe { libc::geteuid() },
            0,
            "mount tests need root (loop devices and FUSE mounts)"
        );
        let tmp = TempDir::new();
        let img = tmp.0.join("ext4.img");
        File::create(&img)
            .and_then(|f| f.set_len(512 * MIB))
            .expect("image");
        run(Command::new("mkfs.ext4").args(["-q", "-F"]).arg(&img));
        let mnt = tmp.0.join("backing");
        fs::create_dir(&mnt).expect("backing dir");
        run(Command::new("mount")
            .args(["-o", "loop"])
            .arg(&img)
            .arg(&mnt));
        Ext4 {
            mnt,
            root: tmp.0.clone(),
            _root: tmp,
        }
    }
}

impl Drop for Ext4 {
    fn drop(&mut self) {
        let ok = Command::new("umount")
            .arg(&self.mnt)
            .status()
            .is_ok_and(|s| s.success());
        if !ok {
            let _ = Command::new("umount").arg("-l").arg(&self.mnt).status();
        }
    }
}
