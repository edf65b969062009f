//! Thin, safe wrappers over the syscalls the core needs that std does not offer.
//!
//! Every wrapper takes borrowed descriptors and C strings and returns `io::Result`; none of
//! them follows a symlink in the last path component unless the caller passes a flag for it.
//! Most are rustix calls, with the core's argument conventions and errno answers kept (a
//! raw `c_int` of flags, an offset range checked before the call). Raw syscalls remain only
//! where no crate has the call or its form: faccessat2 with AT_EMPTY_PATH, the Linux 6.13
//! *xattrat calls, the per-thread setfsuid/setfsgid, a close(2) whose error is reported, and
//! name_to_handle_at/open_by_handle_at (rustix 1.x has neither).

use std::ffi::CStr;
use std::io;
use std::os::fd::{AsRawFd, BorrowedFd, OwnedFd};

use rustix::fs::{
    self, AtFlags, FallocateFlags, FileType, Gid, Mode, OFlags, RenameFlags, ResolveFlags, Stat,
    StatVfs, Statx, StatxFlags, Timestamps, Uid, XattrFlags,
};
use rustix::io::Errno;

/// The resolve flags used for every name the core opens relative to a parent: resolution
/// stays beneath the starting directory (no `..` above it, no absolute symlinks, no jumps
/// elsewhere), refuses /proc-style magic links, and refuses every symlink (the core never
/// asks the host to follow one).
pub const RESOLVE_CONFINED: ResolveFlags = ResolveFlags::BENEATH
    .union(ResolveFlags::NO_MAGICLINKS)
    .union(ResolveFlags::NO_SYMLINKS);

fn check(ret: libc::c_int) -> io::Result<libc::c_int> {
    if ret < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(ret)
    }
}

fn check_long(ret: libc::c_long) -> io::Result<libc::c_long> {
    if ret < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(ret)
    }
}

/// openat2(2) with `how.resolve = resolve`; the returned descriptor is owned.
///
/// The mode reaches the kernel only with O_CREAT or O_TMPFILE (openat2 refuses a mode
/// otherwise). rustix adds O_LARGEFILE to non-O_PATH opens, which the kernel's openat2 also
/// does itself on 64-bit hosts, so the flags the kernel acts on are the caller's.
pub fn openat2(
    dir: BorrowedFd<'_>,
    name: &CStr,
    flags: libc::c_int,
    mode: u32,
    resolve: ResolveFlags,
) -> io::Result<OwnedFd> {
    let oflags = OFlags::from_bits_retain((flags | libc::O_CLOEXEC) as u32);
    let mode = if flags & (libc::O_CREAT | libc::O_TMPFILE) != 0 {
        Mode::from_bits_retain(mode & 0o7777)
    } else {
        Mode::empty()
    };
    loop {
        match fs::openat2(dir, name, oflags, mode, resolve) {
            Ok(fd) => return Ok(fd),
            // openat2 returns EAGAIN when a concurrent rename raced the resolution.
            Err(Errno::AGAIN) => continue,
            Err(e) => return Err(e.into()),
        }
    }
}

/// Plain openat(2) (used for `/proc/self/fd/N` reopening and for `..`).
pub fn openat(dir: BorrowedFd<'_>, name: &CStr, flags: libc::c_int) -> io::Result<OwnedFd> {
    let oflags = OFlags::from_bits_retain((flags | libc::O_CLOEXEC) as u32);
    Ok(fs::openat(dir, name, oflags, Mode::empty())?)
}

/// openat(2) with a mode, for O_TMPFILE (O_CREAT goes through openat2 and its RESOLVE_*
/// confinement; O_TMPFILE names only the directory `dir` itself).
pub fn openat_mode(
    dir: BorrowedFd<'_>,
    name: &CStr,
    flags: libc::c_int,
    mode: u32,
) -> io::Result<OwnedFd> {
    let oflags = OFlags::from_bits_retain((flags | libc::O_CLOEXEC) as u32);
    Ok(fs::openat(dir, name, oflags, Mode::from_bits_retain(mode))?)
}

/// statx(2) of the descriptor itself (AT_EMPTY_PATH, never following a symlink).
pub fn statx_fd(fd: BorrowedFd<'_>) -> io::Result<Statx> {
    Ok(fs::statx(
        fd,
        c"",
        AtFlags::EMPTY_PATH | AtFlags::SYMLINK_NOFOLLOW | AtFlags::STATX_SYNC_AS_STAT,
        StatxFlags::BASIC_STATS | StatxFlags::MNT_ID,
    )?)
}

/// fstatat(2) of `name` in `dir` without following a symlink.
pub fn stat_at(dir: BorrowedFd<'_>, name: &CStr) -> io::Result<Stat> {
    Ok(fs::statat(dir, name, AtFlags::SYMLINK_NOFOLLOW)?)
}

/// fstatvfs(3): fstatfs(2) in statvfs terms (f_frsize, f_namemax); works on O_PATH
/// descriptors.
pub fn fstatfs(fd: BorrowedFd<'_>) -> io::Result<StatVfs> {
    Ok(fs::fstatvfs(fd)?)
}

pub fn mkdirat(dir: BorrowedFd<'_>, name: &CStr, mode: u32) -> io::Result<()> {
    Ok(fs::mkdirat(dir, name, Mode::from_bits_retain(mode))?)
}

/// mknodat(2) with `mode` as the client sent it, file type bits included. rustix ORs the
/// type in separately; a type of 0 means a regular file to the kernel (as S_IFREG does), and
/// anything it does not know stays an invalid type (EINVAL), as before. The kernel's dev_t
/// is 32 bits: a wider `rdev` is EINVAL, as glibc's mknodat answers.
pub fn mknodat(dir: BorrowedFd<'_>, name: &CStr, mode: u32, rdev: u64) -> io::Result<()> {
    if u32::try_from(rdev).is_err() {
        return Err(io::Error::from_raw_os_error(libc::EINVAL));
    }
    let file_type = match mode & libc::S_IFMT {
        0 => FileType::RegularFile,
        t => FileType::from_raw_mode(t),
    };
    Ok(fs::mknodat(
        dir,
        name,
        file_type,
        Mode::from_bits_retain(mode),
        rdev,
    )?)
}

pub fn symlinkat(target: &CStr, dir: BorrowedFd<'_>, name: &CStr) -> io::Result<()> {
    Ok(fs::symlinkat(target, dir, name)?)
}

pub fn unlinkat(dir: BorrowedFd<'_>, name: &CStr, flags: libc::c_int) -> io::Result<()> {
    Ok(fs::unlinkat(
        dir,
        name,
        AtFlags::from_bits_retain(flags as u32),
    )?)
}

pub fn renameat2(
    olddir: BorrowedFd<'_>,
    oldname: &CStr,
    newdir: BorrowedFd<'_>,
    newname: &CStr,
    flags: u32,
) -> io::Result<()> {
    Ok(fs::renameat_with(
        olddir,
        oldname,
        newdir,
        newname,
        RenameFlags::from_bits_retain(flags),
    )?)
}

/// linkat(2) of the inode behind an O_PATH descriptor, named `proc_name` in `proc_self_fd`
/// (/proc/self/fd): following that magic link needs no capability, where AT_EMPTY_PATH
/// would need CAP_DAC_READ_SEARCH, which the serving process drops.
pub fn link_fd(
    proc_self_fd: BorrowedFd<'_>,
    proc_name: &CStr,
    newdir: BorrowedFd<'_>,
    newname: &CStr,
) -> io::Result<()> {
    Ok(fs::linkat(
        proc_self_fd,
        proc_name,
        newdir,
        newname,
        AtFlags::SYMLINK_FOLLOW,
    )?)
}

/// readlinkat(2) of an O_PATH descriptor on a symlink, into a PATH_MAX + 1 buffer.
pub fn readlink_fd(fd: BorrowedFd<'_>) -> io::Result<Vec<u8>> {
    let mut buf = vec![0u8; libc::PATH_MAX as usize + 1];
    let n = fs::readlinkat_raw(fd, c"", &mut buf[..])?;
    buf.truncate(n);
    Ok(buf)
}

/// fchownat(2) of the descriptor itself (AT_EMPTY_PATH, never following a symlink);
/// `u32::MAX` (-1) leaves the owner or group as it is.
pub fn fchownat_fd(fd: BorrowedFd<'_>, uid: u32, gid: u32) -> io::Result<()> {
    // rustix spells "unchanged" as None (and debug-asserts that a Uid is never -1).
    let uid = (uid != u32::MAX).then(|| Uid::from_raw(uid));
    let gid = (gid != u32::MAX).then(|| Gid::from_raw(gid));
    Ok(fs::chownat(
        fd,
        c"",
        uid,
        gid,
        AtFlags::EMPTY_PATH | AtFlags::SYMLINK_NOFOLLOW,
    )?)
}

pub fn fchmodat(dir: BorrowedFd<'_>, name: &CStr, mode: u32) -> io::Result<()> {
    Ok(fs::chmodat(
        dir,
        name,
        Mode::from_bits_retain(mode),
        AtFlags::empty(),
    )?)
}

pub fn fchmod(fd: BorrowedFd<'_>, mode: u32) -> io::Result<()> {
    Ok(fs::fchmod(fd, Mode::from_bits_retain(mode))?)
}

pub fn utimensat(
    dir: BorrowedFd<'_>,
    name: &CStr,
    times: &Timestamps,
    flags: libc::c_int,
) -> io::Result<()> {
    Ok(fs::utimensat(
        dir,
        name,
        times,
        AtFlags::from_bits_retain(flags as u32),
    )?)
}

pub fn ftruncate(fd: BorrowedFd<'_>, size: u64) -> io::Result<()> {
    if i64::try_from(size).is_err() {
        return Err(io::Error::from_raw_os_error(libc::EFBIG));
    }
    Ok(fs::ftruncate(fd, size)?)
}

/// faccessat2(2) of the descriptor itself with AT_EACCESS, i.e. with the thread's current
/// fsuid/fsgid, which the caller has switched. Raw: rustix's accessat accepts only
/// AT_EACCESS and AT_SYMLINK_NOFOLLOW, and answers AT_EMPTY_PATH with EINVAL without making
/// the call.
pub fn faccessat_fd(fd: BorrowedFd<'_>, mask: libc::c_int) -> io::Result<()> {
    // SAFETY: faccessat2 takes a descriptor, a NUL-terminated path (empty here), and two
    // ints; it reads only the path, during the call.
    check_long(unsafe {
        libc::syscall(
            libc::SYS_faccessat2,
            fd.as_raw_fd(),
            c"".as_ptr(),
            mask,
            libc::AT_EACCESS | libc::AT_EMPTY_PATH | libc::AT_SYMLINK_NOFOLLOW,
        )
    })
    .map(drop)
}

/// `offset` if it is a valid file offset (at most i64::MAX), else the error `errno`.
pub fn checked_offset(offset: u64, errno: i32) -> io::Result<u64> {
    match i64::try_from(offset) {
        Ok(_) => Ok(offset),
        Err(_) => Err(io::Error::from_raw_os_error(errno)),
    }
}

/// lseek(2) with a C `whence` (SEEK_SET, SEEK_CUR, SEEK_END, SEEK_DATA, SEEK_HOLE; any
/// other is EINVAL, as the kernel answers). The offset reaches the kernel unchanged, a
/// negative one included.
/// lseek(2), raw: rustix takes SEEK_DATA/SEEK_HOLE offsets as u64 and refuses a negative
/// one with EINVAL itself, where the host's filesystem answers (ENXIO on Linux's: no data
/// or hole lies at a negative offset), and the client must get the host's answer.
pub fn lseek(fd: BorrowedFd<'_>, offset: i64, whence: libc::c_int) -> io::Result<i64> {
    // SAFETY: lseek takes no memory; `fd` is a live descriptor for the call.
    let r = unsafe { libc::lseek(fd.as_raw_fd(), offset, whence) };
    if r < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(r)
}

pub fn fallocate(fd: BorrowedFd<'_>, mode: i32, offset: u64, len: u64) -> io::Result<()> {
    if i64::try_from(offset).is_err() || i64::try_from(len).is_err() {
        return Err(io::Error::from_raw_os_error(libc::EFBIG));
    }
    Ok(fs::fallocate(
        fd,
        FallocateFlags::from_bits_retain(mode as u32),
        offset,
        len,
    )?)
}

/// copy_file_range(2). rustix always passes flags 0; the kernel answers any other flags
/// with EINVAL (the descriptors here are always open), so that answer is given here.
pub fn copy_file_range(
    fd_in: BorrowedFd<'_>,
    off_in: u64,
    fd_out: BorrowedFd<'_>,
    off_out: u64,
    len: u64,
    flags: u32,
) -> io::Result<usize> {
    if i64::try_from(off_in).is_err() {
        return Err(io::Error::from_raw_os_error(libc::EINVAL));
    }
    if i64::try_from(off_out).is_err() {
        return Err(io::Error::from_raw_os_error(libc::EFBIG));
    }
    if flags != 0 {
        return Err(io::Error::from_raw_os_error(libc::EINVAL));
    }
    let (mut off_in, mut off_out) = (off_in, off_out);
    let len = usize::try_from(len).unwrap_or(usize::MAX);
    Ok(fs::copy_file_range(
        fd_in,
        Some(&mut off_in),
        fd_out,
        Some(&mut off_out),
        len,
    )?)
}

pub fn fsync(fd: BorrowedFd<'_>, datasync: bool) -> io::Result<()> {
    if datasync {
        Ok(fs::fdatasync(fd)?)
    } else {
        Ok(fs::fsync(fd)?)
    }
}

pub fn syncfs(fd: BorrowedFd<'_>) -> io::Result<()> {
    Ok(fs::syncfs(fd)?)
}

/// Descriptor-based xattr calls on a regular file or directory reopened through
/// `/proc/self/fd` (no path, so they keep working after the daemon chroots into the share).
/// An empty `buf` asks for the size (rustix's `*_query` calls).
pub fn getxattr(fd: BorrowedFd<'_>, name: &CStr, buf: &mut [u8]) -> io::Result<usize> {
    if buf.is_empty() {
        Ok(fs::fgetxattr_query(fd, name)?)
    } else {
        Ok(fs::fgetxattr(fd, name, buf)?)
    }
}

pub fn listxattr(fd: BorrowedFd<'_>, buf: &mut [u8]) -> io::Result<usize> {
    if buf.is_empty() {
        Ok(fs::flistxattr_query(fd)?)
    } else {
        Ok(fs::flistxattr(fd, buf)?)
    }
}

pub fn setxattr(
    fd: BorrowedFd<'_>,
    name: &CStr,
    value: &[u8],
    flags: libc::c_int,
) -> io::Result<()> {
    Ok(fs::fsetxattr(
        fd,
        name,
        value,
        XattrFlags::from_bits_retain(flags as u32),
    )?)
}

pub fn removexattr(fd: BorrowedFd<'_>, name: &CStr) -> io::Result<()> {
    Ok(fs::fremovexattr(fd, name)?)
}

// The *xattrat calls (Linux 6.13): xattrs of any file type through an O_PATH descriptor.
// Numbers of the unified syscall table (the same on every architecture); not in libc yet.
pub(crate) const SYS_SETXATTRAT: libc::c_long = 463;
pub(crate) const SYS_GETXATTRAT: libc::c_long = 464;
pub(crate) const SYS_LISTXATTRAT: libc::c_long = 465;
pub(crate) const SYS_REMOVEXATTRAT: libc::c_long = 466;

/// `struct xattr_args` of the *xattrat calls.
#[repr(C)]
struct XattrArgs {
    value: u64,
    size: u32,
    flags: u32,
}

/// xattr calls on `path` in `dir`, following a final symlink: given `/proc/self/fd` and an
/// O_PATH descriptor's number, the file that descriptor names, of any type (the magic link
/// lands on a symlink itself, not on its target), including those that cannot be reopened
/// for fgetxattr: symlinks, device nodes, FIFOs, sockets. (An O_PATH descriptor with
/// AT_EMPTY_PATH is EBADF for these calls.) ENOSYS before Linux 6.13.
pub fn getxattr_at(
    dir: BorrowedFd<'_>,
    path: &CStr,
    name: &CStr,
    buf: &mut [u8],
) -> io::Result<usize> {
    let mut args = XattrArgs {
        value: if buf.is_empty() {
            0
        } else {
            buf.as_mut_ptr() as u64
        },
        size: u32::try_from(buf.len()).unwrap_or(u32::MAX),
        flags: 0,
    };
    // SAFETY: `path` and `name` are NUL-terminated, `args`
    // is a live xattr_args of the size passed whose value pointer (or 0) covers `size` bytes.
    check_long(unsafe {
        libc::syscall(
            SYS_GETXATTRAT,
            dir.as_raw_fd(),
            path.as_ptr(),
            0,
            name.as_ptr(),
            &mut args as *mut XattrArgs,
            std::mem::size_of::<XattrArgs>(),
        )
    })
    .map(|n| n as usize)
}

pub fn listxattr_at(dir: BorrowedFd<'_>, path: &CStr, buf: &mut [u8]) -> io::Result<usize> {
    // SAFETY: `path` is NUL-terminated; `buf` is writable for its length
    // (NULL when empty asks for the size).
    check_long(unsafe {
        libc::syscall(
            SYS_LISTXATTRAT,
            dir.as_raw_fd(),
            path.as_ptr(),
            0,
            if buf.is_empty() {
                std::ptr::null_mut()
            } else {
                buf.as_mut_ptr()
            },
            buf.len(),
        )
    })
    .map(|n| n as usize)
}

pub fn setxattr_at(
    dir: BorrowedFd<'_>,
    path: &CStr,
    name: &CStr,
    value: &[u8],
    flags: libc::c_int,
) -> io::Result<()> {
    let args = XattrArgs {
        value: value.as_ptr() as u64,
        size: u32::try_from(value.len()).map_err(|_| io::Error::from_raw_os_error(libc::E2BIG))?,
        flags: flags as u32,
    };
    // SAFETY: as for getxattr_at; the kernel only reads `args` and `size` bytes of value.
    check_long(unsafe {
        libc::syscall(
            SYS_SETXATTRAT,
            dir.as_raw_fd(),
            path.as_ptr(),
            0,
            name.as_ptr(),
            &args as *const XattrArgs,
            std::mem::size_of::<XattrArgs>(),
        )
    })
    .map(drop)
}

pub fn removexattr_at(dir: BorrowedFd<'_>, path: &CStr, name: &CStr) -> io::Result<()> {
    // SAFETY: `path` and `name` are NUL-terminated.
    check_long(unsafe {
        libc::syscall(
            SYS_REMOVEXATTRAT,
            dir.as_raw_fd(),
            path.as_ptr(),
            0,
            name.as_ptr(),
        )
    })
    .map(drop)
}

/// Switch this thread's filesystem uid (raw syscall: glibc's wrapper is per-thread too, but
/// the raw call makes the per-thread intent explicit; rustix has no setfsuid). Returns the
/// previous value.
pub fn setfsuid(uid: u32) -> u32 {
    // SAFETY: setfsuid has no memory arguments; it always returns the previous fsuid.
    unsafe { libc::syscall(libc::SYS_setfsuid, uid) as u32 }
}

pub fn setfsgid(gid: u32) -> u32 {
    // SAFETY: as for setfsuid.
    unsafe { libc::syscall(libc::SYS_setfsgid, gid) as u32 }
}

/// Duplicate-and-close: releases POSIX locks held through this open file like close(2)
/// would, without closing the handle (FUSE flush semantics). close(2)'s error is the answer
/// (NFS, for one, reports write-back failures there), which dropping an `OwnedFd` (or
/// rustix's `close`) discards: hence the raw call.
pub fn flush_fd(fd: BorrowedFd<'_>) -> io::Result<()> {
    let dup = fd.try_clone_to_owned()?;
    // SAFETY: `dup` is a descriptor we own; into_raw_fd hands ownership to close().
    check(unsafe { libc::close(std::os::fd::IntoRawFd::into_raw_fd(dup)) }).map(drop)
}

/// `MAX_HANDLE_SZ`: the most bytes a file handle holds (include/linux/exportfs.h).
const MAX_HANDLE_SZ: usize = 128;

/// `struct file_handle` with room for the largest handle.
#[repr(C)]
struct HandleBuf {
    handle_bytes: libc::c_uint,
    handle_type: libc::c_int,
    f_handle: [u8; MAX_HANDLE_SZ],
}

/// An inode's file handle as name_to_handle_at(2) made it: opaque bytes that name the inode
/// on its filesystem for as long as the inode exists, without holding it open.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FileHandle {
    handle_type: libc::c_int,
    bytes: Box<[u8]>,
}

/// name_to_handle_at(`fd`, "", AT_EMPTY_PATH): the handle of the inode `fd` refers to (an
/// O_PATH descriptor will do; a symlink's own handle, never its target's) and the mount id
/// it was found on. EOPNOTSUPP: the filesystem makes no handles; EOVERFLOW: one would need
/// more than MAX_HANDLE_SZ bytes.
pub fn name_to_handle(fd: BorrowedFd<'_>) -> io::Result<(FileHandle, u64)> {
    let mut buf = HandleBuf {
        handle_bytes: MAX_HANDLE_SZ as libc::c_uint,
        handle_type: 0,
        f_handle: [0; MAX_HANDLE_SZ],
    };
    let mut mount_id: libc::c_int = 0;
    // SAFETY: `buf` is a `struct file_handle` whose handle_bytes says how much room follows
    // it (all of f_handle), `mount_id` is a writable int, the path is a NUL-terminated empty
    // string, and AT_EMPTY_PATH makes the call act on `fd` itself. The kernel writes no more
    // than handle_bytes bytes of handle.
    check(unsafe {
        libc::name_to_handle_at(
            fd.as_raw_fd(),
            c"".as_ptr(),
            (&mut buf as *mut HandleBuf).cast::<libc::file_handle>(),
            &mut mount_id,
            libc::AT_EMPTY_PATH,
        )
    })?;
    let len = (buf.handle_bytes as usize).min(MAX_HANDLE_SZ);
    Ok((
        FileHandle {
            handle_type: buf.handle_type,
            bytes: buf.f_handle[..len].into(),
        },
        // Mount ids are positive: the kernel's ida starts at 1.
        u64::try_from(mount_id).unwrap_or(0),
    ))
}

/// open_by_handle_at(2): a new descriptor (flags as open(2); O_PATH for a reference) of the
/// inode `handle` names, on the mount of `mount_fd`. ESTALE once the inode is gone; EPERM
/// without CAP_DAC_READ_SEARCH.
pub fn open_by_handle(
    mount_fd: BorrowedFd<'_>,
    handle: &FileHandle,
    flags: libc::c_int,
) -> io::Result<OwnedFd> {
    let mut buf = HandleBuf {
        handle_bytes: handle.bytes.len() as libc::c_uint,
        handle_type: handle.handle_type,
        f_handle: [0; MAX_HANDLE_SZ],
    };
    // `bytes` came from name_to_handle, which never keeps more than MAX_HANDLE_SZ.
    let len = handle.bytes.len().min(MAX_HANDLE_SZ);
    buf.f_handle[..len].copy_from_slice(&handle.bytes[..len]);
    // SAFETY: `buf` is a valid `struct file_handle` whose handle_bytes bytes of f_handle are
    // initialised; the kernel only reads it. On success the result is a new descriptor that
    // nothing else owns.
    let fd = check(unsafe {
        libc::open_by_handle_at(
            mount_fd.as_raw_fd(),
            (&mut buf as *mut HandleBuf).cast::<libc::file_handle>(),
            flags | libc::O_CLOEXEC,
        )
    })?;
    // SAFETY: `fd` was just returned by the kernel and is owned by nobody else.
    Ok(unsafe { <OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(fd) })
}
