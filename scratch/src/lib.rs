//! Scratch space for the workspace's tests, benchmarks and `zerodax bench`: a temp directory
//! removed on drop, an ext4 image loop-mounted in one (tmpfs fills holes on mmap reads and
//! where a repository sits decides allocation, so hole tests need a block filesystem of their
//! own), and a sparse-file maker.
//!
//! A leaf crate (std and libc only) so that every crate's tests and the daemon's `bench` can
//! use it: `dax-window`'s tests could not reach a helper in `frontend` or `zerodax` without a
//! dependency pointing the wrong way (docs/architecture.md).
//!
//! Guards undo what they did on drop, panics included: [`Ext4`] unmounts (which detaches the
//! loop device: `mount -o loop` sets it up to clear itself) and removes its directory.

use std::ffi::OsStr;
use std::fs::{File, OpenOptions};
use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Mutex;
use std::time::Duration;

/// A fresh directory under the system temp dir, removed (with its contents) on drop.
#[derive(Debug)]
pub struct TempDir(pub PathBuf);

impl TempDir {
    /// `$TMPDIR/PREFIX-PID-N-NANOS`: unique within the process (N) and across runs.
    pub fn new(prefix: &str) -> io::Result<TempDir> {
        static N: AtomicU32 = AtomicU32::new(0);
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.subsec_nanos());
        let p = std::env::temp_dir().join(format!(
            "{prefix}-{}-{}-{nanos}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        std::fs::create_dir_all(&p)
            .map_err(|e| io::Error::new(e.kind(), format!("scratch dir {}: {e}", p.display())))?;
        Ok(TempDir(p))
    }

    /// The directory.
    pub fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Mountpoints of the live [`Ext4`]s, for [`detach_all_lazily`].
static MOUNTS: Mutex<Vec<PathBuf>> = Mutex::new(Vec::new());

/// Lazily unmounts every live [`Ext4`] of this process: for a watchdog about to abort it (no
/// destructor runs then), so that no loop mount outlives the process.
pub fn detach_all_lazily() {
    if let Ok(m) = MOUNTS.lock() {
        for p in m.iter() {
            let _ = Command::new("umount").arg("-l").arg(p).status();
        }
    }
}

/// How to make an [`Ext4`]; [`Ext4::builder`].
#[derive(Debug, Clone)]
pub struct Ext4Builder {
    prefix: String,
    size: u64,
    mkfs_args: Vec<String>,
    timeout: Option<Duration>,
    umount_tries: u32,
}

impl Ext4Builder {
    /// Extra `mkfs.ext4` arguments, after `-q -F` (`-b 4096`, say: small images otherwise
    /// get 1 KiB blocks).
    pub fn mkfs_args<S: AsRef<str>>(mut self, args: &[S]) -> Self {
        self.mkfs_args
            .extend(args.iter().map(|a| a.as_ref().to_string()));
        self
    }

    /// Runs mkfs, mount and umount under coreutils `timeout` (killed 5 s after `limit`), so a
    /// wedged mount fails the caller instead of hanging it.
    pub fn timeout(mut self, limit: Duration) -> Self {
        self.timeout = Some(limit);
        self
    }

    /// On drop, tries a plain `umount` up to `n` times, 100 ms apart (a mapping or a
    /// descriptor may be going away in another thread), before a lazy `umount -l`. Default 1.
    pub fn umount_tries(mut self, n: u32) -> Self {
        self.umount_tries = n.max(1);
        self
    }

    /// Makes the image, the filesystem and the mount.
    pub fn create(self) -> io::Result<Ext4> {
        let dir = TempDir::new(&self.prefix)?;
        let image = dir.0.join("ext4.img");
        let mnt = dir.0.join("mnt");
        std::fs::create_dir(&mnt)
            .map_err(|e| io::Error::new(e.kind(), format!("mountpoint {}: {e}", mnt.display())))?;
        File::create(&image)
            .and_then(|f| f.set_len(self.size))
            .map_err(|e| io::Error::new(e.kind(), format!("image {}: {e}", image.display())))?;
        let mut mkfs: Vec<&OsStr> = vec!["-q".as_ref(), "-F".as_ref()];
        mkfs.extend(self.mkfs_args.iter().map(OsStr::new));
        mkfs.push(image.as_ref());
        run(self.timeout, "mkfs.ext4", &mkfs)?;
        run(
            self.timeout,
            "mount",
            &["-o".as_ref(), "loop".as_ref(), image.as_ref(), mnt.as_ref()],
        )?;
        MOUNTS
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(mnt.clone());
        Ok(Ext4 {
            root: dir.0.clone(),
            mnt,
            image,
            timeout: self.timeout,
            umount_tries: self.umount_tries,
            _dir: dir,
        })
    }
}

/// A fresh ext4 filesystem on an image file, loop-mounted at `mnt`, both inside the scratch
/// directory `root` (which also holds whatever else its user puts there: sockets, logs,
/// other mountpoints). On drop, panics included: unmounted (a lazy `umount -l` if a plain one
/// keeps failing), which detaches the loop device, then `root` removed.
#[derive(Debug)]
pub struct Ext4 {
    /// The scratch directory holding the image and the mountpoint.
    pub root: PathBuf,
    /// Where the filesystem is mounted.
    pub mnt: PathBuf,
    /// The image file.
    pub image: PathBuf,
    timeout: Option<Duration>,
    umount_tries: u32,
    /// Removes `root` once `drop` has unmounted `mnt`.
    _dir: TempDir,
}

impl Ext4 {
    /// An image of `size` bytes in `$TMPDIR/PREFIX-...`, formatted `mkfs.ext4 -q -F`: see
    /// the builder's options.
    pub fn builder(prefix: &str, size: u64) -> Ext4Builder {
        Ext4Builder {
            prefix: prefix.to_string(),
            size,
            mkfs_args: Vec::new(),
            timeout: None,
            umount_tries: 1,
        }
    }

    /// `builder(prefix, size).create()`.
    pub fn new(prefix: &str, size: u64) -> io::Result<Ext4> {
        Ext4::builder(prefix, size).create()
    }

    /// `builder(prefix, size).mkfs_args(args).create()`.
    pub fn with_mkfs_args(prefix: &str, size: u64, args: &[&str]) -> io::Result<Ext4> {
        Ext4::builder(prefix, size).mkfs_args(args).create()
    }

    /// `name` inside the filesystem.
    pub fn path(&self, name: &str) -> PathBuf {
        self.mnt.join(name)
    }
}

impl Drop for Ext4 {
    fn drop(&mut self) {
        let mut unmounted = false;
        for i in 0..self.umount_tries {
            if i > 0 {
                std::thread::sleep(Duration::from_millis(100));
            }
            if run(self.timeout, "umount", &[self.mnt.as_ref()]).is_ok() {
                unmounted = true;
                break;
            }
        }
        if !unmounted {
            let _ = run(self.timeout, "umount", &["-l".as_ref(), self.mnt.as_ref()]);
        }
        if let Ok(mut m) = MOUNTS.lock() {
            m.retain(|p| p != &self.mnt);
        }
        // `_dir` then removes root.
    }
}

/// Runs `program args`, under `timeout` if given; an error holds the command and its stderr.
fn run(timeout: Option<Duration>, program: &str, args: &[&OsStr]) -> io::Result<()> {
    let mut cmd = match timeout {
        Some(limit) => {
            let mut c = Command::new("timeout");
            c.arg("--kill-after=5")
                .arg(limit.as_secs().max(1).to_string())
                .arg(program);
            c
        }
        None => Command::new(program),
    };
    cmd.args(args).stdin(Stdio::null());
    let out = cmd
        .output()
        .map_err(|e| io::Error::new(e.kind(), format!("{cmd:?}: {e}")))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(io::Error::other(format!(
            "{cmd:?}: {}: {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        )))
    }
}

/// Makes `file` a sparse file of `size` bytes: its length set, then each `(offset, bytes)`
/// of `data` written (the rest stays holes), then synced. An error names its step
/// (`truncate`, `write`, `fsync`).
pub fn fill_sparse<B: AsRef<[u8]>>(
    file: &File,
    size: u64,
    data: impl IntoIterator<Item = (u64, B)>,
) -> io::Result<()> {
    fn step(what: &'static str) -> impl Fn(io::Error) -> io::Error {
        move |e| io::Error::new(e.kind(), format!("{what}: {e}"))
    }
    file.set_len(size).map_err(step("truncate"))?;
    for (off, bytes) in data {
        file.write_all_at(bytes.as_ref(), off)
            .map_err(step("write"))?;
    }
    file.sync_all().map_err(step("fsync"))
}

/// Creates `path` (truncated if it exists; opened read-write) as [`fill_sparse`] makes it.
pub fn sparse_file<B: AsRef<[u8]>>(
    path: &Path,
    size: u64,
    data: impl IntoIterator<Item = (u64, B)>,
) -> io::Result<File> {
    let f = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(true)
        .open(path)
        .map_err(|e| io::Error::new(e.kind(), format!("create {}: {e}", path.display())))?;
    fill_sparse(&f, size, data)?;
    Ok(f)
}

/// Drops `file`'s clean pages from the page cache (`POSIX_FADV_DONTNEED`; sync first for
/// all of them to be clean).
pub fn drop_cache(file: &File) -> io::Result<()> {
    // SAFETY: advice on a descriptor the caller keeps open; it only drops clean page cache.
    let r = unsafe { libc::posix_fadvise(file.as_raw_fd(), 0, 0, libc::POSIX_FADV_DONTNEED) };
    if r == 0 {
        Ok(())
    } else {
        Err(io::Error::from_raw_os_error(r))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::MetadataExt;

    #[test]
    fn temp_dirs_are_fresh_and_removed() {
        let a = TempDir::new("zerodax-scratch-test").unwrap();
        let b = TempDir::new("zerodax-scratch-test").unwrap();
        assert_ne!(a.0, b.0);
        std::fs::write(a.0.join("f"), b"x").unwrap();
        let p = a.0.clone();
        drop(a);
        assert!(!p.exists());
    }

    #[test]
    fn sparse_files_hold_their_data_and_size() {
        let dir = TempDir::new("zerodax-scratch-test").unwrap();
        let path = dir.0.join("s");
        std::fs::write(&path, vec![1u8; 100_000]).unwrap();
        let f = sparse_file(&path, 1 << 20, [(4096, &b"abc"[..]), (1 << 19, &b"de"[..])]).unwrap();
        assert_eq!(
            f.metadata().unwrap().len(),
            1 << 20,
            "truncated, then sized"
        );
        let mut buf = [0u8; 8];
        f.read_exact_at(&mut buf, 4094).unwrap();
        assert_eq!(&buf, b"\0\0abc\0\0\0");
        f.read_exact_at(&mut buf[..2], 1 << 19).unwrap();
        assert_eq!(&buf[..2], b"de");
        drop_cache(&f).unwrap();
        let err = fill_sparse(&File::open(&path).unwrap(), 1, None::<(u64, &[u8])>)
            .unwrap_err()
            .to_string();
        assert!(err.starts_with("truncate: "), "{err}");
    }

    /// Root only (loop devices); skipped otherwise.
    #[test]
    fn ext4_mounts_and_cleans_up_on_panic() {
        // SAFETY: geteuid has no preconditions.
        if unsafe { libc::geteuid() } != 0 {
            eprintln!("skipped: needs root");
            return;
        }
        let fs = Ext4::builder("zerodax-scratch-test", 32 << 20)
            .mkfs_args(&["-b", "4096"])
            .timeout(Duration::from_secs(60))
            .create()
            .unwrap();
        let (root, mnt) = (fs.root.clone(), fs.mnt.clone());
        let mounted = |p: &Path| {
            std::fs::read_to_string("/proc/self/mountinfo")
                .unwrap()
                .lines()
                .any(|l| l.split(' ').nth(4) == Some(p.to_str().unwrap()))
        };
        assert!(mounted(&mnt));
        let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(move || {
            let f = sparse_file(&fs.path("s"), 64 << 20, [(0, [7u8; 4096])]).unwrap();
            assert_eq!(
                f.metadata().unwrap().blocks() * 512,
                4096,
                "4 KiB blocks, one used"
            );
            panic!("on purpose");
        }));
        assert!(r.is_err());
        assert!(!mounted(&mnt), "unmounted on panic");
        assert!(!root.exists(), "scratch dir removed");
    }
}
