//! Each FUSE operation through the frontend against every backend, checked against the
//! backing directory.

mod common;

use std::collections::BTreeSet;
use std::ffi::CString;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::Path;

use common::{create_empty, for_each_backend};
use frontend::fuse::Xattr;
use protocol::abi::*;
use protocol::Opcode;

const ENOENT: i32 = libc::ENOENT;
const REG: u32 = libc::S_IFREG;

fn host_lseek(path: &Path, offset: u64, whence: i32) -> u64 {
    let f = std::fs::File::open(path).unwrap();
    use std::os::fd::AsRawFd;
    // SAFETY: the fd is open for the duration of the call; lseek has no memory effects.
    let r = unsafe { libc::lseek(f.as_raw_fd(), offset as libc::off_t, whence) };
    assert!(r >= 0, "host lseek: {}", std::io::Error::last_os_error());
    r as u64
}

fn host_xattr(path: &Path, name: &str) -> Option<Vec<u8>> {
    let p = CString::new(path.as_os_str().as_bytes()).unwrap();
    let n = CString::new(name).unwrap();
    let mut buf = vec![0u8; 256];
    // SAFETY: both strings are NUL-terminated and live across the call; the buffer has
    // the length passed.
    let r = unsafe { libc::getxattr(p.as_ptr(), n.as_ptr(), buf.as_mut_ptr().cast(), buf.len()) };
    (r >= 0).then(|| {
        buf.truncate(r as usize);
        buf
    })
}

#[test]
fn init_and_root() {
    for_each_backend("init", |h| {
        let n = h.fs.driver().negotiated();
        eprintln!(
            "{}: features offered {:#x}, acked {:#x}; protocol features offered {:?}, acked {:?}",
            h.name, n.offered_features, n.acked_features, n.offered_protocol, n.acked_protocol
        );
        assert_eq!(n.acked_features & n.offered_features, n.acked_features);
        use frontend::driver::{F_EVENT_IDX, F_INDIRECT_DESC};
        let d = h.fs.driver();
        assert_eq!(d.uses_indirect(), n.acked_features & F_INDIRECT_DESC != 0);
        assert_eq!(d.uses_event_idx(), n.acked_features & F_EVENT_IDX != 0);
        let init = *h.fs.init_out().unwrap();
        assert_eq!(init.major, 7);
        assert!(init.minor >= 31, "minor {}", init.minor);
        let root = h.fs.getattr(FUSE_ROOT_ID, None).unwrap();
        let host = std::fs::metadata(&h.dir).unwrap();
        // virtiofsd reports the host's st_ino; zerodax's inode numbers are its node ids
        // (docs/mount.md, *Inode numbers*), the root's being 1, which is also the number a
        // Linux client shows for the root of any FUSE mount.
        let want = if h.name == "zerodax" {
            FUSE_ROOT_ID
        } else {
            host.ino()
        };
        assert_eq!(root.attr.ino, want);
        assert_eq!(root.attr.mode, host.mode());
        assert_eq!(root.attr.nlink as u64, host.nlink());

        let st = h.fs.statfs(FUSE_ROOT_ID).unwrap();
        // SAFETY: statvfs is plain data; the path is NUL-terminated and outlives the call.
        let mut hs: libc::statvfs = unsafe { std::mem::zeroed() };
        let p = CString::new(h.dir.as_os_str().as_bytes()).unwrap();
        // SAFETY: as above; `hs` is a valid out-pointer.
        assert_eq!(unsafe { libc::statvfs(p.as_ptr(), &mut hs) }, 0);
        assert_eq!(st.blocks, hs.f_blocks);
        assert_eq!(st.files, hs.f_files);
        assert_eq!(u64::from(st.namelen), hs.f_namemax);
    });
}

#[test]
fn file_lifecycle() {
    for_each_backend("file", |h| {
        let fs = &mut h.fs;
        let (e, o) = fs
            .create(FUSE_ROOT_ID, "a.txt", libc::O_RDWR as u32, REG | 0o644, 0)
            .unwrap();
        assert_ne!(e.nodeid, 0);
        assert_eq!(e.attr.mode, REG | 0o644);
        assert_eq!(fs.write(e.nodeid, o.fh, 0, b"hello world").unwrap(), 11);
        assert_eq!(fs.read(e.nodeid, o.fh, 0, 100).unwrap(), b"hello world");
        assert_eq!(fs.read(e.nodeid, o.fh, 6, 3).unwrap(), b"wor");
        assert_eq!(fs.read(e.nodeid, o.fh, 50, 10).unwrap(), b"");
        fs.flush(e.nodeid, o.fh, 0).unwrap();
        fs.fsync(e.nodeid, o.fh, false).unwrap();
        fs.fsync(e.nodeid, o.fh, true).unwrap();
        let host = h.dir.join("a.txt");
        assert_eq!(std::fs::read(&host).unwrap(), b"hello world");

        let l = fs.lookup(FUSE_ROOT_ID, "a.txt").unwrap();
        assert_eq!(l.nodeid, e.nodeid);
        assert_eq!(l.attr.size, 11);
        assert_eq!(l.attr.ino, std::fs::metadata(&host).unwrap().ino());
        assert_eq!(fs.getattr(e.nodeid, Some(o.fh)).unwrap().attr.size, 11);

        let mut sa = FuseSetattrIn {
            valid: FATTR_SIZE,
            size: 5,
            ..Default::default()
        };
        assert_eq!(fs.setattr(e.nodeid, &sa).unwrap().attr.size, 5);
        assert_eq!(std::fs::read(&host).unwrap(), b"hello");
        sa = FuseSetattrIn {
            valid: FATTR_MODE,
            mode: REG | 0o600,
            ..Default::default()
        };
        assert_eq!(fs.setattr(e.nodeid, &sa).unwrap().attr.mode, REG | 0o600);
        assert_eq!(std::fs::metadata(&host).unwrap().mode(), REG | 0o600);
        sa = FuseSetattrIn {
            valid: FATTR_MTIME | FATTR_ATIME,
            mtime: 1_000_000_000,
            atime: 1_000_000_001,
            ..Default::default()
        };
        let a = fs.setattr(e.nodeid, &sa).unwrap().attr;
        assert_eq!((a.mtime, a.atime), (1_000_000_000, 1_000_000_001));
        assert_eq!(std::fs::metadata(&host).unwrap().mtime(), 1_000_000_000);
        fs.release(e.nodeid, o.fh, libc::O_RDWR as u32).unwrap();

        let o = fs.open(e.nodeid, libc::O_RDONLY as u32).unwrap();
        assert_eq!(fs.read(e.nodeid, o.fh, 0, 4096).unwrap(), b"hello");
        fs.release(e.nodeid, o.fh, 0).unwrap();
        let r = fs.access(e.nodeid, libc::R_OK as u32);
        h.ok_or_gap(Opcode::Access, r);
        let fs = &mut h.fs;

        fs.unlink(FUSE_ROOT_ID, "a.txt").unwrap();
        assert!(!host.exists());
        assert_eq!(
            fs.lookup(FUSE_ROOT_ID, "a.txt").unwrap_err().errno(),
            Some(ENOENT)
        );
        // An error reply, not a crash; QEMU 7.2's virtiofsd says EIO rather than ENOENT.
        let again = fs.unlink(FUSE_ROOT_ID, "a.txt").unwrap_err().errno();
        assert!(matches!(again, Some(ENOENT | libc::EIO)), "{again:?}");
        fs.forget(e.nodeid, 2).unwrap();
        h.assert_serving("FORGET");
    });
}

#[test]
fn directories_links_and_special_files() {
    for_each_backend("dirs", |h| {
        let fs = &mut h.fs;
        let d = fs.mkdir(FUSE_ROOT_ID, "d", 0o755, 0).unwrap();
        assert_eq!(d.attr.mode & libc::S_IFMT, libc::S_IFDIR);
        assert!(h.dir.join("d").is_dir());
        let sub = fs.mkdir(d.nodeid, "sub", 0o700, 0).unwrap();
        for name in ["f1", "f2"] {
            let (e, o) = fs
                .create(d.nodeid, name, libc::O_WRONLY as u32, REG | 0o644, 0)
                .unwrap();
            fs.write(e.nodeid, o.fh, 0, name.as_bytes()).unwrap();
            fs.release(e.nodeid, o.fh, 0).unwrap();
        }

        let host_names: BTreeSet<Vec<u8>> = std::fs::read_dir(h.dir.join("d"))
            .unwrap()
            .map(|e| e.unwrap().file_name().as_bytes().to_vec())
            .collect();
        let dh = fs.opendir(d.nodeid, libc::O_RDONLY as u32).unwrap();
        let all = fs.readdir(d.nodeid, dh.fh, 0, 4096).unwrap();
        let names: BTreeSet<Vec<u8>> = all
            .iter()
            .map(|e| e.name.clone())
            .filter(|n| n != b"." && n != b"..")
            .collect();
        assert_eq!(names, host_names);
        for e in all.iter().filter(|e| e.name == b"f1") {
            assert_eq!(e.typ, u32::from(libc::DT_REG));
            assert_eq!(e.ino, std::fs::metadata(h.dir.join("d/f1")).unwrap().ino());
        }
        // Small buffers: resuming from each record's offset visits every entry once.
        let mut off = 0;
        let mut paged = Vec::new();
        loop {
            let page = fs.readdir(d.nodeid, dh.fh, off, 64).unwrap();
            let Some(last) = page.last() else { break };
            off = last.off;
            paged.extend(page.into_iter().map(|e| e.name));
            assert!(paged.len() <= all.len(), "readdir offsets loop");
        }
        assert_eq!(paged.len(), all.len());

        let plus = fs.readdirplus(d.nodeid, dh.fh, 0, 8192).unwrap();
        let mut refs = Vec::new();
        for p in &plus {
            if p.dirent.name == b"." || p.dirent.name == b".." {
                continue;
            }
            let name = std::str::from_utf8(&p.dirent.name).unwrap();
            let m = std::fs::symlink_metadata(h.dir.join("d").join(name)).unwrap();
            assert_ne!(p.entry.nodeid, 0, "{name}");
            assert_eq!(p.entry.attr.ino, m.ino(), "{name}");
            assert_eq!(p.entry.attr.size, m.size(), "{name}");
            refs.push((p.entry.nodeid, 1));
        }
        assert_eq!(refs.len(), host_names.len());
        fs.batch_forget(&refs).unwrap();
        fs.fsyncdir(d.nodeid, dh.fh, false).unwrap();
        fs.releasedir(d.nodeid, dh.fh).unwrap();

        fs.rename(d.nodeid, "f1", d.nodeid, "f3").unwrap();
        assert!(h.dir.join("d/f3").is_file() && !h.dir.join("d/f1").exists());
        let r = fs.rename2(d.nodeid, "f3", d.nodeid, "f2", libc::RENAME_NOREPLACE);
        assert_eq!(r.unwrap_err().errno(), Some(libc::EEXIST));
        fs.rename2(d.nodeid, "f2", d.nodeid, "sub", libc::RENAME_EXCHANGE)
            .unwrap();
        assert!(h.dir.join("d/f2").is_dir() && h.dir.join("d/sub").is_file());
        fs.rename2(FUSE_ROOT_ID, "d", FUSE_ROOT_ID, "e", 0).unwrap();
        assert!(h.dir.join("e/f3").is_file());

        let f3 = fs.lookup(d.nodeid, "f3").unwrap();
        let l = fs.link(f3.nodeid, sub.nodeid, "hard").unwrap();
        assert_eq!(l.nodeid, f3.nodeid);
        assert_eq!(l.attr.nlink, 2);
        assert_eq!(std::fs::metadata(h.dir.join("e/f3")).unwrap().nlink(), 2);
        assert_eq!(std::fs::read(h.dir.join("e/f2/hard")).unwrap(), b"f1");

        let s = fs.symlink(d.nodeid, "ln", "some/where").unwrap();
        assert_eq!(s.attr.mode & libc::S_IFMT, libc::S_IFLNK);
        assert_eq!(fs.readlink(s.nodeid).unwrap(), b"some/where");
        assert_eq!(
            std::fs::read_link(h.dir.join("e/ln")).unwrap(),
            Path::new("some/where")
        );

        let p = fs
            .mknod(d.nodeid, "fifo", libc::S_IFIFO | 0o644, 0, 0)
            .unwrap();
        assert_eq!(p.attr.mode & libc::S_IFMT, libc::S_IFIFO);
        assert!(std::fs::metadata(h.dir.join("e/fifo"))
            .unwrap()
            .file_type()
            .is_fifo());
        let r = fs.access(d.nodeid, (libc::R_OK | libc::W_OK | libc::X_OK) as u32);
        h.ok_or_gap(Opcode::Access, r);
        let fs = &mut h.fs;

        assert_eq!(
            fs.rmdir(FUSE_ROOT_ID, "e").unwrap_err().errno(),
            Some(libc::ENOTEMPTY)
        );
        fs.unlink(sub.nodeid, "hard").unwrap();
        fs.rmdir(d.nodeid, "f2").unwrap();
        for n in ["f3", "sub", "ln", "fifo"] {
            fs.unlink(d.nodeid, n).unwrap();
        }
        fs.rmdir(FUSE_ROOT_ID, "e").unwrap();
        assert!(!h.dir.join("e").exists());
    });
}

#[test]
fn xattrs() {
    for_each_backend("xattr", |h| {
        let fs = &mut h.fs;
        let e = create_empty(fs, FUSE_ROOT_ID, "x");
        fs.setxattr(e.nodeid, "user.zd", b"value-1", 0).unwrap();
        assert_eq!(host_xattr(&h.dir.join("x"), "user.zd").unwrap(), b"value-1");
        assert_eq!(fs.getxattr(e.nodeid, "user.zd", 0).unwrap(), Xattr::Size(7));
        assert_eq!(
            fs.getxattr(e.nodeid, "user.zd", 64).unwrap(),
            Xattr::Data(b"value-1".to_vec())
        );
        assert_eq!(
            fs.getxattr(e.nodeid, "user.zd", 3).unwrap_err().errno(),
            Some(libc::ERANGE)
        );
        let r = fs.setxattr(e.nodeid, "user.zd", b"v2", libc::XATTR_CREATE as u32);
        assert_eq!(r.unwrap_err().errno(), Some(libc::EEXIST));
        let Xattr::Size(n) = fs.listxattr(e.nodeid, 0).unwrap() else {
            panic!("size expected")
        };
        let Xattr::Data(list) = fs.listxattr(e.nodeid, n).unwrap() else {
            panic!("data expected")
        };
        assert!(list.split(|&b| b == 0).any(|n| n == b"user.zd"), "{list:?}");
        fs.removexattr(e.nodeid, "user.zd").unwrap();
        assert_eq!(host_xattr(&h.dir.join("x"), "user.zd"), None);
        assert_eq!(
            fs.getxattr(e.nodeid, "user.zd", 64).unwrap_err().errno(),
            Some(libc::ENODATA)
        );
    });
}

#[test]
fn sparse_file_holes_seek_and_fallocate() {
    const FAR: u64 = 100 << 20;
    for_each_backend("sparse", |h| {
        let fs = &mut h.fs;
        let (e, o) = fs
            .create(FUSE_ROOT_ID, "sparse", libc::O_RDWR as u32, REG | 0o644, 0)
            .unwrap();
        let (n, fh) = (e.nodeid, o.fh);
        assert_eq!(fs.write(n, fh, 0, b"head").unwrap(), 4);
        assert_eq!(fs.write(n, fh, FAR, b"tail").unwrap(), 4);
        fs.fsync(n, fh, false).unwrap();
        let host = h.dir.join("sparse");
        let m = std::fs::metadata(&host).unwrap();
        assert_eq!(m.len(), FAR + 4);
        assert_eq!(fs.getattr(n, None).unwrap().attr.size, FAR + 4);
        assert!(
            m.blocks() < 1024,
            "backing file is not sparse: {} blocks",
            m.blocks()
        );

        let (seek_data, seek_hole) = (libc::SEEK_DATA as u32, libc::SEEK_HOLE as u32);
        for (off, whence) in [
            (0, seek_data),
            (0, seek_hole),
            (8192, seek_data),
            (FAR - 1, seek_hole),
            (FAR + 2, seek_data),
            (FAR + 2, seek_hole),
        ] {
            let got = fs.lseek(n, fh, off, whence).unwrap();
            assert_eq!(
                got,
                host_lseek(&host, off, whence as i32),
                "lseek({off}, {whence})"
            );
        }
        assert_eq!(fs.lseek(n, fh, 8192, seek_data).unwrap(), FAR);
        assert_eq!(
            fs.lseek(n, fh, FAR + 4, seek_data).unwrap_err().errno(),
            Some(libc::ENXIO)
        );

        let hole = fs.read(n, fh, 50 << 20, 65536).unwrap();
        assert_eq!(hole.len(), 65536);
        assert!(hole.iter().all(|&b| b == 0), "hole reads non-zero bytes");
        let edge = fs.read(n, fh, FAR - 2, 16).unwrap();
        assert_eq!(edge, b"\0\0tail");
        assert_eq!(&fs.read(n, fh, 0, 8).unwrap()[..], b"head\0\0\0\0");

        // Writing into the hole makes data there and nowhere else.
        fs.write(n, fh, 50 << 20, b"mid").unwrap();
        fs.fsync(n, fh, false).unwrap();
        assert_eq!(host_lseek(&host, 8192, libc::SEEK_DATA), 50 << 20);
        assert_eq!(fs.lseek(n, fh, 8192, seek_data).unwrap(), 50 << 20);

        // Punch it out again; the size stays.
        let punch = (libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE) as u32;
        fs.fallocate(n, fh, 50 << 20, 4096, punch).unwrap();
        assert_eq!(fs.read(n, fh, 50 << 20, 3).unwrap(), b"\0\0\0");
        assert_eq!(host_lseek(&host, 8192, libc::SEEK_DATA), FAR);
        assert_eq!(std::fs::metadata(&host).unwrap().len(), FAR + 4);

        // Plain fallocate allocates blocks that read as zeros.
        let before = std::fs::metadata(&host).unwrap().blocks();
        fs.fallocate(n, fh, 10 << 20, 1 << 20, 0).unwrap();
        let after = std::fs::metadata(&host).unwrap().blocks();
        assert!(
            after >= before + 2048,
            "fallocate: {before} -> {after} blocks"
        );
        assert!(fs
            .read(n, fh, 10 << 20, 4096)
            .unwrap()
            .iter()
            .all(|&b| b == 0));
        fs.fallocate(n, fh, FAR + 4, 4096, libc::FALLOC_FL_KEEP_SIZE as u32)
            .unwrap();
        assert_eq!(fs.getattr(n, None).unwrap().attr.size, FAR + 4);
        fs.release(n, fh, 0).unwrap();
    });
}

#[test]
fn copy_file_range_copies_bytes() {
    for_each_backend("copy", |h| {
        let fs = &mut h.fs;
        let data: Vec<u8> = (0..256 * 1024u32).map(|i| (i % 251) as u8).collect();
        let (src, sfh) = fs
            .create(FUSE_ROOT_ID, "src", libc::O_RDWR as u32, REG | 0o644, 0)
            .map(|(e, o)| (e.nodeid, o.fh))
            .unwrap();
        for (i, chunk) in data.chunks(64 * 1024).enumerate() {
            fs.write(src, sfh, (i * 64 * 1024) as u64, chunk).unwrap();
        }
        let (dst, dfh) = fs
            .create(FUSE_ROOT_ID, "dst", libc::O_RDWR as u32, REG | 0o644, 0)
            .map(|(e, o)| (e.nodeid, o.fh))
            .unwrap();
        let arg = FuseCopyFileRangeIn {
            fh_in: sfh,
            off_in: 4096,
            nodeid_out: dst,
            fh_out: dfh,
            off_out: 0,
            len: 100_000,
            flags: 0,
        };
        let copied = fs.copy_file_range(src, &arg).unwrap();
        assert!(copied > 0 && copied <= 100_000);
        let got = std::fs::read(h.dir.join("dst")).unwrap();
        assert_eq!(got, data[4096..4096 + copied as usize]);
        fs.release(src, sfh, 0).unwrap();
        fs.release(dst, dfh, 0).unwrap();
    });
}

#[test]
fn forget_syncfs_and_destroy() {
    for_each_backend("session", |h| {
        let fs = &mut h.fs;
        let e = create_empty(fs, FUSE_ROOT_ID, "f");
        for _ in 0..3 {
            assert_eq!(fs.lookup(FUSE_ROOT_ID, "f").unwrap().nodeid, e.nodeid);
        }
        fs.forget(e.nodeid, 1).unwrap();
        fs.batch_forget(&[(e.nodeid, 2)]).unwrap();
        // One reference (from CREATE) is left: the node still answers.
        assert_eq!(fs.getattr(e.nodeid, None).unwrap().attr.ino, e.attr.ino);
        fs.forget(e.nodeid, 1).unwrap();
        let r = fs.syncfs(FUSE_ROOT_ID);
        h.ok_or_gap(Opcode::Syncfs, r);
        h.assert_serving("SYNCFS");
        let replied = h.fs.destroy().unwrap();
        assert!(
            replied || h.spec.tolerates_gap(Opcode::Destroy),
            "DESTROY got no reply"
        );
    });
}

#[test]
fn pipelined_requests_complete_independently() {
    use frontend::driver::REQUEST_QUEUE;
    use frontend::fuse::FuseClient;
    use protocol::Operation;
    for_each_backend("pipeline", |h| {
        let (e, o) =
            h.fs.create(FUSE_ROOT_ID, "blocks", libc::O_RDWR as u32, REG | 0o644, 0)
                .unwrap();
        for i in 0..16u8 {
            h.fs.write(e.nodeid, o.fh, u64::from(i) * 4096, &[i; 4096])
                .unwrap();
        }
        // Sixteen READs in flight at once, waited for in reverse order.
        let mut tokens = Vec::new();
        for i in 0..16u64 {
            let arg = FuseReadIn {
                fh: o.fh,
                offset: i * 4096,
                size: 4096,
                ..Default::default()
            };
            let (unique, bytes) = h.fs.encode(e.nodeid, Operation::Read(arg));
            let t =
                h.fs.driver()
                    .submit(REQUEST_QUEUE, &[&bytes[..40], &bytes[40..]], &[16, 4096])
                    .unwrap();
            tokens.push((i, unique, t));
        }
        assert_eq!(h.fs.driver().in_flight(REQUEST_QUEUE), 16);
        while let Some((i, unique, t)) = tokens.pop() {
            let c = h.fs.driver().wait(t, common::TIMEOUT).unwrap();
            let r = FuseClient::check_reply(protocol::Opcode::Read, unique, &c).unwrap();
            assert_eq!(r.error, 0);
            assert_eq!(r.body, vec![i as u8; 4096], "block {i}");
        }
        assert_eq!(h.fs.driver().in_flight(REQUEST_QUEUE), 0);
        h.fs.release(e.nodeid, o.fh, 0).unwrap();
    });
}
