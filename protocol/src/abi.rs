//! The FUSE kernel ABI: structs with the kernel's exact layout and the flag constants.
//!
//! Layouts follow `include/uapi/linux/fuse.h` at protocol 7.45. Every struct is plain data:
//! it is never overlaid on a byte buffer (guest and device buffers have no alignment promise).
//! Instead each struct has [`Wire`] methods that read and write its fields one by one at
//! their kernel offsets, in native byte order (FUSE is host-endian on /dev/fuse, and
//! virtio-fs guests on the platforms we serve are little-endian like the host).
//!
//! Names keep the kernel's spelling (`FUSE_ASYNC_READ`, `FOPEN_KEEP_CACHE`, ...) so that a
//! constant can be checked against the header with a grep.

/// Major protocol version this crate speaks.
pub const FUSE_KERNEL_VERSION: u32 = 7;
/// Highest minor version whose layouts this crate knows (Linux 6.18 speaks 7.45).
pub const FUSE_KERNEL_MINOR_VERSION: u32 = 45;
/// Oldest minor version this crate parses: 7.31 brought SETUPMAPPING/REMOVEMAPPING and
/// map_alignment, and every struct below has had its current size since then.
pub const FUSE_MIN_MINOR_VERSION: u32 = 31;
/// Node id of the root directory, fixed by the protocol.
pub const FUSE_ROOT_ID: u64 = 1;
/// The kernel refuses /dev/fuse read buffers smaller than this.
pub const FUSE_MIN_READ_BUFFER: usize = 8192;
/// Size of the old (pre-7.33, or SETXATTR_EXT not negotiated) `fuse_setxattr_in`.
pub const FUSE_COMPAT_SETXATTR_IN_SIZE: usize = 8;
/// Size of `fuse_init_in` sent by kernels before 7.36 (no flags2).
pub const FUSE_COMPAT_INIT_IN_SIZE: usize = 16;
/// Bit in `fuse_in_header.unique` marking a request the kernel resent (FUSE_HAS_RESEND).
pub const FUSE_UNIQUE_RESEND: u64 = 1 << 63;
/// uid/gid the kernel sends when an idmapped mount cannot map the caller.
pub const FUSE_INVALID_UIDGID: u32 = u32::MAX;
/// Largest directory-entry name every 6.x kernel accepts in a READDIR reply (newer kernels
/// accept up to 4095 once max_pages > 1; host filesystems stop at 255 anyway).
pub const FUSE_NAME_MAX: usize = 1024;
/// Kernel's limit on REMOVEMAPPING entries per request (one 4 KiB page of entries).
pub const FUSE_REMOVEMAPPING_MAX_ENTRY: usize = 4096 / FuseRemovemappingOne::SIZE;

// INIT flags. Bits 32..63 travel in `flags2` of fuse_init_in/out, so they are u64 here and
// [`FuseInitIn::flags64`] / [`FuseInitOut::set_flags64`] do the split.
/// Asynchronous read requests.
pub const FUSE_ASYNC_READ: u64 = 1 << 0;
/// Remote POSIX locks.
pub const FUSE_POSIX_LOCKS: u64 = 1 << 1;
/// Kernel sends file handle for fstat etc. (never implemented by the kernel).
pub const FUSE_FILE_OPS: u64 = 1 << 2;
/// Filesystem handles O_TRUNC in open.
pub const FUSE_ATOMIC_O_TRUNC: u64 = 1 << 3;
/// Filesystem handles lookups of "." and "..".
pub const FUSE_EXPORT_SUPPORT: u64 = 1 << 4;
/// Writes larger than 4 KiB.
pub const FUSE_BIG_WRITES: u64 = 1 << 5;
/// Don't apply umask on create.
pub const FUSE_DONT_MASK: u64 = 1 << 6;
/// Kernel supports splice write on the device.
pub const FUSE_SPLICE_WRITE: u64 = 1 << 7;
/// Kernel supports splice move on the device.
pub const FUSE_SPLICE_MOVE: u64 = 1 << 8;
/// Kernel supports splice read on the device.
pub const FUSE_SPLICE_READ: u64 = 1 << 9;
/// Remote BSD (flock) locks.
pub const FUSE_FLOCK_LOCKS: u64 = 1 << 10;
/// Kernel supports ioctl on directories.
pub const FUSE_HAS_IOCTL_DIR: u64 = 1 << 11;
/// Automatically invalidate cached pages on mtime/size change.
pub const FUSE_AUTO_INVAL_DATA: u64 = 1 << 12;
/// READDIRPLUS (readdir + lookup in one).
pub const FUSE_DO_READDIRPLUS: u64 = 1 << 13;
/// Adaptive readdirplus.
pub const FUSE_READDIRPLUS_AUTO: u64 = 1 << 14;
/// Asynchronous direct I/O submission.
pub const FUSE_ASYNC_DIO: u64 = 1 << 15;
/// Writeback cache for buffered writes.
pub const FUSE_WRITEBACK_CACHE: u64 = 1 << 16;
/// Kernel supports zero-message opens (ENOSYS to OPEN).
pub const FUSE_NO_OPEN_SUPPORT: u64 = 1 << 17;
/// Parallel lookups and readdir in one directory.
pub const FUSE_PARALLEL_DIROPS: u64 = 1 << 18;
/// Filesystem kills suid/sgid/caps on write/chown/truncate (v1).
pub const FUSE_HANDLE_KILLPRIV: u64 = 1 << 19;
/// Filesystem supports POSIX ACLs.
pub const FUSE_POSIX_ACL: u64 = 1 << 20;
/// Reading the device after abort returns ECONNABORTED.
pub const FUSE_ABORT_ERROR: u64 = 1 << 21;
/// `fuse_init_out.max_pages` is valid.
pub const FUSE_MAX_PAGES: u64 = 1 << 22;
/// Cache READLINK replies.
pub const FUSE_CACHE_SYMLINKS: u64 = 1 << 23;
/// Kernel supports zero-message opendir.
pub const FUSE_NO_OPENDIR_SUPPORT: u64 = 1 << 24;
/// Only invalidate cached pages on explicit request.
pub const FUSE_EXPLICIT_INVAL_DATA: u64 = 1 << 25;
/// `fuse_init_out.map_alignment` holds log2 of the DAX mapping alignment.
pub const FUSE_MAP_ALIGNMENT: u64 = 1 << 26;
/// Kernel supports auto-mounting directory submounts (FUSE_ATTR_SUBMOUNT).
pub const FUSE_SUBMOUNTS: u64 = 1 << 27;
/// Filesystem kills suid/sgid/caps, v2 semantics.
pub const FUSE_HANDLE_KILLPRIV_V2: u64 = 1 << 28;
/// Server uses the extended 16-byte `fuse_setxattr_in`.
pub const FUSE_SETXATTR_EXT: u64 = 1 << 29;
/// `flags2` is valid (extended fuse_init_in/out).
pub const FUSE_INIT_EXT: u64 = 1 << 30;
/// Reserved, never set.
pub const FUSE_INIT_RESERVED: u64 = 1 << 31;
/// Security context appended to create, mkdir, symlink, mknod.
pub const FUSE_SECURITY_CTX: u64 = 1 << 32;
/// Per-inode DAX: the server marks inodes with FUSE_ATTR_DAX.
pub const FUSE_HAS_INODE_DAX: u64 = 1 << 33;
/// Supplementary group appended to create, mkdir, symlink, mknod.
pub const FUSE_CREATE_SUPP_GROUP: u64 = 1 << 34;
/// Kernel supports expire-only entry invalidation.
pub const FUSE_HAS_EXPIRE_ONLY: u64 = 1 << 35;
/// Shared mmap allowed in FOPEN_DIRECT_IO mode.
pub const FUSE_DIRECT_IO_ALLOW_MMAP: u64 = 1 << 36;
/// Obsolete alias of [`FUSE_DIRECT_IO_ALLOW_MMAP`].
pub const FUSE_DIRECT_IO_RELAX: u64 = FUSE_DIRECT_IO_ALLOW_MMAP;
/// Kernel passthrough of reads/writes to a backing file (FOPEN_PASSTHROUGH).
pub const FUSE_PASSTHROUGH: u64 = 1 << 37;
/// Explicitly disable export support.
pub const FUSE_NO_EXPORT_SUPPORT: u64 = 1 << 38;
/// Kernel can resend pending requests (FUSE_UNIQUE_RESEND).
pub const FUSE_HAS_RESEND: u64 = 1 << 39;
/// Allow idmapped mounts.
pub const FUSE_ALLOW_IDMAP: u64 = 1 << 40;
/// Kernel supports FUSE over io_uring.
pub const FUSE_OVER_IO_URING: u64 = 1 << 41;
/// Kernel supports request timeouts (`fuse_init_out.request_timeout`).
pub const FUSE_REQUEST_TIMEOUT: u64 = 1 << 42;

/// CUSE INIT: unrestricted ioctl.
pub const CUSE_UNRESTRICTED_IOCTL: u32 = 1 << 0;

// fuse_setattr_in.valid
/// setattr: mode is valid.
pub const FATTR_MODE: u32 = 1 << 0;
/// setattr: uid is valid.
pub const FATTR_UID: u32 = 1 << 1;
/// setattr: gid is valid.
pub const FATTR_GID: u32 = 1 << 2;
/// setattr: size is valid (truncate).
pub const FATTR_SIZE: u32 = 1 << 3;
/// setattr: atime is valid.
pub const FATTR_ATIME: u32 = 1 << 4;
/// setattr: mtime is valid.
pub const FATTR_MTIME: u32 = 1 << 5;
/// setattr: fh is valid.
pub const FATTR_FH: u32 = 1 << 6;
/// setattr: set atime to now.
pub const FATTR_ATIME_NOW: u32 = 1 << 7;
/// setattr: set mtime to now.
pub const FATTR_MTIME_NOW: u32 = 1 << 8;
/// setattr: lock_owner is valid.
pub const FATTR_LOCKOWNER: u32 = 1 << 9;
/// setattr: ctime is valid.
pub const FATTR_CTIME: u32 = 1 << 10;
/// setattr: kill suid/sgid (HANDLE_KILLPRIV_V2).
pub const FATTR_KILL_SUIDGID: u32 = 1 << 11;

// fuse_open_out.open_flags
/// Bypass the page cache for this open file.
pub const FOPEN_DIRECT_IO: u32 = 1 << 0;
/// Don't invalidate the data cache on open.
pub const FOPEN_KEEP_CACHE: u32 = 1 << 1;
/// The file is not seekable.
pub const FOPEN_NONSEEKABLE: u32 = 1 << 2;
/// Allow caching this directory.
pub const FOPEN_CACHE_DIR: u32 = 1 << 3;
/// Stream-like file (no file position).
pub const FOPEN_STREAM: u32 = 1 << 4;
/// Don't flush data cache on close (unless writeback cache).
pub const FOPEN_NOFLUSH: u32 = 1 << 5;
/// Allow parallel direct writes on the same inode.
pub const FOPEN_PARALLEL_DIRECT_WRITES: u32 = 1 << 6;
/// Kernel passthrough to the backing file given by `backing_id`.
pub const FOPEN_PASSTHROUGH: u32 = 1 << 7;

/// release_in.release_flags: flush as well.
pub const FUSE_RELEASE_FLUSH: u32 = 1 << 0;
/// release_in.release_flags: release the flock lock.
pub const FUSE_RELEASE_FLOCK_UNLOCK: u32 = 1 << 1;
/// getattr_in.getattr_flags: `fh` is valid.
pub const FUSE_GETATTR_FH: u32 = 1 << 0;
/// lk_in.lk_flags: BSD flock rather than POSIX lock.
pub const FUSE_LK_FLOCK: u32 = 1 << 0;
/// write_in.write_flags: delayed write from page cache, fh is guessed.
pub const FUSE_WRITE_CACHE: u32 = 1 << 0;
/// write_in.write_flags: lock_owner is valid.
pub const FUSE_WRITE_LOCKOWNER: u32 = 1 << 1;
/// write_in.write_flags: kill suid and sgid.
pub const FUSE_WRITE_KILL_SUIDGID: u32 = 1 << 2;
/// Obsolete alias of [`FUSE_WRITE_KILL_SUIDGID`].
pub const FUSE_WRITE_KILL_PRIV: u32 = FUSE_WRITE_KILL_SUIDGID;
/// read_in.read_flags: lock_owner is valid.
pub const FUSE_READ_LOCKOWNER: u32 = 1 << 1;
/// ioctl: 32-bit compat ioctl on a 64-bit machine.
pub const FUSE_IOCTL_COMPAT: u32 = 1 << 0;
/// ioctl: not restricted to well-formed ioctls.
pub const FUSE_IOCTL_UNRESTRICTED: u32 = 1 << 1;
/// ioctl: retry with new iovecs.
pub const FUSE_IOCTL_RETRY: u32 = 1 << 2;
/// ioctl: 32-bit ioctl.
pub const FUSE_IOCTL_32BIT: u32 = 1 << 3;
/// ioctl: on a directory.
pub const FUSE_IOCTL_DIR: u32 = 1 << 4;
/// ioctl: x32 compat ioctl.
pub const FUSE_IOCTL_COMPAT_X32: u32 = 1 << 5;
/// ioctl: maximum in + out iovecs.
pub const FUSE_IOCTL_MAX_IOV: u32 = 256;
/// poll_in.flags: request a poll notification.
pub const FUSE_POLL_SCHEDULE_NOTIFY: u32 = 1 << 0;

/// Notification code (in `fuse_out_header.error`, with unique 0): drop an inode's cached
/// attributes and data ([`FuseNotifyInvalInodeOut`]).
pub const FUSE_NOTIFY_INVAL_INODE: i32 = 2;
/// fsync_in.fsync_flags: data only.
pub const FUSE_FSYNC_FDATASYNC: u32 = 1 << 0;
/// fuse_attr.flags: the inode is a submount root.
pub const FUSE_ATTR_SUBMOUNT: u32 = 1 << 0;
/// fuse_attr.flags: use DAX for this inode (per-inode DAX, FUSE_HAS_INODE_DAX).
pub const FUSE_ATTR_DAX: u32 = 1 << 1;
/// open_in.open_flags: kill suid and sgid if executable.
pub const FUSE_OPEN_KILL_SUIDGID: u32 = 1 << 0;
/// setxattr_in.setxattr_flags: clear SGID when system.posix_acl_access is set.
pub const FUSE_SETXATTR_ACL_KILL_SGID: u32 = 1 << 0;
/// notify_inval_entry flags: expire only.
pub const FUSE_EXPIRE_ONLY: u32 = 1 << 0;
/// setupmapping_in.flags: map for writing.
pub const FUSE_SETUPMAPPING_FLAG_WRITE: u64 = 1 << 0;
/// setupmapping_in.flags: map for reading.
pub const FUSE_SETUPMAPPING_FLAG_READ: u64 = 1 << 1;
/// Extension types 0..=31 are security-context headers (their count).
pub const FUSE_MAX_NR_SECCTX: u32 = 31;
/// Extension type: supplementary groups.
pub const FUSE_EXT_GROUPS: u32 = 32;

/// A value with a fixed wire size that can be read from and written to unaligned bytes.
///
/// Implemented for the integer types and arrays the ABI uses and for every ABI struct.
/// `get`/`put` require `bytes.len() >= at + SIZE`; the public entry points
/// ([`Wire::decode`], [`Wire::encode`]) check that once, so the field accessors need not.
pub trait Wire: Sized + Copy + 'static {
    /// Size on the wire, equal to the kernel's `sizeof`.
    const SIZE: usize;

    /// Reads the value at `*at` and advances `*at`. Caller guarantees the bytes exist.
    fn get(bytes: &[u8], at: &mut usize) -> Self;

    /// Writes the value at `*at` and advances `*at`. Caller guarantees the room exists.
    fn put(&self, bytes: &mut [u8], at: &mut usize);

    /// Reads the value from the first `SIZE` bytes; `None` if there are fewer.
    fn decode(bytes: &[u8]) -> Option<Self> {
        if bytes.len() < Self::SIZE {
            return None;
        }
        let mut at = 0;
        Some(Self::get(bytes, &mut at))
    }

    /// Writes the value into the first `SIZE` bytes; `None` if `out` is too small.
    fn encode(&self, out: &mut [u8]) -> Option<()> {
        if out.len() < Self::SIZE {
            return None;
        }
        let mut at = 0;
        self.put(out, &mut at);
        Some(())
    }

    /// The value as a freshly allocated byte vector of length `SIZE`.
    fn to_vec(&self) -> Vec<u8> {
        let mut v = vec![0u8; Self::SIZE];
        let mut at = 0;
        self.put(&mut v, &mut at);
        v
    }
}

macro_rules! wire_int {
    ($($t:ty),*) => {$(
        impl Wire for $t {
            const SIZE: usize = core::mem::size_of::<$t>();
            fn get(bytes: &[u8], at: &mut usize) -> Self {
                let mut raw = [0u8; core::mem::size_of::<$t>()];
                raw.copy_from_slice(&bytes[*at..*at + Self::SIZE]);
                *at += Self::SIZE;
                <$t>::from_ne_bytes(raw)
            }
            fn put(&self, bytes: &mut [u8], at: &mut usize) {
                bytes[*at..*at + Self::SIZE].copy_from_slice(&self.to_ne_bytes());
                *at += Self::SIZE;
            }
        }
    )*};
}
wire_int!(u16, u32, u64, i32, i64);

impl<T: Wire + Default, const N: usize> Wire for [T; N] {
    const SIZE: usize = T::SIZE * N;
    fn get(bytes: &[u8], at: &mut usize) -> Self {
        let mut out = [T::default(); N];
        for slot in out.iter_mut() {
            *slot = T::get(bytes, at);
        }
        out
    }
    fn put(&self, bytes: &mut [u8], at: &mut usize) {
        for item in self.iter() {
            item.put(bytes, at);
        }
    }
}

/// Declares an ABI struct: `#[repr(C)]` so `size_of` can be compared with the kernel's, plus
/// a field-by-field [`Wire`] impl. A compile-time assertion proves the field sizes add up to
/// `size_of`, i.e. the Rust layout has no padding the kernel's lacks.
macro_rules! abi_struct {
    ($(#[$meta:meta])* $name:ident { $($(#[$fmeta:meta])* $field:ident : $ty:ty),* $(,)? }) => {
        $(#[$meta])*
        #[repr(C)]
        #[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
        pub struct $name {
            $($(#[$fmeta])* pub $field: $ty,)*
        }

        impl Wire for $name {
            const SIZE: usize = 0 $(+ <$ty as Wire>::SIZE)*;
            fn get(bytes: &[u8], at: &mut usize) -> Self {
                $(let $field = <$ty as Wire>::get(bytes, at);)*
                Self { $($field,)* }
            }
            fn put(&self, bytes: &mut [u8], at: &mut usize) {
                $(self.$field.put(bytes, at);)*
            }
        }

        const _: () = assert!(<$name as Wire>::SIZE == core::mem::size_of::<$name>());
    };
}

abi_struct!(
    /// `fuse_in_header`: starts every request.
    FuseInHeader {
        /// Total request length including this header.
        len: u32,
        /// Operation, see [`crate::Opcode`].
        opcode: u32,
        /// Request id to echo in the reply.
        unique: u64,
        /// Node the operation is about.
        nodeid: u64,
        /// Caller's uid.
        uid: u32,
        /// Caller's gid.
        gid: u32,
        /// Caller's pid (tgid).
        pid: u32,
        /// Length of trailing extensions in 8-byte units (7.38+).
        total_extlen: u16,
        /// Padding.
        padding: u16,
    }
);

abi_struct!(
    /// `fuse_out_header`: starts every reply.
    FuseOutHeader {
        /// Total reply length including this header.
        len: u32,
        /// 0 or a negative errno.
        error: i32,
        /// The request's `unique`.
        unique: u64,
    }
);

abi_struct!(
    /// `fuse_attr`: file attributes.
    FuseAttr {
        /// Inode number.
        ino: u64,
        /// Size in bytes.
        size: u64,
        /// 512-byte blocks allocated.
        blocks: u64,
        /// Access time, seconds.
        atime: u64,
        /// Modification time, seconds.
        mtime: u64,
        /// Status change time, seconds.
        ctime: u64,
        /// Access time, nanoseconds.
        atimensec: u32,
        /// Modification time, nanoseconds.
        mtimensec: u32,
        /// Status change time, nanoseconds.
        ctimensec: u32,
        /// File type and permissions.
        mode: u32,
        /// Hard link count.
        nlink: u32,
        /// Owner.
        uid: u32,
        /// Group.
        gid: u32,
        /// Device number for special files.
        rdev: u32,
        /// Preferred I/O block size.
        blksize: u32,
        /// FUSE_ATTR_* flags (SUBMOUNT, DAX).
        flags: u32,
    }
);

abi_struct!(
    /// `fuse_sx_time`: statx timestamp.
    FuseSxTime {
        /// Seconds.
        tv_sec: i64,
        /// Nanoseconds.
        tv_nsec: u32,
        /// Reserved.
        reserved: i32,
    }
);

abi_struct!(
    /// `fuse_statx`: statx(2)-compatible attributes.
    FuseStatx {
        /// STATX_* fields present.
        mask: u32,
        /// Preferred I/O block size.
        blksize: u32,
        /// STATX_ATTR_* attributes.
        attributes: u64,
        /// Hard link count.
        nlink: u32,
        /// Owner.
        uid: u32,
        /// Group.
        gid: u32,
        /// File type and permissions.
        mode: u16,
        /// Reserved.
        spare0: [u16; 1],
        /// Inode number.
        ino: u64,
        /// Size in bytes.
        size: u64,
        /// 512-byte blocks allocated.
        blocks: u64,
        /// Attributes supported.
        attributes_mask: u64,
        /// Access time.
        atime: FuseSxTime,
        /// Birth time.
        btime: FuseSxTime,
        /// Status change time.
        ctime: FuseSxTime,
        /// Modification time.
        mtime: FuseSxTime,
        /// Device major for special files.
        rdev_major: u32,
        /// Device minor for special files.
        rdev_minor: u32,
        /// Containing device major.
        dev_major: u32,
        /// Containing device minor.
        dev_minor: u32,
        /// Reserved.
        spare2: [u64; 14],
    }
);

abi_struct!(
    /// `fuse_kstatfs`: filesystem statistics.
    FuseKstatfs {
        /// Total blocks.
        blocks: u64,
        /// Free blocks.
        bfree: u64,
        /// Free blocks for unprivileged users.
        bavail: u64,
        /// Total inodes.
        files: u64,
        /// Free inodes.
        ffree: u64,
        /// Block size.
        bsize: u32,
        /// Maximum name length.
        namelen: u32,
        /// Fragment size.
        frsize: u32,
        /// Padding.
        padding: u32,
        /// Reserved.
        spare: [u32; 6],
    }
);

abi_struct!(
    /// `fuse_file_lock`: a lock range.
    FuseFileLock {
        /// First byte.
        start: u64,
        /// Last byte.
        end: u64,
        /// F_RDLCK, F_WRLCK or F_UNLCK.
        typ: u32,
        /// Holder's tgid.
        pid: u32,
    }
);

abi_struct!(
    /// `fuse_entry_out`: reply to LOOKUP, MKNOD, MKDIR, SYMLINK, LINK, CREATE.
    FuseEntryOut {
        /// Node id; 0 means a negative entry.
        nodeid: u64,
        /// Generation: nodeid:generation must be unique for the fs's lifetime.
        generation: u64,
        /// Name cache timeout, seconds.
        entry_valid: u64,
        /// Attribute cache timeout, seconds.
        attr_valid: u64,
        /// Name cache timeout, nanoseconds.
        entry_valid_nsec: u32,
        /// Attribute cache timeout, nanoseconds.
        attr_valid_nsec: u32,
        /// Attributes.
        attr: FuseAttr,
    }
);

abi_struct!(
    /// `fuse_forget_in`: FORGET.
    FuseForgetIn {
        /// Lookups to drop.
        nlookup: u64,
    }
);

abi_struct!(
    /// `fuse_forget_one`: one entry of BATCH_FORGET.
    FuseForgetOne {
        /// Node to forget.
        nodeid: u64,
        /// Lookups to drop.
        nlookup: u64,
    }
);

abi_struct!(
    /// `fuse_batch_forget_in`: BATCH_FORGET header, followed by `count` [`FuseForgetOne`].
    FuseBatchForgetIn {
        /// Entries that follow.
        count: u32,
        /// Padding.
        dummy: u32,
    }
);

abi_struct!(
    /// `fuse_getattr_in`: GETATTR.
    FuseGetattrIn {
        /// FUSE_GETATTR_FH.
        getattr_flags: u32,
        /// Padding.
        dummy: u32,
        /// File handle if FUSE_GETATTR_FH.
        fh: u64,
    }
);

abi_struct!(
    /// `fuse_attr_out`: reply to GETATTR and SETATTR.
    FuseAttrOut {
        /// Attribute cache timeout, seconds.
        attr_valid: u64,
        /// Attribute cache timeout, nanoseconds.
        attr_valid_nsec: u32,
        /// Padding.
        dummy: u32,
        /// Attributes.
        attr: FuseAttr,
    }
);

abi_struct!(
    /// `fuse_statx_in`: STATX.
    FuseStatxIn {
        /// FUSE_GETATTR_FH.
        getattr_flags: u32,
        /// Reserved.
        reserved: u32,
        /// File handle if FUSE_GETATTR_FH.
        fh: u64,
        /// AT_STATX_* flags.
        sx_flags: u32,
        /// STATX_* fields wanted.
        sx_mask: u32,
    }
);

abi_struct!(
    /// `fuse_statx_out`: reply to STATX.
    FuseStatxOut {
        /// Attribute cache timeout, seconds.
        attr_valid: u64,
        /// Attribute cache timeout, nanoseconds.
        attr_valid_nsec: u32,
        /// Result flags.
        flags: u32,
        /// Reserved.
        spare: [u64; 2],
        /// Attributes.
        stat: FuseStatx,
    }
);

abi_struct!(
    /// `fuse_mknod_in`: MKNOD, followed by the name.
    FuseMknodIn {
        /// Type and permissions.
        mode: u32,
        /// Device number.
        rdev: u32,
        /// Caller's umask.
        umask: u32,
        /// Padding.
        padding: u32,
    }
);

abi_struct!(
    /// `fuse_mkdir_in`: MKDIR, followed by the name.
    FuseMkdirIn {
        /// Permissions.
        mode: u32,
        /// Caller's umask.
        umask: u32,
    }
);

abi_struct!(
    /// `fuse_rename_in`: RENAME, followed by old and new names.
    FuseRenameIn {
        /// New parent directory.
        newdir: u64,
    }
);

abi_struct!(
    /// `fuse_rename2_in`: RENAME2, followed by old and new names.
    FuseRename2In {
        /// New parent directory.
        newdir: u64,
        /// RENAME_NOREPLACE, RENAME_EXCHANGE, RENAME_WHITEOUT.
        flags: u32,
        /// Padding.
        padding: u32,
    }
);

abi_struct!(
    /// `fuse_link_in`: LINK, followed by the new name.
    FuseLinkIn {
        /// Existing node to link.
        oldnodeid: u64,
    }
);

abi_struct!(
    /// `fuse_setattr_in`: SETATTR.
    FuseSetattrIn {
        /// FATTR_* bits saying which fields are valid.
        valid: u32,
        /// Padding.
        padding: u32,
        /// File handle if FATTR_FH.
        fh: u64,
        /// New size.
        size: u64,
        /// Lock owner if FATTR_LOCKOWNER.
        lock_owner: u64,
        /// Access time, seconds.
        atime: u64,
        /// Modification time, seconds.
        mtime: u64,
        /// Change time, seconds.
        ctime: u64,
        /// Access time, nanoseconds.
        atimensec: u32,
        /// Modification time, nanoseconds.
        mtimensec: u32,
        /// Change time, nanoseconds.
        ctimensec: u32,
        /// New mode.
        mode: u32,
        /// Unused.
        unused4: u32,
        /// New owner.
        uid: u32,
        /// New group.
        gid: u32,
        /// Unused.
        unused5: u32,
    }
);

abi_struct!(
    /// `fuse_open_in`: OPEN and OPENDIR.
    FuseOpenIn {
        /// open(2) flags.
        flags: u32,
        /// FUSE_OPEN_* flags.
        open_flags: u32,
    }
);

abi_struct!(
    /// `fuse_create_in`: CREATE and TMPFILE, followed by the name.
    FuseCreateIn {
        /// open(2) flags.
        flags: u32,
        /// Type and permissions.
        mode: u32,
        /// Caller's umask.
        umask: u32,
        /// FUSE_OPEN_* flags.
        open_flags: u32,
    }
);

abi_struct!(
    /// `fuse_open_out`: reply to OPEN, OPENDIR (and second half of CREATE's reply).
    FuseOpenOut {
        /// File handle echoed in later requests.
        fh: u64,
        /// FOPEN_* flags.
        open_flags: u32,
        /// Backing file id for FOPEN_PASSTHROUGH.
        backing_id: i32,
    }
);

abi_struct!(
    /// `fuse_release_in`: RELEASE and RELEASEDIR.
    FuseReleaseIn {
        /// File handle.
        fh: u64,
        /// open(2) flags.
        flags: u32,
        /// FUSE_RELEASE_* flags.
        release_flags: u32,
        /// Lock owner.
        lock_owner: u64,
    }
);

abi_struct!(
    /// `fuse_flush_in`: FLUSH.
    FuseFlushIn {
        /// File handle.
        fh: u64,
        /// Unused.
        unused: u32,
        /// Padding.
        padding: u32,
        /// Lock owner.
        lock_owner: u64,
    }
);

abi_struct!(
    /// `fuse_read_in`: READ, READDIR, READDIRPLUS.
    FuseReadIn {
        /// File handle.
        fh: u64,
        /// Offset (for directories: the cookie of the last entry seen).
        offset: u64,
        /// Bytes wanted; the reply must not exceed it.
        size: u32,
        /// FUSE_READ_LOCKOWNER.
        read_flags: u32,
        /// Lock owner.
        lock_owner: u64,
        /// open(2) flags.
        flags: u32,
        /// Padding.
        padding: u32,
    }
);

abi_struct!(
    /// `fuse_write_in`: WRITE, followed by `size` bytes of data.
    FuseWriteIn {
        /// File handle.
        fh: u64,
        /// Offset.
        offset: u64,
        /// Bytes of data that follow.
        size: u32,
        /// FUSE_WRITE_* flags.
        write_flags: u32,
        /// Lock owner.
        lock_owner: u64,
        /// open(2) flags.
        flags: u32,
        /// Padding.
        padding: u32,
    }
);

abi_struct!(
    /// `fuse_write_out`: reply to WRITE.
    FuseWriteOut {
        /// Bytes written.
        size: u32,
        /// Padding.
        padding: u32,
    }
);

abi_struct!(
    /// `fuse_statfs_out`: reply to STATFS.
    FuseStatfsOut {
        /// Statistics.
        st: FuseKstatfs,
    }
);

abi_struct!(
    /// `fuse_fsync_in`: FSYNC and FSYNCDIR.
    FuseFsyncIn {
        /// File handle.
        fh: u64,
        /// FUSE_FSYNC_FDATASYNC.
        fsync_flags: u32,
        /// Padding.
        padding: u32,
    }
);

abi_struct!(
    /// `fuse_setxattr_in` (SETXATTR_EXT layout, 16 bytes). Without FUSE_SETXATTR_EXT the
    /// kernel sends only the first 8 bytes ([`FUSE_COMPAT_SETXATTR_IN_SIZE`]); the parser then
    /// leaves `setxattr_flags` at 0.
    FuseSetxattrIn {
        /// Value size.
        size: u32,
        /// XATTR_CREATE / XATTR_REPLACE.
        flags: u32,
        /// FUSE_SETXATTR_* flags.
        setxattr_flags: u32,
        /// Padding.
        padding: u32,
    }
);

abi_struct!(
    /// `fuse_getxattr_in`: GETXATTR (followed by the name) and LISTXATTR.
    FuseGetxattrIn {
        /// Caller's buffer size; 0 asks for the size only.
        size: u32,
        /// Padding.
        padding: u32,
    }
);

abi_struct!(
    /// `fuse_getxattr_out`: reply to GETXATTR/LISTXATTR when the request's size was 0.
    FuseGetxattrOut {
        /// Size of the value or list.
        size: u32,
        /// Padding.
        padding: u32,
    }
);

abi_struct!(
    /// `fuse_lk_in`: GETLK, SETLK, SETLKW.
    FuseLkIn {
        /// File handle.
        fh: u64,
        /// Lock owner.
        owner: u64,
        /// The lock.
        lk: FuseFileLock,
        /// FUSE_LK_FLOCK.
        lk_flags: u32,
        /// Padding.
        padding: u32,
    }
);

abi_struct!(
    /// `fuse_lk_out`: reply to GETLK.
    FuseLkOut {
        /// Conflicting lock, or F_UNLCK.
        lk: FuseFileLock,
    }
);

abi_struct!(
    /// `fuse_access_in`: ACCESS.
    FuseAccessIn {
        /// R_OK/W_OK/X_OK mask.
        mask: u32,
        /// Padding.
        padding: u32,
    }
);

abi_struct!(
    /// `fuse_init_in`: INIT, 64 bytes since 7.36 (16 before, see
    /// [`FUSE_COMPAT_INIT_IN_SIZE`]).
    FuseInitIn {
        /// Kernel's major version.
        major: u32,
        /// Kernel's minor version.
        minor: u32,
        /// Kernel's maximum readahead.
        max_readahead: u32,
        /// INIT flags, bits 0..31.
        flags: u32,
        /// INIT flags, bits 32..63 (valid if FUSE_INIT_EXT).
        flags2: u32,
        /// Reserved.
        unused: [u32; 11],
    }
);

abi_struct!(
    /// `fuse_init_out`: reply to INIT.
    FuseInitOut {
        /// Our major version.
        major: u32,
        /// Our minor version.
        minor: u32,
        /// Maximum readahead we accept (<= the kernel's).
        max_readahead: u32,
        /// INIT flags we accept, bits 0..31.
        flags: u32,
        /// Maximum outstanding background requests.
        max_background: u16,
        /// Background requests at which the kernel reports congestion.
        congestion_threshold: u16,
        /// Largest WRITE payload we accept.
        max_write: u32,
        /// Timestamp granularity in ns (1 = full resolution).
        time_gran: u32,
        /// Largest request in pages (FUSE_MAX_PAGES).
        max_pages: u16,
        /// log2 of DAX mapping alignment (FUSE_MAP_ALIGNMENT).
        map_alignment: u16,
        /// INIT flags we accept, bits 32..63 (needs FUSE_INIT_EXT in `flags`).
        flags2: u32,
        /// Passthrough backing stack depth (FUSE_PASSTHROUGH).
        max_stack_depth: u32,
        /// Request timeout in seconds (FUSE_REQUEST_TIMEOUT).
        request_timeout: u16,
        /// Reserved.
        unused: [u16; 11],
    }
);

abi_struct!(
    /// `cuse_init_in`: CUSE_INIT.
    CuseInitIn {
        /// Major version.
        major: u32,
        /// Minor version.
        minor: u32,
        /// Unused.
        unused: u32,
        /// CUSE_* flags.
        flags: u32,
    }
);

abi_struct!(
    /// `cuse_init_out`: reply to CUSE_INIT.
    CuseInitOut {
        /// Major version.
        major: u32,
        /// Minor version.
        minor: u32,
        /// Unused.
        unused: u32,
        /// CUSE_* flags.
        flags: u32,
        /// Maximum read.
        max_read: u32,
        /// Maximum write.
        max_write: u32,
        /// Character device major.
        dev_major: u32,
        /// Character device minor.
        dev_minor: u32,
        /// Reserved.
        spare: [u32; 10],
    }
);

abi_struct!(
    /// `fuse_interrupt_in`: INTERRUPT.
    FuseInterruptIn {
        /// `unique` of the request to interrupt.
        unique: u64,
    }
);

abi_struct!(
    /// `fuse_bmap_in`: BMAP.
    FuseBmapIn {
        /// Logical block.
        block: u64,
        /// Block size.
        blocksize: u32,
        /// Padding.
        padding: u32,
    }
);

abi_struct!(
    /// `fuse_bmap_out`: reply to BMAP.
    FuseBmapOut {
        /// Physical block.
        block: u64,
    }
);

abi_struct!(
    /// `fuse_ioctl_in`: IOCTL, followed by `in_size` bytes.
    FuseIoctlIn {
        /// File handle.
        fh: u64,
        /// FUSE_IOCTL_* flags.
        flags: u32,
        /// ioctl command.
        cmd: u32,
        /// ioctl argument.
        arg: u64,
        /// Input bytes that follow.
        in_size: u32,
        /// Output buffer size.
        out_size: u32,
    }
);

abi_struct!(
    /// `fuse_ioctl_iovec`.
    FuseIoctlIovec {
        /// Base address.
        base: u64,
        /// Length.
        len: u64,
    }
);

abi_struct!(
    /// `fuse_ioctl_out`: reply to IOCTL.
    FuseIoctlOut {
        /// ioctl result.
        result: i32,
        /// FUSE_IOCTL_* flags.
        flags: u32,
        /// Input iovecs (retry).
        in_iovs: u32,
        /// Output iovecs (retry).
        out_iovs: u32,
    }
);

abi_struct!(
    /// `fuse_poll_in`: POLL.
    FusePollIn {
        /// File handle.
        fh: u64,
        /// Kernel handle for the wakeup notification.
        kh: u64,
        /// FUSE_POLL_* flags.
        flags: u32,
        /// Events wanted.
        events: u32,
    }
);

abi_struct!(
    /// `fuse_poll_out`: reply to POLL.
    FusePollOut {
        /// Ready events.
        revents: u32,
        /// Padding.
        padding: u32,
    }
);

abi_struct!(
    /// `fuse_notify_retrieve_in`: NOTIFY_REPLY, followed by `size` bytes.
    FuseNotifyRetrieveIn {
        /// Unused.
        dummy1: u64,
        /// Offset of the data.
        offset: u64,
        /// Bytes that follow.
        size: u32,
        /// Unused.
        dummy2: u32,
        /// Unused.
        dummy3: u64,
        /// Unused.
        dummy4: u64,
    }
);

abi_struct!(
    /// `fuse_fallocate_in`: FALLOCATE.
    FuseFallocateIn {
        /// File handle.
        fh: u64,
        /// Offset.
        offset: u64,
        /// Length.
        length: u64,
        /// fallocate(2) mode (KEEP_SIZE, PUNCH_HOLE, ZERO_RANGE ...).
        mode: u32,
        /// Padding.
        padding: u32,
    }
);

abi_struct!(
    /// `fuse_lseek_in`: LSEEK.
    FuseLseekIn {
        /// File handle.
        fh: u64,
        /// Offset.
        offset: u64,
        /// SEEK_SET/CUR/END/DATA/HOLE.
        whence: u32,
        /// Padding.
        padding: u32,
    }
);

abi_struct!(
    /// `fuse_lseek_out`: reply to LSEEK.
    FuseLseekOut {
        /// Resulting offset.
        offset: u64,
    }
);

abi_struct!(
    /// `fuse_copy_file_range_in`: COPY_FILE_RANGE and COPY_FILE_RANGE_64.
    FuseCopyFileRangeIn {
        /// Source file handle (node is the header's nodeid).
        fh_in: u64,
        /// Source offset.
        off_in: u64,
        /// Destination node.
        nodeid_out: u64,
        /// Destination file handle.
        fh_out: u64,
        /// Destination offset.
        off_out: u64,
        /// Bytes to copy.
        len: u64,
        /// copy_file_range(2) flags.
        flags: u64,
    }
);

abi_struct!(
    /// `fuse_copy_file_range_out`: reply to COPY_FILE_RANGE_64 (the old opcode replies with
    /// [`FuseWriteOut`]).
    FuseCopyFileRangeOut {
        /// Bytes copied.
        bytes_copied: u64,
    }
);

abi_struct!(
    /// `fuse_setupmapping_in`: SETUPMAPPING (virtio-fs DAX). The guest's fault path sends
    /// `fh = u64::MAX`; `foffset` and `moffset` are aligned to the negotiated map alignment.
    FuseSetupmappingIn {
        /// File handle, or `u64::MAX` from the DAX fault path.
        fh: u64,
        /// Offset in the file.
        foffset: u64,
        /// Length of the mapping.
        len: u64,
        /// FUSE_SETUPMAPPING_FLAG_READ / _WRITE.
        flags: u64,
        /// Offset in the DAX window.
        moffset: u64,
    }
);

abi_struct!(
    /// `fuse_removemapping_in`: REMOVEMAPPING header (4 bytes: the entries that follow start
    /// at a 4-byte offset, so they are never 8-byte aligned).
    FuseRemovemappingIn {
        /// Entries that follow.
        count: u32,
    }
);

abi_struct!(
    /// `fuse_removemapping_one`: one range of REMOVEMAPPING.
    FuseRemovemappingOne {
        /// Offset in the DAX window.
        moffset: u64,
        /// Length.
        len: u64,
    }
);

abi_struct!(
    /// `fuse_syncfs_in`: SYNCFS.
    FuseSyncfsIn {
        /// Reserved.
        padding: u64,
    }
);

abi_struct!(
    /// `fuse_dirent` without its name: a READDIR record is this, the name, then zero padding
    /// to 8 bytes.
    FuseDirent {
        /// Inode number.
        ino: u64,
        /// Cookie of the next entry (passed back as the next READDIR offset).
        off: u64,
        /// Name length.
        namelen: u32,
        /// DT_* type.
        typ: u32,
    }
);

abi_struct!(
    /// `fuse_direntplus` without its name: a READDIRPLUS record.
    FuseDirentplus {
        /// Entry as for LOOKUP (counts as a lookup unless nodeid is 0).
        entry_out: FuseEntryOut,
        /// The dirent.
        dirent: FuseDirent,
    }
);

abi_struct!(
    /// `fuse_ext_header`: header of one request extension (size includes the header).
    FuseExtHeader {
        /// Size of this extension in bytes, a multiple of 8.
        size: u32,
        /// Extension type (0..=31: security contexts; FUSE_EXT_GROUPS).
        typ: u32,
    }
);

abi_struct!(
    /// `fuse_secctx`: one security context, followed by its name and value.
    FuseSecctx {
        /// Size of the context value.
        size: u32,
        /// Padding.
        padding: u32,
    }
);

abi_struct!(
    /// `fuse_secctx_header`: precedes the security contexts.
    FuseSecctxHeader {
        /// Total size including this header.
        size: u32,
        /// Number of contexts.
        nr_secctx: u32,
    }
);

abi_struct!(
    /// `fuse_notify_inval_inode_out`: the node whose cached attributes (and, for `off` ≥ 0,
    /// cached data from `off` for `len` bytes, 0 meaning to the end) the client must drop.
    FuseNotifyInvalInodeOut {
        /// Node id.
        ino: u64,
        /// First byte of cached data to drop; negative: attributes only.
        off: i64,
        /// Bytes of cached data to drop.
        len: i64,
    }
);

abi_struct!(
    /// `fuse_notify_prune_out` (7.45).
    FuseNotifyPruneOut {
        /// Node ids that follow.
        count: u32,
        /// Padding.
        padding: u32,
        /// Reserved.
        spare: u64,
    }
);

/// Rounds `len` up to the 8-byte record alignment of READDIR replies (`FUSE_DIRENT_ALIGN`).
pub const fn dirent_align(len: usize) -> usize {
    (len + 7) & !7
}

impl FuseInitIn {
    /// All 64 INIT flag bits: `flags2` counts only when the kernel set FUSE_INIT_EXT.
    pub fn flags64(&self) -> u64 {
        let low = u64::from(self.flags);
        if low & FUSE_INIT_EXT != 0 {
            low | (u64::from(self.flags2) << 32)
        } else {
            low
        }
    }
}

impl FuseInitOut {
    /// The version and flag part of an INIT reply: our major, the smaller minor, the kernel's
    /// readahead, and the flags in `wanted` that the kernel offered (a server must never
    /// claim a flag the kernel did not offer). The sizing fields (`max_write`, `max_pages`,
    /// `map_alignment`, `time_gran`, `max_background`, ...) are the transport's decision and
    /// stay zero here.
    ///
    /// A kernel with a newer major gets only our major back (it then resends INIT in ours);
    /// a kernel with an older major, or a 7.x older than [`FUSE_MIN_MINOR_VERSION`], cannot
    /// be served and the caller should reply EPROTO: that is the `Err`.
    pub fn negotiate(kernel: &FuseInitIn, wanted: u64) -> Result<FuseInitOut, FuseInitOut> {
        let mut out = FuseInitOut {
            major: FUSE_KERNEL_VERSION,
            minor: FUSE_KERNEL_MINOR_VERSION,
            ..Default::default()
        };
        if kernel.major > FUSE_KERNEL_VERSION {
            return Ok(out);
        }
        if kernel.major < FUSE_KERNEL_VERSION || kernel.minor < FUSE_MIN_MINOR_VERSION {
            return Err(out);
        }
        out.minor = kernel.minor.min(FUSE_KERNEL_MINOR_VERSION);
        out.max_readahead = kernel.max_readahead;
        out.set_flags64(wanted & kernel.flags64());
        Ok(out)
    }

    /// Stores a 64-bit flag set into `flags`/`flags2`, adding FUSE_INIT_EXT when high bits
    /// are present, because the kernel ignores `flags2` without it.
    pub fn set_flags64(&mut self, flags: u64) {
        let flags = if flags >> 32 != 0 {
            flags | FUSE_INIT_EXT
        } else {
            flags
        };
        self.flags = flags as u32;
        self.flags2 = (flags >> 32) as u32;
    }

    /// The 64-bit flag set stored in `flags`/`flags2`.
    pub fn flags64(&self) -> u64 {
        u64::from(self.flags) | (u64::from(self.flags2) << 32)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use core::mem::size_of;

    /// Asserts both the wire size and the Rust size against the kernel's `sizeof`.
    macro_rules! pin {
        ($($t:ty => $n:expr),* $(,)?) => {$(
            assert_eq!(<$t as Wire>::SIZE, $n, concat!("wire size of ", stringify!($t)));
            assert_eq!(size_of::<$t>(), $n, concat!("size_of ", stringify!($t)));
        )*};
    }

    #[test]
    fn struct_sizes_match_kernel() {
        pin! {
            FuseInHeader => 40,
            FuseOutHeader => 16,
            FuseAttr => 88,
            FuseSxTime => 16,
            FuseStatx => 256,
            FuseKstatfs => 80,
            FuseFileLock => 24,
            FuseEntryOut => 128,
            FuseForgetIn => 8,
            FuseForgetOne => 16,
            FuseBatchForgetIn => 8,
            FuseGetattrIn => 16,
            FuseAttrOut => 104,
            FuseStatxIn => 24,
            FuseStatxOut => 288,
            FuseMknodIn => 16,
            FuseMkdirIn => 8,
            FuseRenameIn => 8,
            FuseRename2In => 16,
            FuseLinkIn => 8,
            FuseSetattrIn => 88,
            FuseOpenIn => 8,
            FuseCreateIn => 16,
            FuseOpenOut => 16,
            FuseReleaseIn => 24,
            FuseFlushIn => 24,
            FuseReadIn => 40,
            FuseWriteIn => 40,
            FuseWriteOut => 8,
            FuseStatfsOut => 80,
            FuseFsyncIn => 16,
            FuseSetxattrIn => 16,
            FuseGetxattrIn => 8,
            FuseGetxattrOut => 8,
            FuseLkIn => 48,
            FuseLkOut => 24,
            FuseAccessIn => 8,
            FuseInitIn => 64,
            FuseInitOut => 64,
            CuseInitIn => 16,
            CuseInitOut => 72,
            FuseInterruptIn => 8,
            FuseBmapIn => 16,
            FuseBmapOut => 8,
            FuseIoctlIn => 32,
            FuseIoctlIovec => 16,
            FuseIoctlOut => 16,
            FusePollIn => 24,
            FusePollOut => 8,
            FuseNotifyRetrieveIn => 40,
            FuseFallocateIn => 32,
            FuseLseekIn => 24,
            FuseLseekOut => 8,
            FuseCopyFileRangeIn => 56,
            FuseCopyFileRangeOut => 8,
            FuseSetupmappingIn => 40,
            FuseRemovemappingIn => 4,
            FuseRemovemappingOne => 16,
            FuseSyncfsIn => 8,
            FuseDirent => 24,
            FuseDirentplus => 152,
            FuseExtHeader => 8,
            FuseSecctx => 8,
            FuseSecctxHeader => 8,
            FuseNotifyPruneOut => 16,
            FuseNotifyInvalInodeOut => 24,
        }
        // FUSE_COMPAT_* sizes the kernel defines.
        assert_eq!(FUSE_COMPAT_SETXATTR_IN_SIZE, 8);
        assert_eq!(FUSE_REMOVEMAPPING_MAX_ENTRY, 256);
    }

    /// Field offsets the kernel relies on, checked by writing a marker into one field.
    #[test]
    fn field_offsets_match_kernel() {
        fn offset_of_marker(bytes: &[u8]) -> usize {
            bytes.iter().position(|&b| b == 0xAB).unwrap()
        }
        let h = FuseInHeader {
            total_extlen: 0xAB,
            ..Default::default()
        };
        assert_eq!(offset_of_marker(&h.to_vec()), 36);
        let o = FuseInitOut {
            map_alignment: 0xAB,
            ..Default::default()
        };
        assert_eq!(offset_of_marker(&o.to_vec()), 30);
        let o = FuseInitOut {
            flags2: 0xAB,
            ..Default::default()
        };
        assert_eq!(offset_of_marker(&o.to_vec()), 32);
        let o = FuseInitOut {
            max_pages: 0xAB,
            ..Default::default()
        };
        assert_eq!(offset_of_marker(&o.to_vec()), 28);
        let a = FuseAttr {
            flags: 0xAB,
            ..Default::default()
        };
        assert_eq!(offset_of_marker(&a.to_vec()), 84);
        let e = FuseEntryOut {
            attr: a,
            ..Default::default()
        };
        assert_eq!(offset_of_marker(&e.to_vec()), 40 + 84);
        let s = FuseSetupmappingIn {
            moffset: 0xAB,
            ..Default::default()
        };
        assert_eq!(offset_of_marker(&s.to_vec()), 32);
        let i = FuseInitIn {
            flags2: 0xAB,
            ..Default::default()
        };
        assert_eq!(offset_of_marker(&i.to_vec()), 16);
        let d = FuseDirentplus {
            dirent: FuseDirent {
                typ: 0xAB,
                ..Default::default()
            },
            ..Default::default()
        };
        assert_eq!(offset_of_marker(&d.to_vec()), 128 + 20);
    }

    #[test]
    fn wire_round_trip_at_unaligned_offset() {
        let v = FuseSetupmappingIn {
            fh: u64::MAX,
            foffset: 0x20_0000,
            len: 0x20_0000,
            flags: FUSE_SETUPMAPPING_FLAG_READ | FUSE_SETUPMAPPING_FLAG_WRITE,
            moffset: 0x1234_5000,
        };
        let mut buf = [0u8; FuseSetupmappingIn::SIZE + 3];
        v.encode(&mut buf[3..]).unwrap();
        assert_eq!(FuseSetupmappingIn::decode(&buf[3..]), Some(v));
        assert_eq!(FuseSetupmappingIn::decode(&buf[4..]), None);
    }

    #[test]
    fn init_flags_split_across_flags2() {
        let mut out = FuseInitOut::default();
        out.set_flags64(FUSE_MAP_ALIGNMENT | FUSE_HAS_INODE_DAX);
        assert_eq!(out.flags, (FUSE_MAP_ALIGNMENT | FUSE_INIT_EXT) as u32);
        assert_eq!(out.flags2, 1 << 1);
        let inp = FuseInitIn {
            flags: (FUSE_INIT_EXT | FUSE_ASYNC_READ) as u32,
            flags2: 1 << 5,
            ..Default::default()
        };
        assert_eq!(
            inp.flags64(),
            FUSE_INIT_EXT | FUSE_ASYNC_READ | FUSE_PASSTHROUGH
        );
        let no_ext = FuseInitIn {
            flags2: 1 << 5,
            ..inp
        };
        let no_ext = FuseInitIn {
            flags: FUSE_ASYNC_READ as u32,
            ..no_ext
        };
        assert_eq!(no_ext.flags64(), FUSE_ASYNC_READ);
    }

    #[test]
    fn negotiate_intersects_flags_and_versions() {
        let kernel = FuseInitIn {
            major: 7,
            minor: 45,
            max_readahead: 1 << 17,
            flags: (FUSE_INIT_EXT | FUSE_ASYNC_READ | FUSE_MAP_ALIGNMENT) as u32,
            flags2: (FUSE_HAS_INODE_DAX >> 32) as u32,
            unused: [0; 11],
        };
        let out = FuseInitOut::negotiate(
            &kernel,
            FUSE_ASYNC_READ | FUSE_HAS_INODE_DAX | FUSE_PASSTHROUGH | FUSE_DO_READDIRPLUS,
        )
        .unwrap();
        assert_eq!((out.major, out.minor, out.max_readahead), (7, 45, 1 << 17));
        assert_eq!(
            out.flags64(),
            FUSE_ASYNC_READ | FUSE_HAS_INODE_DAX | FUSE_INIT_EXT
        );
        let old = FuseInitIn {
            minor: 31,
            flags: FUSE_ASYNC_READ as u32,
            flags2: u32::MAX,
            ..kernel
        };
        let out = FuseInitOut::negotiate(&old, u64::MAX).unwrap();
        assert_eq!((out.minor, out.flags64()), (31, FUSE_ASYNC_READ));
        let newer = FuseInitIn { major: 8, ..kernel };
        assert_eq!(FuseInitOut::negotiate(&newer, u64::MAX).unwrap().flags, 0);
        let too_old = FuseInitIn {
            minor: 30,
            ..kernel
        };
        assert!(FuseInitOut::negotiate(&too_old, 0).is_err());
    }

    #[test]
    fn flag_values_match_kernel() {
        assert_eq!(FUSE_MAP_ALIGNMENT, 0x0400_0000);
        assert_eq!(FUSE_SUBMOUNTS, 0x0800_0000);
        assert_eq!(FUSE_HANDLE_KILLPRIV_V2, 0x1000_0000);
        assert_eq!(FUSE_HAS_INODE_DAX >> 32, 2);
        assert_eq!(FUSE_PASSTHROUGH >> 32, 0x20);
        assert_eq!(FUSE_ATTR_DAX, 2);
        assert_eq!(FUSE_SETUPMAPPING_FLAG_WRITE, 1);
        assert_eq!(FUSE_SETUPMAPPING_FLAG_READ, 2);
        assert_eq!(FOPEN_PASSTHROUGH, 0x80);
        assert_eq!(dirent_align(24 + 1), 32);
        assert_eq!(dirent_align(24 + 8), 32);
    }
}
