//! Every opcode of the protocol crate's `Opcode` goes to every backend once. The match in
//! `exercise` is exhaustive, so an opcode added to the protocol crate fails the build here
//! until it is given a request and an expectation.

mod common;

use std::time::Duration;

use common::{create_empty, for_each_backend, Harness};
use frontend::driver::{HIPRIO_QUEUE, REQUEST_QUEUE};
use frontend::fuse::{FuseClient, Reply};
use protocol::abi::*;
use protocol::request::encode_list;
use protocol::{ForgetList, Opcode, Operation, RemoveMappingList, WireList};

/// What a backend must do with the sample request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Expect {
    /// A success reply (ENOSYS only where the backend lists the opcode as a known gap).
    Success,
    /// A well-formed reply, success or error: support depends on the backend's options.
    AnyReply,
    /// An error reply: the request cannot succeed on this device.
    Error,
    /// The chain comes back with nothing written (FORGET, BATCH_FORGET).
    NoReply,
    /// Never sent by a virtio-fs guest; a reply or silence are both fine, a malformed
    /// reply or a dead backend are not.
    MaybeReply,
}

struct Nodes {
    file: u64,
    fh: u64,
    dir: u64,
    dfh: u64,
    symlink: u64,
    opened: Option<u64>,
    opened_dir: Option<u64>,
}

fn setup(h: &mut Harness) -> Nodes {
    let fs = &mut h.fs;
    let rw = libc::O_RDWR as u32;
    let (f, o) = fs
        .create(FUSE_ROOT_ID, "file", rw, libc::S_IFREG | 0o644, 0)
        .unwrap();
    fs.write(f.nodeid, o.fh, 0, &[7u8; 8192]).unwrap();
    let d = fs.mkdir(FUSE_ROOT_ID, "dir", 0o755, 0).unwrap();
    let dh = fs.opendir(d.nodeid, libc::O_RDONLY as u32).unwrap();
    let s = fs.symlink(FUSE_ROOT_ID, "sl", "file").unwrap();
    for name in ["victim", "renamed"] {
        create_empty(fs, d.nodeid, name);
    }
    fs.mkdir(d.nodeid, "victimdir", 0o755, 0).unwrap();
    Nodes {
        file: f.nodeid,
        fh: o.fh,
        dir: d.nodeid,
        dfh: dh.fh,
        symlink: s.nodeid,
        opened: None,
        opened_dir: None,
    }
}

fn lk(fh: u64, typ: i32) -> FuseLkIn {
    FuseLkIn {
        fh,
        owner: 0x1234,
        lk: FuseFileLock {
            start: 0,
            end: i64::MAX as u64,
            typ: typ as u32,
            pid: std::process::id(),
        },
        lk_flags: 0,
        padding: 0,
    }
}

/// Sends `op` and returns the reply, or `None` when the chain came back empty or (for
/// `MaybeReply`) did not come back within a second.
fn send(h: &mut Harness, node: u64, op: Operation<'_>, expect: Expect) -> Option<Reply> {
    let opcode = op.opcode();
    let queue = match opcode {
        Opcode::Forget | Opcode::BatchForget | Opcode::Interrupt => HIPRIO_QUEUE,
        _ => REQUEST_QUEUE,
    };
    // Reply room as Linux sizes it: exactly the header plus what was asked for.
    let room: u32 = match (&op, expect) {
        (_, Expect::NoReply) => 0,
        (Operation::Read(a) | Operation::Readdir(a) | Operation::Readdirplus(a), _) => 16 + a.size,
        (Operation::Getxattr { arg, .. } | Operation::Listxattr(arg), _) => 16 + arg.size.max(8),
        _ => 4096,
    };
    let (unique, bytes) = h.fs.encode(node, op);
    let wait = if expect == Expect::MaybeReply {
        Duration::from_secs(1)
    } else {
        common::TIMEOUT
    };
    let split = bytes.len().min(FuseInHeader::SIZE);
    let mut readable = vec![&bytes[..split]];
    if bytes.len() > split {
        readable.push(&bytes[split..]);
    }
    let writable: Vec<u32> = if room == 0 {
        vec![]
    } else {
        vec![16, room - 16]
    };
    let d = h.fs.driver();
    let token = d.submit(queue, &readable, &writable).unwrap();
    let c = match d.wait(token, wait) {
        Ok(c) => c,
        Err(frontend::driver::DriverError::Timeout { .. }) if expect == Expect::MaybeReply => {
            return None
        }
        Err(e) => panic!("{}: {opcode}: {e}\n{}", h.name, h.backend.log_tail(2000)),
    };
    if c.used_len == 0 && matches!(expect, Expect::NoReply | Expect::MaybeReply) {
        return None;
    }
    if c.used_len == 0 && opcode == Opcode::Destroy && h.spec.tolerates_gap(opcode) {
        return None;
    }
    let r = FuseClient::check_reply(opcode, unique, &c)
        .unwrap_or_else(|e| panic!("{}: {opcode}: {e}", h.name));
    Some(r)
}

fn exercise(h: &mut Harness, op: Opcode, n: &mut Nodes) {
    use Expect::*;
    if h.spec.fatal.contains(&op) {
        eprintln!("{}: {op} not sent: it is fatal to this backend", h.name);
        return;
    }
    use Operation as O;
    let ro = FuseOpenIn {
        flags: libc::O_RDONLY as u32,
        open_flags: 0,
    };
    let read = |fh| FuseReadIn {
        fh,
        offset: 0,
        size: 4096,
        ..Default::default()
    };
    let (expect, reply) = match op {
        Opcode::Lookup => (
            Success,
            send(h, FUSE_ROOT_ID, O::Lookup { name: c"file" }, Success),
        ),
        Opcode::Forget => {
            let e = h.fs.lookup(FUSE_ROOT_ID, "file").unwrap();
            let op = O::Forget(FuseForgetIn { nlookup: 1 });
            (NoReply, send(h, e.nodeid, op, NoReply))
        }
        Opcode::Getattr => (
            Success,
            send(h, n.file, O::Getattr(FuseGetattrIn::default()), Success),
        ),
        Opcode::Setattr => {
            let arg = FuseSetattrIn {
                valid: FATTR_MODE,
                mode: libc::S_IFREG | 0o640,
                ..Default::default()
            };
            (Success, send(h, n.file, O::Setattr(arg), Success))
        }
        Opcode::Readlink => (Success, send(h, n.symlink, O::Readlink, Success)),
        Opcode::Symlink => {
            let op = O::Symlink {
                name: c"sl2",
                target: c"dir/victim",
            };
            (Success, send(h, FUSE_ROOT_ID, op, Success))
        }
        Opcode::Mknod => {
            let arg = FuseMknodIn {
                mode: libc::S_IFIFO | 0o600,
                ..Default::default()
            };
            (
                Success,
                send(h, n.dir, O::Mknod { arg, name: c"fifo" }, Success),
            )
        }
        Opcode::Mkdir => {
            let arg = FuseMkdirIn {
                mode: 0o700,
                umask: 0,
            };
            (
                Success,
                send(
                    h,
                    n.dir,
                    O::Mkdir {
                        arg,
                        name: c"newdir",
                    },
                    Success,
                ),
            )
        }
        Opcode::Unlink => (
            Success,
            send(h, n.dir, O::Unlink { name: c"victim" }, Success),
        ),
        Opcode::Rmdir => (
            Success,
            send(h, n.dir, O::Rmdir { name: c"victimdir" }, Success),
        ),
        Opcode::Rename => {
            let op = O::Rename {
                arg: FuseRenameIn {
                    newdir: FUSE_ROOT_ID,
                },
                name: c"renamed",
                newname: c"renamed-up",
            };
            (Success, send(h, n.dir, op, Success))
        }
        Opcode::Link => {
            let op = O::Link {
                arg: FuseLinkIn { oldnodeid: n.file },
                name: c"hardlink",
            };
            (Success, send(h, n.dir, op, Success))
        }
        Opcode::Open => {
            let r = send(h, n.file, O::Open(ro), Success);
            if let Some(r) = &r {
                n.opened = FuseOpenOut::decode(&r.body).map(|o| o.fh);
            }
            (Success, r)
        }
        Opcode::Read => (Success, send(h, n.file, O::Read(read(n.fh)), Success)),
        Opcode::Write => {
            let arg = FuseWriteIn {
                fh: n.fh,
                offset: 100,
                size: 5,
                ..Default::default()
            };
            (
                Success,
                send(
                    h,
                    n.file,
                    O::Write {
                        arg,
                        data: b"write",
                    },
                    Success,
                ),
            )
        }
        Opcode::Statfs => (Success, send(h, FUSE_ROOT_ID, O::Statfs, Success)),
        Opcode::Release => {
            let arg = FuseReleaseIn {
                fh: n.opened.take().expect("OPEN ran first"),
                ..Default::default()
            };
            (Success, send(h, n.file, O::Release(arg), Success))
        }
        Opcode::Fsync => {
            let arg = FuseFsyncIn {
                fh: n.fh,
                ..Default::default()
            };
            (Success, send(h, n.file, O::Fsync(arg), Success))
        }
        Opcode::Setxattr => {
            let arg = FuseSetxattrIn {
                size: 3,
                ..Default::default()
            };
            let op = O::Setxattr {
                arg,
                name: c"user.op",
                value: b"abc",
            };
            (Success, send(h, n.file, op, Success))
        }
        Opcode::Getxattr => {
            let arg = FuseGetxattrIn {
                size: 64,
                padding: 0,
            };
            let op = O::Getxattr {
                arg,
                name: c"user.op",
            };
            (Success, send(h, n.file, op, Success))
        }
        Opcode::Listxattr => {
            let arg = FuseGetxattrIn {
                size: 0,
                padding: 0,
            };
            (Success, send(h, n.file, O::Listxattr(arg), Success))
        }
        Opcode::Removexattr => {
            let op = O::Removexattr { name: c"user.op" };
            (Success, send(h, n.file, op, Success))
        }
        Opcode::Flush => {
            let arg = FuseFlushIn {
                fh: n.fh,
                ..Default::default()
            };
            (Success, send(h, n.file, O::Flush(arg), Success))
        }
        Opcode::Init => {
            // A second INIT: Linux never sends one; the answer is the server's choice.
            let arg = FuseInitIn {
                major: 7,
                minor: 31,
                ..Default::default()
            };
            (AnyReply, send(h, FUSE_ROOT_ID, O::Init(arg), AnyReply))
        }
        Opcode::Opendir => {
            let r = send(h, n.dir, O::Opendir(ro), Success);
            if let Some(r) = &r {
                n.opened_dir = FuseOpenOut::decode(&r.body).map(|o| o.fh);
            }
            (Success, r)
        }
        Opcode::Readdir => (Success, send(h, n.dir, O::Readdir(read(n.dfh)), Success)),
        Opcode::Releasedir => {
            let arg = FuseReleaseIn {
                fh: n.opened_dir.take().expect("OPENDIR ran first"),
                ..Default::default()
            };
            (Success, send(h, n.dir, O::Releasedir(arg), Success))
        }
        Opcode::Fsyncdir => {
            let arg = FuseFsyncIn {
                fh: n.dfh,
                ..Default::default()
            };
            (Success, send(h, n.dir, O::Fsyncdir(arg), Success))
        }
        Opcode::Getlk => (
            AnyReply,
            send(h, n.file, O::Getlk(lk(n.fh, libc::F_RDLCK)), AnyReply),
        ),
        Opcode::Setlk => (
            AnyReply,
            send(h, n.file, O::Setlk(lk(n.fh, libc::F_UNLCK)), AnyReply),
        ),
        Opcode::Setlkw => (
            AnyReply,
            send(h, n.file, O::Setlkw(lk(n.fh, libc::F_UNLCK)), AnyReply),
        ),
        Opcode::Access => {
            let arg = FuseAccessIn {
                mask: libc::R_OK as u32,
                padding: 0,
            };
            (Success, send(h, n.file, O::Access(arg), Success))
        }
        Opcode::Create => {
            let arg = FuseCreateIn {
                flags: libc::O_RDWR as u32,
                mode: libc::S_IFREG | 0o600,
                ..Default::default()
            };
            let r = send(
                h,
                n.dir,
                O::Create {
                    arg,
                    name: c"created",
                },
                Success,
            );
            (Success, r)
        }
        Opcode::Interrupt => {
            let arg = FuseInterruptIn { unique: 1 };
            (MaybeReply, send(h, 0, O::Interrupt(arg), MaybeReply))
        }
        Opcode::Bmap => {
            let arg = FuseBmapIn {
                block: 0,
                blocksize: 4096,
                padding: 0,
            };
            (AnyReply, send(h, n.file, O::Bmap(arg), AnyReply))
        }
        Opcode::Destroy => (Success, send(h, FUSE_ROOT_ID, O::Destroy, Success)),
        Opcode::Ioctl => {
            let arg = FuseIoctlIn {
                fh: n.fh,
                cmd: 0x8008_6601, // FS_IOC_GETFLAGS
                out_size: 8,
                ..Default::default()
            };
            (
                AnyReply,
                send(h, n.file, O::Ioctl { arg, data: b"" }, AnyReply),
            )
        }
        Opcode::Poll => {
            let arg = FusePollIn {
                fh: n.fh,
                kh: 0,
                flags: 0,
                events: libc::POLLIN as u32,
            };
            (AnyReply, send(h, n.file, O::Poll(arg), AnyReply))
        }
        Opcode::NotifyReply => {
            let arg = FuseNotifyRetrieveIn {
                size: 4,
                ..Default::default()
            };
            let op = O::NotifyReply { arg, data: b"data" };
            (MaybeReply, send(h, n.file, op, MaybeReply))
        }
        Opcode::BatchForget => {
            let e = h.fs.lookup(FUSE_ROOT_ID, "file").unwrap();
            let bytes = encode_list(&[FuseForgetOne {
                nodeid: e.nodeid,
                nlookup: 1,
            }]);
            let list: ForgetList = WireList::from_bytes(&bytes).unwrap();
            (NoReply, send(h, 0, O::BatchForget(list), NoReply))
        }
        Opcode::Fallocate => {
            let arg = FuseFallocateIn {
                fh: n.fh,
                offset: 0,
                length: 1 << 20,
                mode: 0,
                padding: 0,
            };
            (Success, send(h, n.file, O::Fallocate(arg), Success))
        }
        Opcode::Readdirplus => (
            Success,
            send(h, n.dir, O::Readdirplus(read(n.dfh)), Success),
        ),
        Opcode::Rename2 => {
            let op = O::Rename2 {
                arg: FuseRename2In {
                    newdir: n.dir,
                    flags: 0,
                    padding: 0,
                },
                name: c"renamed-up",
                newname: c"renamed-down",
            };
            (Success, send(h, FUSE_ROOT_ID, op, Success))
        }
        Opcode::Lseek => {
            let arg = FuseLseekIn {
                fh: n.fh,
                offset: 0,
                whence: libc::SEEK_DATA as u32,
                padding: 0,
            };
            (Success, send(h, n.file, O::Lseek(arg), Success))
        }
        Opcode::CopyFileRange | Opcode::CopyFileRange64 => {
            let arg = FuseCopyFileRangeIn {
                fh_in: n.fh,
                off_in: 0,
                nodeid_out: n.file,
                fh_out: n.fh,
                off_out: 1 << 20,
                len: 4096,
                flags: 0,
            };
            let o = if op == Opcode::CopyFileRange {
                O::CopyFileRange(arg)
            } else {
                O::CopyFileRange64(arg)
            };
            let expect = if op == Opcode::CopyFileRange {
                Success
            } else {
                AnyReply
            };
            (expect, send(h, n.file, o, expect))
        }
        Opcode::SetupMapping | Opcode::RemoveMapping => {
            // No SHMEM was negotiated: there is no window to map into.
            let r = if op == Opcode::SetupMapping {
                let arg = FuseSetupmappingIn {
                    fh: u64::MAX,
                    foffset: 0,
                    len: 2 << 20,
                    flags: FUSE_SETUPMAPPING_FLAG_READ,
                    moffset: 0,
                };
                send(h, n.file, O::SetupMapping(arg), Error)
            } else {
                let bytes = encode_list(&[FuseRemovemappingOne {
                    moffset: 0,
                    len: 2 << 20,
                }]);
                let list: RemoveMappingList = WireList::from_bytes(&bytes).unwrap();
                send(h, n.file, O::RemoveMapping(list), Error)
            };
            (Error, r)
        }
        Opcode::Syncfs => {
            let arg = FuseSyncfsIn { padding: 0 };
            (Success, send(h, FUSE_ROOT_ID, O::Syncfs(arg), Success))
        }
        Opcode::Tmpfile => {
            let arg = FuseCreateIn {
                flags: libc::O_RDWR as u32,
                mode: libc::S_IFREG | 0o600,
                ..Default::default()
            };
            (
                AnyReply,
                send(h, n.dir, O::Tmpfile { arg, name: c"/" }, AnyReply),
            )
        }
        Opcode::Statx => {
            let arg = FuseStatxIn {
                sx_mask: 0x7ff,
                ..Default::default()
            };
            (AnyReply, send(h, n.file, O::Statx(arg), AnyReply))
        }
        Opcode::CuseInit => {
            let arg = CuseInitIn {
                major: 7,
                minor: 45,
                ..Default::default()
            };
            (Error, send(h, FUSE_ROOT_ID, O::CuseInit(arg), Error))
        }
    };
    let what = format!("{}: {op}", h.name);
    match (expect, reply) {
        (Success, Some(r)) if r.error == 0 => {}
        (Success, Some(r)) if -r.error == libc::ENOSYS && h.spec.tolerates_gap(op) => {
            eprintln!("{what}: ENOSYS (known gap)")
        }
        (Success, None) if h.spec.tolerates_gap(op) => eprintln!("{what}: no reply (known gap)"),
        (Success, r) => panic!("{what}: expected success, got {r:?}"),
        (Error, Some(r)) => assert!(r.error < 0, "{what}: expected an error reply"),
        (Error, None) => panic!("{what}: expected an error reply, got none"),
        (AnyReply, Some(_)) => {}
        (AnyReply, None) => panic!("{what}: no reply"),
        (NoReply, None) | (MaybeReply, _) => {}
        (NoReply, Some(r)) => panic!("{what}: reply to a no-reply request: {r:?}"),
    }
}

#[test]
fn every_opcode_gets_its_expected_answer() {
    for_each_backend("opcodes", |h| {
        let mut n = setup(h);
        // INIT and DESTROY end a session: they go last.
        let (late, early): (Vec<Opcode>, Vec<Opcode>) = Opcode::ALL
            .iter()
            .partition(|op| matches!(op, Opcode::Init | Opcode::Destroy));
        for op in early {
            exercise(h, op, &mut n);
            h.assert_serving(op.kernel_name());
        }
        let fs = &mut h.fs;
        assert_eq!(fs.read(n.file, n.fh, 100, 5).unwrap(), b"write");
        for op in late {
            exercise(h, op, &mut n);
        }
    });
}
