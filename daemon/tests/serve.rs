//! `zerodax serve`: the FUSE dispatch of the virtio transport driven with plain byte buffers
//! (every opcode, malformed bytes, INIT, credentials), and the `zerodax serve` binary driven
//! over its vhost-user socket by the built-in frontend on a loop-mounted ext4 image.

mod common;

use std::ffi::CString;
use std::os::fd::AsRawFd;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use common::{zerodax, Ext4};
use frontend::backend::{BackendChild, BackendSpec};
use frontend::driver::{DriverConfig, DriverError, RawAddr, RawChain, RawLink, REQUEST_QUEUE};
use frontend::fuse::{FuseClient, FuseError, DEFAULT_INIT_FLAGS};
use frontend::virtqueue::DESC_F_WRITE;
use protocol::abi::*;
use protocol::reply::parse_reply;
use protocol::request::encode_list;
use protocol::{
    Extensions, ForgetList, Opcode, Operation, ParseOptions, RemoveMappingList, Request,
};
use zerodax::chain::BufChain;
use zerodax::fs::{FileHandles, FileSystem};
use zerodax::server::{CachePolicy, Server, ServerOptions, INIT_FLAGS};

const TIMEOUT: Duration = Duration::from_secs(10);

// ---------------------------------------------------------------------------------------
// Dispatch level: Server over BufChain.
// ---------------------------------------------------------------------------------------

struct Reply {
    used: u32,
    error: i32,
    unique: u64,
    body: Vec<u8>,
}

struct Session {
    server: Server,
    next: u64,
    uid: u32,
    gid: u32,
}

impl Session {
    fn new(dir: &Path, cache: CachePolicy, read_only: bool) -> Self {
        Self::with_xattr(dir, cache, read_only, true)
    }

    fn with_xattr(dir: &Path, cache: CachePolicy, read_only: bool, xattr: bool) -> Self {
        Self::with_fs_config(dir, cache, cache.fs_config(read_only, xattr))
    }

    fn with_fs_config(dir: &Path, cache: CachePolicy, cfg: zerodax::fs::Config) -> Self {
        let fs = FileSystem::new(dir, cfg).unwrap();
        let server = Server::new(
            Arc::new(fs),
            ServerOptions {
                cache,
                ..Default::default()
            },
        );
        Session {
            server,
            next: 1,
            uid: 0,
            gid: 0,
        }
    }

    fn encode(&mut self, nodeid: u64, op: Operation<'_>) -> (u64, Vec<u8>) {
        let unique = self.next;
        self.next += 1;
        let req = Request {
            header: FuseInHeader {
                unique,
                nodeid,
                uid: self.uid,
                gid: self.gid,
                pid: 42,
                ..Default::default()
            },
            op,
            extensions: Extensions::default(),
        };
        (unique, req.to_bytes(ParseOptions::default()))
    }

    /// Serves raw bytes with `room` bytes of reply space; a reply must be well formed.
    fn raw(&self, bytes: Vec<u8>, room: usize) -> Option<Reply> {
        let mut chain = BufChain::new(bytes, room);
        let used = self.server.handle(&mut chain, false);
        if used == 0 {
            return None;
        }
        let reply = &chain.reply[..used as usize];
        let (h, body) = parse_reply(reply).unwrap_or_else(|e| panic!("bad reply: {e}"));
        Some(Reply {
            used,
            error: h.error,
            unique: h.unique,
            body: body.to_vec(),
        })
    }

    fn call_room(&mut self, nodeid: u64, op: Operation<'_>, room: usize) -> Option<Reply> {
        let (unique, bytes) = self.encode(nodeid, op);
        let r = self.raw(bytes, room);
        if let Some(r) = &r {
            assert_eq!(r.unique, unique);
            assert_eq!(r.used as usize, FuseOutHeader::SIZE + r.body.len());
        }
        r
    }

    fn call(&mut self, nodeid: u64, op: Operation<'_>) -> Option<Reply> {
        self.call_room(nodeid, op, (1 << 20) + 4096)
    }

    /// A call that must succeed; returns the body.
    fn ok(&mut self, nodeid: u64, op: Operation<'_>) -> Vec<u8> {
        let opcode = op.opcode();
        let r = self
            .call(nodeid, op)
            .unwrap_or_else(|| panic!("{opcode}: no reply"));
        assert_eq!(r.error, 0, "{opcode}: errno {}", -r.error);
        r.body
    }

    fn errno(&mut self, nodeid: u64, op: Operation<'_>) -> i32 {
        let opcode = op.opcode();
        let r = self
            .call(nodeid, op)
            .unwrap_or_else(|| panic!("{opcode}: no reply"));
        -r.error
    }

    fn init(&mut self) -> FuseInitOut {
        let k = FuseInitIn {
            major: FUSE_KERNEL_VERSION,
            minor: FUSE_KERNEL_MINOR_VERSION,
            max_readahead: 1 << 17,
            flags: u32::MAX,
            flags2: u32::MAX,
            ..Default::default()
        };
        let body = self.ok(0, Operation::Init(k));
        FuseInitOut::decode(&body).unwrap()
    }

    fn entry(&mut self, parent: u64, op: Operation<'_>) -> FuseEntryOut {
        FuseEntryOut::decode(&self.ok(parent, op)).unwrap()
    }

    fn create(&mut self, name: &std::ffi::CStr, flags: u32) -> (u64, u64) {
        let arg = FuseCreateIn {
            flags,
            mode: libc::S_IFREG | 0o644,
            umask: 0,
            open_flags: 0,
        };
        let body = self.ok(FUSE_ROOT_ID, Operation::Create { arg, name });
        let e = FuseEntryOut::decode(&body).unwrap();
        let o = FuseOpenOut::decode(&body[FuseEntryOut::SIZE..]).unwrap();
        (e.nodeid, o.fh)
    }

    fn opendir(&mut self, node: u64) -> u64 {
        let body = self.ok(node, Operation::Opendir(FuseOpenIn::default()));
        FuseOpenOut::decode(&body).unwrap().fh
    }

    fn getattr_root_works(&mut self) {
        let body = self.ok(FUSE_ROOT_ID, Operation::Getattr(FuseGetattrIn::default()));
        let a = FuseAttrOut::decode(&body).unwrap();
        assert_eq!(a.attr.mode & libc::S_IFMT, libc::S_IFDIR);
    }
}

/// What an opcode must produce in the all-opcodes walk.
#[derive(Debug, PartialEq, Eq)]
enum Expect {
    Ok,
    Errno(i32),
    NoReply,
}

/// Resources the all-opcodes walk prepared.
struct Ids {
    file: u64,
    fh: u64,
    other: u64,
    other_fh: u64,
    spare_fh: u64,
    dir_fh: u64,
    spare_dir_fh: u64,
    symlink: u64,
    extra_ref: u64,
}

/// The request for each opcode. An exhaustive match: a new opcode breaks the build here
/// until it is given a request and an expected answer.
fn sample<'a>(
    op: Opcode,
    ids: &Ids,
    forgets: &'a [u8],
    mappings: &'a [u8],
) -> (u64, Operation<'a>, Expect) {
    use Expect::*;
    use Operation as O;
    let root = FUSE_ROOT_ID;
    let read = |fh, size| FuseReadIn {
        fh,
        size,
        ..Default::default()
    };
    let enosys = Errno(libc::ENOSYS);
    match op {
        Opcode::Lookup => (root, O::Lookup { name: c"f" }, Ok),
        Opcode::Forget => (
            ids.extra_ref,
            O::Forget(FuseForgetIn { nlookup: 1 }),
            NoReply,
        ),
        Opcode::Getattr => (ids.file, O::Getattr(FuseGetattrIn::default()), Ok),
        Opcode::Setattr => (
            ids.file,
            O::Setattr(FuseSetattrIn {
                valid: FATTR_MODE,
                mode: libc::S_IFREG | 0o600,
                ..Default::default()
            }),
            Ok,
        ),
        Opcode::Readlink => (ids.symlink, O::Readlink, Ok),
        Opcode::Symlink => (
            root,
            O::Symlink {
                name: c"s2",
                target: c"target",
            },
            Ok,
        ),
        Opcode::Mknod => (
            root,
            O::Mknod {
                arg: FuseMknodIn {
                    mode: libc::S_IFIFO | 0o644,
                    ..Default::default()
                },
                name: c"fifo",
            },
            Ok,
        ),
        Opcode::Mkdir => (
            root,
            O::Mkdir {
                arg: FuseMkdirIn {
                    mode: 0o755,
                    umask: 0,
                },
                name: c"d",
            },
            Ok,
        ),
        Opcode::Unlink => (root, O::Unlink { name: c"u" }, Ok),
        Opcode::Rmdir => (root, O::Rmdir { name: c"rd" }, Ok),
        Opcode::Rename => (
            root,
            O::Rename {
                arg: FuseRenameIn { newdir: root },
                name: c"r1",
                newname: c"r2",
            },
            Ok,
        ),
        Opcode::Link => (
            root,
            O::Link {
                arg: FuseLinkIn {
                    oldnodeid: ids.file,
                },
                name: c"hard",
            },
            Ok,
        ),
        Opcode::Open => (
            ids.file,
            O::Open(FuseOpenIn {
                flags: libc::O_RDONLY as u32,
                open_flags: 0,
            }),
            Ok,
        ),
        Opcode::Read => (ids.file, O::Read(read(ids.fh, 64)), Ok),
        Opcode::Write => (
            ids.file,
            O::Write {
                arg: FuseWriteIn {
                    fh: ids.fh,
                    size: 5,
                    ..Default::default()
                },
                data: b"hello",
            },
            Ok,
        ),
        Opcode::Statfs => (root, O::Statfs, Ok),
        Opcode::Release => (
            ids.file,
            O::Release(FuseReleaseIn {
                fh: ids.spare_fh,
                ..Default::default()
            }),
            Ok,
        ),
        Opcode::Fsync => (
            ids.file,
            O::Fsync(FuseFsyncIn {
                fh: ids.fh,
                ..Default::default()
            }),
            Ok,
        ),
        Opcode::Setxattr => (
            ids.file,
            O::Setxattr {
                arg: FuseSetxattrIn {
                    size: 3,
                    ..Default::default()
                },
                name: c"user.zd",
                value: b"abc",
            },
            Ok,
        ),
        Opcode::Getxattr => (
            ids.file,
            O::Getxattr {
                arg: FuseGetxattrIn {
                    size: 64,
                    padding: 0,
                },
                name: c"user.zd",
            },
            Ok,
        ),
        Opcode::Listxattr => (
            ids.file,
            O::Listxattr(FuseGetxattrIn {
                size: 0,
                padding: 0,
            }),
            Ok,
        ),
        Opcode::Removexattr => (ids.file, O::Removexattr { name: c"user.zd" }, Ok),
        Opcode::Flush => (
            ids.file,
            O::Flush(FuseFlushIn {
                fh: ids.fh,
                ..Default::default()
            }),
            Ok,
        ),
        Opcode::Init => (
            0,
            O::Init(FuseInitIn {
                major: 7,
                minor: 45,
                ..Default::default()
            }),
            Ok,
        ),
        Opcode::Opendir => (root, O::Opendir(FuseOpenIn::default()), Ok),
        Opcode::Readdir => (root, O::Readdir(read(ids.dir_fh, 4096)), Ok),
        Opcode::Releasedir => (
            root,
            O::Releasedir(FuseReleaseIn {
                fh: ids.spare_dir_fh,
                ..Default::default()
            }),
            Ok,
        ),
        Opcode::Fsyncdir => (
            root,
            O::Fsyncdir(FuseFsyncIn {
                fh: ids.dir_fh,
                ..Default::default()
            }),
            Ok,
        ),
        Opcode::Getlk => (ids.file, O::Getlk(FuseLkIn::default()), enosys),
        Opcode::Setlk => (ids.file, O::Setlk(FuseLkIn::default()), enosys),
        Opcode::Setlkw => (ids.file, O::Setlkw(FuseLkIn::default()), enosys),
        Opcode::Access => (
            ids.file,
            O::Access(FuseAccessIn {
                mask: libc::R_OK as u32,
                padding: 0,
            }),
            Ok,
        ),
        Opcode::Create => (
            root,
            O::Create {
                arg: FuseCreateIn {
                    flags: libc::O_RDWR as u32,
                    mode: libc::S_IFREG | 0o644,
                    umask: 0,
                    open_flags: 0,
                },
                name: c"created",
            },
            Ok,
        ),
        Opcode::Interrupt => (0, O::Interrupt(FuseInterruptIn { unique: 1 }), NoReply),
        Opcode::Bmap => (ids.file, O::Bmap(FuseBmapIn::default()), enosys),
        Opcode::Destroy => (0, O::Destroy, Ok),
        Opcode::Ioctl => (
            ids.file,
            O::Ioctl {
                arg: FuseIoctlIn {
                    fh: ids.fh,
                    ..Default::default()
                },
                data: &[],
            },
            enosys,
        ),
        Opcode::Poll => (ids.file, O::Poll(FusePollIn::default()), enosys),
        Opcode::NotifyReply => (
            ids.file,
            O::NotifyReply {
                arg: FuseNotifyRetrieveIn::default(),
                data: &[],
            },
            NoReply,
        ),
        Opcode::BatchForget => (
            0,
            O::BatchForget(ForgetList::from_bytes(forgets).unwrap()),
            NoReply,
        ),
        Opcode::Fallocate => (
            ids.file,
            O::Fallocate(FuseFallocateIn {
                fh: ids.fh,
                offset: 0,
                length: 8192,
                mode: 0,
                padding: 0,
            }),
            Ok,
        ),
        Opcode::Readdirplus => (root, O::Readdirplus(read(ids.dir_fh, 8192)), Ok),
        Opcode::Rename2 => (
            root,
            O::Rename2 {
                arg: FuseRename2In {
                    newdir: root,
                    flags: libc::RENAME_NOREPLACE,
                    padding: 0,
                },
                name: c"r2",
                newname: c"r3",
            },
            Ok,
        ),
        Opcode::Lseek => (
            ids.file,
            O::Lseek(FuseLseekIn {
                fh: ids.fh,
                offset: 0,
                whence: libc::SEEK_DATA as u32,
                padding: 0,
            }),
            Ok,
        ),
        Opcode::CopyFileRange | Opcode::CopyFileRange64 => (
            ids.file,
            O::CopyFileRange(FuseCopyFileRangeIn {
                fh_in: ids.fh,
                off_in: 0,
                nodeid_out: ids.other,
                fh_out: ids.other_fh,
                off_out: 0,
                len: 5,
                flags: 0,
            }),
            Ok,
        ),
        Opcode::SetupMapping => (
            ids.file,
            O::SetupMapping(FuseSetupmappingIn {
                fh: u64::MAX,
                len: 2 << 20,
                flags: FUSE_SETUPMAPPING_FLAG_READ,
                ..Default::default()
            }),
            enosys,
        ),
        Opcode::RemoveMapping => (
            ids.file,
            O::RemoveMapping(RemoveMappingList::from_bytes(mappings).unwrap()),
            enosys,
        ),
        Opcode::Syncfs => (root, O::Syncfs(FuseSyncfsIn::default()), Ok),
        Opcode::Tmpfile => (
            root,
            O::Tmpfile {
                arg: FuseCreateIn {
                    flags: libc::O_RDWR as u32,
                    mode: libc::S_IFREG | 0o600,
                    ..Default::default()
                },
                name: c"tmp",
            },
            Ok,
        ),
        Opcode::Statx => (ids.file, O::Statx(FuseStatxIn::default()), enosys),
        Opcode::CuseInit => (0, O::CuseInit(CuseInitIn::default()), enosys),
    }
}

#[test]
fn every_opcode_gets_a_well_formed_reply_or_none() {
    every_opcode_walk(FileHandles::Never);
}

/// The same walk with every node referenced by file handle (`--inode-file-handles=mandatory`).
#[test]
fn every_opcode_gets_a_well_formed_reply_or_none_by_file_handle() {
    every_opcode_walk(FileHandles::Mandatory);
}

/// And with `--inode-file-handles=prefer` (handles where they can be, on ext4 everywhere).
#[test]
fn every_opcode_gets_a_well_formed_reply_or_none_by_preferred_file_handle() {
    every_opcode_walk(FileHandles::Prefer);
}

fn every_opcode_walk(file_handles: FileHandles) {
    let disk = Ext4::new();
    let dir = disk.mnt.clone();
    for name in ["u", "r1"] {
        std::fs::write(dir.join(name), b"x").unwrap();
    }
    std::fs::create_dir(dir.join("rd")).unwrap();
    std::os::unix::fs::symlink("somewhere", dir.join("ln")).unwrap();
    let cfg = zerodax::fs::Config {
        file_handles,
        ..CachePolicy::Auto.fs_config(false, true)
    };
    let mut s = Session::with_fs_config(&dir, CachePolicy::Auto, cfg);
    s.init();
    let (file, fh) = s.create(c"f", libc::O_RDWR as u32);
    let (other, other_fh) = s.create(c"g", libc::O_RDWR as u32);
    let (_, spare_fh) = s.create(c"h", libc::O_RDWR as u32);
    let symlink = s
        .entry(FUSE_ROOT_ID, Operation::Lookup { name: c"ln" })
        .nodeid;
    let extra_ref = s
        .entry(FUSE_ROOT_ID, Operation::Lookup { name: c"g" })
        .nodeid;
    let ids = Ids {
        file,
        fh,
        other,
        other_fh,
        spare_fh,
        dir_fh: s.opendir(FUSE_ROOT_ID),
        spare_dir_fh: s.opendir(FUSE_ROOT_ID),
        symlink,
        extra_ref,
    };
    let forgets = encode_list(&[FuseForgetOne {
        nodeid: extra_ref,
        nlookup: 0,
    }]);
    let mappings = encode_list(&[FuseRemovemappingOne {
        moffset: 0,
        len: 2 << 20,
    }]);
    let mut seen = Vec::new();
    // INIT and DESTROY end the session (its node ids and handles are forgotten): last.
    let ends_session = |op: &&Opcode| matches!(op, Opcode::Init | Opcode::Destroy);
    let walk = Opcode::ALL
        .iter()
        .filter(|op| !ends_session(op))
        .chain(Opcode::ALL.iter().filter(ends_session));
    for &op in walk {
        let (node, mut operation, expect) = sample(op, &ids, &forgets, &mappings);
        if op == Opcode::CopyFileRange64 {
            // Same arguments as COPY_FILE_RANGE, under the 64-bit opcode.
            if let Operation::CopyFileRange(c) = operation {
                operation = Operation::CopyFileRange64(c);
            }
        }
        assert_eq!(operation.opcode(), op);
        let reply = s.call(node, operation);
        match (&expect, &reply) {
            (Expect::NoReply, None) => {}
            (Expect::Ok, Some(r)) => assert_eq!(r.error, 0, "{op}: errno {}", -r.error),
            (Expect::Errno(e), Some(r)) => assert_eq!(-r.error, *e, "{op}"),
            _ => panic!(
                "{op}: expected {expect:?}, got reply {:?}",
                reply.map(|r| r.error)
            ),
        }
        if op == Opcode::Destroy {
            assert!(!s.server.initialized());
            s.init();
        }
        seen.push(op);
    }
    let mut all = Opcode::ALL.to_vec();
    all.sort_by_key(|op| *op as u32);
    seen.sort_by_key(|op| *op as u32);
    assert_eq!(seen, all);

    // The walk changed the backing directory the way the requests said.
    assert!(dir.join("d").is_dir());
    assert!(std::fs::metadata(dir.join("fifo"))
        .unwrap()
        .file_type()
        .is_fifo());
    assert!(!dir.join("u").exists() && !dir.join("rd").exists());
    assert!(dir.join("r3").is_file() && !dir.join("r1").exists());
    assert_eq!(
        std::fs::metadata(dir.join("hard")).unwrap().ino(),
        std::fs::metadata(dir.join("f")).unwrap().ino()
    );
    assert_eq!(std::fs::read(dir.join("f")).unwrap()[..5], *b"hello");
    assert_eq!(std::fs::read(dir.join("g")).unwrap()[..5], *b"hello");
    assert_eq!(
        std::fs::read_link(dir.join("s2")).unwrap(),
        Path::new("target")
    );
    assert_eq!(
        std::fs::metadata(dir.join("f")).unwrap().mode() & 0o7777,
        0o600
    );
    assert!(dir.join("created").is_file());
}

#[test]
fn requests_before_init_and_init_negotiation() {
    let dir = Ext4::new();
    let mut s = Session::new(&dir.mnt, CachePolicy::Auto, false);
    assert_eq!(
        s.errno(FUSE_ROOT_ID, Operation::Getattr(FuseGetattrIn::default())),
        libc::EIO
    );
    // A FORGET before INIT still gets no reply.
    assert!(s
        .call(5, Operation::Forget(FuseForgetIn { nlookup: 1 }))
        .is_none());

    // A guest too old, and one with a newer major (it gets our major and asks again).
    let old = FuseInitIn {
        major: 7,
        minor: 20,
        ..Default::default()
    };
    assert_eq!(s.errno(0, Operation::Init(old)), libc::EPROTO);
    let newer = FuseInitIn {
        major: 8,
        minor: 0,
        ..Default::default()
    };
    let out = FuseInitOut::decode(&s.ok(0, Operation::Init(newer))).unwrap();
    assert_eq!((out.major, out.flags), (7, 0));
    assert!(!s.server.initialized());

    // max_pages follows the request queue: a 128-entry queue carries 124 data pages.
    s.server.set_queue_size(128);
    let out = s.init();
    assert_eq!(out.major, 7);
    assert_eq!(out.minor, FUSE_KERNEL_MINOR_VERSION);
    assert_eq!(out.max_pages, 124);
    assert_eq!(out.max_write, 124 * 4096);
    assert_eq!(out.max_readahead, 1 << 17);
    assert_eq!(
        out.flags64() & !INIT_FLAGS & !FUSE_INIT_EXT,
        0,
        "{:#x}",
        out.flags64()
    );
    // NO_EXPORT_SUPPORT: zerodax's node ids do not outlive the kernel's inode cache, so
    // it says there are no file handles rather than hand out ones that go ESTALE.
    for flag in [
        FUSE_MAX_PAGES,
        FUSE_DO_READDIRPLUS,
        FUSE_PARALLEL_DIROPS,
        FUSE_NO_EXPORT_SUPPORT,
    ] {
        assert_ne!(out.flags64() & flag, 0, "{flag:#x}");
    }
    for refused in [
        FUSE_WRITEBACK_CACHE,
        FUSE_DONT_MASK,
        FUSE_POSIX_LOCKS,
        FUSE_MAP_ALIGNMENT,
        FUSE_HAS_INODE_DAX,
        FUSE_SETXATTR_EXT,
        FUSE_PASSTHROUGH,
        FUSE_EXPORT_SUPPORT,
    ] {
        assert_eq!(out.flags64() & refused, 0, "{refused:#x}");
    }
    // Flags the guest did not offer are never claimed.
    let modest = FuseInitIn {
        major: 7,
        minor: 31,
        flags: FUSE_ASYNC_READ as u32,
        ..Default::default()
    };
    let out = FuseInitOut::decode(&s.ok(0, Operation::Init(modest))).unwrap();
    assert_eq!((out.minor, out.flags64()), (31, FUSE_ASYNC_READ));
    // A tiny queue still leaves one page.
    s.server.set_queue_size(4);
    assert_eq!(s.init().max_pages, 1);
    s.getattr_root_works();
}

#[test]
fn caller_credentials_and_umask_shape_new_files() {
    let disk = Ext4::new();
    let dir = &disk.mnt;
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o777)).unwrap();
    let mut s = Session::new(dir, CachePolicy::Auto, false);
    s.init();
    s.uid = 1234;
    s.gid = 5678;
    let create = FuseCreateIn {
        flags: libc::O_RDWR as u32,
        mode: libc::S_IFREG | 0o666,
        umask: 0o027,
        open_flags: 0,
    };
    s.ok(
        FUSE_ROOT_ID,
        Operation::Create {
            arg: create,
            name: c"c",
        },
    );
    s.entry(
        FUSE_ROOT_ID,
        Operation::Mkdir {
            arg: FuseMkdirIn {
                mode: 0o777,
                umask: 0o022,
            },
            name: c"d",
        },
    );
    s.entry(
        FUSE_ROOT_ID,
        Operation::Mknod {
            arg: FuseMknodIn {
                mode: libc::S_IFIFO | 0o666,
                rdev: 0,
                umask: 0o077,
                padding: 0,
            },
            name: c"p",
        },
    );
    for (name, mode) in [("c", 0o640), ("d", 0o755), ("p", 0o600)] {
        let m = std::fs::symlink_metadata(dir.join(name)).unwrap();
        assert_eq!(m.mode() & 0o7777, mode, "{name}");
        assert_eq!((m.uid(), m.gid()), (1234, 5678), "{name}");
    }
}

#[test]
fn read_and_write_move_data_between_file_and_buffers() {
    let disk = Ext4::new();
    let mut s = Session::new(&disk.mnt, CachePolicy::Always, false);
    s.init();
    let (node, fh) = s.create(c"data", libc::O_RDWR as u32);
    let data: Vec<u8> = (0..(1u32 << 20) + 333)
        .map(|i| (i * 7 % 251) as u8)
        .collect();
    let w = FuseWriteIn {
        fh,
        offset: 4096,
        size: data.len() as u32,
        ..Default::default()
    };
    let body = s.ok(
        node,
        Operation::Write {
            arg: w,
            data: &data,
        },
    );
    assert_eq!(
        FuseWriteOut::decode(&body).unwrap().size as usize,
        data.len()
    );
    let host = std::fs::read(disk.mnt.join("data")).unwrap();
    assert_eq!(&host[4096..], &data[..]);
    assert!(host[..4096].iter().all(|&b| b == 0));

    let read = |size, offset| FuseReadIn {
        fh,
        offset,
        size,
        ..Default::default()
    };
    assert_eq!(s.ok(node, Operation::Read(read(8192, 4096))), data[..8192]);
    // Reply room smaller than asked: the read is cut to the room, never overflows it.
    let r = s
        .call_room(node, Operation::Read(read(65536, 4096)), 16 + 1000)
        .unwrap();
    assert_eq!((r.error, r.body.len()), (0, 1000));
    assert_eq!(r.body, data[..1000]);
    // At and past the end of file: an empty read.
    let end = 4096 + data.len() as u64;
    assert!(s.ok(node, Operation::Read(read(4096, end))).is_empty());
    assert!(s
        .ok(node, Operation::Read(read(4096, end + (1 << 30))))
        .is_empty());
    // No room even for the header: no reply at all.
    assert!(s
        .call_room(node, Operation::Read(read(4096, 0)), 8)
        .is_none());
    // An unknown handle.
    let bad = FuseReadIn {
        fh: 999_999,
        ..read(10, 0)
    };
    assert_eq!(s.errno(node, Operation::Read(bad)), libc::EBADF);

    // Cache policy: ALWAYS keeps the page cache across opens.
    let o = s.ok(node, Operation::Open(FuseOpenIn::default()));
    assert_eq!(
        FuseOpenOut::decode(&o).unwrap().open_flags,
        FOPEN_KEEP_CACHE
    );

    // A read-only share refuses writes before touching the file.
    let mut ro = Session::new(&disk.mnt, CachePolicy::Never, true);
    ro.init();
    let e = ro.entry(FUSE_ROOT_ID, Operation::Lookup { name: c"data" });
    assert_eq!((e.entry_valid, e.attr_valid), (0, 0));
    let o = ro.ok(e.nodeid, Operation::Open(FuseOpenIn::default()));
    let o = FuseOpenOut::decode(&o).unwrap();
    assert_eq!(o.open_flags, FOPEN_DIRECT_IO);
    let w = FuseWriteIn {
        fh: o.fh,
        size: 3,
        ..Default::default()
    };
    assert_eq!(
        ro.errno(
            e.nodeid,
            Operation::Write {
                arg: w,
                data: b"xyz"
            }
        ),
        libc::EROFS
    );
    assert_eq!(
        std::fs::read(disk.mnt.join("data")).unwrap()[4096..4099],
        data[..3]
    );
}

/// A small deterministic generator for mutations.
struct XorShift(u64);

impl XorShift {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
}

#[test]
fn malformed_bytes_get_error_replies_and_never_panic() {
    let disk = Ext4::new();
    let mut s = Session::new(&disk.mnt, CachePolicy::Auto, false);
    s.init();
    let (node, fh) = s.create(c"f", libc::O_RDWR as u32);
    let forgets = encode_list(&[FuseForgetOne {
        nodeid: node,
        nlookup: 0,
    }]);
    let samples: Vec<Vec<u8>> = vec![
        s.encode(FUSE_ROOT_ID, Operation::Lookup { name: c"f" }).1,
        s.encode(
            node,
            Operation::Write {
                arg: FuseWriteIn {
                    fh,
                    size: 4,
                    ..Default::default()
                },
                data: b"data",
            },
        )
        .1,
        s.encode(
            node,
            Operation::Setxattr {
                arg: FuseSetxattrIn {
                    size: 2,
                    ..Default::default()
                },
                name: c"user.x",
                value: b"vv",
            },
        )
        .1,
        s.encode(
            FUSE_ROOT_ID,
            Operation::Rename {
                arg: FuseRenameIn { newdir: 1 },
                name: c"nothere",
                newname: c"b",
            },
        )
        .1,
        s.encode(
            0,
            Operation::BatchForget(ForgetList::from_bytes(&forgets).unwrap()),
        )
        .1,
        s.encode(FUSE_ROOT_ID, Operation::Getattr(FuseGetattrIn::default()))
            .1,
    ];
    let room = 4096;
    for bytes in &samples {
        let opcode = Opcode::try_from(u32::from_ne_bytes(bytes[4..8].try_into().unwrap())).unwrap();
        let unique = u64::from_ne_bytes(bytes[8..16].try_into().unwrap());
        // Every truncation: the header's len no longer matches, so an error (or, for the
        // no-reply opcodes and requests without a readable unique, nothing).
        for cut in 0..bytes.len() {
            let r = s.raw(bytes[..cut].to_vec(), room);
            match r {
                None => assert!(cut < 16 || !opcode.expects_reply(), "{opcode} cut {cut}"),
                Some(r) => {
                    assert!(r.error < 0, "{opcode} cut at {cut} accepted");
                    assert_eq!(r.unique, unique);
                }
            }
        }
        // A header len that lies, either way.
        for len in [
            0u32,
            1,
            39,
            40,
            bytes.len() as u32 - 1,
            bytes.len() as u32 + 1,
            u32::MAX,
        ] {
            let mut b = bytes.clone();
            b[0..4].copy_from_slice(&len.to_ne_bytes());
            if let Some(r) = s.raw(b, room) {
                assert!(r.error < 0, "{opcode} len {len} accepted");
            }
        }
        // Unknown and byte-swapped opcodes.
        for code in [0u32, 7, 19, 54, 4095, 26 << 24, u32::MAX] {
            let mut b = bytes.clone();
            b[4..8].copy_from_slice(&code.to_ne_bytes());
            let r = s.raw(b, room).expect("an unknown opcode gets a reply");
            assert!(
                matches!(-r.error, libc::ENOSYS | libc::EPROTO),
                "{code}: {}",
                r.error
            );
        }
        // Extra bytes after the arguments.
        let mut b = bytes.clone();
        b.extend_from_slice(&[0xAA; 9]);
        let len = b.len() as u32;
        b[0..4].copy_from_slice(&len.to_ne_bytes());
        if let Some(r) = s.raw(b, room) {
            assert!(r.error < 0, "{opcode}: trailing bytes accepted");
        }
    }
    // Random corruption of the samples and of random bytes: no panic, only well-formed
    // replies (checked inside `raw`).
    let mut rng = XorShift(0x9E37_79B9_7F4A_7C15);
    for i in 0..20_000 {
        let mut b = samples[i % samples.len()].clone();
        for _ in 0..1 + rng.next() % 4 {
            let at = (rng.next() as usize) % b.len();
            b[at] = rng.next() as u8;
        }
        if rng.next() % 8 == 0 {
            let keep = (rng.next() as usize) % (b.len() + 1);
            b.truncate(keep);
        }
        let room = [0usize, 8, 16, 24, 4096][(rng.next() % 5) as usize];
        let _ = s.raw(b, room);
    }
    for _ in 0..2_000 {
        let n = (rng.next() % 200) as usize;
        let b: Vec<u8> = (0..n).map(|_| rng.next() as u8).collect();
        let _ = s.raw(b, 4096);
    }
    // Still serving, and the mutations never escaped the share.
    let mut s2 = Session::new(&disk.mnt, CachePolicy::Auto, false);
    s2.init();
    s2.getattr_root_works();
    s.getattr_root_works();
}

#[test]
fn reply_room_too_small_gets_an_error_or_nothing() {
    let disk = Ext4::new();
    let mut s = Session::new(&disk.mnt, CachePolicy::Auto, false);
    s.init();
    let getattr = Operation::Getattr(FuseGetattrIn::default());
    // 16 bytes fit an error header but not the attributes.
    let r = s.call_room(FUSE_ROOT_ID, getattr, 16).unwrap();
    assert_eq!(-r.error, libc::EIO);
    assert!(s.call_room(FUSE_ROOT_ID, getattr, 15).is_none());
    assert!(s.call_room(FUSE_ROOT_ID, getattr, 0).is_none());
    // A broken chain (as the transport reports it): EIO when there is room.
    let (unique, bytes) = s.encode(FUSE_ROOT_ID, getattr);
    let mut chain = BufChain::new(bytes, 64);
    let used = s.server.handle(&mut chain, true);
    let (h, _) = parse_reply(&chain.reply[..used as usize]).unwrap();
    assert_eq!((h.unique, h.error), (unique, -libc::EIO));
    s.getattr_root_works();
}

// ---------------------------------------------------------------------------------------
// Socket level: the `zerodax serve` binary and the built-in frontend.
// ---------------------------------------------------------------------------------------

fn spec(extra: &[&str]) -> BackendSpec {
    let mut spec = BackendSpec::zerodax(zerodax());
    spec.args.extend(extra.iter().map(|s| s.to_string()));
    spec
}

/// A `zerodax serve` child on a fresh ext4 image. Drop order: backend (SIGKILL, reap),
/// then the image (unmount).
struct Served {
    backend: BackendChild,
    socket: PathBuf,
    disk: Ext4,
}

impl Served {
    fn start(extra: &[&str]) -> Self {
        Self::start_spec(spec(extra))
    }

    fn start_spec(spec: BackendSpec) -> Self {
        let disk = Ext4::new();
        let socket = disk.root.join("vfs.sock");
        let backend = spec
            .spawn(&socket, &disk.mnt, &disk.root.join("serve.log"), TIMEOUT)
            .unwrap_or_else(|e| panic!("{e}"));
        Served {
            backend,
            socket,
            disk,
        }
    }

    /// As `start`, sharing `share/` of the image, with `secret` beside it: something outside
    /// the share for an escape to reach.
    fn start_beside_a_secret(extra: &[&str]) -> (Self, PathBuf) {
        let disk = Ext4::new();
        let share = disk.mnt.join("share");
        std::fs::create_dir(&share).unwrap();
        std::fs::write(disk.mnt.join("secret"), b"host only").unwrap();
        let socket = disk.root.join("vfs.sock");
        let backend = spec(extra)
            .spawn(&socket, &share, &disk.root.join("serve.log"), TIMEOUT)
            .unwrap_or_else(|e| panic!("{e}"));
        (
            Served {
                backend,
                socket,
                disk,
            },
            share,
        )
    }

    fn connect(&self) -> FuseClient {
        let (fs, init) = self.connect_offering(DEFAULT_INIT_FLAGS);
        init.unwrap_or_else(|e| panic!("INIT: {e}\n{}", self.backend.log_tail(2000)));
        fs
    }

    /// Connects and sends INIT offering `flags`; the INIT answer is the caller's to check.
    fn connect_offering(&self, flags: u64) -> (FuseClient, Result<FuseInitOut, FuseError>) {
        let config = DriverConfig {
            timeout: TIMEOUT,
            ..Default::default()
        };
        let mut fs = FuseClient::connect(&self.socket, &config)
            .unwrap_or_else(|e| panic!("connect: {e}\n{}", self.backend.log_tail(2000)));
        let init = fs.init(flags);
        (fs, init)
    }

    fn expect_exit_0(&mut self) {
        let status = self
            .backend
            .wait_exit(TIMEOUT)
            .unwrap()
            .unwrap_or_else(|| panic!("still running\n{}", self.backend.log_tail(2000)));
        assert!(
            status.success(),
            "{status}\n{}",
            self.backend.log_tail(2000)
        );
    }
}

fn host_lseek(path: &Path, offset: u64, whence: i32) -> u64 {
    let f = std::fs::File::open(path).unwrap();
    // SAFETY: the descriptor is open for the call; lseek touches no memory.
    let r = unsafe { libc::lseek(f.as_raw_fd(), offset as libc::off_t, whence) };
    assert!(r >= 0, "host lseek: {}", std::io::Error::last_os_error());
    r as u64
}

#[test]
fn serve_end_to_end_sparse_file_then_disconnect_exits_0() {
    const FAR: u64 = 64 << 20;
    let mut srv = Served::start(&["--thread-pool-size", "2"]);
    let dir = srv.disk.mnt.clone();
    {
        let mut fs = srv.connect();
        let init = *fs.init_out().unwrap();
        let queue_size = fs.driver().queue_size();
        assert_eq!(
            init.max_pages,
            (queue_size - 4).min(256),
            "max_pages for the queue"
        );
        assert_eq!(init.max_write, u32::from(init.max_pages) * 4096);
        let (e, o) = fs
            .create(
                FUSE_ROOT_ID,
                "sparse",
                libc::O_RDWR as u32,
                libc::S_IFREG | 0o644,
                0,
            )
            .unwrap();
        let (n, fh) = (e.nodeid, o.fh);
        let chunk: Vec<u8> = (0..256 * 1024u32).map(|i| (i % 253) as u8).collect();
        assert_eq!(fs.write(n, fh, 0, &chunk).unwrap() as usize, chunk.len());
        assert_eq!(fs.write(n, fh, FAR, b"tail").unwrap(), 4);
        let host = dir.join("sparse");
        assert_eq!(std::fs::read(&host).unwrap()[..chunk.len()], chunk[..]);
        assert_eq!(fs.read(n, fh, 0, chunk.len() as u32).unwrap(), chunk);
        let l = fs.lookup(FUSE_ROOT_ID, "sparse").unwrap();
        assert_eq!((l.nodeid, l.attr.size), (n, FAR + 4));
        assert_eq!(l.attr.ino, std::fs::metadata(&host).unwrap().ino());

        let (data, hole) = (libc::SEEK_DATA, libc::SEEK_HOLE);
        for (off, whence) in [(0, data), (0, hole), (1 << 20, data), (FAR + 1, hole)] {
            assert_eq!(
                fs.lseek(n, fh, off, whence as u32).unwrap(),
                host_lseek(&host, off, whence),
                "lseek({off}, {whence})"
            );
        }
        assert_eq!(fs.lseek(n, fh, 1 << 20, data as u32).unwrap(), FAR);
        let zeros = fs.read(n, fh, 8 << 20, 65536).unwrap();
        assert!(zeros.len() == 65536 && zeros.iter().all(|&b| b == 0));

        let punch = (libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE) as u32;
        fs.fallocate(n, fh, 0, 128 * 1024, punch).unwrap();
        fs.fsync(n, fh, false).unwrap();
        assert_eq!(host_lseek(&host, 0, libc::SEEK_DATA), 128 * 1024);
        assert_eq!(fs.lseek(n, fh, 0, data as u32).unwrap(), 128 * 1024);
        assert!(fs.read(n, fh, 0, 4096).unwrap().iter().all(|&b| b == 0));
        assert_eq!(std::fs::metadata(&host).unwrap().len(), FAR + 4);

        let dh = fs.opendir(FUSE_ROOT_ID, 0).unwrap();
        let plus = fs.readdirplus(FUSE_ROOT_ID, dh.fh, 0, 8192).unwrap();
        let mine: Vec<_> = plus.iter().filter(|p| p.dirent.name == b"sparse").collect();
        assert_eq!(mine.len(), 1);
        assert_eq!(mine[0].entry.nodeid, n);
        assert_eq!(mine[0].entry.attr.size, FAR + 4);
        fs.releasedir(FUSE_ROOT_ID, dh.fh).unwrap();
        fs.release(n, fh, 0).unwrap();
        // Dropping the client closes the vhost-user socket.
    }
    srv.expect_exit_0();
}

#[test]
fn sigterm_ends_serve_with_exit_0_connected_or_not() {
    // Before any frontend: exits at once and removes its socket.
    let mut idle = Served::start(&[]);
    let pid = idle.backend.pid().unwrap() as libc::pid_t;
    // SAFETY: signalling our own child, which we have not reaped.
    assert_eq!(unsafe { libc::kill(pid, libc::SIGTERM) }, 0);
    idle.expect_exit_0();
    assert!(!idle.socket.exists());

    // With a frontend connected and a request served.
    let mut srv = Served::start(&[]);
    let mut fs = srv.connect();
    fs.getattr(FUSE_ROOT_ID, None).unwrap();
    let pid = srv.backend.pid().unwrap() as libc::pid_t;
    // SAFETY: as above.
    assert_eq!(unsafe { libc::kill(pid, libc::SIGTERM) }, 0);
    srv.expect_exit_0();
    assert!(fs.getattr(FUSE_ROOT_ID, None).is_err());
}

/// The serving child in its PID namespace dies with its supervisor (PDEATHSIG): a harness
/// that SIGKILLs the process it started leaves nothing behind.
#[test]
fn killing_the_supervisor_kills_the_server() {
    let srv = Served::start(&[]);
    let mut fs = srv.connect();
    fs.getattr(FUSE_ROOT_ID, None).unwrap();
    let serving = srv.backend.serving_pid().unwrap();
    let supervisor = srv.backend.pid().unwrap();
    assert_ne!(serving, supervisor);
    // SAFETY: signalling our own child, which we have not reaped.
    assert_eq!(
        unsafe { libc::kill(supervisor as libc::pid_t, libc::SIGKILL) },
        0
    );
    let deadline = std::time::Instant::now() + TIMEOUT;
    while Path::new(&format!("/proc/{serving}")).exists() {
        let gone = std::fs::read_to_string(format!("/proc/{serving}/stat"))
            .map(|s| s.contains(") Z "))
            .unwrap_or(true);
        if gone {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the server outlived its supervisor"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(fs.getattr(FUSE_ROOT_ID, None).is_err());
}

#[test]
fn malformed_chains_over_the_socket_keep_the_daemon_serving() {
    let srv = Served::start(&[]);
    let mut fs = srv.connect();
    let (unique, bytes) = fs.encode(FUSE_ROOT_ID, Operation::Getattr(FuseGetattrIn::default()));
    let (head, args) = bytes.split_at(FuseInHeader::SIZE);
    let cases: Vec<(&str, RawChain, bool)> = vec![
        (
            "well formed",
            RawChain::well_formed(&[head, args], &[16, 104]),
            true,
        ),
        (
            "argument buffer outside guest RAM",
            {
                let mut c = RawChain::well_formed(&[head, args], &[16, 104]);
                c.descs[1].addr = RawAddr::Gpa(1 << 50);
                c
            },
            false,
        ),
        (
            "reply buffers device-readable",
            {
                let mut c = RawChain::well_formed(&[head, args], &[16, 104]);
                c.descs[2].flags &= !DESC_F_WRITE;
                c.descs[3].flags &= !DESC_F_WRITE;
                c
            },
            false,
        ),
        (
            "no reply room",
            RawChain::well_formed(&[head, args], &[]),
            false,
        ),
        (
            "header buffer outside guest RAM",
            {
                let mut c = RawChain::well_formed(&[head, args], &[16, 104]);
                c.descs[0].addr = RawAddr::Gpa(u64::MAX - 8);
                c
            },
            false,
        ),
        (
            "head index past the descriptor table",
            {
                let mut c = RawChain::well_formed(&[head, args], &[16, 104]);
                c.head = RawLink::Index(fs.driver().queue_size() + 3);
                c
            },
            false,
        ),
        (
            "argument length lies",
            {
                let mut c = RawChain::well_formed(&[head, args], &[16, 104]);
                c.descs[1].len = 4;
                c
            },
            false,
        ),
    ];
    for (name, chain, success) in cases {
        // A chain whose head is no descriptor cannot be returned: that is a device error.
        let device_error = name.starts_with("head index");
        let d = fs.driver();
        let token = d.submit_raw(REQUEST_QUEUE, &chain).unwrap();
        let outcome = d.wait(token, TIMEOUT);
        assert_eq!(
            matches!(outcome, Err(DriverError::DeviceError { .. })),
            device_error,
            "{name}: {outcome:?}"
        );
        match outcome {
            Ok(c) if c.used_len == 0 => assert!(!success, "{name}: nothing written"),
            Ok(c) => {
                let (h, _) = parse_reply(&c.written).unwrap_or_else(|e| panic!("{name}: {e}"));
                assert_eq!(h.unique, unique, "{name}");
                assert_eq!(h.error == 0, success, "{name}: error {}", h.error);
            }
            Err(DriverError::DeviceError { .. }) => assert!(!success, "{name}"),
            Err(e) => panic!("{name}: {e}\n{}", srv.backend.log_tail(2000)),
        }
        fs.getattr(FUSE_ROOT_ID, None)
            .unwrap_or_else(|e| panic!("after {name}: {e}"));
    }
}

#[test]
fn sandboxes_serve_files_and_xattrs() {
    for sandbox in ["chroot", "namespace"] {
        let srv = Served::start(&["--sandbox", sandbox, "--cache", "never"]);
        let mut fs = srv.connect();
        let (e, o) = fs
            .create(
                FUSE_ROOT_ID,
                "x",
                libc::O_RDWR as u32,
                libc::S_IFREG | 0o644,
                0,
            )
            .unwrap();
        assert_eq!(o.open_flags, FOPEN_DIRECT_IO);
        assert_eq!(e.entry_valid, 0);
        fs.write(e.nodeid, o.fh, 0, b"confined").unwrap();
        assert_eq!(fs.read(e.nodeid, o.fh, 0, 64).unwrap(), b"confined");
        // Xattrs go through /proc/self/fd, which must survive the confinement.
        fs.setxattr(e.nodeid, "user.k", b"v", 0).unwrap();
        let path = CString::new(srv.disk.mnt.join("x").as_os_str().as_bytes()).unwrap();
        let mut buf = [0u8; 8];
        // SAFETY: NUL-terminated strings and a buffer of the length given, all live for
        // the call.
        let n = unsafe {
            libc::getxattr(
                path.as_ptr(),
                c"user.k".as_ptr(),
                buf.as_mut_ptr().cast(),
                buf.len(),
            )
        };
        assert_eq!(n, 1, "{sandbox}: {}", std::io::Error::last_os_error());
        assert_eq!(&buf[..1], b"v");
        assert_eq!(std::fs::read(srv.disk.mnt.join("x")).unwrap(), b"confined");
        // `..` of the root is the root.
        let up = fs.lookup(FUSE_ROOT_ID, "..").unwrap();
        assert_eq!(up.nodeid, FUSE_ROOT_ID, "{sandbox}");
        // The confinement is real: a chroot into the share, or a mount namespace of its own.
        let pid = srv.backend.serving_pid().unwrap();
        let link = |what: &str| std::fs::read_link(format!("/proc/{what}")).unwrap();
        if sandbox == "chroot" {
            assert_eq!(link(&format!("{pid}/root")), srv.disk.mnt);
        } else {
            assert_ne!(link(&format!("{pid}/ns/mnt")), link("self/ns/mnt"));
        }
    }
}

#[test]
fn listening_fd_and_print_capabilities() {
    let out = Command::new(zerodax())
        .args(["serve", "--print-capabilities"])
        .output()
        .unwrap();
    assert!(out.status.success());
    let caps: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(caps["type"], "fs");

    // --fd: a socket the caller bound and listens on.
    let disk = Ext4::new();
    let socket = disk.root.join("fd.sock");
    let listener = std::os::unix::net::UnixListener::bind(&socket).unwrap();
    let fd = listener.as_raw_fd();
    let mut cmd = Command::new(zerodax());
    cmd.args(["serve", "--fd", &fd.to_string(), "--shared-dir"])
        .arg(&disk.mnt)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    // SAFETY: the closure only calls fcntl, which is async-signal-safe, on a descriptor
    // inherited from the parent.
    unsafe {
        std::os::unix::process::CommandExt::pre_exec(&mut cmd, move || {
            if libc::fcntl(fd, libc::F_SETFD, 0) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let child = cmd.spawn().unwrap();
    struct Reap(std::process::Child);
    impl Drop for Reap {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
    let mut child = Reap(child);
    drop(listener);
    {
        let config = DriverConfig {
            timeout: TIMEOUT,
            ..Default::default()
        };
        let mut fs = FuseClient::connect(&socket, &config).unwrap();
        fs.init(DEFAULT_INIT_FLAGS).unwrap();
        fs.mkdir(FUSE_ROOT_ID, "via-fd", 0o755, 0).unwrap();
    }
    assert!(disk.mnt.join("via-fd").is_dir());
    let deadline = std::time::Instant::now() + TIMEOUT;
    let status = loop {
        if let Some(s) = child.0.try_wait().unwrap() {
            break s;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "serve --fd did not exit"
        );
        std::thread::sleep(Duration::from_millis(20));
    };
    assert!(status.success(), "{status}");
}

#[test]
fn every_request_queue_and_the_hiprio_queue_are_served() {
    let srv = Served::start(&["--request-queues", "3", "--thread-pool-size", "1"]);
    let config = DriverConfig {
        request_queues: 3,
        timeout: TIMEOUT,
        ..Default::default()
    };
    let mut fs = FuseClient::connect(&srv.socket, &config)
        .unwrap_or_else(|e| panic!("connect: {e}\n{}", srv.backend.log_tail(2000)));
    fs.init(DEFAULT_INIT_FLAGS).unwrap();
    std::fs::write(srv.disk.mnt.join("q"), b"queued").unwrap();
    for queue in 1..=3u16 {
        let (unique, bytes) = fs.encode(FUSE_ROOT_ID, Operation::Lookup { name: c"q" });
        let c = fs.send_bytes(queue, &bytes, 16 + 128).unwrap();
        let r = FuseClient::check_reply(Opcode::Lookup, unique, &c).unwrap();
        assert_eq!(r.error, 0, "queue {queue}");
        let e = FuseEntryOut::decode(&r.body).unwrap();
        assert_eq!(e.attr.size, 6, "queue {queue}");
    }
    // FORGET goes to the hiprio queue and comes back with nothing written.
    let (_, bytes) = fs.encode(5, Operation::Forget(FuseForgetIn { nlookup: 3 }));
    let c = fs.send_bytes(0, &bytes, 0).unwrap();
    assert_eq!(c.used_len, 0);
    assert_eq!(fs.lookup(FUSE_ROOT_ID, "q").unwrap().attr.size, 6);
}

/// Over virtio-fs too, one inode number per file: READDIR's d_ino, READDIRPLUS's and
/// LOOKUP's attr.ino and the node id are one number, the host's st_ino on the share's mount.
#[test]
fn inode_numbers_agree_over_virtio() {
    let srv = Served::start(&[]);
    for i in 0..10 {
        std::fs::write(srv.disk.mnt.join(format!("f{i}")), b"x").unwrap();
    }
    let mut fs = srv.connect();
    let dh = fs.opendir(FUSE_ROOT_ID, 0).unwrap();
    let plain = fs.readdir(FUSE_ROOT_ID, dh.fh, 0, 8192).unwrap();
    let plus = fs.readdirplus(FUSE_ROOT_ID, dh.fh, 0, 8192).unwrap();
    let mut checked = 0;
    for d in plain.iter().filter(|d| d.name.starts_with(b"f")) {
        let name = String::from_utf8(d.name.clone()).unwrap();
        let e = fs.lookup(FUSE_ROOT_ID, &name).unwrap();
        let host = std::fs::metadata(srv.disk.mnt.join(&name)).unwrap().ino();
        assert_eq!((d.ino, e.attr.ino, e.nodeid), (host, host, host), "{name}");
        let p = plus.iter().find(|p| p.dirent.name == d.name).unwrap();
        assert_eq!((p.dirent.ino, p.entry.attr.ino), (host, host), "{name}");
        checked += 1;
    }
    assert_eq!(checked, 10);
    // `.` of the share is the root node.
    let dot = plain.iter().find(|d| d.name == b".").unwrap();
    assert_eq!(dot.ino, FUSE_ROOT_ID);
}

/// FUSE_TMPFILE (a guest's O_TMPFILE): an unnamed file, open for writing, that LINK can name
/// later (with O_EXCL it never can), as on the host.
#[test]
fn tmpfile_is_unnamed_until_linked() {
    let disk = Ext4::new();
    let mut s = Session::new(&disk.mnt, CachePolicy::Auto, false);
    s.init();
    let before = std::fs::read_dir(&disk.mnt).unwrap().count();
    let tmpfile = |s: &mut Session, flags: i32| {
        let arg = FuseCreateIn {
            flags: flags as u32,
            mode: libc::S_IFREG | 0o640,
            ..Default::default()
        };
        let body = s.ok(
            FUSE_ROOT_ID,
            Operation::Tmpfile {
                arg,
                name: c"#tmpfile",
            },
        );
        let e = FuseEntryOut::decode(&body).unwrap();
        let o = FuseOpenOut::decode(&body[FuseEntryOut::SIZE..]).unwrap();
        (e, o.fh)
    };
    let (e, fh) = tmpfile(&mut s, libc::O_RDWR);
    assert_eq!(e.attr.mode, libc::S_IFREG | 0o640);
    assert_eq!(e.attr.nlink, 0, "unnamed");
    assert_eq!(std::fs::read_dir(&disk.mnt).unwrap().count(), before);
    let write = FuseWriteIn {
        fh,
        size: 5,
        ..Default::default()
    };
    s.ok(
        e.nodeid,
        Operation::Write {
            arg: write,
            data: b"hello",
        },
    );
    let link = FuseLinkIn {
        oldnodeid: e.nodeid,
    };
    let named = FuseEntryOut::decode(&s.ok(
        FUSE_ROOT_ID,
        Operation::Link {
            arg: link,
            name: c"named",
        },
    ))
    .unwrap();
    assert_eq!(named.nodeid, e.nodeid);
    assert_eq!(std::fs::read(disk.mnt.join("named")).unwrap(), b"hello");

    // O_EXCL: never linkable.
    let (e, _) = tmpfile(&mut s, libc::O_RDWR | libc::O_EXCL);
    let link = FuseLinkIn {
        oldnodeid: e.nodeid,
    };
    assert_eq!(
        s.errno(
            FUSE_ROOT_ID,
            Operation::Link {
                arg: link,
                name: c"never"
            }
        ),
        libc::ENOENT
    );
    assert!(!disk.mnt.join("never").exists());
}

/// Extended attributes are off unless `--xattr` (as in virtiofsd): every xattr request is
/// ENOSYS and nothing reaches the host file.
#[test]
fn xattrs_are_enosys_without_the_flag() {
    let disk = Ext4::new();
    let mut s = Session::with_xattr(&disk.mnt, CachePolicy::Auto, false, false);
    s.init();
    let (file, _) = s.create(c"f", libc::O_RDWR as u32);
    let set = Operation::Setxattr {
        arg: FuseSetxattrIn {
            size: 1,
            ..Default::default()
        },
        name: c"trusted.zd",
        value: b"v",
    };
    assert_eq!(s.errno(file, set), libc::ENOSYS);
    let get = Operation::Getxattr {
        arg: FuseGetxattrIn {
            size: 64,
            ..Default::default()
        },
        name: c"trusted.zd",
    };
    assert_eq!(s.errno(file, get), libc::ENOSYS);
    let list = Operation::Listxattr(FuseGetxattrIn {
        size: 64,
        ..Default::default()
    });
    assert_eq!(s.errno(file, list), libc::ENOSYS);
    assert_eq!(
        s.errno(
            file,
            Operation::Removexattr {
                name: c"trusted.zd"
            }
        ),
        libc::ENOSYS
    );
    let path = std::ffi::CString::new(disk.mnt.join("f").as_os_str().as_encoded_bytes()).unwrap();
    let mut buf = [0u8; 16];
    // SAFETY: NUL-terminated strings and a writable buffer of the length passed.
    let n = unsafe {
        libc::lgetxattr(
            path.as_ptr(),
            c"trusted.zd".as_ptr(),
            buf.as_mut_ptr().cast(),
            16,
        )
    };
    assert_eq!(n, -1, "nothing was set on the host");
}

/// A virtiofsd command line: every virtiofsd 1.14 flag zerodax does not implement is refused
/// at once with a line naming it; the ones it shares, or whose meaning is its own default,
/// start a daemon that serves.
#[test]
fn virtiofsd_flags_are_accepted_with_their_meaning_or_refused_by_name() {
    let refused: &[&[&str]] = &[
        &[
            "--inode-file-handles=mandatory",
            "--modcaps=-dac_read_search",
        ],
        &["--inode-file-handles=sometimes"],
        &["--modcaps=+nonsense"],
        &["--security-label=sometimes"],
        // As root no user namespace is made (virtiofsd refuses them too); malformed maps.
        &["--uid-map", ":0:1000:1:"],
        &["--gid-map", ":0:1000:1:"],
        &["--sandbox", "none", "--uid-map", ":0:1000:1:"],
        &["--uid-map", "0:1000:1"],
        &["--gid-map", ":0:1000:0:"],
        &["--translate-uid", "map:0:1000"],
        &["--translate-gid", "mop:0:1000:1"],
        &["--posix-acl", "--translate-uid", "map:0:1000:1"],
        &["--modcaps=sys_admin"],
        &["-o", "cache=auto,flock"],
        &["-o", "cache=sometimes"],
        &["--migration-mode", "find-paths"],
    ];
    let dir = Ext4::new();
    for flags in refused {
        // A flag accepted by mistake would leave the daemon waiting for a frontend: give it
        // TIMEOUT to refuse, then kill it and fail.
        let mut child = std::process::Command::new(zerodax())
            .arg("serve")
            .arg("--socket-path")
            .arg(dir.root.join("refused.sock"))
            .arg("--shared-dir")
            .arg(&dir.mnt)
            .args(*flags)
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let deadline = std::time::Instant::now() + TIMEOUT;
        while child.try_wait().unwrap().is_none() {
            if std::time::Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                panic!("{flags:?} was accepted: the daemon is serving");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let out = child.wait_with_output().unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        // `-o` options are refused under their long flag's name, or as `-o NAME`.
        let name = match flags[0] {
            "-o" => "-",
            flag => flag.split('=').next().unwrap(),
        };
        // One line naming the flag; or clap's usage error (exit 2) for a malformed value,
        // whose first line names it.
        let one_line = err.lines().count() == 1 || out.status.code() == Some(2);
        assert!(
            !out.status.success() && one_line && err.lines().next().unwrap_or("").contains(name),
            "{flags:?}: {}: {err}",
            out.status
        );
    }
    let accepted: &[&[&str]] = &[
        &["--readonly"],
        &["--inode-file-handles=mandatory"],
        &["--inode-file-handles=fallback"],
        &["-f", "-d"],
        &["--no-announce-submounts", "--no-killpriv-v2"],
        &["--killpriv-v2"],
        &["-o", "announce_submounts,killpriv_v2"],
        &[
            "--inode-file-handles=prefer",
            "--seccomp",
            "none",
            "--posix-acl=never",
        ],
        &["--seccomp", "log", "--modcaps=+sys_admin:-mknod"],
        &["--seccomp", "trap", "--security-label=never"],
        // libvirt's command line for a virtiofsd without separate-options.
        &[
            "-o",
            "cache=always,sandbox=chroot,xattr,no_flock,no_posix_lock",
            "-o",
            "loglevel=debug,no_killpriv_v2,no_posix_acl",
        ],
        &["--no-readdirplus", "--allow-mmap", "--cache", "never"],
        &["--allow-direct-io"],
        &["-o", "allow_direct_io,no_allow_direct_io"],
    ];
    for flags in accepted {
        let flags: Vec<&str> = flags
            .iter()
            .copied()
            .filter(|f| *f != "{ignored}")
            .collect();
        // `--socket PATH` stands for --socket-path: the harness passes --socket-path.
        let flags: Vec<&str> = flags.into_iter().filter(|f| *f != "--socket").collect();
        let srv = Served::start(&flags);
        let mut fs = srv.connect();
        fs.getattr(FUSE_ROOT_ID, None)
            .unwrap_or_else(|e| panic!("{flags:?}: {e}\n{}", srv.backend.log_tail(2000)));
    }
    // `--socket PATH`, virtiofsd's deprecated spelling of --socket-path, and `-o source=`
    // in place of --shared-dir.
    let sock = dir.root.join("alias.sock");
    let source = format!("source={}", dir.mnt.display());
    for args in [
        vec!["--shared-dir", dir.mnt.to_str().unwrap()],
        vec!["-o", source.as_str()],
    ] {
        let _ = std::fs::remove_file(&sock);
        let mut child = std::process::Command::new(zerodax())
            .arg("serve")
            .arg("--socket")
            .arg(&sock)
            .args(&args)
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let deadline = std::time::Instant::now() + TIMEOUT;
        while !sock.exists() && std::time::Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = child.kill();
        let _ = child.wait();
        assert!(sock.exists(), "{args:?}: no socket");
    }
}

/// `--readonly` is `--read-only`; `--rlimit-nofile 0` leaves the limit as it was;
/// `--log-level off` logs nothing; `--socket-group` gives the socket to a group.
#[test]
fn virtiofsd_flags_that_change_behaviour() {
    let srv = Served::start(&["--readonly"]);
    let mut fs = srv.connect();
    match fs.mkdir(FUSE_ROOT_ID, "d", 0o755, 0) {
        Err(FuseError::Errno(e)) => assert_eq!(e, libc::EROFS),
        other => panic!("mkdir under --readonly: {other:?}"),
    }
    drop(fs);
    drop(srv);

    let limits = |pid: u32| -> String {
        std::fs::read_to_string(format!("/proc/{pid}/limits"))
            .unwrap()
            .lines()
            .find(|l| l.starts_with("Max open files"))
            .unwrap()
            .to_string()
    };
    let srv = Served::start(&["--rlimit-nofile", "0", "--log-level", "off"]);
    let mut fs = srv.connect();
    fs.getattr(FUSE_ROOT_ID, None).unwrap();
    assert_eq!(
        limits(srv.backend.pid().unwrap()),
        limits(std::process::id()),
        "--rlimit-nofile 0 leaves the limit unchanged"
    );
    assert_eq!(srv.backend.log_tail(2000).trim(), "", "--log-level off");
    drop(fs);
    drop(srv);

    // The rest of --killpriv-v2: killpriv_v2_clears_set_id_bits_where_the_guest_says.
    let srv = Served::start(&["--killpriv-v2"]);
    let fs = srv.connect();
    assert_ne!(
        fs.accepted_flags() & FUSE_HANDLE_KILLPRIV_V2,
        0,
        "--killpriv-v2"
    );
    drop(fs);
    drop(srv);

    let srv = Served::start(&["--socket-group", "daemon"]);
    let st = std::fs::metadata(&srv.socket).unwrap();
    assert_eq!(st.gid(), 1, "the daemon group");
    assert_eq!(st.mode() & 0o060, 0o060, "group read-write");
    srv.connect().getattr(FUSE_ROOT_ID, None).unwrap();
}

/// `--no-readdirplus` and `--allow-mmap` in INIT.
#[test]
fn readdirplus_and_direct_io_mmap_follow_their_flags() {
    let disk = Ext4::new();
    for (readdirplus, allow_mmap) in [(true, false), (false, true)] {
        let fs = FileSystem::new(&disk.mnt, CachePolicy::Never.fs_config(false, false)).unwrap();
        let server = Server::new(
            Arc::new(fs),
            ServerOptions {
                cache: CachePolicy::Never,
                readdirplus,
                allow_mmap,
                ..Default::default()
            },
        );
        let mut s = Session {
            server,
            next: 1,
            uid: 0,
            gid: 0,
        };
        let out = s.init();
        assert_eq!(out.flags64() & FUSE_DO_READDIRPLUS != 0, readdirplus);
        assert_eq!(out.flags64() & FUSE_DIRECT_IO_ALLOW_MMAP != 0, allow_mmap);
    }
}

/// By default `serve` runs sandboxed, as virtiofsd: its own mount, network and IPC
/// namespaces, the shared directory as its root.
#[test]
fn the_default_sandbox_is_namespaces() {
    let srv = Served::start(&[]);
    // Connected while the namespaces are read: the daemon exits when its frontend leaves.
    let mut fs = srv.connect();
    fs.getattr(FUSE_ROOT_ID, None).unwrap();
    let supervisor = srv.backend.pid().unwrap();
    let pid = srv.backend.serving_pid().unwrap();
    assert_ne!(pid, supervisor, "serving from a child of the supervisor");
    for ns in ["mnt", "net", "ipc", "pid"] {
        let theirs = std::fs::read_link(format!("/proc/{pid}/ns/{ns}")).unwrap();
        let ours = std::fs::read_link(format!("/proc/self/ns/{ns}")).unwrap();
        assert_ne!(theirs, ours, "{ns} namespace");
    }
    // PID 1 of its namespace: no host process is visible to it.
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let nspid = status.lines().find(|l| l.starts_with("NSpid:")).unwrap();
    assert!(nspid.trim_end().ends_with("\t1"), "{nspid}");
    // Its root is the shared directory: nothing else of the host is under it.
    let root = std::fs::read_dir(format!("/proc/{pid}/root")).unwrap();
    let names: Vec<_> = root.map(|e| e.unwrap().file_name()).collect();
    assert!(
        !names.iter().any(|n| n == "etc" || n == "proc"),
        "{names:?}"
    );
}

/// One `Name:\tvalue` line of /proc/PID/status.
fn proc_status(pid: u32, name: &str) -> String {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(':'))
        .unwrap_or_else(|| panic!("no {name} in /proc/{pid}/status"))
        .trim()
        .to_owned()
}

/// By default the serving process runs under the seccomp allowlist with virtiofsd's
/// capabilities only (effective, permitted and bounding alike); `--modcaps` and
/// `--seccomp none` change exactly that, and a capability taken away is missing for real.
#[test]
fn serving_process_is_confined_by_seccomp_and_capabilities() {
    use zerodax::confine::DEFAULT_CAPS;
    let caps = |set: rustix::thread::CapabilitySet| format!("{:016x}", set.bits());
    let cases: &[(&[&str], &str, rustix::thread::CapabilitySet)] = &[
        (&[], "2", DEFAULT_CAPS),
        (
            &["--cache-size", "2M"],
            "2",
            DEFAULT_CAPS | rustix::thread::CapabilitySet::IPC_LOCK,
        ),
        (
            &["--seccomp", "none", "--modcaps=-mknod:+sys_admin"],
            "0",
            (DEFAULT_CAPS - rustix::thread::CapabilitySet::MKNOD)
                | rustix::thread::CapabilitySet::SYS_ADMIN,
        ),
    ];
    for (flags, seccomp, want) in cases {
        let srv = Served::start(flags);
        let mut fs = srv.connect();
        fs.getattr(FUSE_ROOT_ID, None).unwrap();
        let pid = srv.backend.serving_pid().unwrap();
        assert_eq!(proc_status(pid, "Seccomp"), *seccomp, "{flags:?}");
        // The supervisor outside the PID namespace keeps nothing.
        let supervisor = srv.backend.pid().unwrap();
        assert_ne!(pid, supervisor);
        assert_eq!(
            proc_status(supervisor, "CapEff"),
            caps(rustix::thread::CapabilitySet::empty())
        );
        assert_eq!(
            proc_status(supervisor, "CapBnd"),
            caps(rustix::thread::CapabilitySet::empty())
        );
        assert_eq!(
            proc_status(supervisor, "Seccomp"),
            *seccomp,
            "{flags:?}: supervisor"
        );
        for set in ["CapEff", "CapPrm", "CapBnd"] {
            assert_eq!(proc_status(pid, set), caps(*want), "{flags:?}: {set}");
        }
        assert_eq!(
            proc_status(pid, "CapInh"),
            caps(rustix::thread::CapabilitySet::empty())
        );
        assert_eq!(
            proc_status(pid, "NoNewPrivs"),
            if *seccomp == "2" { "1" } else { "0" }
        );
        // A device node needs CAP_MKNOD; a FIFO does not.
        let dev = fs.mknod(FUSE_ROOT_ID, "null", libc::S_IFCHR | 0o600, 0x0103, 0);
        if want.contains(rustix::thread::CapabilitySet::MKNOD) {
            dev.unwrap_or_else(|e| panic!("{flags:?}: {e}"));
        } else {
            assert!(
                matches!(dev, Err(FuseError::Errno(libc::EPERM))),
                "{flags:?}: {dev:?}"
            );
        }
        fs.mknod(FUSE_ROOT_ID, "fifo", libc::S_IFIFO | 0o600, 0, 0)
            .unwrap_or_else(|e| panic!("{flags:?}: {e}"));
        drop(fs);
        let mut srv = srv;
        srv.expect_exit_0();
    }
}

/// The socket's path means something else once the sandbox has made the share the root:
/// when the daemon stops listening it must not remove a file of the guest's that happens to
/// sit at that path inside the share.
#[test]
fn stopping_to_listen_removes_no_file_of_the_share() {
    let mut srv = Served::start(&[]);
    let inside = srv.disk.mnt.join(srv.socket.strip_prefix("/").unwrap());
    std::fs::create_dir_all(inside.parent().unwrap()).unwrap();
    std::fs::write(&inside, b"guest data").unwrap();
    let mut fs = srv.connect();
    fs.getattr(FUSE_ROOT_ID, None).unwrap();
    drop(fs);
    srv.expect_exit_0();
    assert!(!srv.socket.exists(), "the socket file stays behind");
    assert_eq!(std::fs::read(&inside).unwrap(), b"guest data");
}

/// The host's view of `path`'s xattr `name`, bypassing the daemon.
fn host_getxattr(path: &Path, name: &str) -> Option<Vec<u8>> {
    let path = CString::new(path.as_os_str().as_bytes()).unwrap();
    let name = CString::new(name).unwrap();
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
    let path = CString::new(path.as_os_str().as_bytes()).unwrap();
    let name = CString::new(name).unwrap();
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
    assert_eq!(rc, 0, "{name:?}: {}", std::io::Error::last_os_error());
}

/// The guest's LISTXATTR of `node`, sorted, after checking that the size query announces
/// exactly the list's length.
fn guest_names(fs: &mut FuseClient, node: u64) -> Vec<String> {
    use frontend::fuse::Xattr;
    let Xattr::Size(size) = fs.listxattr(node, 0).unwrap() else {
        panic!("a size")
    };
    let Xattr::Data(list) = fs.listxattr(node, 4096).unwrap() else {
        panic!("a list")
    };
    assert_eq!(size as usize, list.len(), "size query and list disagree");
    if size > 0 {
        assert_eq!(
            errno_of(fs.listxattr(node, size - 1)),
            libc::ERANGE,
            "a buffer one byte short"
        );
    }
    let mut names: Vec<String> = list
        .split(|&b| b == 0)
        .filter(|n| !n.is_empty())
        .map(|n| String::from_utf8(n.to_vec()).unwrap())
        .collect();
    names.sort();
    names
}

fn errno_of<T: std::fmt::Debug>(r: Result<T, FuseError>) -> i32 {
    match r {
        Err(FuseError::Errno(e)) => e,
        other => panic!("expected an errno, got {other:?}"),
    }
}

/// `--xattrmap` through the socket, as virtiofsd's doc examples use it. `--xattr` is not
/// given: the map implies it, as in virtiofsd.
#[test]
fn xattrmap_renames_guest_xattrs_on_the_host() {
    let without_xattr = |map: &str| {
        let mut spec = spec(&["--xattrmap", map]);
        spec.args.retain(|a| a != "--xattr");
        spec
    };

    // Example 1, the SELinux case: every guest name under user.virtiofs. on the host; the
    // host's own names invisible to the guest.
    let srv = Served::start_spec(without_xattr(":map::user.virtiofs.:"));
    let mut fs = srv.connect();
    let (e, _) = fs
        .create(
            FUSE_ROOT_ID,
            "f",
            libc::O_RDWR as u32,
            libc::S_IFREG | 0o644,
            0,
        )
        .unwrap();
    let host = srv.disk.mnt.join("f");
    host_setxattr(&host, "user.host", b"h");
    fs.setxattr(e.nodeid, "trusted.x", b"t", 0).unwrap();
    fs.setxattr(e.nodeid, "user.x", b"u", 0).unwrap();
    assert_eq!(
        host_getxattr(&host, "user.virtiofs.trusted.x").unwrap(),
        b"t"
    );
    assert_eq!(host_getxattr(&host, "user.virtiofs.user.x").unwrap(), b"u");
    assert_eq!(
        host_getxattr(&host, "trusted.x"),
        None,
        "never the guest's name"
    );
    assert_eq!(
        host_getxattr(&host, "user.x"),
        None,
        "never the guest's name"
    );
    assert_eq!(guest_names(&mut fs, e.nodeid), ["trusted.x", "user.x"]);
    assert_eq!(
        fs.getxattr(e.nodeid, "trusted.x", 16).unwrap(),
        frontend::fuse::Xattr::Data(b"t".to_vec())
    );
    // user.host is user.virtiofs.user.host to the guest: not there.
    assert_eq!(
        errno_of(fs.getxattr(e.nodeid, "user.host", 16)),
        libc::ENODATA
    );
    fs.removexattr(e.nodeid, "trusted.x").unwrap();
    assert_eq!(host_getxattr(&host, "user.virtiofs.trusted.x"), None);
    assert_eq!(guest_names(&mut fs, e.nodeid), ["user.x"]);
    drop(fs);
    drop(srv);

    // Example 2: trusted. moved, everything else passed, and a `bad` rule keeps the guest
    // away from the moved names themselves.
    let srv = Served::start_spec(without_xattr(
        "/prefix/all/trusted./user.virtiofs./ /bad/server//trusted./ \
         /bad/client/user.virtiofs.// /ok/all///",
    ));
    let mut fs = srv.connect();
    let (e, _) = fs
        .create(
            FUSE_ROOT_ID,
            "g",
            libc::O_RDWR as u32,
            libc::S_IFREG | 0o644,
            0,
        )
        .unwrap();
    let host = srv.disk.mnt.join("g");
    host_setxattr(&host, "trusted.host", b"h");
    fs.setxattr(e.nodeid, "trusted.x", b"t", 0).unwrap();
    fs.setxattr(e.nodeid, "user.x", b"u", 0).unwrap();
    assert_eq!(
        host_getxattr(&host, "user.virtiofs.trusted.x").unwrap(),
        b"t"
    );
    assert_eq!(host_getxattr(&host, "user.x").unwrap(), b"u");
    assert_eq!(
        errno_of(fs.setxattr(e.nodeid, "user.virtiofs.trusted.x", b"evil", 0)),
        libc::EPERM
    );
    assert_eq!(
        errno_of(fs.removexattr(e.nodeid, "user.virtiofs.trusted.x")),
        libc::EPERM
    );
    assert_eq!(
        errno_of(fs.getxattr(e.nodeid, "user.virtiofs.trusted.x", 16)),
        libc::ENODATA
    );
    assert_eq!(
        host_getxattr(&host, "user.virtiofs.trusted.x").unwrap(),
        b"t"
    );
    // The host's trusted.host is hidden, user.virtiofs.trusted.x shows as trusted.x.
    assert_eq!(guest_names(&mut fs, e.nodeid), ["trusted.x", "user.x"]);
    // Prefixed past XATTR_NAME_MAX.
    let long = format!("trusted.{}", "a".repeat(240));
    assert_eq!(
        errno_of(fs.setxattr(e.nodeid, &long, b"v", 0)),
        libc::ERANGE
    );
}

/// A malformed `--xattrmap` stops `zerodax serve` at once with a message naming the flag
/// and what is wrong, before any socket exists; never a panic.
#[test]
fn a_malformed_xattrmap_is_refused_at_start() {
    let dir = Ext4::new();
    let sock = dir.root.join("map.sock");
    let cases = [
        (
            ":prefix:all:trusted.:user.virtiofs.",
            "rule 1: no ':' after its prepend field",
        ),
        (":prefx:all:::", "rule 1: unknown type \"prefx\""),
        (
            ":ok:all::: :prefix:everyone:::",
            "rule 2: unknown scope \"everyone\"",
        ),
        (
            ":map::user.virtiofs.: :ok:all:::",
            "rule 1: a map rule must be the last rule",
        ),
        ("   ", "no rules"),
    ];
    for (map, why) in cases {
        let mut child = Command::new(zerodax())
            .arg("serve")
            .arg("--socket-path")
            .arg(&sock)
            .arg("--shared-dir")
            .arg(&dir.mnt)
            .arg("--xattrmap")
            .arg(map)
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let deadline = std::time::Instant::now() + TIMEOUT;
        let status = loop {
            if let Some(status) = child.try_wait().unwrap() {
                break status;
            }
            if std::time::Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                panic!("{map:?}: still running");
            }
            std::thread::sleep(Duration::from_millis(20));
        };
        let mut err = String::new();
        std::io::Read::read_to_string(&mut child.stderr.take().unwrap(), &mut err).unwrap();
        assert!(!status.success(), "{map:?}: {status}");
        assert_eq!(status.code(), Some(2), "{map:?}: a usage error: {err}");
        assert!(
            err.contains("--xattrmap") && err.contains(why) && !err.contains("panicked"),
            "{map:?}: {err}"
        );
        assert!(!sock.exists(), "{map:?}: no socket before the map is good");
    }
}

/// The escapes an attack suite tries, under every sandbox mode (the default included): the
/// filesystem core keeps each inside the share whatever the process confinement, and the
/// confinement adds its own wall behind it.
#[test]
fn escapes_fail_under_every_sandbox() {
    for sandbox in ["namespace", "chroot", "none"] {
        let (srv, share) = Served::start_beside_a_secret(&["--sandbox", sandbox]);
        let mut fs = srv.connect();
        let root = FUSE_ROOT_ID;
        let ctx = |what: &str| format!("--sandbox {sandbox}: {what}");
        // `..` of the root is the root; names are single components.
        assert_eq!(fs.lookup(root, "..").unwrap().nodeid, root, "{}", ctx(".."));
        for name in ["../secret", "/secret", "a/../../secret", "secret", ".", ""] {
            let r = fs.lookup(root, name);
            assert!(
                r.is_err() || r.as_ref().is_ok_and(|e| e.nodeid == root),
                "{}: {r:?}",
                ctx(name)
            );
        }
        // Symlinks out of the share: made (they are data), never followed by the daemon.
        for (name, target) in [
            ("up", "../secret"),
            ("abs", "/etc/passwd"),
            ("self", "/proc/self/root/etc/passwd"),
        ] {
            let e = fs.symlink(root, name, target).unwrap();
            let opened = fs.open(e.nodeid, libc::O_RDONLY as u32);
            assert!(opened.is_err(), "{}: {opened:?}", ctx(name));
            assert_eq!(
                fs.readlink(e.nodeid).unwrap(),
                target.as_bytes(),
                "{}",
                ctx(name)
            );
            // Nothing resolves a lookup *through* a symlink either.
            let through = fs.lookup(e.nodeid, "x");
            assert!(through.is_err(), "{}: {through:?}", ctx(name));
        }
        // A directory swapped for a symlink after its lookup (the classic race, done
        // deterministically): the node keeps naming the directory it was, not the target.
        let d = fs.mkdir(root, "d", 0o755, 0).unwrap();
        std::fs::rename(share.join("d"), share.join("d.moved")).unwrap();
        std::os::unix::fs::symlink("..", share.join("d")).unwrap();
        let inside = fs.create(
            d.nodeid,
            "secret",
            libc::O_RDWR as u32,
            libc::S_IFREG | 0o644,
            0,
        );
        inside.unwrap_or_else(|e| panic!("{}: {e}", ctx("create in a moved dir")));
        assert!(
            share.join("d.moved/secret").exists(),
            "{}",
            ctx("created in the moved dir")
        );
        assert_eq!(
            std::fs::read(srv.disk.mnt.join("secret")).unwrap(),
            b"host only"
        );
        // Renames and links cannot name anything outside either.
        let f = fs
            .create(root, "f", libc::O_RDWR as u32, libc::S_IFREG | 0o644, 0)
            .unwrap()
            .0;
        for name in ["../f", "/tmp/f", ".."] {
            assert!(fs.rename(root, "f", root, name).is_err(), "{}", ctx(name));
            assert!(fs.link(f.nodeid, root, name).is_err(), "{}", ctx(name));
        }
        // Forged node ids and handles.
        for node in [0, 2, 9999, u64::MAX] {
            assert!(
                fs.getattr(node, None).is_err() || node == root,
                "{}",
                ctx("forged node")
            );
        }
        assert!(
            fs.read(f.nodeid, 12345, 0, 16).is_err(),
            "{}",
            ctx("forged handle")
        );
        // The share's parent was never touched.
        let mut names: Vec<_> = std::fs::read_dir(&srv.disk.mnt)
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        names.sort();
        assert_eq!(
            names,
            ["lost+found", "secret", "share"],
            "{}",
            ctx("the image root")
        );
        drop(fs);
        let mut srv = srv;
        srv.expect_exit_0();
    }
}

/// Started unprivileged, the default sandbox first makes a user namespace in which the
/// daemon is root (mapped to its own uid), so all the namespaces and the pivot still apply,
/// and guest root's files are the unprivileged user's on the host.
#[test]
fn unprivileged_serve_sandboxes_itself_in_a_user_namespace() {
    const NOBODY: u32 = 65534;
    let disk = Ext4::new();
    let share = disk.mnt.join("share");
    let run = disk.root.join("run");
    for dir in [&share, &run] {
        std::fs::create_dir(dir).unwrap();
        std::os::unix::fs::chown(dir, Some(NOBODY), Some(NOBODY)).unwrap();
    }
    let socket = run.join("vfs.sock");
    let mut spec = spec(&[]);
    let zerodax = std::mem::replace(&mut spec.program, PathBuf::from("setpriv"));
    let uid = format!("--reuid={NOBODY}");
    let gid = format!("--regid={NOBODY}");
    let mut args = vec![
        uid.as_str(),
        gid.as_str(),
        "--clear-groups",
        zerodax.to_str().unwrap(),
    ];
    let rest = spec.args.clone();
    args.extend(rest.iter().map(String::as_str));
    spec.args = args.into_iter().map(str::to_owned).collect();
    let backend = spec
        .spawn(&socket, &share, &disk.root.join("serve.log"), TIMEOUT)
        .unwrap_or_else(|e| panic!("{e}"));
    let mut srv = Served {
        backend,
        socket,
        disk,
    };
    let mut fs = srv.connect();
    let (e, o) = fs
        .create(
            FUSE_ROOT_ID,
            "f",
            libc::O_RDWR as u32,
            libc::S_IFREG | 0o644,
            0,
        )
        .unwrap_or_else(|e| panic!("{e}\n{}", srv.backend.log_tail(2000)));
    fs.write(e.nodeid, o.fh, 0, b"from guest root").unwrap();
    let host = std::fs::metadata(share.join("f")).unwrap();
    assert_eq!(
        (host.uid(), host.gid()),
        (NOBODY, NOBODY),
        "guest root acts as the user"
    );
    let pid = srv.backend.serving_pid().unwrap();
    for ns in ["user", "mnt", "pid", "net", "ipc"] {
        let theirs = std::fs::read_link(format!("/proc/{pid}/ns/{ns}")).unwrap();
        let ours = std::fs::read_link(format!("/proc/self/ns/{ns}")).unwrap();
        assert_ne!(theirs, ours, "{ns} namespace");
    }
    let map = std::fs::read_to_string(format!("/proc/{pid}/uid_map")).unwrap();
    assert_eq!(
        map.split_whitespace().collect::<Vec<_>>(),
        ["0", "65534", "1"],
        "only root inside, as the user outside"
    );
    assert_eq!(proc_status(pid, "Seccomp"), "2");
    drop(fs);
    srv.expect_exit_0();
}

/// A POSIX ACL xattr value (posix_acl_xattr: version 2, then tag/perm/id entries) with the
/// owner, group and other permissions given.
fn acl(user: u16, group: u16, other: u16) -> Vec<u8> {
    let mut v = 2u32.to_le_bytes().to_vec();
    for (tag, perm) in [(0x01u16, user), (0x04, group), (0x20, other)] {
        v.extend_from_slice(&tag.to_le_bytes());
        v.extend_from_slice(&perm.to_le_bytes());
        v.extend_from_slice(&u32::MAX.to_le_bytes());
    }
    v
}

/// `--posix-acl`: negotiated only with a guest that offers POSIX_ACL, DONT_MASK and
/// SETXATTR_EXT (`always` refuses the others at INIT); then a directory's default ACL, not
/// the caller's umask, shapes what is created in it, and setting an access ACL with
/// KILL_SGID clears set-group-id. Without it the ACL xattrs are refused.
#[test]
fn posix_acls_follow_the_flag_and_the_negotiation() {
    const ACL_INIT: u64 = FUSE_POSIX_ACL | FUSE_DONT_MASK | FUSE_SETXATTR_EXT;
    let connect = |srv: &Served, flags: u64| srv.connect_offering(flags);
    let no_acl = DEFAULT_INIT_FLAGS & !ACL_INIT;
    // always: a guest without ACLs cannot INIT.
    let srv = Served::start(&["--posix-acl"]);
    let (_fs, init) = connect(&srv, no_acl);
    assert!(
        matches!(init, Err(FuseError::Errno(libc::EPROTO))),
        "{init:?}"
    );
    drop(srv);

    // always, with a guest that can.
    let srv = Served::start(&["--posix-acl=always"]);
    let (mut fs, init) = connect(&srv, DEFAULT_INIT_FLAGS | ACL_INIT);
    let out = init.unwrap();
    assert_eq!(out.flags64() & ACL_INIT, ACL_INIT);
    let plain = fs.mkdir(FUSE_ROOT_ID, "plain", 0o777, 0).unwrap();
    let acl_dir = fs.mkdir(FUSE_ROOT_ID, "acl", 0o777, 0).unwrap();
    fs.setxattr(acl_dir.nodeid, "system.posix_acl_default", &acl(7, 5, 0), 0)
        .unwrap();
    let mode_of = |fs: &mut FuseClient, dir: u64, name: &str| {
        fs.create(dir, name, libc::O_RDWR as u32, libc::S_IFREG | 0o666, 0o077)
            .unwrap()
            .0
            .attr
            .mode
            & 0o7777
    };
    assert_eq!(
        mode_of(&mut fs, plain.nodeid, "f"),
        0o600,
        "no default ACL: the umask"
    );
    assert_eq!(
        mode_of(&mut fs, acl_dir.nodeid, "f"),
        0o640,
        "the default ACL, not the umask"
    );
    let host = srv.disk.mnt.join("acl/f");
    assert_eq!(
        std::fs::metadata(&host).unwrap().permissions().mode() & 0o7777,
        0o640
    );
    // KILL_SGID on an access ACL clears set-group-id; without it the bit stays.
    let sgid = srv.disk.mnt.join("plain/f");
    for (kill, want) in [(0, libc::S_ISGID), (FUSE_SETXATTR_ACL_KILL_SGID, 0)] {
        std::fs::set_permissions(&sgid, std::fs::Permissions::from_mode(0o2770)).unwrap();
        let node = fs.lookup(plain.nodeid, "f").unwrap().nodeid;
        fs.setxattr_ext(node, "system.posix_acl_access", &acl(7, 7, 0), 0, kill)
            .unwrap();
        let mode = std::fs::metadata(&sgid).unwrap().permissions().mode();
        assert_eq!(mode & libc::S_ISGID, want, "kill_sgid {kill}: {mode:o}");
    }
    drop(fs);
    drop(srv);

    // auto with a guest that cannot, and the default (never) with --xattr: no ACLs.
    // (Served runs zerodax with --xattr.)
    for flags in [&["--posix-acl=auto"][..], &["--posix-acl=never"][..]] {
        let srv = Served::start(flags);
        let guest = if flags[0].ends_with("never") {
            DEFAULT_INIT_FLAGS
        } else {
            no_acl
        };
        let (mut fs, init) = connect(&srv, guest);
        assert_eq!(init.unwrap().flags64() & FUSE_POSIX_ACL, 0);
        let d = fs.mkdir(FUSE_ROOT_ID, "d", 0o755, 0).unwrap();
        let r = fs.setxattr(d.nodeid, "system.posix_acl_default", &acl(7, 5, 0), 0);
        assert!(
            matches!(r, Err(FuseError::Errno(libc::EOPNOTSUPP))),
            "{flags:?}: {r:?}"
        );
        fs.setxattr(d.nodeid, "user.ok", b"1", 0)
            .unwrap_or_else(|e| panic!("{flags:?}: {e}"));
    }
}

/// Unmounts a mount point on drop (panics included).
struct Unmount(PathBuf);

impl Drop for Unmount {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

/// `--announce-submounts`: a directory on another mount inside the share is marked
/// FUSE_ATTR_SUBMOUNT in LOOKUP and READDIRPLUS (the guest then mounts it as a filesystem
/// of its own), ordinary directories are not, and without the flag nothing is.
#[test]
fn submounts_are_announced_only_when_asked() {
    for (flags, want) in [(&["--announce-submounts"][..], true), (&[][..], false)] {
        let srv = Served::start(flags);
        let sub = srv.disk.mnt.join("sub");
        std::fs::create_dir(&sub).unwrap();
        std::fs::create_dir(srv.disk.mnt.join("plain")).unwrap();
        let status = Command::new("mount")
            .args(["-t", "tmpfs", "-o", "size=1m", "zerodax-sub"])
            .arg(&sub)
            .status()
            .unwrap();
        assert!(status.success());
        let _unmount = Unmount(sub.clone());
        let mut fs = srv.connect();
        let flags_of =
            |fs: &mut FuseClient, name: &str| fs.lookup(FUSE_ROOT_ID, name).unwrap().attr.flags;
        assert_eq!(
            flags_of(&mut fs, "sub") & FUSE_ATTR_SUBMOUNT != 0,
            want,
            "{flags:?}"
        );
        assert_eq!(
            flags_of(&mut fs, "plain") & FUSE_ATTR_SUBMOUNT,
            0,
            "{flags:?}"
        );
        // The submount's own contents are served as usual.
        let sub_node = fs.lookup(FUSE_ROOT_ID, "sub").unwrap().nodeid;
        fs.mkdir(sub_node, "inside", 0o755, 0).unwrap();
        assert!(sub.join("inside").is_dir());
    }
}

/// A guest's O_NOATIME reaches the host only with `--preserve-noatime` (virtiofsd drops it
/// by default): a read through a file opened with it leaves an old atime alone.
#[test]
fn preserve_noatime_keeps_the_guest_flag() {
    for (flags, atime_kept) in [(&["--preserve-noatime"][..], true), (&[][..], false)] {
        let srv = Served::start(flags);
        let host = srv.disk.mnt.join("f");
        std::fs::write(&host, b"some bytes").unwrap();
        // Two days ago: relatime updates an atime that old on any read.
        let old = std::time::SystemTime::now() - Duration::from_secs(2 * 86400);
        std::fs::File::options()
            .write(true)
            .open(&host)
            .unwrap()
            .set_times(std::fs::FileTimes::new().set_accessed(old))
            .unwrap();
        let before = std::fs::metadata(&host).unwrap().atime();
        let mut fs = srv.connect();
        let node = fs.lookup(FUSE_ROOT_ID, "f").unwrap().nodeid;
        let o = fs
            .open(node, (libc::O_RDONLY | libc::O_NOATIME) as u32)
            .unwrap();
        assert_eq!(fs.read(node, o.fh, 0, 64).unwrap(), b"some bytes");
        let after = std::fs::metadata(&host).unwrap().atime();
        assert_eq!(
            after == before,
            atime_kept,
            "{flags:?}: atime {before} -> {after}"
        );
    }
}

/// `--syslog`: lines go to /dev/log as `<PRI>zerodax[PID]: ...` datagrams (facility daemon),
/// none to stderr. /dev/log is this test's own socket, seen by the daemon through a private
/// mount namespace with a tmpfs /dev (unshare(1)).
#[test]
fn syslog_gets_the_log_lines() {
    let disk = Ext4::new();
    let log = disk.root.join("log");
    let sock = std::os::unix::net::UnixDatagram::bind(&log).unwrap();
    sock.set_read_timeout(Some(TIMEOUT)).unwrap();
    let script = format!(
        "mount -t tmpfs none /dev && ln -s {} /dev/log && exec {} serve --syslog \
         --socket-path {} --shared-dir {}",
        log.display(),
        zerodax(),
        disk.root.join("vfs.sock").display(),
        disk.mnt.display()
    );
    let mut child = Command::new("unshare")
        .args(["--mount", "--propagation", "private", "sh", "-c", &script])
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = Vec::new();
    let mut buf = [0u8; 4096];
    while !lines.iter().any(|l: &String| l.contains("serving")) {
        match sock.recv(&mut buf) {
            Ok(n) => lines.push(String::from_utf8_lossy(&buf[..n]).into_owned()),
            Err(e) => {
                let _ = child.kill();
                panic!("no 'serving' line in {lines:?}: {e}");
            }
        }
    }
    // SAFETY: signalling our own child, not yet reaped.
    unsafe { libc::kill(child.id() as libc::pid_t, libc::SIGTERM) };
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "{}", out.status);
    assert_eq!(
        String::from_utf8_lossy(&out.stderr),
        "",
        "nothing on stderr"
    );
    for l in &lines {
        assert!(l.starts_with("<30>zerodax[") && l.contains("]: "), "{l:?}");
    }
}

/// `--writeback`: WRITEBACK_CACHE is offered, and then a write-only open is read-write on
/// the host (the guest reads around partial page writes) and O_APPEND is left to the guest
/// (it sends the offsets); without it both are the guest's as given.
#[test]
fn writeback_opens_read_write_and_leaves_appends_to_the_guest() {
    for writeback in [true, false] {
        let srv = Served::start(if writeback { &["--writeback"] } else { &[] });
        let host = srv.disk.mnt.join("f");
        std::fs::write(&host, b"0123456789").unwrap();
        let (mut fs, init) = srv.connect_offering(DEFAULT_INIT_FLAGS | FUSE_WRITEBACK_CACHE);
        let init = init.unwrap();
        assert_eq!(init.flags64() & FUSE_WRITEBACK_CACHE != 0, writeback);
        let node = fs.lookup(FUSE_ROOT_ID, "f").unwrap().nodeid;
        let o = fs
            .open(node, (libc::O_WRONLY | libc::O_APPEND) as u32)
            .unwrap();
        let read = fs.read(node, o.fh, 0, 4);
        fs.write(node, o.fh, 0, b"AB").unwrap();
        let content = std::fs::read(&host).unwrap();
        if writeback {
            assert_eq!(read.unwrap(), b"0123");
            assert_eq!(content, b"AB23456789");
        } else {
            assert!(
                matches!(read, Err(FuseError::Errno(libc::EBADF))),
                "{read:?}"
            );
            assert_eq!(content, b"0123456789AB");
        }
    }
}

/// `--translate-uid/gid`: the guest's ids become host ids in requests (the caller, a new
/// owner), and host ids guest ids in every attribute sent back; a forbidden guest id cannot
/// act or be given. Ids outside every rule pass unchanged.
#[test]
fn translated_ids_in_requests_and_attributes() {
    let srv = Served::start(&[
        "--translate-uid",
        "forbid-guest:1500:1",
        "--translate-uid",
        "map:1000:2000:10",
        "--translate-gid",
        "map:1000:3000:10",
    ]);
    let host = srv.disk.mnt.join("f");
    std::fs::write(&host, b"x").unwrap();
    std::os::unix::fs::chown(&host, Some(2003), Some(3004)).unwrap();
    let mut fs = srv.connect();
    let e = fs.lookup(FUSE_ROOT_ID, "f").unwrap();
    assert_eq!(
        (e.attr.uid, e.attr.gid),
        (1003, 1004),
        "host ids seen as guest ids"
    );
    // A chown by guest ids lands as host ids.
    let set = |uid: u32| FuseSetattrIn {
        valid: FATTR_UID,
        uid,
        ..Default::default()
    };
    let out = fs.setattr(e.nodeid, &set(1005)).unwrap();
    assert_eq!(out.attr.uid, 1005);
    assert_eq!(std::fs::metadata(&host).unwrap().uid(), 2005);
    // Outside every rule: unchanged both ways.
    fs.setattr(e.nodeid, &set(42)).unwrap();
    assert_eq!(std::fs::metadata(&host).unwrap().uid(), 42);
    // A forbidden id can neither be given nor act.
    let r = fs.setattr(e.nodeid, &set(1500));
    assert!(matches!(r, Err(FuseError::Errno(libc::EPERM))), "{r:?}");
    // A caller with translated ids creates files owned by the host ids.
    std::fs::set_permissions(&srv.disk.mnt, std::fs::Permissions::from_mode(0o777)).unwrap();
    fs.set_credentials(1001, 1002, 1);
    fs.create(
        FUSE_ROOT_ID,
        "made",
        libc::O_RDWR as u32,
        libc::S_IFREG | 0o644,
        0,
    )
    .unwrap();
    let made = std::fs::metadata(srv.disk.mnt.join("made")).unwrap();
    assert_eq!((made.uid(), made.gid()), (2001, 3002));
    fs.set_credentials(1500, 1002, 1);
    let r = fs.create(
        FUSE_ROOT_ID,
        "nope",
        libc::O_RDWR as u32,
        libc::S_IFREG | 0o644,
        0,
    );
    assert!(matches!(r, Err(FuseError::Errno(libc::EPERM))), "{r:?}");
}

/// A security-context extension as the guest kernel appends it to a create: the block header
/// (size, count), then per context `fuse_secctx` (value size, padding), the name with its
/// NUL and the value, padded to 8 bytes.
fn secctx(contexts: &[(&str, &[u8])]) -> Vec<u8> {
    let mut body = Vec::new();
    for (name, value) in contexts {
        let start = body.len();
        body.extend_from_slice(&(value.len() as u32).to_le_bytes());
        body.extend_from_slice(&0u32.to_le_bytes());
        body.extend_from_slice(name.as_bytes());
        body.push(0);
        body.extend_from_slice(value);
        body.resize(start + (body.len() - start).next_multiple_of(8), 0);
    }
    let mut v = ((8 + body.len()) as u32).to_le_bytes().to_vec();
    v.extend_from_slice(&(contexts.len() as u32).to_le_bytes());
    v.extend_from_slice(&body);
    v
}

/// `--security-label`: with SECURITY_CTX negotiated, nodes the guest creates carry the
/// security contexts its kernel sent (as host xattrs); a context outside `security.` is
/// refused before anything is made; without the flag the contexts are ignored.
#[test]
fn security_labels_land_on_created_nodes() {
    const LABEL: &[u8] = b"system_u:object_r:zerodax_t:s0";
    for labels in [true, false] {
        let srv = Served::start(if labels { &["--security-label"] } else { &[] });
        let (mut fs, init) = srv.connect_offering(DEFAULT_INIT_FLAGS | FUSE_SECURITY_CTX);
        let init = init.unwrap();
        assert_eq!(init.flags64() & FUSE_SECURITY_CTX != 0, labels);
        let ext = || secctx(&[("security.selinux", LABEL)]);
        // (With the contexts ignored, the kernel would not send them; sent anyway they are
        // dropped.)
        fs.extend_next_request(ext());
        fs.create(
            FUSE_ROOT_ID,
            "f",
            libc::O_RDWR as u32,
            libc::S_IFREG | 0o644,
            0,
        )
        .unwrap();
        fs.extend_next_request(ext());
        fs.mkdir(FUSE_ROOT_ID, "d", 0o755, 0).unwrap();
        fs.extend_next_request(ext());
        fs.symlink(FUSE_ROOT_ID, "l", "f").unwrap();
        for name in ["f", "d", "l"] {
            let got = host_getxattr(&srv.disk.mnt.join(name), "security.selinux");
            assert_eq!(got.as_deref(), labels.then_some(LABEL), "{name}");
        }
        if labels {
            fs.extend_next_request(secctx(&[("trusted.x", b"1")]));
            let r = fs.mkdir(FUSE_ROOT_ID, "no", 0o755, 0);
            assert!(matches!(r, Err(FuseError::Errno(libc::EPERM))), "{r:?}");
            assert!(
                !srv.disk.mnt.join("no").exists(),
                "refused before it was made"
            );
        }
    }
}

/// The `flags:` of every descriptor the serving process `pid` holds open on `host` for I/O
/// (its O_PATH node descriptor left out), from /proc/PID/fdinfo.
fn io_fd_flags(pid: u32, host: &Path) -> Vec<u32> {
    let want = std::fs::metadata(host).unwrap();
    let mut flags = Vec::new();
    for entry in std::fs::read_dir(format!("/proc/{pid}/fd")).unwrap() {
        let entry = entry.unwrap();
        let Ok(meta) = std::fs::metadata(entry.path()) else {
            continue;
        };
        if (meta.dev(), meta.ino()) != (want.dev(), want.ino()) {
            continue;
        }
        let info = format!("/proc/{pid}/fdinfo/{}", entry.file_name().to_string_lossy());
        let Ok(info) = std::fs::read_to_string(info) else {
            continue;
        };
        let f = info
            .lines()
            .find_map(|l| l.strip_prefix("flags:"))
            .map(|v| u32::from_str_radix(v.trim(), 8).unwrap())
            .unwrap();
        if f & libc::O_PATH as u32 == 0 {
            flags.push(f);
        }
    }
    flags
}

/// A page-aligned guest buffer near the top of guest RAM, clear of the driver's arena.
fn aligned_gpa(fs: &mut FuseClient, page: u64) -> u64 {
    (fs.driver().ram().end() - (page + 2) * 4096) & !4095
}

/// FUSE_WRITE of one page at `offset` from a page-aligned guest buffer, as a guest's O_DIRECT
/// write is laid out (the data in its own descriptor, on its own page); the errno or the
/// bytes written.
fn aligned_write(
    fs: &mut FuseClient,
    node: u64,
    fh: u64,
    offset: u64,
    page: &[u8],
) -> Result<u32, i32> {
    let gpa = aligned_gpa(fs, 0);
    fs.driver().ram().write(gpa, page).unwrap();
    let arg = FuseWriteIn {
        fh,
        offset,
        size: page.len() as u32,
        ..Default::default()
    };
    let (unique, bytes) = fs.encode(node, Operation::Write { arg, data: page });
    let head = FuseInHeader::SIZE + FuseWriteIn::SIZE;
    let room = (FuseOutHeader::SIZE + FuseWriteOut::SIZE) as u32;
    let desc = |addr, len, flags, next| frontend::driver::RawDesc {
        addr,
        len,
        flags,
        next: RawLink::Slot(next),
    };
    use frontend::driver::RawBuffer;
    use frontend::virtqueue::DESC_F_NEXT;
    let chain = RawChain {
        buffers: vec![
            RawBuffer::Data(bytes[..head].to_vec()),
            RawBuffer::Space(room),
        ],
        descs: vec![
            desc(RawAddr::Buffer(0, 0), head as u32, DESC_F_NEXT, 1),
            desc(RawAddr::Gpa(gpa), page.len() as u32, DESC_F_NEXT, 2),
            desc(RawAddr::Buffer(1, 0), room, DESC_F_WRITE, 0),
        ],
        head: RawLink::Slot(0),
    };
    let token = fs.driver().submit_raw(REQUEST_QUEUE, &chain).unwrap();
    let c = fs.driver().wait(token, TIMEOUT).unwrap();
    let reply = FuseClient::check_reply(Opcode::Write, unique, &c).unwrap();
    if reply.error != 0 {
        return Err(-reply.error);
    }
    Ok(u32::from_le_bytes(reply.body[..4].try_into().unwrap()))
}

/// FUSE_READ of `len` bytes at `offset` into a page-aligned guest buffer (reply header in a
/// descriptor of its own, as a guest lays out an O_DIRECT read); the errno or the data.
fn aligned_read(
    fs: &mut FuseClient,
    node: u64,
    fh: u64,
    offset: u64,
    len: u32,
) -> Result<Vec<u8>, i32> {
    let gpa = aligned_gpa(fs, 1);
    let arg = FuseReadIn {
        fh,
        offset,
        size: len,
        ..Default::default()
    };
    let (unique, bytes) = fs.encode(node, Operation::Read(arg));
    let desc = |addr, len, flags, next| frontend::driver::RawDesc {
        addr,
        len,
        flags,
        next: RawLink::Slot(next),
    };
    use frontend::driver::RawBuffer;
    use frontend::virtqueue::DESC_F_NEXT;
    let out = FuseOutHeader::SIZE as u32;
    let chain = RawChain {
        buffers: vec![RawBuffer::Data(bytes.clone()), RawBuffer::Space(out)],
        descs: vec![
            desc(RawAddr::Buffer(0, 0), bytes.len() as u32, DESC_F_NEXT, 1),
            desc(RawAddr::Buffer(1, 0), out, DESC_F_WRITE | DESC_F_NEXT, 2),
            desc(RawAddr::Gpa(gpa), len, DESC_F_WRITE, 0),
        ],
        head: RawLink::Slot(0),
    };
    let token = fs.driver().submit_raw(REQUEST_QUEUE, &chain).unwrap();
    let c = fs.driver().wait(token, TIMEOUT).unwrap();
    let reply = FuseClient::check_reply(Opcode::Read, unique, &c).unwrap();
    if reply.error != 0 {
        return Err(-reply.error);
    }
    Ok(reply.body)
}

/// `--allow-direct-io` (`-o allow_direct_io`): a guest's O_DIRECT, on OPEN and on CREATE,
/// reaches the host open (virtiofsd drops it by default, and so does zerodax), and aligned
/// I/O from page-aligned guest buffers round-trips through the O_DIRECT descriptor.
#[test]
fn allow_direct_io_keeps_the_guest_o_direct() {
    let direct = libc::O_DIRECT as u32;
    let page: Vec<u8> = (0..4096u32).map(|i| (i % 251) as u8).collect();
    for flags in [&["--allow-direct-io"][..], &["-o", "allow_direct_io"], &[]] {
        let kept = !flags.is_empty();
        let srv = Served::start(flags);
        let pid = srv.backend.serving_pid().unwrap();
        let host = srv.disk.mnt.join("f");
        std::fs::write(&host, vec![7u8; 8192]).unwrap();
        let mut fs = srv.connect();
        let node = fs.lookup(FUSE_ROOT_ID, "f").unwrap().nodeid;
        let o = fs.open(node, libc::O_RDWR as u32 | direct).unwrap();
        let (e, c) = fs
            .create(
                FUSE_ROOT_ID,
                "c",
                libc::O_RDWR as u32 | direct,
                libc::S_IFREG | 0o644,
                0,
            )
            .unwrap();
        for (name, node, fh) in [("f", node, o.fh), ("c", e.nodeid, c.fh)] {
            let path = srv.disk.mnt.join(name);
            let open = io_fd_flags(pid, &path);
            assert_eq!(open.len(), 1, "{flags:?} {name}: {open:?}");
            assert_eq!(
                open[0] & direct != 0,
                kept,
                "{flags:?} {name}: flags {:o}",
                open[0]
            );
            assert_eq!(
                aligned_write(&mut fs, node, fh, 4096, &page),
                Ok(4096),
                "{flags:?} {name}"
            );
            assert_eq!(
                aligned_read(&mut fs, node, fh, 4096, 4096).as_deref(),
                Ok(&page[..]),
                "{flags:?} {name}"
            );
            assert_eq!(
                std::fs::read(&path).unwrap()[4096..8192],
                page[..],
                "{flags:?} {name}"
            );
        }
        if kept {
            // O_DIRECT for real: an unaligned offset is the host's EINVAL, as in virtiofsd.
            assert_eq!(
                aligned_read(&mut fs, node, o.fh, 1, 4096),
                Err(libc::EINVAL)
            );
        }
    }
}

/// With O_DIRECT kept, data the daemon moves through buffers of its own (here the test
/// chain's plain byte vectors, which are not page aligned) goes through an aligned copy: the
/// guest's aligned offset and length are all O_DIRECT asks of it.
#[test]
fn direct_io_through_daemon_buffers_is_aligned() {
    let disk = Ext4::new();
    let cache = CachePolicy::Auto;
    let cfg = zerodax::fs::Config {
        allow_direct_io: true,
        ..cache.fs_config(false, true)
    };
    let fs = FileSystem::new(&disk.mnt, cfg).unwrap();
    let mut s = Session {
        server: Server::new(
            Arc::new(fs),
            ServerOptions {
                cache,
                ..Default::default()
            },
        ),
        next: 1,
        uid: 0,
        gid: 0,
    };
    s.init();
    let (node, fh) = s.create(c"d", (libc::O_RDWR | libc::O_DIRECT) as u32);
    let page: Vec<u8> = (0..8192u32).map(|i| (i % 253) as u8).collect();
    let arg = FuseWriteIn {
        fh,
        offset: 4096,
        size: page.len() as u32,
        ..Default::default()
    };
    let out = FuseWriteOut::decode(&s.ok(node, Operation::Write { arg, data: &page })).unwrap();
    assert_eq!(out.size, 8192);
    let arg = FuseReadIn {
        fh,
        offset: 4096,
        size: 8192,
        ..Default::default()
    };
    assert_eq!(s.ok(node, Operation::Read(arg)), page);
    assert_eq!(std::fs::read(disk.mnt.join("d")).unwrap()[4096..], page[..]);
    // Still O_DIRECT: an unaligned offset is the host's EINVAL.
    let arg = FuseReadIn {
        fh,
        offset: 1,
        size: 4096,
        ..Default::default()
    };
    assert_eq!(s.errno(node, Operation::Read(arg)), libc::EINVAL);
}

/// A subordinate id range of `user` in /etc/subuid or /etc/subgid (`file`) for the length of
/// a test: the first existing entry of `user`, or one added here and removed on drop (only
/// that line: the file is otherwise left as found).
struct SubIds {
    file: &'static str,
    added: Option<String>,
    start: u32,
}

impl SubIds {
    fn of(file: &'static str, user: &str, count: u32) -> Self {
        let text = std::fs::read_to_string(file).unwrap_or_default();
        let existing = text.lines().find_map(|l| {
            let mut f = l.split(':');
            let (who, start, n) = (f.next()?, f.next()?, f.next()?);
            let (start, n) = (start.parse::<u32>().ok()?, n.parse::<u32>().ok()?);
            (who == user && n >= count).then_some(start)
        });
        if let Some(start) = existing {
            return SubIds {
                file,
                added: None,
                start,
            };
        }
        // Past every range the file already hands out.
        let start = text
            .lines()
            .filter_map(|l| {
                let f: Vec<&str> = l.split(':').collect();
                Some(f.get(1)?.parse::<u64>().ok()? + f.get(2)?.parse::<u64>().ok()?)
            })
            .max()
            .unwrap_or(0)
            .max(300_000)
            .next_multiple_of(65536) as u32;
        let line = format!("{user}:{start}:{count}");
        let mut new = text.clone();
        if !new.is_empty() && !new.ends_with('\n') {
            new.push('\n');
        }
        new.push_str(&line);
        new.push('\n');
        std::fs::write(file, new).unwrap();
        SubIds {
            file,
            added: Some(line),
            start,
        }
    }
}

impl Drop for SubIds {
    fn drop(&mut self) {
        if let Some(line) = &self.added {
            let text = std::fs::read_to_string(self.file).unwrap_or_default();
            let kept: String = text
                .lines()
                .filter(|l| l != line)
                .map(|l| format!("{l}\n"))
                .collect();
            let _ = std::fs::write(self.file, kept);
        }
    }
}

/// `--uid-map`/`--gid-map` (virtiofsd's, started unprivileged): the daemon's user namespace
/// maps the caller as root and a subordinate range (newuidmap/newgidmap, /etc/subuid and
/// /etc/subgid) for the other ids, so a guest user's files and a chown through FUSE land
/// with the mapped host ids. As root, where no user namespace is made, the maps are refused.
#[test]
fn uid_and_gid_maps_shape_the_unprivileged_user_namespace() {
    const NOBODY: u32 = 65534;
    if Command::new("newuidmap").arg("--help").output().is_err() {
        panic!("newuidmap is missing: install the uidmap package (scripts/setup.sh does)");
    }
    let subuid = SubIds::of("/etc/subuid", "nobody", 65536);
    let subgid = SubIds::of("/etc/subgid", "nobody", 65536);
    let (u0, g0) = (subuid.start, subgid.start);
    let disk = Ext4::new();
    let share = disk.mnt.join("share");
    let run = disk.root.join("run");
    for dir in [&share, &run] {
        std::fs::create_dir(dir).unwrap();
        std::os::unix::fs::chown(dir, Some(NOBODY), Some(NOBODY)).unwrap();
    }
    std::fs::set_permissions(&share, std::fs::Permissions::from_mode(0o777)).unwrap();
    let socket = run.join("vfs.sock");
    let maps = [
        "--uid-map".to_owned(),
        format!(":0:{NOBODY}:1:"),
        "--uid-map".to_owned(),
        format!(":1:{u0}:1000:"),
        "--gid-map".to_owned(),
        format!(":0:{NOBODY}:1:"),
        "--gid-map".to_owned(),
        format!("/1/{g0}/1000/"),
    ];
    let mut spec = spec(&maps.iter().map(String::as_str).collect::<Vec<_>>());
    let zerodax = std::mem::replace(&mut spec.program, PathBuf::from("setpriv"));
    let mut args = vec![
        format!("--reuid={NOBODY}"),
        format!("--regid={NOBODY}"),
        "--clear-groups".to_owned(),
        zerodax.to_str().unwrap().to_owned(),
    ];
    args.extend(spec.args.iter().cloned());
    spec.args = args;
    let backend = spec
        .spawn(&socket, &share, &disk.root.join("serve.log"), TIMEOUT)
        .unwrap_or_else(|e| panic!("{e}"));
    let mut srv = Served {
        backend,
        socket,
        disk,
    };
    let pid = srv.backend.serving_pid().unwrap();
    let map = |kind: &str| {
        std::fs::read_to_string(format!("/proc/{pid}/{kind}_map"))
            .unwrap()
            .lines()
            .map(|l| l.split_whitespace().collect::<Vec<_>>().join(" "))
            .collect::<Vec<_>>()
    };
    assert_eq!(
        map("uid"),
        [format!("0 {NOBODY} 1"), format!("1 {u0} 1000")]
    );
    assert_eq!(
        map("gid"),
        [format!("0 {NOBODY} 1"), format!("1 {g0} 1000")]
    );
    let mut fs = srv.connect();
    let host = |name: &str| {
        let m = std::fs::metadata(share.join(name)).unwrap();
        (m.uid(), m.gid())
    };
    let mode = libc::S_IFREG | 0o644;
    let (root_file, _) = fs
        .create(FUSE_ROOT_ID, "root", libc::O_RDWR as u32, mode, 0)
        .unwrap_or_else(|e| panic!("{e}\n{}", srv.backend.log_tail(2000)));
    assert_eq!(host("root"), (NOBODY, NOBODY), "guest root is the caller");
    fs.set_credentials(5, 7, 1);
    fs.create(FUSE_ROOT_ID, "user", libc::O_RDWR as u32, mode, 0)
        .unwrap_or_else(|e| panic!("{e}\n{}", srv.backend.log_tail(2000)));
    assert_eq!(host("user"), (u0 + 4, g0 + 6), "guest 5:7 is subordinate");
    fs.set_credentials(0, 0, 1);
    let chown = FuseSetattrIn {
        valid: FATTR_UID | FATTR_GID,
        uid: 10,
        gid: 20,
        ..Default::default()
    };
    let out = fs.setattr(root_file.nodeid, &chown).unwrap();
    assert_eq!((out.attr.uid, out.attr.gid), (10, 20));
    assert_eq!(host("root"), (u0 + 9, g0 + 19), "a chown to 10:20");
    // Past the maps: no such id in the namespace.
    let unmapped = FuseSetattrIn { uid: 5000, ..chown };
    let r = fs.setattr(root_file.nodeid, &unmapped);
    assert!(matches!(r, Err(FuseError::Errno(libc::EINVAL))), "{r:?}");
    drop(fs);
    srv.expect_exit_0();
}

/// Descriptors the process `pid` has open.
fn open_fds(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .unwrap()
        .count()
}

/// Lookups `lookups_grow_descriptors` makes.
const LOOKUPS: usize = 500;

/// By how many descriptors the serving process grew over [`LOOKUPS`] lookups of new files
/// in `share` (each then answering GETATTR), asked of `srv` by `fs`.
fn lookups_grow_descriptors(srv: &Served, share: &Path, fs: &mut FuseClient) -> usize {
    let many = share.join("many");
    std::fs::create_dir(&many).unwrap();
    for i in 0..LOOKUPS {
        std::fs::write(many.join(format!("f{i}")), b"x").unwrap();
    }
    let pid = srv.backend.serving_pid().unwrap();
    let dir = fs.lookup(FUSE_ROOT_ID, "many").unwrap().nodeid;
    let before = open_fds(pid);
    for i in 0..LOOKUPS {
        let e = fs
            .lookup(dir, &format!("f{i}"))
            .unwrap_or_else(|e| panic!("f{i}: {e}\n{}", srv.backend.log_tail(2000)));
        assert_eq!(e.attr.size, 1);
    }
    let after = open_fds(pid);
    // The nodes are all alive: each answers GETATTR.
    for i in [0, LOOKUPS / 2, LOOKUPS - 1] {
        let e = fs.lookup(dir, &format!("f{i}")).unwrap();
        fs.getattr(e.nodeid, None).unwrap();
    }
    after.saturating_sub(before)
}

/// `--inode-file-handles=mandatory`: inodes the guest looked up cost the daemon no
/// descriptor each (it keeps file handles), where `never` keeps one O_PATH descriptor per
/// inode.
#[test]
fn mandatory_file_handles_keep_no_descriptor_per_inode() {
    let mut grown = Vec::new();
    for mode in ["never", "mandatory"] {
        let flag = format!("--inode-file-handles={mode}");
        let srv = Served::start(&[flag.as_str()]);
        let mut fs = srv.connect();
        grown.push((mode, lookups_grow_descriptors(&srv, &srv.disk.mnt, &mut fs)));
    }
    eprintln!("descriptors grown by {LOOKUPS} lookups: {grown:?}");
    assert!(
        grown[0].1 >= LOOKUPS,
        "never keeps a descriptor per inode: {grown:?}"
    );
    assert!(grown[1].1 < 16, "mandatory keeps none per inode: {grown:?}");
}

/// `--inode-file-handles=prefer` on a share whose filesystem makes file handles, as root:
/// file handles, so no descriptor per inode either, and no warning.
#[test]
fn prefer_file_handles_keep_no_descriptor_per_inode() {
    let srv = Served::start(&["--inode-file-handles=prefer"]);
    let mut fs = srv.connect();
    let grown = lookups_grow_descriptors(&srv, &srv.disk.mnt, &mut fs);
    eprintln!("descriptors grown by {LOOKUPS} lookups: {grown}");
    assert!(grown < 16, "prefer keeps none per inode: {grown}");
    let log = srv.backend.log_tail(20000);
    assert!(!log.contains("--inode-file-handles=prefer"), "{log}");
}

/// `--inode-file-handles=prefer` without CAP_DAC_READ_SEARCH (dropped by --modcaps, or
/// never had: started unprivileged, as nobody, in its user namespace) starts all the same,
/// says once why file handles are off, and serves with a descriptor per inode, as `never`.
/// Where `mandatory` refuses to start
/// (`mandatory_file_handles_fail_at_start_without_handles_or_the_capability`).
#[test]
fn prefer_file_handles_fall_back_to_descriptors_without_the_capability() {
    const NOBODY: u32 = 65534;
    for unprivileged in [false, true] {
        let disk = Ext4::new();
        let share = disk.mnt.join("share");
        let run = disk.root.join("run");
        for dir in [&share, &run] {
            std::fs::create_dir(dir).unwrap();
            std::os::unix::fs::chown(dir, Some(NOBODY), Some(NOBODY)).unwrap();
        }
        let socket = run.join("vfs.sock");
        let mut spec = spec(&["--inode-file-handles=prefer"]);
        if unprivileged {
            let zerodax = std::mem::replace(&mut spec.program, PathBuf::from("setpriv"));
            let mut args = vec![
                format!("--reuid={NOBODY}"),
                format!("--regid={NOBODY}"),
                "--clear-groups".to_owned(),
                zerodax.to_str().unwrap().to_owned(),
            ];
            args.extend(spec.args.iter().cloned());
            spec.args = args;
        } else {
            spec.args.push("--modcaps=-dac_read_search".to_owned());
        }
        let backend = spec
            .spawn(&socket, &share, &disk.root.join("serve.log"), TIMEOUT)
            .unwrap_or_else(|e| panic!("unprivileged {unprivileged}: {e}"));
        let srv = Served {
            backend,
            socket,
            disk,
        };
        let mut fs = srv.connect();
        let grown = lookups_grow_descriptors(&srv, &share, &mut fs);
        assert!(
            grown >= LOOKUPS,
            "unprivileged {unprivileged}: a descriptor per inode, grown by {grown}"
        );
        let (e, o) = fs
            .create(
                FUSE_ROOT_ID,
                "f",
                libc::O_RDWR as u32,
                libc::S_IFREG | 0o644,
                0,
            )
            .unwrap_or_else(|e| panic!("{e}\n{}", srv.backend.log_tail(2000)));
        fs.write(e.nodeid, o.fh, 0, b"by descriptor").unwrap();
        fs.release(e.nodeid, o.fh, 0).unwrap();
        assert_eq!(std::fs::read(share.join("f")).unwrap(), b"by descriptor");
        let log = srv.backend.log_tail(20000);
        let warned = log
            .lines()
            .filter(|l| l.contains("--inode-file-handles=prefer"))
            .collect::<Vec<_>>();
        assert!(
            warned.len() == 1 && warned[0].contains("CAP_DAC_READ_SEARCH"),
            "unprivileged {unprivileged}: one warning naming the capability: {log}"
        );
    }
}

/// `--inode-file-handles=prefer` where a filesystem makes no file handles: a proc mounted
/// inside the share is served through descriptors (its lookups succeed, where `mandatory`'s
/// fail with EOPNOTSUPP), beside the share's and a tmpfs submount's nodes by handle; and a
/// share that is itself such a filesystem starts with one warning, runs as `never`, and
/// keeps no CAP_DAC_READ_SEARCH.
#[test]
fn prefer_file_handles_fall_back_to_descriptors_where_there_are_none() {
    let srv = Served::start(&["--inode-file-handles=prefer"]);
    let mnt = &srv.disk.mnt;
    std::fs::write(mnt.join("f"), b"ext4").unwrap();
    let sub = mnt.join("sub");
    let procdir = mnt.join("proc");
    std::fs::create_dir(&sub).unwrap();
    std::fs::create_dir(&procdir).unwrap();
    let mounted = |args: &[&str], at: &Path| {
        let status = Command::new("mount").args(args).arg(at).status().unwrap();
        assert!(status.success(), "mount {args:?}");
        Unmount(at.to_owned())
    };
    let sub_mount = mounted(&["-t", "tmpfs", "-o", "size=1m", "zerodax-sub"], &sub);
    let proc_mount = mounted(&["-t", "proc", "proc"], &procdir);
    std::fs::write(sub.join("in-sub"), b"tmpfs").unwrap();

    let mut fs = srv.connect();
    let log = |srv: &Served| srv.backend.log_tail(4000);
    let pid = srv.backend.serving_pid().unwrap();
    let read_all = |fs: &mut FuseClient, node: u64| {
        let o = fs.open(node, libc::O_RDONLY as u32).unwrap();
        let data = fs.read(node, o.fh, 0, 4096).unwrap();
        fs.release(node, o.fh, 0).unwrap();
        data
    };
    let f = fs.lookup(FUSE_ROOT_ID, "f").unwrap().nodeid;
    assert_eq!(read_all(&mut fs, f), b"ext4");
    let s = fs.lookup(FUSE_ROOT_ID, "sub").unwrap().nodeid;
    let in_sub = fs.lookup(s, "in-sub").unwrap().nodeid;
    assert_eq!(read_all(&mut fs, in_sub), b"tmpfs");

    // proc: a descriptor for each node, and every request served.
    let before = open_fds(pid);
    let p = fs
        .lookup(FUSE_ROOT_ID, "proc")
        .unwrap_or_else(|e| panic!("proc: {e}\n{}", log(&srv)));
    assert_eq!(p.attr.mode & libc::S_IFMT, libc::S_IFDIR);
    let names = ["uptime", "version", "loadavg", "meminfo", "filesystems"];
    for name in names {
        let e = fs
            .lookup(p.nodeid, name)
            .unwrap_or_else(|e| panic!("proc/{name}: {e}\n{}", log(&srv)));
        fs.getattr(e.nodeid, None).unwrap();
        assert!(!read_all(&mut fs, e.nodeid).is_empty(), "proc/{name}");
    }
    let grown = open_fds(pid).saturating_sub(before);
    assert!(
        grown > names.len(),
        "proc's nodes by descriptor: grown by {grown}"
    );
    let dh = fs.opendir(p.nodeid, 0).unwrap().fh;
    assert!(!fs.readdir(p.nodeid, dh, 0, 4096).unwrap().is_empty());
    fs.releasedir(p.nodeid, dh).unwrap();
    // Nodes by handle still serve beside them.
    assert_eq!(read_all(&mut fs, f), b"ext4");
    assert!(
        !log(&srv).contains("--inode-file-handles=prefer"),
        "no warning for a submount: {}",
        log(&srv)
    );
    drop(fs);
    drop((proc_mount, sub_mount, srv));

    // The share itself without file handles.
    let dir = Ext4::new();
    let socket = dir.root.join("vfs.sock");
    let backend = spec(&["--inode-file-handles=prefer"])
        .spawn(
            &socket,
            Path::new("/proc"),
            &dir.root.join("serve.log"),
            TIMEOUT,
        )
        .unwrap_or_else(|e| panic!("prefer on /proc: {e}"));
    let srv = Served {
        backend,
        socket,
        disk: dir,
    };
    let mut fs = srv.connect();
    let e = fs.lookup(FUSE_ROOT_ID, "uptime").unwrap();
    assert!(!read_all(&mut fs, e.nodeid).is_empty());
    let all = log(&srv);
    let warned = all
        .lines()
        .filter(|l| l.contains("--inode-file-handles=prefer"))
        .collect::<Vec<_>>();
    assert!(
        warned.len() == 1 && warned[0].contains("makes no file handles"),
        "one warning: {all}"
    );
    // Running as `never`, it keeps what `never` keeps (CAP_DAC_READ_SEARCH is bit 2).
    let pid = srv.backend.serving_pid().unwrap();
    let eff = u64::from_str_radix(&proc_status(pid, "CapEff"), 16).unwrap();
    assert_eq!(eff & 1 << 2, 0, "CapEff {eff:x}");
}

/// Every kind of request on nodes referenced by file handle, over the socket (pivoted into
/// the share, chrooted there, or not confined): the share's mount and a submount entered by a
/// lookup both serve; a submount whose filesystem makes no file handles (proc) fails its
/// lookup instead of falling back to a descriptor; a node whose file the host deleted
/// answers ESTALE. Under each sandbox.
#[test]
fn mandatory_file_handles_serve_every_operation() {
    for sandbox in ["namespace", "chroot", "none"] {
        mandatory_file_handles_serve_every_operation_in(sandbox);
    }
}

fn mandatory_file_handles_serve_every_operation_in(sandbox: &str) {
    let srv = Served::start(&["--inode-file-handles=mandatory", "--sandbox", sandbox]);
    let mnt = &srv.disk.mnt;
    std::fs::create_dir(mnt.join("d")).unwrap();
    std::fs::write(mnt.join("d/f"), b"hello").unwrap();
    let sub = mnt.join("sub");
    let procdir = mnt.join("proc");
    std::fs::create_dir(&sub).unwrap();
    std::fs::create_dir(&procdir).unwrap();
    let mounted = |args: &[&str], at: &Path| {
        let status = Command::new("mount").args(args).arg(at).status().unwrap();
        assert!(status.success(), "mount {args:?}");
        Unmount(at.to_owned())
    };
    let _sub = mounted(&["-t", "tmpfs", "-o", "size=1m", "zerodax-sub"], &sub);
    let _proc = mounted(&["-t", "proc", "proc"], &procdir);
    std::fs::write(sub.join("in-sub"), b"tmpfs").unwrap();

    let mut fs = srv.connect();
    let log = |srv: &Served| srv.backend.log_tail(2000);
    let d = fs.lookup(FUSE_ROOT_ID, "d").unwrap().nodeid;
    let f = fs.lookup(d, "f").unwrap();
    // Inode numbers are the host's, as with descriptors (docs/mount.md, Inode numbers).
    assert_eq!(f.nodeid, std::fs::metadata(mnt.join("d/f")).unwrap().ino());
    assert_eq!(fs.getattr(f.nodeid, None).unwrap().attr.size, 5);

    let o = fs.open(f.nodeid, libc::O_RDWR as u32).unwrap();
    assert_eq!(fs.read(f.nodeid, o.fh, 0, 64).unwrap(), b"hello");
    fs.write(f.nodeid, o.fh, 5, b", handles").unwrap();
    fs.release(f.nodeid, o.fh, 0).unwrap();
    assert_eq!(std::fs::read(mnt.join("d/f")).unwrap(), b"hello, handles");

    let set = FuseSetattrIn {
        valid: FATTR_MODE | FATTR_SIZE,
        mode: 0o600,
        size: 5,
        ..Default::default()
    };
    let attr = fs.setattr(f.nodeid, &set).unwrap().attr;
    assert_eq!((attr.mode & 0o7777, attr.size), (0o600, 5));
    let host = std::fs::metadata(mnt.join("d/f")).unwrap();
    assert_eq!((host.mode() & 0o7777, host.len()), (0o600, 5));

    fs.setxattr(f.nodeid, "user.k", b"v", 0).unwrap();
    assert_eq!(host_getxattr(&mnt.join("d/f"), "user.k").unwrap(), b"v");

    let dh = fs.opendir(d, 0).unwrap().fh;
    let mut names: Vec<Vec<u8>> = fs
        .readdir(d, dh, 0, 4096)
        .unwrap()
        .into_iter()
        .map(|e| e.name)
        .collect();
    fs.releasedir(d, dh).unwrap();
    names.sort();
    assert_eq!(names, [&b"."[..], b"..", b"f"]);

    fs.rename(d, "f", FUSE_ROOT_ID, "g").unwrap();
    assert!(mnt.join("g").is_file());
    assert_eq!(fs.lookup(FUSE_ROOT_ID, "g").unwrap().nodeid, f.nodeid);
    let (c, co) = fs
        .create(d, "c", libc::O_WRONLY as u32, libc::S_IFREG | 0o644, 0)
        .unwrap_or_else(|e| panic!("create: {e}\n{}", log(&srv)));
    fs.release(c.nodeid, co.fh, 0).unwrap();
    fs.unlink(d, "c").unwrap();
    assert!(!mnt.join("d/c").exists());

    // A submount, entered by lookup: its root gives the mount's descriptor.
    let s = fs.lookup(FUSE_ROOT_ID, "sub").unwrap().nodeid;
    let in_sub = fs
        .lookup(s, "in-sub")
        .unwrap_or_else(|e| panic!("in-sub: {e}\n{}", log(&srv)));
    let o = fs.open(in_sub.nodeid, libc::O_RDONLY as u32).unwrap();
    assert_eq!(fs.read(in_sub.nodeid, o.fh, 0, 64).unwrap(), b"tmpfs");
    fs.release(in_sub.nodeid, o.fh, 0).unwrap();
    fs.mkdir(s, "made", 0o755, 0).unwrap();
    assert!(sub.join("made").is_dir());

    // proc makes no file handles: no node, and no fallback to a descriptor.
    assert_eq!(errno_of(fs.lookup(FUSE_ROOT_ID, "proc")), libc::EOPNOTSUPP);

    // Deleted on the host while the guest holds the node: nothing pins the inode any more.
    std::fs::remove_file(mnt.join("g")).unwrap();
    let e = errno_of(fs.getattr(f.nodeid, None));
    assert!(e == libc::ESTALE || e == libc::ENOENT, "errno {e}");
    let e = errno_of(fs.open(f.nodeid, libc::O_RDONLY as u32));
    assert!(e == libc::ESTALE || e == libc::ENOENT, "errno {e}");
    // And the daemon serves on.
    fs.getattr(FUSE_ROOT_ID, None).unwrap();
}

/// `--inode-file-handles=mandatory` refuses to start on a filesystem without file handles,
/// and without CAP_DAC_READ_SEARCH (dropped by --modcaps, or never had: started
/// unprivileged, as nobody), each with a line saying so.
#[test]
fn mandatory_file_handles_fail_at_start_without_handles_or_the_capability() {
    const NOBODY: u32 = 65534;
    let dir = Ext4::new();
    let run = dir.root.join("run");
    let nobodys = dir.mnt.join("nobodys");
    for d in [&run, &nobodys] {
        std::fs::create_dir(d).unwrap();
        std::os::unix::fs::chown(d, Some(NOBODY), Some(NOBODY)).unwrap();
    }
    let root: &[&str] = &[];
    let nobody: &[&str] = &["--reuid=65534", "--regid=65534", "--clear-groups"];
    for (as_user, share, extra, want) in [
        (root, Path::new("/proc"), None, "makes no file handles"),
        (
            root,
            dir.mnt.as_path(),
            Some("--modcaps=-dac_read_search"),
            "CAP_DAC_READ_SEARCH",
        ),
        (nobody, nobodys.as_path(), None, "CAP_DAC_READ_SEARCH"),
    ] {
        let mut cmd = if as_user.is_empty() {
            Command::new(zerodax())
        } else {
            let mut c = Command::new("setpriv");
            c.args(as_user).arg(zerodax());
            c
        };
        let out = cmd
            .arg("serve")
            .arg("--socket-path")
            .arg(run.join("handles.sock"))
            .arg("--shared-dir")
            .arg(share)
            .arg("--inode-file-handles=mandatory")
            .args(extra)
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            !out.status.success()
                && err.lines().count() == 1
                && err.contains("--inode-file-handles=mandatory")
                && err.contains(want),
            "{as_user:?} {share:?} {extra:?}: {}: {err}",
            out.status
        );
    }
}

/// With `--inode-file-handles=mandatory` the descriptor of a submount lives as long as nodes
/// on it do: once the guest forgot them, the host unmounts it (no EBUSY), as with `never`,
/// where each node's O_PATH descriptor is what pins it. `--sandbox none`, so the daemon
/// holds the host's mount itself (a namespace sandbox holds a copy).
#[test]
fn mandatory_file_handles_let_an_unused_submount_go() {
    for mode in ["never", "mandatory"] {
        let flag = format!("--inode-file-handles={mode}");
        let srv = Served::start(&[flag.as_str(), "--sandbox", "none"]);
        let sub = srv.disk.mnt.join("sub");
        std::fs::create_dir(&sub).unwrap();
        let status = Command::new("mount")
            .args(["-t", "tmpfs", "-o", "size=1m", "zerodax-sub"])
            .arg(&sub)
            .status()
            .unwrap();
        assert!(status.success());
        let unmount = Unmount(sub.clone());
        std::fs::write(sub.join("x"), b"x").unwrap();
        let mut fs = srv.connect();
        let s = fs.lookup(FUSE_ROOT_ID, "sub").unwrap().nodeid;
        let x = fs.lookup(s, "x").unwrap().nodeid;
        fs.getattr(x, None).unwrap();
        // In use: the host cannot unmount it.
        let umount = || {
            Command::new("umount")
                .arg(&sub)
                .stderr(Stdio::null())
                .status()
                .unwrap()
                .success()
        };
        assert!(
            !umount(),
            "{mode}: unmounted while the guest holds nodes on it"
        );
        fs.batch_forget(&[(x, 1), (s, 1)]).unwrap();
        // FORGET has no reply: give the hiprio queue a moment.
        let deadline = std::time::Instant::now() + TIMEOUT;
        let mut gone = umount();
        while !gone && std::time::Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
            gone = umount();
        }
        assert!(
            gone,
            "{mode}: still busy after the guest forgot every node on it"
        );
        std::mem::forget(unmount);
        // The share serves on.
        fs.getattr(FUSE_ROOT_ID, None).unwrap();
    }
}

/// `--killpriv-v2` (`-o killpriv_v2`): INIT accepts HANDLE_KILLPRIV_V2 when the guest offers
/// it, and the daemon clears set-id bits where the guest kernel says so, by the host's rule
/// (set-user-id always, set-group-id with group execute or for a caller outside the group):
/// a WRITE with FUSE_WRITE_KILL_SUIDGID, a SETATTR of the size with FATTR_KILL_SUIDGID, an
/// OPEN or a CREATE of an existing file with O_TRUNC and FUSE_OPEN_KILL_SUIDGID, a FALLOCATE
/// or COPY_FILE_RANGE by a caller other than root. Unmarked requests keep them; a file the CREATE makes keeps
/// the mode asked for. Without the flag INIT does not accept it, and only the WRITE flag
/// (which the guest also sets on direct I/O) is acted on.
#[test]
fn killpriv_v2_clears_set_id_bits_where_the_guest_says() {
    const NOBODY: u32 = 65534;
    for flags in [
        &["-o", "killpriv_v2"][..],
        &["--killpriv-v2", "--no-killpriv-v2"],
    ] {
        let srv = Served::start(flags);
        let fs = srv.connect();
        assert_eq!(
            fs.accepted_flags() & FUSE_HANDLE_KILLPRIV_V2 != 0,
            flags[1] == "killpriv_v2",
            "{flags:?}"
        );
    }
    for on in [true, false] {
        let srv = Served::start(if on { &["--killpriv-v2"] } else { &[] });
        let mut fs = srv.connect();
        assert_eq!(fs.accepted_flags() & FUSE_HANDLE_KILLPRIV_V2 != 0, on);
        let host = |name: &str| srv.disk.mnt.join(name);
        let seed = |name: &str, mode: u32, gid: u32| {
            std::fs::write(host(name), b"data").unwrap();
            std::os::unix::fs::chown(host(name), Some(0), Some(gid)).unwrap();
            std::fs::set_permissions(host(name), std::fs::Permissions::from_mode(mode)).unwrap();
        };
        let mode = |name: &str| std::fs::metadata(host(name)).unwrap().mode() & 0o7777;
        let names = [
            ("w", 0o2666, 0),
            ("w-unmarked", 0o2666, 0),
            ("w-in-group", 0o2666, NOBODY),
            ("w-group-exec", 0o2676, NOBODY),
            ("t", 0o4777, 0),
            ("t-unmarked", 0o4777, 0),
            ("o", 0o6777, 0),
            ("c", 0o6777, 0),
            ("f", 0o2666, 0),
            ("f-root", 0o2666, 0),
            ("f-copy", 0o2666, 0),
        ];
        let mut node = std::collections::HashMap::new();
        let mut fh = std::collections::HashMap::new();
        for (name, m, gid) in names {
            seed(name, m, gid);
            let e = fs.lookup(FUSE_ROOT_ID, name).unwrap();
            node.insert(name, e.nodeid);
            if name.starts_with('w') || name.starts_with('f') {
                fh.insert(name, fs.open(e.nodeid, libc::O_RDWR as u32).unwrap().fh);
            }
        }
        fs.set_credentials(NOBODY, NOBODY, 1);
        let write = |fs: &mut FuseClient, name: &str, write_flags: u32| {
            let data = b"x";
            let arg = FuseWriteIn {
                fh: fh[name],
                offset: 0,
                size: 1,
                write_flags,
                ..Default::default()
            };
            fs.request(node[name], Operation::Write { arg, data }, 4096)
                .unwrap();
        };
        write(&mut fs, "w", FUSE_WRITE_KILL_SUIDGID);
        write(&mut fs, "w-unmarked", 0);
        write(&mut fs, "w-in-group", FUSE_WRITE_KILL_SUIDGID);
        write(&mut fs, "w-group-exec", FUSE_WRITE_KILL_SUIDGID);
        assert_eq!(std::fs::read(host("w")).unwrap(), b"xata");
        // The WRITE flag is acted on with or without HANDLE_KILLPRIV_V2.
        assert_eq!(mode("w"), 0o666, "marked write");
        assert_eq!(mode("w-unmarked"), 0o2666, "unmarked write");
        assert_eq!(mode("w-in-group"), 0o2666, "write by a caller in the group");
        assert_eq!(mode("w-group-exec"), 0o676, "group-executable");

        let truncate = |fs: &mut FuseClient, name: &str, kill: u32| {
            let arg = FuseSetattrIn {
                valid: FATTR_SIZE | kill,
                size: 1,
                ..Default::default()
            };
            fs.setattr(node[name], &arg).unwrap();
        };
        truncate(&mut fs, "t", FATTR_KILL_SUIDGID);
        truncate(&mut fs, "t-unmarked", 0);
        assert_eq!((mode("t"), mode("t-unmarked")), (0o777, 0o4777), "SETATTR");
        assert_eq!(std::fs::metadata(host("t")).unwrap().len(), 1);

        let open = FuseOpenIn {
            flags: (libc::O_RDWR | libc::O_TRUNC) as u32,
            open_flags: FUSE_OPEN_KILL_SUIDGID,
        };
        fs.request(node["o"], Operation::Open(open), 4096).unwrap();
        assert_eq!(mode("o"), 0o777, "OPEN");
        assert_eq!(std::fs::metadata(host("o")).unwrap().len(), 0);

        std::fs::create_dir(host("pub")).unwrap();
        std::fs::set_permissions(host("pub"), std::fs::Permissions::from_mode(0o777)).unwrap();
        let pubdir = fs.lookup(FUSE_ROOT_ID, "pub").unwrap().nodeid;
        std::fs::rename(host("c"), host("pub/c")).unwrap();
        for name in [c"c", c"new"] {
            let arg = FuseCreateIn {
                flags: (libc::O_RDWR | libc::O_CREAT | libc::O_TRUNC) as u32,
                mode: libc::S_IFREG | 0o6755,
                umask: 0,
                open_flags: FUSE_OPEN_KILL_SUIDGID,
            };
            fs.request(pubdir, Operation::Create { arg, name }, 4096)
                .unwrap();
        }
        assert_eq!(mode("pub/c"), 0o777, "CREATE of an existing file");
        assert_eq!(mode("pub/new"), 0o6755, "a file the CREATE made");

        fs.fallocate(node["f"], fh["f"], 0, 8192, 0).unwrap();
        let copy = FuseCopyFileRangeIn {
            fh_in: fh["w"],
            nodeid_out: node["f-copy"],
            fh_out: fh["f-copy"],
            len: 4,
            ..Default::default()
        };
        assert_eq!(fs.copy_file_range(node["w"], &copy).unwrap(), 4);
        fs.set_credentials(0, 0, 1);
        fs.fallocate(node["f-root"], fh["f-root"], 0, 8192, 0)
            .unwrap();
        let kill = if on { 0o666 } else { 0o2666 };
        assert_eq!(
            (mode("f"), mode("f-copy"), mode("f-root")),
            (kill, kill, 0o2666),
            "FALLOCATE, COPY_FILE_RANGE"
        );
    }
}
