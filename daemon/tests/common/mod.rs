//! Helpers shared by the daemon's integration tests: a temp dir, a loop-mounted ext4 image
//! (so hole and allocation results don't depend on where the repository sits), mount
//! inspection. Everything is undone on drop, on panic too.
#![allow(dead_code)]

use std::fs;
use std::path::Path;
use std::process::Command;

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
pub type TempDir = scratch::TempDir;

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

/// A 512 MiB ext4 image loop-mounted at `mnt`, inside the scratch directory `root`, which
/// also holds the image and whatever else a test needs (sockets, logs, mountpoints).
/// Unmounted, then `root` removed, on drop (scratch::Ext4).
pub struct Ext4(scratch::Ext4);

impl Ext4 {
    pub fn new() -> Self {
        assert_eq!(
            // SAFETY: geteuid has no arguments.
            unsafe { libc::geteuid() },
            0,
            "mount tests need root (loop devices and FUSE mounts)"
        );
        Ext4(scratch::Ext4::new("zerodax-test", 512 * MIB).unwrap_or_else(|e| panic!("{e}")))
    }
}

impl std::ops::Deref for Ext4 {
    type Target = scratch::Ext4;

    fn deref(&self) -> &scratch::Ext4 {
        &self.0
    }
}
