//! Core tests against a plain temporary directory (no mount, no transport).

use std::ffi::CString;
use std::os::unix::fs::symlink;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU32, Ordering};

use super::*;

struct Tmp(PathBuf);

impl Tmp {
    fn new() -> Self {
        static N: AtomicU32 = AtomicU32::new(0);
        let p = std::env::temp_dir().join(format!(
            "zerodax-core-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        let _ = std::fs::remove_dir_all(&p);
        std::fs::create_dir_all(p.join("share")).expect("tmp");
        Tmp(p)
    }

    fn share(&self) -> PathBuf {
        self.0.join("share")
    }
}

impl Drop for Tmp {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn core(t: &Tmp, read_only: bool) -> FileSystem {
    FileSystem::new(
        &t.share(),
        Config {
            read_only,
            ..Config::default()
        },
    )
    .expect("core")
}

fn c(s: &str) -> CString {
    CString::new(s).expect("name")
}

fn errno<T: std::fmt::Debug>(r: io::Result<T>) -> i32 {
    r.expect_err("expected an error")
        .raw_os_error()
        .unwrap_or(0)
}

fn ctx() -> Context {
    // SAFETY: getuid/getgid have no arguments.
    unsafe {
        Context {
            uid: libc::getuid(),
            gid: libc::getgid(),
            pid: 0,
            umask: 0o022,
        }
    }
}

#[test]
fn dotdot_at_root_is_root_and_names_are_single_components() {
    let t = Tmp::new();
    std::fs::write(t.0.join("outside"), b"secret").expect("outside");
    let fs = core(&t, false);
    let e = fs.lookup(&ctx(), ROOT_NODE, &c("..")).expect("..");
    assert_eq!(e.node, ROOT_NODE);
    assert_eq!(
        fs.lookup(&ctx(), ROOT_NODE, &c(".")).expect(".").node,
        ROOT_NODE
    );
    assert_eq!(
        errno(fs.lookup(&ctx(), ROOT_NODE, &c("../outside"))),
        libc::EINVAL
    );
    assert_eq!(
        errno(fs.lookup(&ctx(), ROOT_NODE, &c("/etc"))),
        libc::EINVAL
    );
    assert_eq!(errno(fs.lookup(&ctx(), ROOT_NODE, &c(""))), libc::EINVAL);
    assert_eq!(
        errno(fs.lookup(&ctx(), ROOT_NODE, &c(&"n".repeat(256)))),
        libc::ENAMETOOLONG
    );
    assert_eq!(
        errno(fs.mkdir(&ctx(), ROOT_NODE, &c(".."), 0o755)),
        libc::EINVAL
    );
    assert_eq!(
        errno(fs.rename(&ctx(), ROOT_NODE, &c(".."), ROOT_NODE, &c("x"), 0)),
        libc::EINVAL
    );
    assert_eq!(errno(fs.lookup(&ctx(), 999, &c("x"))), libc::ESTALE);
}

#[test]
fn symlinks_are_never_followed_by_the_daemon() {
    let t = Tmp::new();
    std::fs::create_dir(t.0.join("outdir")).expect("outdir");
    std::fs::write(t.0.join("outdir/file"), b"secret").expect("file");
    symlink(t.0.join("outdir"), t.share().join("abs")).expect("symlink");
    symlink("../outdir", t.share().join("rel")).expect("symlink");
    let fs = core(&t, false);
    for name in ["abs", "rel"] {
        let link = fs.lookup(&ctx(), ROOT_NODE, &c(name)).expect("lookup link");
        assert_eq!(link.attr.file_type(), libc::S_IFLNK);
        // Using the symlink as a directory, opening it, or creating through it all fail.
        assert_eq!(
            errno(fs.lookup(&ctx(), link.node, &c("file"))),
            libc::ENOTDIR
        );
        assert_eq!(
            errno(fs.open(&ctx(), link.node, libc::O_RDONLY)),
            libc::ELOOP
        );
        assert_eq!(
            errno(fs.create(&ctx(), link.node, &c("new"), 0o644, libc::O_RDWR)),
            libc::ENOTDIR
        );
        assert_eq!(errno(fs.opendir(&ctx(), link.node)), libc::ENOTDIR);
        // create over an existing symlink refuses rather than writing its target.
        assert_eq!(
            errno(fs.create(&ctx(), ROOT_NODE, &c(name), 0o644, libc::O_RDWR)),
            libc::ELOOP
        );
    }
    assert_eq!(
        fs.readlink(
            &ctx(),
            fs.lookup(&ctx(), ROOT_NODE, &c("rel")).expect("rel").node
        )
        .expect("readlink"),
        b"../outdir"
    );
    assert!(!t.0.join("outdir/new").exists());
    assert_eq!(
        std::fs::read(t.0.join("outdir/file")).expect("file"),
        b"secret"
    );
}

#[test]
fn hard_links_share_a_node_and_forget_releases_it() {
    let t = Tmp::new();
    std::fs::write(t.share().join("a"), b"x").expect("a");
    std::fs::hard_link(t.share().join("a"), t.share().join("b")).expect("link");
    let fs = core(&t, false);
    let a = fs.lookup(&ctx(), ROOT_NODE, &c("a")).expect("a");
    let b = fs.lookup(&ctx(), ROOT_NODE, &c("b")).expect("b");
    assert_eq!(a.node, b.node);
    assert_eq!(fs.node_count(), 2);
    fs.forget(a.node, 1);
    assert!(
        fs.getattr(&ctx(), a.node, None).is_ok(),
        "one reference left"
    );
    fs.batch_forget(&[(a.node, 1)]);
    assert_eq!(errno(fs.getattr(&ctx(), a.node, None)), libc::ESTALE);
    assert_eq!(fs.node_count(), 1);
    // The root survives any forget.
    fs.forget(ROOT_NODE, u64::MAX);
    assert!(fs.getattr(&ctx(), ROOT_NODE, None).is_ok());
    // A later lookup makes the node again, with the same number: one number per inode
    // (the host's st_ino on the share's own mount).
    let again = fs.lookup(&ctx(), ROOT_NODE, &c("a")).expect("a");
    assert_eq!(again.node, a.node);
    let host = std::fs::metadata(t.share().join("a")).expect("a");
    assert_eq!(again.node, std::os::unix::fs::MetadataExt::ino(&host));
    assert_eq!(again.attr.ino, again.node);
}

#[test]
fn create_write_read_seek_and_readdirplus() {
    let t = Tmp::new();
    let fs = core(&t, false);
    let (e, open) = fs
        .create(
            &ctx(),
            ROOT_NODE,
            &c("f"),
            0o666,
            libc::O_RDWR | libc::O_EXCL,
        )
        .expect("create");
    assert_eq!(e.attr.mode & 0o777, 0o644, "umask applied");
    assert_eq!(
        errno(fs.create(
            &ctx(),
            ROOT_NODE,
            &c("f"),
            0o644,
            libc::O_RDWR | libc::O_EXCL
        )),
        libc::EEXIST
    );
    assert_eq!(
        fs.write(&ctx(), open.fh, 1 << 20, b"tail").expect("write"),
        4
    );
    let mut buf = [1u8; 8];
    assert_eq!(fs.read(open.fh, (1 << 20) - 4, &mut buf).expect("read"), 8);
    assert_eq!(&buf, b"\0\0\0\0tail");
    assert_eq!(
        fs.lseek(open.fh, 0, libc::SEEK_DATA).expect("data"),
        1 << 20
    );
    assert_eq!(fs.lseek(open.fh, 0, libc::SEEK_HOLE).expect("hole"), 0);
    assert_eq!(errno(fs.lseek(open.fh, 0, 77)), libc::EINVAL);
    fs.release(open.fh).expect("release");
    assert_eq!(errno(fs.read(open.fh, 0, &mut buf)), libc::EBADF);

    for i in 0..50 {
        std::fs::write(t.share().join(format!("n{i}")), b"").expect("file");
    }
    let dir = fs.opendir(&ctx(), ROOT_NODE).expect("opendir");
    // A client buffer that takes three entries at a time: refused entries are forgotten.
    let mut seen = Vec::new();
    let mut offset = 0;
    loop {
        let mut batch = 0;
        let mut last = None;
        fs.readdirplus(&ctx(), dir, offset, |d, e| {
            if batch == 3 {
                return false;
            }
            batch += 1;
            last = Some(d.offset);
            if let Some(e) = e {
                seen.push((d.name.clone(), e.node));
            }
            true
        })
        .expect("readdirplus");
        match last {
            Some(o) => offset = o,
            None => break,
        }
    }
    fs.releasedir(dir).expect("releasedir");
    assert_eq!(seen.len(), 51, "50 files and f, each once");
    // Exactly one reference per entry handed out: forgetting once each empties the table
    // (plus the earlier lookup of f from create).
    for (_, node) in &seen {
        fs.forget(*node, 1);
    }
    fs.forget(e.node, 1);
    assert_eq!(fs.node_count(), 1);
}

#[test]
fn read_only_refuses_every_modification() {
    let t = Tmp::new();
    std::fs::write(t.share().join("f"), b"x").expect("f");
    let fs = core(&t, true);
    let f = fs.lookup(&ctx(), ROOT_NODE, &c("f")).expect("f");
    assert_eq!(
        errno(fs.mkdir(&ctx(), ROOT_NODE, &c("d"), 0o755)),
        libc::EROFS
    );
    assert_eq!(errno(fs.unlink(&ctx(), ROOT_NODE, &c("f"))), libc::EROFS);
    assert_eq!(errno(fs.open(&ctx(), f.node, libc::O_WRONLY)), libc::EROFS);
    assert_eq!(
        errno(fs.open(&ctx(), f.node, libc::O_RDONLY | libc::O_TRUNC)),
        libc::EROFS
    );
    assert_eq!(
        errno(fs.setattr(
            &ctx(),
            f.node,
            &SetAttr {
                size: Some(0),
                ..SetAttr::default()
            }
        )),
        libc::EROFS
    );
    assert_eq!(
        errno(fs.setxattr(&ctx(), f.node, &c("user.a"), b"b", 0, 0)),
        libc::EROFS
    );
    let open = fs
        .open(&ctx(), f.node, libc::O_RDONLY)
        .expect("read-only open");
    assert_eq!(errno(fs.write(&ctx(), open.fh, 0, b"y")), libc::EROFS);
    assert_eq!(errno(fs.fallocate(open.fh, 0, 0, 4096)), libc::EROFS);
    assert_eq!(std::fs::read(t.share().join("f")).expect("f"), b"x");
}

#[test]
fn readdir_takes_any_name_and_resumes_at_every_cookie() {
    use std::os::unix::ffi::OsStrExt;
    let t = Tmp::new();
    // Longest names of every byte but NUL and '/', non-UTF-8 included, more than one
    // getdents buffer (32 KiB) of them.
    let mut names = Vec::new();
    for i in 0..300usize {
        let name: Vec<u8> = (0..255)
            .map(|j| match ((i * 7 + j) % 255 + 1) as u8 {
                b'/' => b'_',
                b => b,
            })
            .collect();
        let name = [format!("{i:03}").into_bytes(), name]
            .concat()
            .into_iter()
            .take(255)
            .collect::<Vec<u8>>();
        std::fs::write(t.share().join(std::ffi::OsStr::from_bytes(&name)), b"").expect("file");
        names.push(name);
    }
    std::fs::create_dir(t.share().join("d")).expect("dir");
    symlink("d", t.share().join("l")).expect("symlink");
    let fs = core(&t, false);
    let dir = fs.opendir(&ctx(), ROOT_NODE).expect("opendir");
    let read_from = |offset: u64| {
        let mut out = Vec::new();
        fs.readdir(dir, offset, |d| {
            out.push((d.name.to_bytes().to_vec(), d.offset, d.file_type));
            true
        })
        .expect("readdir");
        out
    };
    let all = read_from(0);
    assert_eq!(all.len(), names.len() + 4, "the files, d, l, . and ..");
    for name in &names {
        let e = all
            .iter()
            .find(|e| &e.0 == name)
            .expect("every name, byte for byte");
        assert_eq!(e.2, libc::S_IFREG);
    }
    let type_of = |n: &[u8]| all.iter().find(|e| e.0 == n).map(|e| e.2);
    assert_eq!(type_of(b"d"), Some(libc::S_IFDIR));
    assert_eq!(type_of(b"l"), Some(libc::S_IFLNK));
    assert_eq!(type_of(b".."), Some(libc::S_IFDIR));
    // Each entry's cookie resumes right after it.
    for (i, e) in all.iter().enumerate().step_by(7) {
        assert_eq!(read_from(e.1), all[i + 1..], "resumed after entry {i}");
    }
    fs.releasedir(dir).expect("releasedir");
}

#[test]
fn dotdot_of_a_directory_moved_out_of_the_share_is_refused() {
    let t = Tmp::new();
    std::fs::create_dir_all(t.share().join("d/e")).expect("dirs");
    let fs = core(&t, false);
    let d = fs.lookup(&ctx(), ROOT_NODE, &c("d")).expect("d");
    let e = fs.lookup(&ctx(), d.node, &c("e")).expect("e");
    assert_eq!(
        fs.lookup(&ctx(), e.node, &c("..")).expect("..").node,
        d.node
    );
    assert_eq!(
        fs.lookup(&ctx(), d.node, &c("..")).expect("..").node,
        ROOT_NODE
    );
    // A host process moves d out of the share: its `..` is now outside.
    std::fs::rename(t.share().join("d"), t.0.join("moved")).expect("move out");
    assert_eq!(errno(fs.lookup(&ctx(), d.node, &c(".."))), libc::ENOENT);
    assert_eq!(
        fs.lookup(&ctx(), e.node, &c("..")).expect("..").node,
        d.node
    );
}

fn core_with_map(t: &Tmp, map: &str) -> FileSystem {
    FileSystem::new(
        &t.share(),
        Config {
            xattrmap: Some(map.parse().expect("map")),
            ..Config::default()
        },
    )
    .expect("core")
}

/// The host's own view of `path`'s xattr `name`, bypassing the core.
fn host_getxattr(path: &Path, name: &str) -> Option<Vec<u8>> {
    let path = c(path.to_str().expect("utf-8 path"));
    let name = c(name);
    let mut buf = vec![0u8; 256];
    // SAFETY: NUL-terminated strings and a writable buffer of the length passed, all live
    // for the call.
    let n = unsafe {
        libc::lgetxattr(
            path.as_ptr(),
            name.as_ptr(),
            buf.as_mut_ptr().cast(),
            buf.len(),
        )
    };
    (n >= 0).then(|| {
        buf.truncate(n as usize);
        buf
    })
}

fn host_setxattr(path: &Path, name: &str, value: &[u8]) {
    let path = c(path.to_str().expect("utf-8 path"));
    let name = c(name);
    // SAFETY: NUL-terminated strings and a value buffer of the length passed.
    let rc = unsafe {
        libc::lsetxattr(
            path.as_ptr(),
            name.as_ptr(),
            value.as_ptr().cast(),
            value.len(),
            0,
        )
    };
    assert_eq!(
        rc,
        0,
        "host setxattr {name:?}: {}",
        io::Error::last_os_error()
    );
}

/// The names of a LISTXATTR answer, sorted (hosts list in their own order).
fn names(x: Xattr) -> Vec<String> {
    let Xattr::Data(list) = x else {
        panic!("a list, not {x:?}")
    };
    assert!(list.is_empty() || list.ends_with(b"\0"), "{list:?}");
    let mut v: Vec<String> = list
        .split(|&b| b == 0)
        .filter(|n| !n.is_empty())
        .map(|n| String::from_utf8(n.to_vec()).expect("utf-8"))
        .collect();
    v.sort();
    v
}

/// virtiofsd's doc example 2 (`/map/trusted./user.virtiofs./`): the guest's `trusted.*`
/// live under `user.virtiofs.` on the host, other names pass, the host's own `trusted.*`
/// are hidden, and the guest cannot reach `user.virtiofs.*` directly.
#[test]
fn xattrmap_moves_trusted_names_and_guards_the_prefix() {
    let t = Tmp::new();
    let path = t.share().join("f");
    std::fs::write(&path, b"x").expect("f");
    host_setxattr(&path, "trusted.host", b"h");
    let fs = core_with_map(&t, "/map/trusted./user.virtiofs./");
    let f = fs.lookup(&ctx(), ROOT_NODE, &c("f")).expect("f");

    fs.setxattr(&ctx(), f.node, &c("trusted.x"), b"1", 0, 0)
        .expect("set trusted.x");
    assert_eq!(
        host_getxattr(&path, "user.virtiofs.trusted.x").as_deref(),
        Some(&b"1"[..])
    );
    assert_eq!(
        host_getxattr(&path, "trusted.x"),
        None,
        "never the real name"
    );
    fs.setxattr(&ctx(), f.node, &c("user.x"), b"22", 0, 0)
        .expect("set user.x");
    assert_eq!(host_getxattr(&path, "user.x").as_deref(), Some(&b"22"[..]));

    assert_eq!(
        fs.getxattr(&ctx(), f.node, &c("trusted.x"), 0)
            .expect("size"),
        Xattr::Size(1)
    );
    assert_eq!(
        fs.getxattr(&ctx(), f.node, &c("trusted.x"), 64)
            .expect("value"),
        Xattr::Data(b"1".to_vec())
    );
    // The host's own trusted.host is out of reach: as a name the guest sends it would be
    // user.virtiofs.trusted.host, which does not exist.
    assert_eq!(
        errno(fs.getxattr(&ctx(), f.node, &c("trusted.host"), 64)),
        libc::ENODATA
    );

    // The prefixed names themselves are refused (a `bad` rule): ENODATA to read, EPERM
    // to change.
    let direct = c("user.virtiofs.trusted.x");
    assert_eq!(
        errno(fs.getxattr(&ctx(), f.node, &direct, 64)),
        libc::ENODATA
    );
    assert_eq!(
        errno(fs.setxattr(&ctx(), f.node, &direct, b"evil", 0, 0)),
        libc::EPERM
    );
    assert_eq!(errno(fs.removexattr(&ctx(), f.node, &direct)), libc::EPERM);
    assert_eq!(
        host_getxattr(&path, "user.virtiofs.trusted.x").as_deref(),
        Some(&b"1"[..])
    );
    assert_eq!(
        host_getxattr(&path, "user.virtiofs.user.virtiofs.trusted.x"),
        None
    );

    // The list: trusted.host hidden, the prefix stripped. The size query agrees with the
    // list, and a buffer that holds the mapped list but not the host's is enough.
    let want = ["trusted.x", "user.x"];
    let mapped_len: usize = want.iter().map(|n| n.len() + 1).sum();
    assert_eq!(
        fs.listxattr(&ctx(), f.node, 0).expect("list size"),
        Xattr::Size(mapped_len as u32)
    );
    assert_eq!(
        names(fs.listxattr(&ctx(), f.node, 4096).expect("list")),
        want
    );
    assert_eq!(
        names(
            fs.listxattr(&ctx(), f.node, mapped_len as u32)
                .expect("exact")
        ),
        want
    );
    assert_eq!(
        errno(fs.listxattr(&ctx(), f.node, mapped_len as u32 - 1)),
        libc::ERANGE
    );

    // A name that would outgrow XATTR_NAME_MAX once prefixed.
    let long = c(&format!("trusted.{}", "a".repeat(240)));
    assert_eq!(
        errno(fs.setxattr(&ctx(), f.node, &long, b"v", 0, 0)),
        libc::ERANGE
    );
    assert_eq!(errno(fs.getxattr(&ctx(), f.node, &long, 64)), libc::ERANGE);

    fs.removexattr(&ctx(), f.node, &c("trusted.x"))
        .expect("remove trusted.x");
    assert_eq!(host_getxattr(&path, "user.virtiofs.trusted.x"), None);
    assert_eq!(
        host_getxattr(&path, "trusted.host").as_deref(),
        Some(&b"h"[..])
    );
    assert_eq!(
        names(fs.listxattr(&ctx(), f.node, 4096).expect("list")),
        ["user.x"]
    );
}

/// `unsupported` gets ENOTSUP; a name no rule matches is refused and hidden (virtiofsd's
/// implicit final `bad`); without `xattr` the map changes nothing: still ENOSYS.
#[test]
fn xattrmap_unsupported_unmatched_and_disabled() {
    let t = Tmp::new();
    let path = t.share().join("d");
    std::fs::create_dir(&path).expect("d");
    host_setxattr(&path, "user.host", b"h");
    let map = ":unsupported:all:security.:security.: :prefix:client:user.:user.guest.:";
    let fs = core_with_map(&t, map);
    let d = fs.lookup(&ctx(), ROOT_NODE, &c("d")).expect("d");
    assert_eq!(
        errno(fs.setxattr(&ctx(), d.node, &c("security.x"), b"v", 0, 0)),
        libc::EOPNOTSUPP
    );
    assert_eq!(
        errno(fs.getxattr(&ctx(), d.node, &c("security.x"), 0)),
        libc::EOPNOTSUPP
    );
    assert_eq!(
        errno(fs.setxattr(&ctx(), d.node, &c("trusted.x"), b"v", 0, 0)),
        libc::EPERM
    );
    assert_eq!(
        errno(fs.getxattr(&ctx(), d.node, &c("trusted.x"), 0)),
        libc::ENODATA
    );
    fs.setxattr(&ctx(), d.node, &c("user.a"), b"v", 0, 0)
        .expect("user.a");
    assert_eq!(
        host_getxattr(&path, "user.guest.user.a").as_deref(),
        Some(&b"v"[..])
    );
    // No server rule but the `unsupported` one: every host name is hidden.
    assert_eq!(
        fs.listxattr(&ctx(), d.node, 0).expect("size"),
        Xattr::Size(0)
    );
    assert_eq!(
        fs.listxattr(&ctx(), d.node, 64).expect("list"),
        Xattr::Data(Vec::new())
    );

    let off = FileSystem::new(
        &t.share(),
        Config {
            xattr: false,
            xattrmap: Some(map.parse().expect("map")),
            ..Config::default()
        },
    )
    .expect("core");
    let d = off.lookup(&ctx(), ROOT_NODE, &c("d")).expect("d");
    for r in [
        off.setxattr(&ctx(), d.node, &c("trusted.x"), b"v", 0, 0)
            .map(drop),
        off.getxattr(&ctx(), d.node, &c("user.a"), 0).map(drop),
        off.listxattr(&ctx(), d.node, 0).map(drop),
        off.removexattr(&ctx(), d.node, &c("security.x")),
    ] {
        assert_eq!(errno(r), libc::ENOSYS);
    }
}

fn core_by_handle(t: &Tmp) -> FileSystem {
    core_with(t, FileHandles::Mandatory)
}

fn core_with(t: &Tmp, file_handles: FileHandles) -> FileSystem {
    FileSystem::new(
        &t.share(),
        Config {
            file_handles,
            ..Config::default()
        },
    )
    .expect("core with file handles")
}

/// The node `node` is referenced by file handle (not by a descriptor).
fn by_handle(fs: &FileSystem, node: u64) -> bool {
    fs.inodes.get(node).expect("node").handle().is_some()
}

fn ino(path: &Path) -> u64 {
    std::os::unix::fs::MetadataExt::ino(&std::fs::symlink_metadata(path).expect("stat"))
}

#[test]
fn file_handle_nodes_serve_every_operation() {
    file_handle_nodes_serve_every_operation_with(FileHandles::Mandatory);
}

/// `prefer` on a filesystem with file handles, as root: every node by handle, as `mandatory`.
#[test]
fn preferred_file_handle_nodes_serve_every_operation() {
    file_handle_nodes_serve_every_operation_with(FileHandles::Prefer);
}

fn file_handle_nodes_serve_every_operation_with(mode: FileHandles) {
    let t = Tmp::new();
    let share = t.share();
    std::fs::create_dir(share.join("d")).expect("d");
    std::fs::write(share.join("d/f"), b"hello").expect("f");
    symlink("f", share.join("d/l")).expect("l");
    let fs = core_with(&t, mode);
    assert!(fs.uses_file_handles());

    // Node ids are what they are with descriptors: the host inode numbers.
    let d = fs.lookup(&ctx(), ROOT_NODE, &c("d")).expect("d");
    assert_eq!(d.node, ino(&share.join("d")));
    let f = fs.lookup(&ctx(), d.node, &c("f")).expect("f");
    assert_eq!(f.node, ino(&share.join("d/f")));
    assert!(by_handle(&fs, d.node) && by_handle(&fs, f.node), "{mode:?}");
    assert_eq!(f.attr.size, 5);
    assert_eq!(fs.lookup(&ctx(), d.node, &c(".")).expect(".").node, d.node);
    assert_eq!(
        fs.lookup(&ctx(), d.node, &c("..")).expect("..").node,
        ROOT_NODE
    );
    assert_eq!(fs.getattr(&ctx(), f.node, None).expect("getattr").size, 5);

    // open + read + write through a handle-backed node.
    let open = fs.open(&ctx(), f.node, libc::O_RDWR).expect("open");
    let mut buf = [0u8; 16];
    assert_eq!(fs.read(open.fh, 0, &mut buf).expect("read"), 5);
    assert_eq!(&buf[..5], b"hello");
    assert_eq!(fs.write(&ctx(), open.fh, 5, b" world").expect("write"), 6);
    fs.release(open.fh).expect("release");
    assert_eq!(
        std::fs::read(share.join("d/f")).expect("host read"),
        b"hello world"
    );

    // setattr: mode, size and times, without an open handle.
    let attr = fs
        .setattr(
            &ctx(),
            f.node,
            &SetAttr {
                mode: Some(0o600),
                size: Some(4),
                mtime: Some(SetTime::At(Timespec { sec: 1000, nsec: 0 })),
                ..SetAttr::default()
            },
        )
        .expect("setattr");
    assert_eq!(
        (attr.mode & 0o7777, attr.size, attr.mtime.sec),
        (0o600, 4, 1000)
    );

    // The symlink is referenced by its own handle, never followed.
    let l = fs.lookup(&ctx(), d.node, &c("l")).expect("l");
    assert!(by_handle(&fs, l.node));
    assert_eq!(fs.readlink(&ctx(), l.node).expect("readlink"), b"f");
    assert_eq!(errno(fs.open(&ctx(), l.node, libc::O_RDONLY)), libc::ELOOP);

    // readdir of a handle-backed directory.
    let dir = fs.opendir(&ctx(), d.node).expect("opendir");
    let mut names = Vec::new();
    fs.readdir(dir, 0, |e| {
        names.push(e.name.to_string_lossy().into_owned());
        true
    })
    .expect("readdir");
    fs.releasedir(dir).expect("releasedir");
    names.sort();
    assert_eq!(names, [".", "..", "f", "l"]);

    // Creating, linking, renaming and removing in a handle-backed directory.
    let sub = fs.mkdir(&ctx(), d.node, &c("sub"), 0o755).expect("mkdir");
    let (n, open) = fs
        .create(&ctx(), sub.node, &c("new"), 0o644, libc::O_WRONLY)
        .expect("create");
    fs.release(open.fh).expect("release");
    assert!(share.join("d/sub/new").is_file());
    let linked = fs.link(&ctx(), f.node, sub.node, &c("hard")).expect("link");
    assert_eq!(linked.node, f.node);
    fs.rename(&ctx(), d.node, &c("f"), sub.node, &c("moved"), 0)
        .expect("rename");
    assert_eq!(
        fs.lookup(&ctx(), sub.node, &c("moved"))
            .expect("moved")
            .node,
        f.node
    );
    assert_eq!(fs.getattr(&ctx(), f.node, None).expect("getattr").size, 4);
    fs.unlink(&ctx(), sub.node, &c("new")).expect("unlink");
    assert!(!share.join("d/sub/new").exists());
    fs.forget(n.node, 1);

    // xattrs on a file and on a directory.
    fs.setxattr(&ctx(), f.node, &c("user.k"), b"v", 0, 0)
        .expect("setxattr");
    assert_eq!(
        fs.getxattr(&ctx(), f.node, &c("user.k"), 16)
            .expect("getxattr"),
        Xattr::Data(b"v".to_vec())
    );
    fs.setxattr(&ctx(), d.node, &c("user.k"), b"dir", 0, 0)
        .expect("setxattr dir");
    fs.removexattr(&ctx(), d.node, &c("user.k"))
        .expect("removexattr");
    assert!(fs.statfs(&ctx(), f.node).is_ok());
    fs.access(&ctx(), f.node, libc::R_OK).expect("access");
}

#[test]
fn a_deleted_file_handle_node_is_stale() {
    let t = Tmp::new();
    std::fs::write(t.share().join("gone"), b"x").expect("gone");
    let fs = core_by_handle(&t);
    let e = fs.lookup(&ctx(), ROOT_NODE, &c("gone")).expect("gone");
    std::fs::remove_file(t.share().join("gone")).expect("rm");
    // Nothing of the daemon's holds the inode: it is gone from the host, and the node says so.
    let stale = [libc::ESTALE, libc::ENOENT];
    assert!(stale.contains(&errno(fs.getattr(&ctx(), e.node, None))));
    // An open fails too: ESTALE or ENOENT as a rule, but one CI run, with other tests
    // creating and deleting files on the same filesystem, saw another errno (not recorded
    // then). Any error says "gone"; an unexpected one is printed so the next run names it.
    let open_errno = errno(fs.open(&ctx(), e.node, libc::O_RDONLY));
    if !stale.contains(&open_errno) {
        eprintln!("open of a deleted file-handle node: errno {open_errno}");
    }
    assert!(stale.contains(&errno(fs.setattr(
        &ctx(),
        e.node,
        &SetAttr {
            mode: Some(0o600),
            ..SetAttr::default()
        }
    ))));
    fs.forget(e.node, 1);
    assert_eq!(fs.node_count(), 1);
}

#[test]
fn file_handles_need_a_filesystem_that_makes_them() {
    let err = FileSystem::new(
        Path::new("/proc"),
        Config {
            file_handles: FileHandles::Mandatory,
            ..Config::default()
        },
    )
    .expect_err("/proc makes no file handles");
    assert!(matches!(err, FsError::NoFileHandles { .. }), "{err}");
    assert!(err.to_string().contains("/proc"), "{err}");
    // Without them /proc is served as any directory.
    assert!(FileSystem::new(Path::new("/proc"), Config::default()).is_ok());
}

#[test]
fn a_reused_inode_number_gets_a_new_node_under_file_handles() {
    let t = Tmp::new();
    let share = t.share();
    std::fs::write(share.join("old"), b"old").expect("old");
    let fs = core_by_handle(&t);
    let old = fs.lookup(&ctx(), ROOT_NODE, &c("old")).expect("old");
    std::fs::remove_file(share.join("old")).expect("rm");
    // ext4 hands a freed inode number to the next file made in the same group, mostly at
    // once; try a few.
    let reused = (0..20).find_map(|i| {
        let name = format!("new{i}");
        std::fs::write(share.join(&name), b"new!").expect("new");
        (ino(&share.join(&name)) == old.node).then_some(name)
    });
    let Some(name) = reused else {
        eprintln!("skipped: the host filesystem reused no inode number");
        return;
    };
    // The host's number now names the new file, but the client may still hold the old node
    // under it: the new file gets a node id of its own, and the old node stays stale.
    let new = fs.lookup(&ctx(), ROOT_NODE, &c(&name)).expect("new");
    assert_ne!(new.node, old.node);
    assert_eq!(fs.getattr(&ctx(), new.node, None).expect("getattr").size, 4);
    let open = fs.open(&ctx(), new.node, libc::O_RDONLY).expect("open");
    let mut buf = [0u8; 8];
    assert_eq!(fs.read(open.fh, 0, &mut buf).expect("read"), 4);
    assert_eq!(&buf[..4], b"new!");
    fs.release(open.fh).expect("release");
    assert!(
        fs.getattr(&ctx(), old.node, None).is_err(),
        "the old node reached a new file"
    );
    // A second lookup finds the new node again; each node goes with its own forgets.
    assert_eq!(
        fs.lookup(&ctx(), ROOT_NODE, &c(&name)).expect("again").node,
        new.node
    );
    fs.forget(old.node, 1);
    fs.forget(new.node, 1);
    assert!(fs.getattr(&ctx(), new.node, None).is_ok());
    fs.forget(new.node, 1);
    assert_eq!(fs.node_count(), 1);
}

/// `prefer` on a filesystem without file handles: the start only warns, and every node has a
/// descriptor, as with `never` (where `mandatory` refuses to start).
#[test]
fn preferred_file_handles_fall_back_on_a_filesystem_without_them() {
    let fs = FileSystem::new(
        Path::new("/proc"),
        Config {
            file_handles: FileHandles::Prefer,
            ..Config::default()
        },
    )
    .expect("prefer starts on /proc");
    assert!(!fs.uses_file_handles());
    let e = fs.lookup(&ctx(), ROOT_NODE, &c("uptime")).expect("uptime");
    assert!(!by_handle(&fs, e.node));
    let open = fs.open(&ctx(), e.node, libc::O_RDONLY).expect("open");
    let mut buf = [0u8; 64];
    assert!(fs.read(open.fh, 0, &mut buf).expect("read") > 0);
    fs.release(open.fh).expect("release");
}

/// Without CAP_DAC_READ_SEARCH open_by_handle_at is refused: `prefer` falls back to
/// descriptors (once, for the whole share), `mandatory` fails. In a thread of its own, whose
/// effective capabilities alone lose it.
#[test]
fn preferred_file_handles_fall_back_without_the_capability() {
    use rustix::thread::{capabilities, set_capabilities, CapabilitySet};
    if !rustix::process::geteuid().is_root() {
        eprintln!("skipped: not root");
        return;
    }
    let t = Tmp::new();
    std::fs::write(t.share().join("f"), b"x").expect("f");
    std::thread::scope(|s| {
        s.spawn(|| {
            let mut caps = capabilities(None).expect("capabilities");
            caps.effective -= CapabilitySet::DAC_READ_SEARCH;
            set_capabilities(None, caps).expect("drop CAP_DAC_READ_SEARCH");
            let fs = core_with(&t, FileHandles::Prefer);
            assert!(!fs.uses_file_handles());
            let e = fs.lookup(&ctx(), ROOT_NODE, &c("f")).expect("f");
            assert!(!by_handle(&fs, e.node));
            assert_eq!(e.node, ino(&t.share().join("f")));
            assert_eq!(fs.getattr(&ctx(), e.node, None).expect("getattr").size, 1);
            let err = FileSystem::new(
                &t.share(),
                Config {
                    file_handles: FileHandles::Mandatory,
                    ..Config::default()
                },
            )
            .expect_err("mandatory without the capability");
            assert!(matches!(err, FsError::FileHandlesRefused(_)), "{err}");
        })
        .join()
        .expect("thread");
    });
}

/// `prefer` on a mount found without usable file handles gives its lookups descriptors; a
/// node that had a handle keeps its id and lookup count when a lookup that made no handle
/// gives it a descriptor.
#[test]
fn a_preferred_node_without_a_handle_takes_a_descriptor_and_keeps_its_id() {
    let t = Tmp::new();
    let share = t.share();
    std::fs::write(share.join("a"), b"a").expect("a");
    std::fs::write(share.join("b"), b"bb").expect("b");
    let fs = core_with(&t, FileHandles::Prefer);
    let a = fs.lookup(&ctx(), ROOT_NODE, &c("a")).expect("a");
    assert!(by_handle(&fs, a.node));
    // As a failed handle would have marked the share's mount.
    let root = fs.inodes.get(ROOT_NODE).expect("root").key;
    fs.handleless_mounts
        .lock()
        .expect("lock")
        .insert((root.mnt_id, root.dev));
    let b = fs.lookup(&ctx(), ROOT_NODE, &c("b")).expect("b");
    assert!(!by_handle(&fs, b.node));
    assert_eq!(b.node, ino(&share.join("b")));
    let again = fs.lookup(&ctx(), ROOT_NODE, &c("a")).expect("a again");
    assert_eq!(again.node, a.node);
    assert!(!by_handle(&fs, a.node));
    assert_eq!(fs.getattr(&ctx(), a.node, None).expect("getattr").size, 1);
    // Two lookups, one node: it goes with the second forget.
    fs.forget(a.node, 1);
    assert!(fs.getattr(&ctx(), a.node, None).is_ok());
    fs.forget(a.node, 1);
    fs.forget(b.node, 1);
    assert_eq!(fs.node_count(), 1);
}

/// The set-id bits a write or truncate by a caller without CAP_FSETID clears, as the host
/// kernel's setattr_should_drop_suidgid: set-user-id always, set-group-id with group execute
/// or for a caller outside the group; nothing on anything but a regular file.
#[test]
fn suidgid_to_kill_follows_the_host_rule() {
    use super::file::suidgid_to_kill;
    let reg = libc::S_IFREG;
    let both = libc::S_ISUID | libc::S_ISGID;
    // (mode, the file's group, the caller's group) → bits cleared.
    let cases = [
        (reg | 0o4777, 0, 0, libc::S_ISUID),
        (reg | 0o2666, 0, 65534, libc::S_ISGID),
        (reg | 0o2666, 7, 7, 0),
        (reg | 0o2676, 7, 7, libc::S_ISGID),
        (reg | 0o6777, 7, 7, both),
        (reg | 0o0777, 0, 65534, 0),
        (libc::S_IFDIR | 0o6777, 0, 65534, 0),
    ];
    for (mode, file_gid, caller_gid, kill) in cases {
        assert_eq!(
            suidgid_to_kill(mode, file_gid, caller_gid),
            kill,
            "{mode:o}, group {file_gid}, caller {caller_gid}"
        );
    }
}

/// `kill_suidgid` (a handle) and `kill_suidgid_node` clear what the rule says, leave the
/// rest of the mode alone, and do nothing to a file without the bits.
#[test]
fn kill_suidgid_clears_the_bits_of_a_handle_or_a_node() {
    let t = Tmp::new();
    let fs = core(&t, false);
    let nobody = Context {
        uid: 65534,
        gid: 65534,
        pid: 0,
        umask: 0,
    };
    let mode = |name: &str| {
        use std::os::unix::fs::PermissionsExt;
        std::fs::metadata(t.share().join(name))
            .expect("stat")
            .permissions()
            .mode()
            & 0o7777
    };
    for (name, m) in [("h", 0o6755), ("n", 0o2676), ("plain", 0o644)] {
        use std::os::unix::fs::PermissionsExt;
        std::fs::write(t.share().join(name), b"x").expect("seed");
        std::fs::set_permissions(t.share().join(name), std::fs::Permissions::from_mode(m))
            .expect("chmod");
    }
    let h = fs.lookup(&ctx(), ROOT_NODE, &c("h")).expect("h");
    let open = fs.open(&ctx(), h.node, libc::O_RDONLY).expect("open");
    fs.kill_suidgid(&nobody, open.fh).expect("kill");
    let n = fs.lookup(&ctx(), ROOT_NODE, &c("n")).expect("n");
    fs.kill_suidgid_node(&nobody, n.node).expect("kill");
    let p = fs.lookup(&ctx(), ROOT_NODE, &c("plain")).expect("plain");
    fs.kill_suidgid_node(&nobody, p.node).expect("kill");
    assert_eq!((mode("h"), mode("n"), mode("plain")), (0o755, 0o676, 0o644));
}

/// With nodes held by file handle, a caller other than root creates, links and checks access
/// in a directory it may write (pjdfstest's `*::uid_gid_eq_euid_egid` in a real guest found
/// EPERM): the parent's descriptor is opened from its handle before the switch to the
/// caller's fsuid, which drops CAP_DAC_READ_SEARCH, the capability open_by_handle_at needs.
#[test]
fn file_handle_nodes_take_creates_by_other_users() {
    for mode in [FileHandles::Mandatory, FileHandles::Prefer] {
        let t = Tmp::new();
        let share = t.share();
        std::fs::create_dir(share.join("w")).expect("w");
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(share.join("w"), std::fs::Permissions::from_mode(0o777))
            .expect("chmod");
        let fs = core_with(&t, mode);
        let w = fs.lookup(&ctx(), ROOT_NODE, &c("w")).expect("w");
        assert!(by_handle(&fs, w.node), "{mode:?}");
        let user = Context {
            uid: 65534,
            gid: 65534,
            pid: 0,
            umask: 0o022,
        };
        let dir = fs.mkdir(&user, w.node, &c("dir"), 0o755).expect("mkdir");
        let fifo = fs
            .mknod(&user, w.node, &c("fifo"), libc::S_IFIFO | 0o644, 0)
            .expect("mknod");
        let link = fs
            .symlink(&user, w.node, &c("sl"), &c("dir"))
            .expect("symlink");
        let (file, open) = fs
            .create(&user, w.node, &c("file"), 0o644, libc::O_RDWR)
            .expect("create");
        fs.release(open.fh).expect("release");
        for e in [&dir, &fifo, &link, &file] {
            assert_eq!((e.attr.uid, e.attr.gid), (65534, 65534), "{mode:?}");
        }
        fs.access(&user, file.node, libc::R_OK | libc::W_OK)
            .expect("access as the owner");
    }
}
