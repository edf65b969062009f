//! Real mounts of `zerodax mount` over a loop-mounted ext4 image (run as root).
//!
//! Every test builds its own image so allocation results (holes, st_blocks) do not depend
//! on the filesystem the repository sits on. Guards unmount and reap everything on panic.

use std::ffi::CString;
use std::fs::{self, File, OpenOptions};
use std::io::{Read, Write};
use std::os::fd::AsRawFd;
use std::os::unix::fs::{DirEntryExt, FileExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::thread;
use std::time::{Duration, Instant};

mod common;
use common::*;

/// A running `zerodax mount` over a fresh ext4 image, its mountpoint and log in the image's
/// scratch directory. The daemon is stopped in `Drop::drop`, then the image unmounted and
/// the scratch directory removed.
struct Mounted {
    child: Option<Child>,
    mnt: PathBuf,
    log: PathBuf,
    ext4: Ext4,
}

impl Mounted {
    fn start(args: &[&str]) -> Self {
        Self::start_on(Ext4::new(), args)
    }

    /// `zerodax mount ARGS` over `ext4` (prepared by the caller).
    fn start_on(ext4: Ext4, args: &[&str]) -> Self {
        // The mountpoint sits one level deeper than the backing dir so client-side and
        // host-side resolution of `..` reach different directories.
        let mnt = ext4.root.join("client").join("mnt");
        fs::create_dir_all(&mnt).expect("mountpoint");
        let log = ext4.root.join("zerodax.log");
        let child = Command::new(zerodax())
            .arg("mount")
            .arg(&ext4.mnt)
            .arg(&mnt)
            .args(["--allow-other", "--log-level", "info"])
            .args(args)
            .stdout(Stdio::null())
            .stderr(File::create(&log).expect("log"))
            .spawn()
            .expect("spawn zerodax");
        let mut m = Mounted {
            child: Some(child),
            mnt,
            log,
            ext4,
        };
        m.wait_mounted();
        m
    }

    fn wait_mounted(&mut self) {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if is_fuse_mounted(&self.mnt) {
                return;
            }
            if let Some(Ok(Some(status))) = self.child.as_mut().map(|c| c.try_wait()) {
                panic!("zerodax exited early ({status}): {}", self.log_text());
            }
            assert!(
                Instant::now() < deadline,
                "mount did not appear: {}",
                self.log_text()
            );
            thread::sleep(Duration::from_millis(20));
        }
    }

    fn log_text(&self) -> String {
        fs::read_to_string(&self.log).unwrap_or_default()
    }

    fn path(&self, name: &str) -> PathBuf {
        self.mnt.join(name)
    }

    fn backing(&self, name: &str) -> PathBuf {
        self.ext4.mnt.join(name)
    }

    /// SIGTERM and wait for the exit status (None on timeout).
    fn terminate(&mut self) -> Option<std::process::ExitStatus> {
        self.signal(libc::SIGTERM)
    }

    /// Send `sig` and wait for the exit status (None on timeout).
    fn signal(&mut self, sig: i32) -> Option<std::process::ExitStatus> {
        let child = self.child.as_mut()?;
        // SAFETY: kill(2) on our own child's pid.
        unsafe { libc::kill(child.id() as libc::pid_t, sig) };
        let deadline = Instant::now() + Duration::from_secs(15);
        while Instant::now() < deadline {
            if let Ok(Some(status)) = child.try_wait() {
                self.child = None;
                return Some(status);
            }
            thread::sleep(Duration::from_millis(20));
        }
        None
    }
}

impl Drop for Mounted {
    fn drop(&mut self) {
        let clean = self.child.is_none() || self.terminate().is_some();
        if !clean || is_fuse_mounted(&self.mnt) {
            let _ = Command::new("umount").arg("-l").arg(&self.mnt).status();
        }
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

fn cpath(p: &Path) -> CString {
    CString::new(p.as_os_str().as_encoded_bytes()).expect("path")
}

fn errno() -> i32 {
    std::io::Error::last_os_error().raw_os_error().unwrap_or(0)
}

fn seek(f: &File, off: i64, whence: i32) -> Result<i64, i32> {
    // SAFETY: lseek on an open descriptor.
    let r = unsafe { libc::lseek(f.as_raw_fd(), off, whence) };
    if r < 0 {
        Err(errno())
    } else {
        Ok(r)
    }
}

fn fallocate(f: &File, mode: i32, off: u64, len: u64) {
    // SAFETY: fallocate on an open descriptor.
    let r = unsafe { libc::fallocate(f.as_raw_fd(), mode, off as i64, len as i64) };
    assert_eq!(r, 0, "fallocate mode {mode:#x}: errno {}", errno());
}

fn rw(path: &Path) -> File {
    OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .mode(0o644)
        .open(path)
        .unwrap_or_else(|e| panic!("open {}: {e}", path.display()))
}

fn blocks_bytes(path: &Path) -> u64 {
    fs::metadata(path).expect("stat").blocks() * 512
}

const MODES: [&str; 2] = ["on", "off"];

fn for_each_mode(test: impl Fn(&Mounted)) {
    for mode in MODES {
        let m = Mounted::start(&["--passthrough", mode]);
        test(&m);
        if mode == "on" {
            assert!(
                m.log_text().contains("passthrough enabled"),
                "passthrough on did not enable passthrough: {}",
                m.log_text()
            );
        }
    }
}

#[test]
fn sparse_write_keeps_holes_in_backing_file() {
    for_each_mode(|m| {
        let f = rw(&m.path("sparse"));
        f.write_all_at(&[0xa5; 4096], 0).expect("write at 0");
        f.write_all_at(&[0x5a; 4096], 100 * MIB)
            .expect("write at 100 MiB");
        f.sync_all().expect("fsync");
        drop(f);

        let b = File::open(m.backing("sparse")).expect("backing");
        assert_eq!(b.metadata().expect("stat").len(), 100 * MIB + 4096);
        assert_eq!(
            seek(&b, 0, libc::SEEK_HOLE),
            Ok(4096),
            "hole after first block"
        );
        assert_eq!(seek(&b, 4096, libc::SEEK_DATA), Ok(100 * MIB as i64));
        let allocated = blocks_bytes(&m.backing("sparse"));
        assert!(
            allocated <= 1024 * 1024,
            "backing file allocated {allocated} bytes"
        );
        let mut tail = [0u8; 4096];
        b.read_exact_at(&mut tail, 100 * MIB).expect("read tail");
        assert!(tail.iter().all(|&x| x == 0x5a));
    });
}

#[test]
fn seek_data_and_hole_through_mount_match_backing_file() {
    for_each_mode(|m| {
        // Laid out on the backing side: data at 0, 1 MiB, 50 MiB; holes between; a
        // trailing hole up to 64 MiB.
        let b = rw(&m.backing("layout"));
        b.set_len(64 * MIB).expect("size");
        for off in [0, MIB, MIB + 8192, 50 * MIB] {
            b.write_all_at(&[1; 4096], off).expect("data");
        }
        b.sync_all().expect("sync");
        let f = File::open(m.path("layout")).expect("open through mount");
        let probes = [
            0,
            4095,
            4096,
            MIB - 1,
            MIB,
            MIB + 4096,
            2 * MIB,
            50 * MIB,
            60 * MIB,
            64 * MIB - 1,
            64 * MIB,
            65 * MIB,
        ];
        for off in probes {
            for whence in [libc::SEEK_DATA, libc::SEEK_HOLE] {
                assert_eq!(
                    seek(&f, off as i64, whence),
                    seek(&b, off as i64, whence),
                    "offset {off} whence {whence}"
                );
            }
        }
        assert_eq!(seek(&f, 64 * MIB as i64, libc::SEEK_DATA), Err(libc::ENXIO));
    });
}

#[test]
fn punch_hole_through_mount_is_a_hole_in_backing_file() {
    for_each_mode(|m| {
        let f = rw(&m.path("punch"));
        f.write_all_at(&vec![7u8; MIB as usize], 0).expect("fill");
        f.sync_all().expect("sync");
        let before = blocks_bytes(&m.backing("punch"));
        fallocate(
            &f,
            libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE,
            256 * 1024,
            256 * 1024,
        );
        let b = File::open(m.backing("punch")).expect("backing");
        assert_eq!(seek(&b, 0, libc::SEEK_HOLE), Ok(256 * 1024));
        assert_eq!(seek(&b, 256 * 1024, libc::SEEK_DATA), Ok(512 * 1024));
        assert_eq!(
            b.metadata().expect("stat").len(),
            MIB,
            "KEEP_SIZE keeps the size"
        );
        assert!(blocks_bytes(&m.backing("punch")) <= before - 256 * 1024);
        let mut buf = vec![1u8; MIB as usize];
        f.read_exact_at(&mut buf, 0).expect("read back");
        assert!(buf[..256 * 1024].iter().all(|&x| x == 7));
        assert!(
            buf[256 * 1024..512 * 1024].iter().all(|&x| x == 0),
            "punched range reads zero"
        );
        assert!(buf[512 * 1024..].iter().all(|&x| x == 7));
    });
}

#[test]
fn zero_range_keep_size_and_plain_fallocate() {
    for_each_mode(|m| {
        let f = rw(&m.path("falloc"));
        f.write_all_at(&vec![9u8; 256 * 1024], 0).expect("fill");
        fallocate(&f, libc::FALLOC_FL_ZERO_RANGE, 64 * 1024, 64 * 1024);
        let mut buf = vec![1u8; 256 * 1024];
        f.read_exact_at(&mut buf, 0).expect("read");
        assert!(
            buf[64 * 1024..128 * 1024].iter().all(|&x| x == 0),
            "zeroed range"
        );
        assert!(buf[128 * 1024..].iter().all(|&x| x == 9));
        let mut bbuf = vec![1u8; 64 * 1024];
        File::open(m.backing("falloc"))
            .and_then(|b| b.read_exact_at(&mut bbuf, 64 * 1024))
            .expect("backing read");
        assert!(bbuf.iter().all(|&x| x == 0), "zeroed in backing file");

        // KEEP_SIZE past EOF allocates without changing the size.
        let before = blocks_bytes(&m.backing("falloc"));
        fallocate(&f, libc::FALLOC_FL_KEEP_SIZE, MIB, MIB);
        assert_eq!(
            fs::metadata(m.backing("falloc")).expect("stat").len(),
            256 * 1024
        );
        assert_eq!(f.metadata().expect("stat").len(), 256 * 1024);
        assert!(blocks_bytes(&m.backing("falloc")) >= before + MIB);

        // Plain fallocate extends the size.
        fallocate(&f, 0, 4 * MIB, MIB);
        assert_eq!(
            fs::metadata(m.backing("falloc")).expect("stat").len(),
            5 * MIB
        );
        assert_eq!(f.metadata().expect("stat").len(), 5 * MIB);
    });
}

#[test]
fn mmap_read_and_write_through_mount() {
    for_each_mode(|m| {
        let len = 64 * 1024usize;
        let pattern: Vec<u8> = (0..len).map(|i| (i % 251) as u8).collect();
        fs::write(m.backing("mapped"), &pattern).expect("backing content");
        let f = rw(&m.path("mapped"));
        // SAFETY: a fresh shared mapping of an open file; unmapped below before `f` drops.
        let p = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED,
                f.as_raw_fd(),
                0,
            )
        };
        assert_ne!(p, libc::MAP_FAILED, "mmap: errno {}", errno());
        // SAFETY: `p` maps `len` bytes, readable and writable, until munmap below.
        let map = unsafe { std::slice::from_raw_parts_mut(p.cast::<u8>(), len) };
        assert_eq!(&map[..], &pattern[..], "mmap read sees the backing data");
        map[..4096].fill(0xee);
        map[len - 10..].fill(0x11);
        // SAFETY: `p` is the mapping made above.
        assert_eq!(unsafe { libc::msync(p, len, libc::MS_SYNC) }, 0, "msync");
        // SAFETY: as above; `map` is not used after this.
        assert_eq!(unsafe { libc::munmap(p, len) }, 0);
        drop(f);
        let back = fs::read(m.backing("mapped")).expect("backing read");
        assert!(
            back[..4096].iter().all(|&x| x == 0xee),
            "mmap write reached the backing file"
        );
        assert_eq!(&back[4096..len - 10], &pattern[4096..len - 10]);
        assert!(back[len - 10..].iter().all(|&x| x == 0x11));
    });
}

#[test]
fn escapes_are_refused_or_resolved_on_the_client_side() {
    let m = Mounted::start(&["--passthrough", "off"]);
    // A relative symlink in the backing dir pointing above it. The daemon never follows it:
    // the client resolves it against the *client's* path of the mountpoint.
    let host_side = m.ext4.root.join("secret");
    let client_side = m.ext4.root.join("client").join("secret");
    fs::write(&host_side, b"host").expect("host file");
    fs::write(&client_side, b"client").expect("client file");
    std::os::unix::fs::symlink("../secret", m.backing("up")).expect("symlink");
    assert_eq!(
        fs::read_link(m.path("up")).expect("readlink"),
        Path::new("../secret")
    );
    assert_eq!(
        fs::read(m.path("up")).expect("read through link"),
        b"client"
    );

    // An absolute symlink resolves in the client's root, not the shared dir's host root.
    std::os::unix::fs::symlink("/nonexistent-zerodax-target", m.backing("abs")).expect("symlink");
    assert_eq!(
        fs::read(m.path("abs")).map_err(|e| e.raw_os_error()),
        Err(Some(libc::ENOENT))
    );

    // `..` of the mount root is the client's parent directory, never the backing's parent.
    let names: Vec<_> = fs::read_dir(m.path(".."))
        .expect("readdir ..")
        .map(|e| e.expect("entry").file_name())
        .collect();
    assert!(names.iter().any(|n| n == "secret") && names.iter().any(|n| n == "mnt"));

    // Links and renames out of the mount cross a filesystem boundary.
    fs::write(m.path("inside"), b"x").expect("file");
    let out = m.ext4.root.join("outside-link");
    assert_eq!(
        fs::hard_link(m.path("inside"), &out).map_err(|e| e.raw_os_error()),
        Err(Some(libc::EXDEV))
    );
    assert_eq!(
        fs::rename(m.path("inside"), &out).map_err(|e| e.raw_os_error()),
        Err(Some(libc::EXDEV))
    );
    assert_eq!(
        fs::rename(&host_side, m.path("moved-in")).map_err(|e| e.raw_os_error()),
        Err(Some(libc::EXDEV))
    );
    // A directory symlink inside the share is not a path the daemon walks: creating
    // through it lands where the client resolves it.
    std::os::unix::fs::symlink("/nonexistent-zerodax-dir", m.backing("dirlink")).expect("symlink");
    assert!(fs::write(m.path("dirlink/x"), b"x").is_err());
    assert!(!Path::new("/nonexistent-zerodax-dir").exists());
}

#[test]
fn several_clients_at_once() {
    for_each_mode(|m| {
        let workers: Vec<_> = (0..6u8)
            .map(|t| {
                let dir = m.path(&format!("w{t}"));
                thread::spawn(move || {
                    fs::create_dir(&dir).expect("mkdir");
                    for i in 0..20u8 {
                        let p = dir.join(format!("f{i}"));
                        let data = vec![t ^ i; 8192 + usize::from(i) * 100];
                        fs::write(&p, &data).expect("write");
                        assert_eq!(fs::read(&p).expect("read"), data);
                        if i % 3 == 0 {
                            fs::rename(&p, dir.join(format!("r{i}"))).expect("rename");
                        }
                    }
                    assert_eq!(fs::read_dir(&dir).expect("readdir").count(), 20);
                })
            })
            .collect();
        for w in workers {
            w.join().expect("worker");
        }
        for t in 0..6u8 {
            let data = fs::read(m.backing(&format!("w{t}/f1"))).expect("backing");
            assert_eq!(data, vec![t ^ 1; 8192 + 100]);
            assert!(m.backing(&format!("w{t}/r3")).exists());
        }
    });
}

fn renameat2(from: &Path, to: &Path, flags: u32) -> Result<(), i32> {
    let (a, b) = (cpath(from), cpath(to));
    // SAFETY: two NUL-terminated paths.
    let r = unsafe {
        libc::renameat2(
            libc::AT_FDCWD,
            a.as_ptr(),
            libc::AT_FDCWD,
            b.as_ptr(),
            flags,
        )
    };
    if r == 0 {
        Ok(())
    } else {
        Err(errno())
    }
}

#[test]
fn rename_noreplace_and_exchange() {
    let m = Mounted::start(&[]);
    fs::write(m.path("a"), b"AAA").expect("a");
    fs::write(m.path("b"), b"BBB").expect("b");
    assert_eq!(
        renameat2(&m.path("a"), &m.path("b"), libc::RENAME_NOREPLACE),
        Err(libc::EEXIST)
    );
    renameat2(&m.path("a"), &m.path("c"), libc::RENAME_NOREPLACE).expect("noreplace to new name");
    renameat2(&m.path("c"), &m.path("b"), libc::RENAME_EXCHANGE).expect("exchange");
    assert_eq!(fs::read(m.backing("b")).expect("b"), b"AAA");
    assert_eq!(fs::read(m.backing("c")).expect("c"), b"BBB");
    assert_eq!(fs::read(m.path("c")).expect("c"), b"BBB");
    assert_eq!(
        renameat2(&m.path("c"), &m.path("missing"), libc::RENAME_EXCHANGE),
        Err(libc::ENOENT)
    );
}

fn xattr_get(path: &Path, name: &str) -> Result<Vec<u8>, i32> {
    let (p, n) = (cpath(path), CString::new(name).expect("name"));
    let mut buf = vec![0u8; 256];
    // SAFETY: NUL-terminated strings and a writable buffer of the length passed.
    let r = unsafe { libc::lgetxattr(p.as_ptr(), n.as_ptr(), buf.as_mut_ptr().cast(), buf.len()) };
    if r < 0 {
        return Err(errno());
    }
    buf.truncate(r as usize);
    Ok(buf)
}

fn xattr_set(path: &Path, name: &str, value: &[u8], flags: i32) -> Result<(), i32> {
    let (p, n) = (cpath(path), CString::new(name).expect("name"));
    // SAFETY: NUL-terminated strings and a readable value buffer.
    let r = unsafe {
        libc::lsetxattr(
            p.as_ptr(),
            n.as_ptr(),
            value.as_ptr().cast(),
            value.len(),
            flags,
        )
    };
    if r == 0 {
        Ok(())
    } else {
        Err(errno())
    }
}

fn xattr_list(path: &Path) -> Vec<u8> {
    let p = cpath(path);
    let mut buf = vec![0u8; 1024];
    // SAFETY: NUL-terminated path and a writable buffer.
    let r = unsafe { libc::llistxattr(p.as_ptr(), buf.as_mut_ptr().cast(), buf.len()) };
    assert!(r >= 0, "listxattr: errno {}", errno());
    buf.truncate(r as usize);
    buf
}

#[test]
fn xattrs_get_set_list_remove() {
    let m = Mounted::start(&[]);
    fs::write(m.path("x"), b"x").expect("file");
    xattr_set(&m.path("x"), "user.color", b"blue", 0).expect("set");
    assert_eq!(xattr_get(&m.path("x"), "user.color"), Ok(b"blue".to_vec()));
    assert_eq!(
        xattr_get(&m.backing("x"), "user.color"),
        Ok(b"blue".to_vec())
    );
    assert_eq!(
        xattr_set(&m.path("x"), "user.color", b"red", libc::XATTR_CREATE),
        Err(libc::EEXIST)
    );
    assert!(xattr_list(&m.path("x"))
        .windows(11)
        .any(|w| w == b"user.color\0"));
    let p = cpath(&m.path("x"));
    // SAFETY: NUL-terminated strings.
    assert_eq!(
        unsafe { libc::lremovexattr(p.as_ptr(), c"user.color".as_ptr()) },
        0
    );
    assert_eq!(xattr_get(&m.path("x"), "user.color"), Err(libc::ENODATA));
    fs::create_dir(m.path("d")).expect("dir");
    xattr_set(&m.path("d"), "user.k", b"v", 0).expect("dir xattr");
    assert_eq!(xattr_get(&m.backing("d"), "user.k"), Ok(b"v".to_vec()));
    // Symlinks carry no user xattrs here (as on the host).
    std::os::unix::fs::symlink("x", m.path("l")).expect("symlink");
    assert_eq!(xattr_get(&m.path("l"), "user.k"), Err(libc::ENODATA));
    assert!(xattr_set(&m.path("l"), "user.k", b"v", 0).is_err());
}

/// `--xattrmap` on the mount (the core maps, whichever transport): names set through the
/// mount live under `user.virtiofs.` in the backing file, the backing file's own names are
/// hidden, and the kernel's size query then list (llistxattr) see the mapped list.
#[test]
fn xattrmap_renames_xattrs_in_the_backing_file() {
    let m = Mounted::start(&["--xattrmap", ":map::user.virtiofs.:"]);
    fs::write(m.path("x"), b"x").expect("file");
    xattr_set(&m.backing("x"), "user.host", b"h", 0).expect("host xattr");
    xattr_set(&m.path("x"), "trusted.t", b"1", 0).expect("set trusted");
    xattr_set(&m.path("x"), "user.u", b"2", 0).expect("set user");
    assert_eq!(
        xattr_get(&m.backing("x"), "user.virtiofs.trusted.t"),
        Ok(b"1".to_vec())
    );
    assert_eq!(
        xattr_get(&m.backing("x"), "user.virtiofs.user.u"),
        Ok(b"2".to_vec())
    );
    assert_eq!(xattr_get(&m.backing("x"), "trusted.t"), Err(libc::ENODATA));
    assert_eq!(xattr_get(&m.path("x"), "trusted.t"), Ok(b"1".to_vec()));
    assert_eq!(xattr_get(&m.path("x"), "user.host"), Err(libc::ENODATA));
    let mut names: Vec<Vec<u8>> = xattr_list(&m.path("x"))
        .split(|&b| b == 0)
        .filter(|n| !n.is_empty())
        .map(<[u8]>::to_vec)
        .collect();
    names.sort();
    assert_eq!(names, [b"trusted.t".to_vec(), b"user.u".to_vec()]);
    let p = cpath(&m.path("x"));
    // SAFETY: a NUL-terminated path; a null buffer of size 0 asks only for the size.
    let size = unsafe { libc::llistxattr(p.as_ptr(), std::ptr::null_mut(), 0) };
    assert_eq!(size, ("trusted.t\0user.u\0".len()) as isize);
}

#[test]
fn copy_file_range_through_mount() {
    for_each_mode(|m| {
        let data: Vec<u8> = (0..2 * MIB as usize).map(|i| (i * 7 % 256) as u8).collect();
        fs::write(m.path("src"), &data).expect("src");
        let src = File::open(m.path("src")).expect("open src");
        let dst = rw(&m.path("dst"));
        let mut off_in: i64 = 4096;
        let mut off_out: i64 = 8192;
        let mut left = MIB as usize;
        while left > 0 {
            // SAFETY: open descriptors and valid offset pointers.
            let n = unsafe {
                libc::copy_file_range(
                    src.as_raw_fd(),
                    &mut off_in,
                    dst.as_raw_fd(),
                    &mut off_out,
                    left,
                    0,
                )
            };
            assert!(n > 0, "copy_file_range: {n} errno {}", errno());
            left -= n as usize;
        }
        drop(dst);
        let back = fs::read(m.backing("dst")).expect("backing dst");
        assert_eq!(back.len(), 8192 + MIB as usize);
        assert!(back[..8192].iter().all(|&x| x == 0));
        assert_eq!(&back[8192..], &data[4096..4096 + MIB as usize]);
    });
}

fn statvfs(p: &Path) -> libc::statvfs {
    let c = cpath(p);
    // SAFETY: all-zero statvfs is valid; the call fills it.
    let mut s: libc::statvfs = unsafe { std::mem::zeroed() };
    // SAFETY: NUL-terminated path and writable struct.
    assert_eq!(unsafe { libc::statvfs(c.as_ptr(), &mut s) }, 0);
    s
}

#[test]
fn statfs_reports_the_backing_filesystem() {
    let m = Mounted::start(&[]);
    let (a, b) = (statvfs(&m.mnt), statvfs(&m.ext4.mnt));
    assert_eq!(a.f_blocks * a.f_frsize, b.f_blocks * b.f_frsize);
    assert_eq!(a.f_files, b.f_files);
    assert_eq!(a.f_namemax, b.f_namemax);
}

#[test]
fn files_are_created_as_the_caller() {
    let m = Mounted::start(&[]);
    fs::create_dir(m.path("pub")).expect("dir");
    fs::set_permissions(m.path("pub"), fs::Permissions::from_mode(0o777)).expect("chmod");
    let status = Command::new("sh")
        .args([
            "-c",
            "umask 022; touch \"$1/f\" && mkdir \"$1/d\" && ln -s f \"$1/s\"",
            "sh",
        ])
        .arg(m.path("pub"))
        .uid(65534)
        .gid(65534)
        .status()
        .expect("sh");
    assert!(status.success());
    for name in ["f", "d", "s"] {
        let md = fs::symlink_metadata(m.backing(&format!("pub/{name}"))).expect("backing");
        assert_eq!(
            (md.uid(), md.gid()),
            (65534, 65534),
            "{name} owned by the caller"
        );
    }
    assert_eq!(
        fs::metadata(m.backing("pub/f")).expect("f").mode() & 0o777,
        0o644
    );
    assert_eq!(
        fs::metadata(m.backing("pub/d")).expect("d").mode() & 0o777,
        0o755
    );
    // Permission checks are the caller's: nobody cannot write into a root-owned 0755 dir.
    let denied = Command::new("touch")
        .arg(m.path("nope"))
        .uid(65534)
        .gid(65534)
        .stderr(Stdio::null())
        .status()
        .expect("touch");
    assert!(!denied.success());
    assert!(!m.backing("nope").exists());
}

#[test]
fn read_only_refuses_modifications() {
    let m = Mounted::start(&["--read-only"]);
    fs::write(m.backing("seed"), b"data").expect("seed");
    assert_eq!(fs::read(m.path("seed")).expect("read"), b"data");
    let e = |r: std::io::Result<()>| r.map_err(|e| e.raw_os_error());
    assert_eq!(e(fs::write(m.path("new"), b"x")), Err(Some(libc::EROFS)));
    assert_eq!(e(fs::create_dir(m.path("dir"))), Err(Some(libc::EROFS)));
    assert_eq!(
        e(OpenOptions::new()
            .write(true)
            .open(m.path("seed"))
            .map(drop)),
        Err(Some(libc::EROFS))
    );
    assert_eq!(e(fs::remove_file(m.path("seed"))), Err(Some(libc::EROFS)));
}

#[test]
fn sigterm_and_sigint_unmount_and_exit_zero() {
    for sig in [libc::SIGTERM, libc::SIGINT] {
        let mut m = Mounted::start(&[]);
        // An open file must not keep the daemon from exiting.
        let mut f = File::create(m.path("open")).expect("file");
        f.write_all(b"x").expect("write");
        let status = m.signal(sig).expect("zerodax exits after the signal");
        assert!(
            status.success(),
            "signal {sig}: exit status {status}: {}",
            m.log_text()
        );
        assert!(
            !is_fuse_mounted(&m.mnt),
            "mount left behind after signal {sig}"
        );
        drop(f);
    }
}

#[test]
fn missing_mountpoint_is_a_one_line_error() {
    let tmp = TempDir::new("zerodax-test").expect("tempdir");
    let out = Command::new(zerodax())
        .arg("mount")
        .arg(&tmp.0)
        .arg(tmp.0.join("does-not-exist"))
        .output()
        .expect("run zerodax");
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("does not exist"), "stderr: {err}");
    assert_eq!(err.trim_end().lines().count(), 1, "stderr: {err}");

    fs::write(tmp.0.join("file"), b"").expect("file");
    let out = Command::new(zerodax())
        .arg("mount")
        .arg(&tmp.0)
        .arg(tmp.0.join("file"))
        .output()
        .expect("run zerodax");
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("not a directory"));

    let mnt = tmp.0.join("mnt");
    fs::create_dir(&mnt).expect("mnt");
    let out = Command::new(zerodax())
        .arg("mount")
        .arg(tmp.0.join("no-such-share"))
        .arg(&mnt)
        .output()
        .expect("run zerodax");
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("cannot open shared directory"),
        "stderr: {err}"
    );
    assert!(!is_fuse_mounted(&mnt));
}

#[test]
fn hard_links_share_one_inode_and_readdir_sees_everything() {
    let m = Mounted::start(&[]);
    fs::write(m.path("one"), b"1").expect("one");
    fs::hard_link(m.path("one"), m.path("two")).expect("link");
    let (a, b) = (
        fs::metadata(m.path("one")).expect("one"),
        fs::metadata(m.path("two")).expect("two"),
    );
    assert_eq!(a.ino(), b.ino());
    assert_eq!(a.nlink(), 2);
    let mut names: Vec<_> = fs::read_dir(&m.mnt)
        .expect("readdir")
        .map(|e| e.expect("entry").file_name().into_string().expect("utf8"))
        .collect();
    names.sort();
    assert_eq!(names, ["lost+found", "one", "two"]);
    let mut s = String::new();
    File::open(m.path("two"))
        .and_then(|mut f| f.read_to_string(&mut s))
        .expect("read");
    assert_eq!(s, "1");
}

/// Lazily unmounts a bind mount made inside the backing directory.
struct BindGuard(PathBuf);

impl Drop for BindGuard {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

#[test]
fn bind_mounts_inside_the_share_are_distinct_inodes() {
    let m = Mounted::start(&[]);
    fs::create_dir(m.backing("a")).expect("a");
    fs::create_dir(m.backing("b")).expect("b");
    fs::write(m.backing("a/f"), b"one").expect("f");
    run(Command::new("mount")
        .arg("--bind")
        .arg(m.backing("a"))
        .arg(m.backing("b")));
    let _bind = BindGuard(m.backing("b"));
    let (x, y) = (
        fs::metadata(m.path("a/f")).expect("a/f"),
        fs::metadata(m.path("b/f")).expect("b/f"),
    );
    // Same host (st_dev, st_ino), different mounts: two nodes, not one aliased inode.
    assert_ne!(x.ino(), y.ino());
    fs::write(m.path("b/f"), b"two").expect("write via b");
    assert_eq!(fs::read(m.path("a/f")).expect("read via a"), b"two");
}

#[test]
fn exhausted_fd_budget_is_emfile_and_logged_once() {
    let m = Mounted::start(&["--rlimit-nofile", "48", "--threads", "2"]);
    for i in 0..120 {
        fs::write(m.backing(&format!("n{i}")), b"").expect("file");
    }
    let mut emfile = 0;
    for i in 0..120 {
        match fs::metadata(m.path(&format!("n{i}"))) {
            Ok(_) => {}
            Err(e) if e.raw_os_error() == Some(libc::EMFILE) => emfile += 1,
            Err(e) => panic!("n{i}: unexpected {e}"),
        }
    }
    assert!(emfile > 0, "48 descriptors cannot hold 120 nodes");
    let log = m.log_text();
    assert_eq!(
        log.matches("open-file budget exhausted").count(),
        1,
        "{log}"
    );
    // The daemon keeps serving what fits.
    statvfs(&m.mnt);
}

/// ioctl, bmap and poll, which any user of the mount can send at will, are answered without a
/// log line each: Python's `open()` alone sends an ioctl (TCGETS) per file, and a warning per
/// request let an unprivileged user flood the log.
#[test]
fn unsupported_requests_do_not_flood_the_log() {
    let m = Mounted::start(&[]);
    fs::write(m.backing("f"), b"data").expect("file");
    for _ in 0..200 {
        let f = File::open(m.path("f")).expect("open");
        // SAFETY: isatty on a descriptor we own; it only issues ioctl(TCGETS).
        assert_eq!(unsafe { libc::isatty(f.as_raw_fd()) }, 0);
        assert_eq!(errno(), libc::ENOTTY);
    }
    let log = m.log_text();
    assert!(
        !log.contains("Not Implemented") && log.lines().count() < 20,
        "{} log lines:\n{log}",
        log.lines().count()
    );
}

/// The mount declares that it has no file handles (FUSE_NO_EXPORT_SUPPORT): zerodax's node
/// ids do not outlive the kernel's inode cache or the mount, so a handle from
/// name_to_handle_at would turn ESTALE later. The kernel then refuses to make one.
#[test]
fn file_handles_are_declared_unsupported() {
    let m = Mounted::start(&[]);
    fs::write(m.backing("f"), b"data").expect("file");
    let path = cpath(&m.path("f"));
    // struct file_handle: handle_bytes, handle_type, then up to 120 bytes of handle.
    let mut handle = [0u32; 32];
    handle[0] = 120;
    let mut mount_id = 0;
    // SAFETY: `handle` is a file_handle with room for the 120 bytes it announces; the path
    // and mount id pointers are valid for the call.
    let r = unsafe {
        libc::name_to_handle_at(
            libc::AT_FDCWD,
            path.as_ptr(),
            handle.as_mut_ptr().cast(),
            &mut mount_id,
            0,
        )
    };
    assert_eq!((r, errno()), (-1, libc::EOPNOTSUPP));
}

/// `trusted.*` xattrs on every file type, for root, as ext4 allows: symlinks, device nodes,
/// FIFOs and sockets included (they cannot be reopened for fsetxattr, so zerodax uses the
/// *xattrat calls on their O_PATH descriptor).
#[test]
fn trusted_xattrs_on_every_file_type() {
    let m = Mounted::start(&[]);
    std::os::unix::fs::symlink("x", m.backing("l")).expect("symlink");
    let _sock = std::os::unix::net::UnixListener::bind(m.backing("s")).expect("socket");
    for (name, mode, dev) in [
        ("p", libc::S_IFIFO | 0o644, 0),
        ("c", libc::S_IFCHR | 0o644, libc::makedev(1, 3)),
    ] {
        let p = cpath(&m.backing(name));
        // SAFETY: a NUL-terminated path; mknod has no memory effects.
        assert_eq!(
            unsafe { libc::mknod(p.as_ptr(), mode, dev) },
            0,
            "mknod {name}"
        );
    }
    for name in ["l", "s", "p", "c"] {
        let value = format!("on {name}");
        xattr_set(&m.path(name), "trusted.zd", value.as_bytes(), 0)
            .unwrap_or_else(|e| panic!("{name}: set: errno {e}"));
        assert_eq!(
            xattr_get(&m.path(name), "trusted.zd"),
            Ok(value.clone().into_bytes()),
            "{name}"
        );
        assert_eq!(
            xattr_get(&m.backing(name), "trusted.zd"),
            Ok(value.into_bytes()),
            "{name}: on the host"
        );
        assert!(
            xattr_list(&m.path(name))
                .windows(11)
                .any(|w| w == b"trusted.zd\0"),
            "{name}: listed"
        );
        let p = cpath(&m.path(name));
        // SAFETY: NUL-terminated strings.
        assert_eq!(
            unsafe { libc::lremovexattr(p.as_ptr(), c"trusted.zd".as_ptr()) },
            0
        );
        assert_eq!(
            xattr_get(&m.path(name), "trusted.zd"),
            Err(libc::ENODATA),
            "{name}"
        );
    }
    // The symlink's target is untouched.
    assert_eq!(
        fs::read_link(m.path("l")).expect("readlink"),
        Path::new("x")
    );
}

fn mount_flags(path: &Path) -> u64 {
    statvfs(path).f_flag
}

/// The mount is nosuid,nodev unless asked otherwise, takes the usual `-o` options, and never
/// grants more than the shared directory's own mount: on a nosuid,nodev filesystem a device
/// node stays unopenable and set-uid bits stay inert through the mount, and asking for them
/// is an error.
#[test]
fn mount_options_default_to_nosuid_nodev_and_never_exceed_the_backing_mount() {
    let m = Mounted::start(&[]);
    let f = mount_flags(&m.mnt);
    assert_ne!(f & libc::ST_NOSUID, 0, "nosuid by default");
    assert_ne!(f & libc::ST_NODEV, 0, "nodev by default");
    drop(m);

    let m = Mounted::start(&["-o", "suid,dev", "-o", "noexec,noatime"]);
    let f = mount_flags(&m.mnt);
    assert_eq!(f & (libc::ST_NOSUID | libc::ST_NODEV), 0, "-o suid,dev");
    assert_ne!(f & libc::ST_NOEXEC, 0, "-o noexec");
    assert_ne!(f & libc::ST_NOATIME, 0, "-o noatime");
    drop(m);

    // A shared directory on a nosuid,nodev filesystem.
    let ext4 = Ext4::new();
    run(Command::new("mount")
        .args(["-o", "remount,nosuid,nodev"])
        .arg(&ext4.mnt));
    let dev = cpath(&ext4.mnt.join("null"));
    // SAFETY: a NUL-terminated path; mknod has no memory effects.
    assert_eq!(
        unsafe { libc::mknod(dev.as_ptr(), libc::S_IFCHR | 0o666, libc::makedev(1, 3)) },
        0
    );
    let mnt = ext4.root.join("refused");
    fs::create_dir_all(&mnt).expect("mountpoint");
    let mut child = Command::new(zerodax())
        .arg("mount")
        .arg(&ext4.mnt)
        .arg(&mnt)
        .args(["-o", "suid"])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn");
    let deadline = Instant::now() + Duration::from_secs(10);
    let status = loop {
        if let Some(st) = child.try_wait().expect("wait") {
            break st;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = Command::new("umount").arg("-l").arg(&mnt).status();
            panic!("-o suid on a nosuid filesystem was mounted");
        }
        thread::sleep(Duration::from_millis(20));
    };
    let mut err = String::new();
    child
        .stderr
        .take()
        .expect("stderr")
        .read_to_string(&mut err)
        .expect("stderr");
    assert!(
        !status.success() && err.contains("does not allow"),
        "{status}: {err}"
    );
    assert!(!is_fuse_mounted(&mnt));

    let m = Mounted::start_on(ext4, &[]);
    let f = mount_flags(&m.mnt);
    assert_ne!(f & libc::ST_NODEV, 0);
    // The device node is there, and cannot be opened through the mount.
    let e = File::open(m.path("null")).expect_err("a device node on a nodev mount");
    assert_eq!(e.raw_os_error(), Some(libc::EACCES));
}

/// Whether a tmpfs with source `name` is the mount at `path` (/proc/self/mountinfo).
fn tmpfs_mounted_at(path: &Path, name: &str) -> bool {
    let info = fs::read_to_string("/proc/self/mountinfo").expect("mountinfo");
    let p = path.to_string_lossy();
    info.lines().any(|l| {
        let f: Vec<&str> = l.split(' ').collect();
        f.len() > 4 && f[4] == p && l.contains(&format!(" - tmpfs {name} "))
    })
}

/// A mount taken away from outside, and the mount point mounted again by someone else before
/// zerodax noticed: zerodax exits without touching the new mount (fuser would unmount the
/// mount point by path as its session ends).
#[test]
fn an_unmount_from_outside_never_takes_the_next_mount_with_it() {
    let mut m = Mounted::start(&[]);
    let pid = m.child.as_ref().expect("child").id() as libc::pid_t;
    // Hold zerodax still while the mount point changes hands, so the order is certain.
    // SAFETY: kill(2) on our own child.
    unsafe { libc::kill(pid, libc::SIGSTOP) };
    run(Command::new("umount").arg("-l").arg(&m.mnt));
    run(Command::new("mount")
        .args(["-t", "tmpfs", "zd-next-mount"])
        .arg(&m.mnt));
    // SAFETY: as above.
    unsafe { libc::kill(pid, libc::SIGCONT) };
    let deadline = Instant::now() + Duration::from_secs(10);
    let status = loop {
        if let Some(st) = m.child.as_mut().expect("child").try_wait().expect("wait") {
            break st;
        }
        assert!(
            Instant::now() < deadline,
            "zerodax did not exit: {}",
            m.log_text()
        );
        thread::sleep(Duration::from_millis(20));
    };
    m.child = None;
    let survived = tmpfs_mounted_at(&m.mnt, "zd-next-mount");
    let _ = Command::new("umount").arg(&m.mnt).status();
    assert!(status.success(), "{status}: {}", m.log_text());
    assert!(survived, "the next mount was unmounted: {}", m.log_text());
}

/// Every entry's d_ino from `dir`, read with opendir/readdir after a seekdir (so the kernel
/// sends plain READDIR, not READDIRPLUS), with the names.
fn dinos_after_seek(dir: &Path) -> Vec<(String, u64)> {
    let c = cpath(dir);
    // SAFETY: a NUL-terminated path; the stream is closed below.
    let d = unsafe { libc::opendir(c.as_ptr()) };
    assert!(!d.is_null(), "opendir: errno {}", errno());
    let mut out = Vec::new();
    // SAFETY: `d` is an open directory stream; readdir's entry is read before the next
    // call; telldir/seekdir take a position from the same stream.
    unsafe {
        assert!(!libc::readdir(d).is_null());
        let pos = libc::telldir(d);
        libc::seekdir(d, pos);
        loop {
            let e = libc::readdir(d);
            if e.is_null() {
                break;
            }
            let name = std::ffi::CStr::from_ptr((*e).d_name.as_ptr())
                .to_string_lossy()
                .into_owned();
            out.push((name, (*e).d_ino));
        }
        libc::closedir(d);
    }
    out
}

/// One inode number per file, whichever request shows it: READDIR's d_ino (after a seek),
/// READDIRPLUS and LOOKUP/GETATTR's st_ino agree, equal the host's st_ino on the share's
/// own mount, and stay distinct across a bind mount inside the share.
#[test]
fn inode_numbers_agree_across_readdir_readdirplus_and_stat() {
    let m = Mounted::start(&[]);
    for i in 0..40 {
        fs::write(m.backing(&format!("f{i}")), b"x").expect("file");
    }
    fs::create_dir(m.backing("a")).expect("a");
    fs::create_dir(m.backing("b")).expect("b");
    fs::write(m.backing("a/inside"), b"y").expect("inside");
    run(Command::new("mount")
        .arg("--bind")
        .arg(m.backing("a"))
        .arg(m.backing("b")));
    struct Unbind(PathBuf);
    impl Drop for Unbind {
        fn drop(&mut self) {
            let _ = Command::new("umount").arg("-l").arg(&self.0).status();
        }
    }
    let _unbind = Unbind(m.backing("b"));

    let listed = dinos_after_seek(&m.mnt);
    assert!(listed.len() > 30, "{listed:?}");
    // (`..` of the mount's root is the directory the mount sits on; for the mount point `b`
    // READDIR shows the directory under the mount, as the host's own getdents does.)
    for (name, d_ino) in listed.iter().filter(|(n, _)| n != ".." && n != "b") {
        let st = fs::symlink_metadata(m.path(name)).expect("stat");
        assert_eq!(*d_ino, st.ino(), "{name}: READDIR d_ino against st_ino");
        if name.starts_with('f') {
            let host = fs::symlink_metadata(m.backing(name)).expect("host stat");
            assert_eq!(st.ino(), host.ino(), "{name}: the host's st_ino");
        }
    }
    // READDIRPLUS (from offset 0) agrees too.
    for e in fs::read_dir(&m.mnt).expect("read_dir") {
        let e = e.expect("entry");
        assert_eq!(
            e.ino(),
            e.metadata().expect("stat").ino(),
            "{:?}",
            e.file_name()
        );
    }
    // The same file through the bind mount: its own number, the same in READDIR and stat.
    let via_a = fs::metadata(m.path("a/inside")).expect("a/inside").ino();
    let via_b = fs::metadata(m.path("b/inside")).expect("b/inside").ino();
    assert_ne!(via_a, via_b, "two mounts, two inodes for the client");
    for (name, d_ino) in dinos_after_seek(&m.path("b"))
        .into_iter()
        .filter(|(n, _)| n != "..")
    {
        let st = fs::symlink_metadata(m.path("b").join(&name)).expect("stat");
        assert_eq!(d_ino, st.ino(), "b/{name}");
    }
}

/// linkat(2) of an open descriptor's file through its /proc/self/fd link.
fn link_fd(fd: i32, to: &Path) -> Result<(), i32> {
    let from = CString::new(format!("/proc/self/fd/{fd}")).expect("path");
    // SAFETY: two NUL-terminated paths that outlive the call.
    let r = unsafe {
        libc::linkat(
            libc::AT_FDCWD,
            from.as_ptr(),
            libc::AT_FDCWD,
            cpath(to).as_ptr(),
            libc::AT_SYMLINK_FOLLOW,
        )
    };
    if r == 0 {
        Ok(())
    } else {
        Err(errno())
    }
}

/// O_TMPFILE on the mount (defect 6 of issue 9: fuser had no TMPFILE request, so the kernel
/// got ENOSYS and O_TMPFILE failed with EOPNOTSUPP): an unnamed file in the shared
/// directory, named later by linkat, or never when opened O_EXCL; with and without
/// passthrough.
#[test]
fn tmpfile_is_unnamed_until_linked() {
    for_each_mode(|m| {
        fs::create_dir(m.path("d")).expect("mkdir");
        let names = || {
            let mut v: Vec<_> = fs::read_dir(m.backing("d"))
                .expect("readdir")
                .map(|e| e.expect("entry").file_name())
                .collect();
            v.sort();
            v
        };
        let f = OpenOptions::new()
            .read(true)
            .write(true)
            .mode(0o640)
            .custom_flags(libc::O_TMPFILE)
            .open(m.path("d"))
            .expect("O_TMPFILE on the mount");
        f.write_all_at(b"unnamed data", 0).expect("write");
        assert_eq!(f.metadata().expect("fstat").nlink(), 0);
        assert!(
            names().is_empty(),
            "an unnamed file got a name: {:?}",
            names()
        );
        link_fd(f.as_raw_fd(), &m.path("d/named")).expect("linkat the tmpfile");
        assert_eq!(
            fs::read(m.backing("d/named")).expect("backing"),
            b"unnamed data"
        );
        assert_eq!(
            fs::metadata(m.backing("d/named")).expect("stat").mode() & 0o777,
            0o640
        );

        let excl = OpenOptions::new()
            .write(true)
            .custom_flags(libc::O_TMPFILE | libc::O_EXCL)
            .open(m.path("d"))
            .expect("O_TMPFILE|O_EXCL");
        assert_eq!(
            link_fd(excl.as_raw_fd(), &m.path("d/never")),
            Err(libc::ENOENT)
        );
        assert_eq!(names(), ["named"]);
    });
}

/// The mount's source and type as /proc/self/mountinfo shows them.
fn mount_source_and_type(path: &Path) -> Option<(String, String)> {
    let info = fs::read_to_string("/proc/self/mountinfo").ok()?;
    let want = path.to_string_lossy();
    info.lines().rev().find_map(|l| {
        let f: Vec<&str> = l.split(' ').collect();
        let dash = f.iter().position(|&x| x == "-")?;
        if f.get(4) != Some(&want.as_ref()) {
            return None;
        }
        Some((f.get(dash + 2)?.to_string(), f.get(dash + 1)?.to_string()))
    })
}

/// The mount is type `fuse.zerodax` (fuser mounted plain `fuse`, dropping the subtype);
/// `-o fsname=` and `-o subtype=` name it as libfuse's options do (fstests finds its
/// mounts by source name), and a name /proc/mounts could not show is refused.
#[test]
fn mount_source_and_type_names() {
    let m = Mounted::start(&[]);
    assert_eq!(
        mount_source_and_type(&m.mnt),
        Some(("zerodax".into(), "fuse.zerodax".into()))
    );
    drop(m);
    let m = Mounted::start(&["-o", "fsname=scratchdev,subtype=zd"]);
    assert_eq!(
        mount_source_and_type(&m.mnt),
        Some(("scratchdev".into(), "fuse.zd".into()))
    );
    drop(m);
    let m = Mounted::start(&["-o", "subtype="]);
    assert_eq!(
        mount_source_and_type(&m.mnt),
        Some(("zerodax".into(), "fuse".into()))
    );
    drop(m);
    let dir = TempDir::new("zd-names").expect("tempdir");
    for bad in ["fsname=two words", "fsname=", "fsname=tab\there"] {
        let out = Command::new(zerodax())
            .arg("mount")
            .arg(dir.path())
            .arg(dir.path())
            .args(["-o", bad])
            .output()
            .expect("run zerodax");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "-o {bad} was accepted");
        assert!(err.contains("a name must be printable"), "-o {bad}: {err}");
        assert!(!is_fuse_mounted(dir.path()), "-o {bad} mounted");
    }
}

/// SEEK_DATA and SEEK_HOLE at a negative offset: ENXIO, as the host's filesystem answers
/// (fstests generic/448; zerodax answered EINVAL, its syscall wrapper refusing the offset
/// before the host saw it).
#[test]
fn negative_seek_data_and_hole_get_the_hosts_answer() {
    let m = Mounted::start(&["--passthrough", "off"]);
    fs::write(m.backing("f"), vec![1u8; 8192]).expect("write");
    let through = File::open(m.path("f")).expect("open through the mount");
    let host = File::open(m.backing("f")).expect("open backing");
    for whence in [libc::SEEK_DATA, libc::SEEK_HOLE] {
        for off in [-1, -4096, i64::MIN] {
            let want = seek(&host, off, whence);
            assert_eq!(want, Err(libc::ENXIO), "the host's answer, {whence} {off}");
            assert_eq!(seek(&through, off, whence), want, "{whence} {off}");
        }
    }
}

/// The access time of `path` on the host.
fn atime(path: &Path) -> i64 {
    fs::metadata(path).expect("stat").atime()
}

/// Sets `path`'s access time on the host to 2001, older than its mtime, so that the host's
/// relatime rule updates it on the next read.
fn age_atime(path: &Path) {
    let times = [
        libc::timespec {
            tv_sec: 1_000_000_000,
            tv_nsec: 0,
        },
        libc::timespec {
            tv_sec: 0,
            tv_nsec: libc::UTIME_OMIT,
        },
    ];
    let p = cpath(path);
    // SAFETY: a NUL-terminated path and two timespecs that outlive the call.
    let r = unsafe { libc::utimensat(libc::AT_FDCWD, p.as_ptr(), times.as_ptr(), 0) };
    assert_eq!(r, 0, "utimensat {}", path.display());
}

/// `-o noatime` and `-o nodiratime` hold for the host's access times, which the daemon's
/// reads would otherwise update (the client kernel never updates atime on FUSE): reading a
/// file and listing a directory through the mount leave the host's atimes alone under
/// noatime, files still update under nodiratime, both update by default (fstests
/// generic/003 and 120, where `-o nodiratime` also failed to mount). Directories with and
/// without passthrough; files without (with it the kernel reads them itself).
#[test]
fn noatime_and_nodiratime_hold_for_host_access_times() {
    const OLD: i64 = 1_000_000_000;
    for mode in MODES {
        for (opt, file_kept, dir_kept) in [
            (None, false, false),
            (Some("noatime"), true, true),
            (Some("nodiratime"), false, true),
        ] {
            let mut args = vec!["--passthrough", mode];
            if let Some(o) = opt {
                args.extend(["-o", o]);
            }
            let m = Mounted::start(&args);
            fs::create_dir(m.backing("d")).expect("mkdir");
            fs::write(m.backing("d/f"), b"some data").expect("write");
            age_atime(&m.backing("d/f"));
            age_atime(&m.backing("d"));
            let data = fs::read(m.path("d/f")).expect("read through the mount");
            assert_eq!(data, b"some data");
            let names = fs::read_dir(m.path("d")).expect("list").count();
            assert_eq!(names, 1);
            let case = format!("--passthrough {mode} -o {opt:?}");
            // With passthrough the client kernel reads the backing file itself, opened with
            // the client's flags: the host's rules apply to files then (docs/mount.md).
            if mode == "off" {
                assert_eq!(
                    atime(&m.backing("d/f")) == OLD,
                    file_kept,
                    "file atime, {case}"
                );
            }
            assert_eq!(atime(&m.backing("d")) == OLD, dir_kept, "dir atime, {case}");
            if let Some(o) = opt {
                let info = fs::read_to_string("/proc/self/mountinfo").expect("mountinfo");
                let mnt = m.mnt.to_string_lossy().into_owned();
                let line = info
                    .lines()
                    .rev()
                    .find(|l| l.split(' ').nth(4) == Some(mnt.as_str()))
                    .expect("our mount in mountinfo");
                assert!(
                    line.contains(o),
                    "{o} not among the mount's options: {line}"
                );
            }
        }
    }
}

/// One step of `set_id_bits_are_cleared_as_on_ext4`: a shell command on the file `$1`.
const SET_ID_STEPS: [(&str, &str); 4] = [
    ("write", "printf x >> \"$1\""),
    ("fallocate", "fallocate -l 65536 \"$1\""),
    ("truncate", "truncate -s 1 \"$1\""),
    ("open O_TRUNC", ": > \"$1\""),
];

/// Runs `script` on `file` as `uid`:`uid` (no supplementary groups).
fn run_as(uid: u32, script: &str, file: &Path) {
    let out = Command::new("sh")
        .args(["-c", script, "sh"])
        .arg(file)
        .uid(uid)
        .gid(uid)
        .output()
        .expect("sh");
    assert!(
        out.status.success(),
        "{script} on {} as {uid}: {}",
        file.display(),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A write, fallocate, truncate or truncating open by a caller without CAP_FSETID clears
/// set-user-id and set-group-id as the host's own filesystem does (fstests generic/683, 684
/// and 685 check the first three): set-user-id always; set-group-id when the group may
/// execute or the caller is not in the file's group; root keeps them. The expected modes are
/// the ext4 backing's own, the same steps run on a file there directly. With passthrough
/// too: the kernel's passthrough write leaves the bits to the daemon under KILLPRIV_V2, so
/// a file with one is served by the daemon.
#[test]
fn set_id_bits_are_cleared_as_on_ext4() {
    // (mode, the file's group, the caller).
    const CASES: [(u32, u32, u32); 7] = [
        (0o2666, 0, 65534),
        (0o2676, 0, 65534),
        (0o4777, 0, 65534),
        (0o6777, 0, 65534),
        (0o2666, 65534, 65534),
        (0o2676, 65534, 65534),
        (0o6777, 0, 0),
    ];
    for_each_mode(|m| {
        fs::create_dir(m.backing("fuse")).expect("dir");
        fs::create_dir(m.backing("ext4")).expect("dir");
        let mut n = 0;
        let mut wrong = Vec::new();
        for (mode, gid, uid) in CASES {
            for (what, script) in SET_ID_STEPS {
                n += 1;
                let mut modes = Vec::new();
                for (dir, path) in [
                    ("ext4", m.backing(&format!("ext4/{n}"))),
                    ("fuse", m.path(&format!("fuse/{n}"))),
                ] {
                    let host = m.backing(&format!("{dir}/{n}"));
                    fs::write(&host, b"data").expect("seed");
                    std::os::unix::fs::chown(&host, Some(0), Some(gid)).expect("chown");
                    fs::set_permissions(&host, fs::Permissions::from_mode(mode)).expect("chmod");
                    run_as(uid, script, &path);
                    let on_host = fs::metadata(&host).expect("stat").mode() & 0o7777;
                    // What the client sees right away, asking for the mode alone (as
                    // `stat -c %a` does): the kernel must have been told its cached mode
                    // went stale (fstests generic/683-685 look so).
                    if dir == "fuse" && statx_mode(&path) != on_host {
                        wrong.push(format!(
                            "{what} of a {mode:o} file of group {gid} by {uid}: the mount shows {:o}, the host has {on_host:o}",
                            statx_mode(&path)
                        ));
                    }
                    modes.push(on_host);
                }
                if modes[1] != modes[0] {
                    wrong.push(format!(
                        "{what} of a {mode:o} file of group {gid} by {uid}: {:o} through the mount, {:o} on ext4",
                        modes[1], modes[0]
                    ));
                }
            }
        }
        assert!(wrong.is_empty(), "{}", wrong.join("\n"));
    });
}

/// The permission bits of `path` from a statx asking for STATX_MODE alone, which a FUSE
/// client answers from its attribute cache unless told the mode changed.
fn statx_mode(path: &Path) -> u32 {
    let p = cpath(path);
    // SAFETY: all-zero is a valid statx buffer.
    let mut stx: libc::statx = unsafe { std::mem::zeroed() };
    // SAFETY: a NUL-terminated path and a statx buffer that outlive the call.
    let r = unsafe {
        libc::statx(
            libc::AT_FDCWD,
            p.as_ptr(),
            libc::AT_STATX_SYNC_AS_STAT,
            libc::STATX_MODE,
            &mut stx,
        )
    };
    assert_eq!(r, 0, "statx {}", path.display());
    u32::from(stx.stx_mode) & 0o7777
}

/// With passthrough, a file that has a set-id bit when opened is served by the daemon, and
/// so are its later opens while one is still open, even once a write cleared the bit (the
/// kernel refuses an inode opened both ways); after the last close it goes back to
/// passthrough. Every open and read works throughout.
#[test]
fn set_id_files_under_passthrough_are_served_one_way_at_a_time() {
    let m = Mounted::start(&["--passthrough", "on"]);
    let host = m.backing("f");
    fs::write(&host, b"data").expect("seed");
    fs::set_permissions(&host, fs::Permissions::from_mode(0o4777)).expect("chmod");
    let held = File::open(m.path("f")).expect("open with the bit");
    run_as(65534, "printf x >> \"$1\"", &m.path("f"));
    assert_eq!(fs::metadata(&host).expect("stat").mode() & 0o7777, 0o777);
    let again = File::open(m.path("f")).expect("open without the bit, one still open");
    let mut s = String::new();
    (&again).read_to_string(&mut s).expect("read");
    assert_eq!(s, "datax");
    drop((held, again));
    let mut s = String::new();
    File::open(m.path("f"))
        .expect("open after the last close")
        .read_to_string(&mut s)
        .expect("read");
    assert_eq!(s, "datax");
}
