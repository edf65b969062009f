//! Sample requests shared by the integration tests: one valid request per opcode, built by
//! an exhaustive match so that a new opcode without a sample fails to compile.

#![allow(dead_code)]

use std::ffi::CStr;

use protocol::abi::*;
use protocol::request::encode_list;
use protocol::{Extensions, Opcode, Operation, ParseOptions, Request, WireList};

/// Backing storage for the borrowed parts of the samples.
pub struct Store {
    pub forgets: Vec<u8>,
    pub removes: Vec<u8>,
    pub data: Vec<u8>,
}

impl Store {
    pub fn new() -> Self {
        Self {
            forgets: encode_list(&[
                FuseForgetOne {
                    nodeid: 5,
                    nlookup: 2,
                },
                FuseForgetOne {
                    nodeid: u64::MAX,
                    nlookup: 1 << 40,
                },
                FuseForgetOne {
                    nodeid: 9,
                    nlookup: 1,
                },
            ]),
            removes: encode_list(&[
                FuseRemovemappingOne {
                    moffset: 0,
                    len: 2 << 20,
                },
                FuseRemovemappingOne {
                    moffset: 6 << 20,
                    len: 4 << 20,
                },
            ]),
            data: (0..=255u8).cycle().take(1000).collect(),
        }
    }
}

pub fn cs(s: &'static [u8]) -> &'static CStr {
    CStr::from_bytes_with_nul(s).unwrap()
}

/// One valid operation for `op`.
pub fn sample<'a>(op: Opcode, st: &'a Store) -> Operation<'a> {
    use Operation as O;
    let read = FuseReadIn {
        fh: 3,
        offset: 4096,
        size: 65536,
        read_flags: FUSE_READ_LOCKOWNER,
        lock_owner: 77,
        flags: 2,
        padding: 0,
    };
    let release = FuseReleaseIn {
        fh: 3,
        flags: 0o100002,
        release_flags: FUSE_RELEASE_FLUSH,
        lock_owner: 8,
    };
    let lk = FuseLkIn {
        fh: 3,
        owner: 99,
        lk: FuseFileLock {
            start: 0,
            end: u64::MAX,
            typ: 1,
            pid: 1234,
        },
        lk_flags: 0,
        padding: 0,
    };
    let create = FuseCreateIn {
        flags: 0o100101,
        mode: 0o100644,
        umask: 0o022,
        open_flags: 0,
    };
    let cfr = FuseCopyFileRangeIn {
        fh_in: 3,
        off_in: 0,
        nodeid_out: 12,
        fh_out: 4,
        off_out: 1 << 30,
        len: 1 << 20,
        flags: 0,
    };
    match op {
        Opcode::Lookup => O::Lookup {
            name: cs(b"file\0"),
        },
        Opcode::Forget => O::Forget(FuseForgetIn { nlookup: 3 }),
        Opcode::Getattr => O::Getattr(FuseGetattrIn {
            getattr_flags: FUSE_GETATTR_FH,
            dummy: 0,
            fh: 3,
        }),
        Opcode::Setattr => O::Setattr(FuseSetattrIn {
            valid: FATTR_SIZE | FATTR_MODE,
            size: 1 << 33,
            mode: 0o644,
            ..Default::default()
        }),
        Opcode::Readlink => O::Readlink,
        Opcode::Symlink => O::Symlink {
            name: cs(b"link\0"),
            target: cs(b"../some/where\0"),
        },
        Opcode::Mknod => O::Mknod {
            arg: FuseMknodIn {
                mode: 0o010644,
                rdev: 0,
                umask: 0o022,
                padding: 0,
            },
            name: cs(b"fifo\0"),
        },
        Opcode::Mkdir => O::Mkdir {
            arg: FuseMkdirIn {
                mode: 0o755,
                umask: 0o022,
            },
            name: cs(b"dir\0"),
        },
        Opcode::Unlink => O::Unlink {
            name: cs(b"gone\0"),
        },
        Opcode::Rmdir => O::Rmdir { name: cs(b"d\0") },
        Opcode::Rename => O::Rename {
            arg: FuseRenameIn { newdir: 42 },
            name: cs(b"old\0"),
            newname: cs(b"new\0"),
        },
        Opcode::Link => O::Link {
            arg: FuseLinkIn { oldnodeid: 17 },
            name: cs(b"hard\0"),
        },
        Opcode::Open => O::Open(FuseOpenIn {
            flags: 2,
            open_flags: 0,
        }),
        Opcode::Read => O::Read(read),
        Opcode::Write => O::Write {
            arg: FuseWriteIn {
                fh: 3,
                offset: 1 << 21,
                size: 1000,
                write_flags: FUSE_WRITE_CACHE,
                lock_owner: 0,
                flags: 2,
                padding: 0,
            },
            data: &st.data,
        },
        Opcode::Statfs => O::Statfs,
        Opcode::Release => O::Release(release),
        Opcode::Fsync => O::Fsync(FuseFsyncIn {
            fh: 3,
            fsync_flags: FUSE_FSYNC_FDATASYNC,
            padding: 0,
        }),
        Opcode::Setxattr => O::Setxattr {
            arg: FuseSetxattrIn {
                size: 5,
                flags: 1,
                setxattr_flags: 0,
                padding: 0,
            },
            name: cs(b"user.key\0"),
            value: b"va\0ue",
        },
        Opcode::Getxattr => O::Getxattr {
            arg: FuseGetxattrIn {
                size: 0,
                padding: 0,
            },
            name: cs(b"user.key\0"),
        },
        Opcode::Listxattr => O::Listxattr(FuseGetxattrIn {
            size: 4096,
            padding: 0,
        }),
        Opcode::Removexattr => O::Removexattr {
            name: cs(b"user.key\0"),
        },
        Opcode::Flush => O::Flush(FuseFlushIn {
            fh: 3,
            unused: 0,
            padding: 0,
            lock_owner: 5,
        }),
        Opcode::Init => O::Init(FuseInitIn {
            major: 7,
            minor: 45,
            max_readahead: 131072,
            flags: (FUSE_ASYNC_READ | FUSE_INIT_EXT | FUSE_MAP_ALIGNMENT) as u32,
            flags2: ((FUSE_HAS_INODE_DAX | FUSE_PASSTHROUGH) >> 32) as u32,
            unused: [0; 11],
        }),
        Opcode::Opendir => O::Opendir(FuseOpenIn {
            flags: 0o200000,
            open_flags: 0,
        }),
        Opcode::Readdir => O::Readdir(read),
        Opcode::Releasedir => O::Releasedir(release),
        Opcode::Fsyncdir => O::Fsyncdir(FuseFsyncIn::default()),
        Opcode::Getlk => O::Getlk(lk),
        Opcode::Setlk => O::Setlk(lk),
        Opcode::Setlkw => O::Setlkw(lk),
        Opcode::Access => O::Access(FuseAccessIn {
            mask: 4,
            padding: 0,
        }),
        Opcode::Create => O::Create {
            arg: create,
            name: cs(b"new-file\0"),
        },
        Opcode::Interrupt => O::Interrupt(FuseInterruptIn { unique: 1234 }),
        Opcode::Bmap => O::Bmap(FuseBmapIn {
            block: 10,
            blocksize: 4096,
            padding: 0,
        }),
        Opcode::Destroy => O::Destroy,
        Opcode::Ioctl => O::Ioctl {
            arg: FuseIoctlIn {
                fh: 3,
                flags: 0,
                cmd: 0x8008_6601,
                arg: 0,
                in_size: 8,
                out_size: 8,
            },
            data: &st.data[..8],
        },
        Opcode::Poll => O::Poll(FusePollIn {
            fh: 3,
            kh: 4,
            flags: FUSE_POLL_SCHEDULE_NOTIFY,
            events: 1,
        }),
        Opcode::NotifyReply => O::NotifyReply {
            arg: FuseNotifyRetrieveIn {
                offset: 4096,
                size: 16,
                ..Default::default()
            },
            data: &st.data[..16],
        },
        Opcode::BatchForget => O::BatchForget(WireList::from_bytes(&st.forgets).unwrap()),
        Opcode::Fallocate => O::Fallocate(FuseFallocateIn {
            fh: 3,
            offset: 4096,
            length: 8192,
            mode: 3,
            padding: 0,
        }),
        Opcode::Readdirplus => O::Readdirplus(read),
        Opcode::Rename2 => O::Rename2 {
            arg: FuseRename2In {
                newdir: 1,
                flags: 2,
                padding: 0,
            },
            name: cs(b"a\0"),
            newname: cs(b"b\0"),
        },
        Opcode::Lseek => O::Lseek(FuseLseekIn {
            fh: 3,
            offset: 1 << 20,
            whence: 3,
            padding: 0,
        }),
        Opcode::CopyFileRange => O::CopyFileRange(cfr),
        Opcode::SetupMapping => O::SetupMapping(FuseSetupmappingIn {
            fh: u64::MAX,
            foffset: 2 << 20,
            len: 2 << 20,
            flags: FUSE_SETUPMAPPING_FLAG_READ | FUSE_SETUPMAPPING_FLAG_WRITE,
            moffset: 8 << 20,
        }),
        Opcode::RemoveMapping => O::RemoveMapping(WireList::from_bytes(&st.removes).unwrap()),
        Opcode::Syncfs => O::Syncfs(FuseSyncfsIn { padding: 0 }),
        Opcode::Tmpfile => O::Tmpfile {
            arg: create,
            name: cs(b"/\0"),
        },
        Opcode::Statx => O::Statx(FuseStatxIn {
            getattr_flags: 0,
            reserved: 0,
            fh: 0,
            sx_flags: 0,
            sx_mask: 0xfff,
        }),
        Opcode::CopyFileRange64 => O::CopyFileRange64(cfr),
        Opcode::CuseInit => O::CuseInit(CuseInitIn {
            major: 7,
            minor: 45,
            unused: 0,
            flags: CUSE_UNRESTRICTED_IOCTL,
        }),
    }
}

pub fn header(unique: u64) -> FuseInHeader {
    FuseInHeader {
        unique,
        nodeid: 1,
        uid: 1000,
        gid: 100,
        pid: 4321,
        ..Default::default()
    }
}

/// The sample for `op` as a full request.
pub fn sample_request<'a>(op: Opcode, st: &'a Store) -> Request<'a> {
    Request {
        header: header(op as u64 + 100),
        op: sample(op, st),
        extensions: Extensions::default(),
    }
}

/// Encoded bytes of every sample, with the options each needs.
pub fn all_encoded(st: &Store) -> Vec<(Opcode, Vec<u8>)> {
    Opcode::ALL
        .iter()
        .map(|&op| (op, sample_request(op, st).to_bytes(ParseOptions::default())))
        .collect()
}

/// Asserts that every slice a parsed request borrows lies inside `input`.
pub fn assert_borrows_within(req: &Request<'_>, input: &[u8]) {
    let range = input.as_ptr_range();
    let check = |s: &[u8]| {
        let r = s.as_ptr_range();
        assert!(
            s.is_empty() || (r.start >= range.start && r.end <= range.end),
            "borrowed slice outside input"
        );
    };
    let cstr = |c: &CStr| check(c.to_bytes_with_nul());
    use Operation as O;
    match &req.op {
        O::Lookup { name }
        | O::Unlink { name }
        | O::Rmdir { name }
        | O::Removexattr { name }
        | O::Mknod { name, .. }
        | O::Mkdir { name, .. }
        | O::Link { name, .. }
        | O::Getxattr { name, .. }
        | O::Create { name, .. }
        | O::Tmpfile { name, .. } => cstr(name),
        O::Symlink { name, target } => {
            cstr(name);
            cstr(target);
        }
        O::Rename { name, newname, .. } | O::Rename2 { name, newname, .. } => {
            cstr(name);
            cstr(newname);
        }
        O::Write { data, .. } | O::Ioctl { data, .. } | O::NotifyReply { data, .. } => check(data),
        O::Setxattr { name, value, .. } => {
            cstr(name);
            check(value);
        }
        O::BatchForget(l) => check(l.as_bytes()),
        O::RemoveMapping(l) => check(l.as_bytes()),
        _ => {}
    }
    check(req.extensions.as_bytes());
}
