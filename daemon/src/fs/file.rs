//! Operations on open files: open, create and O_TMPFILE, read and write, sync, space
//! (fallocate, lseek, copy_file_range), and the DAX window's view of a file.

use super::*;

impl FileSystem {
    /// Opens regular file `node` with the client's `flags` (O_DIRECT dropped unless
    /// `allow_direct_io`; EISDIR for a directory, ELOOP for a symlink).
    pub fn open(&self, _ctx: &Context, node: u64, flags: i32) -> io::Result<Open> {
        if writes(flags) {
            self.writable()?;
        }
        let inode = self.inode(node)?;
        if inode.is_dir() {
            return Err(err(libc::EISDIR));
        }
        let flags = self.client_flags(flags);
        let file = self.reopen(&inode, flags)?;
        let (fh, handle) = self.insert_handle(node, file);
        Ok(Open {
            fh,
            backing: Some(handle),
        })
    }

    /// Create and open a regular file as the caller. O_EXCL is the host's; without it an
    /// existing regular file is opened (and truncated with O_TRUNC); a symlink in the way is
    /// refused (ELOOP), never followed.
    pub fn create(
        &self,
        ctx: &Context,
        parent: u64,
        name: &CStr,
        mode: u32,
        flags: i32,
    ) -> io::Result<(Entry, Open)> {
        self.writable()?;
        let p = self.dir_inode(parent)?;
        check_new_name(name)?;
        let flags = self.client_flags(flags);
        let oflags = (flags & !(libc::O_NOCTTY | libc::O_DIRECTORY | libc::O_PATH | libc::O_TMPFILE))
            | libc::O_CREAT
            | libc::O_NOFOLLOW
            // Never block opening a FIFO that a hostile client names here.
            | libc::O_NONBLOCK;
        let umask = self.umask_in(&p, ctx);
        let pfd = p.fd()?;
        let file = {
            let _creds = self.creds(ctx)?;
            sys::openat2(
                pfd.as_fd(),
                name,
                oflags,
                mode & 0o7777 & !umask,
                sys::RESOLVE_CONFINED,
            )
            .map_err(|e| self.fd_error(e))?
        };
        self.opened_new(file, flags)
    }

    /// FUSE_TMPFILE: an unnamed regular file in `parent` (O_TMPFILE), open, as the caller;
    /// LINK gives it a name later, unless it was opened O_EXCL.
    pub fn tmpfile(
        &self,
        ctx: &Context,
        parent: u64,
        mode: u32,
        flags: i32,
    ) -> io::Result<(Entry, Open)> {
        self.writable()?;
        let p = self.dir_inode(parent)?;
        // O_TMPFILE needs write access; the rest as CREATE keeps it.
        let access = match flags & libc::O_ACCMODE {
            libc::O_WRONLY => libc::O_WRONLY,
            _ => libc::O_RDWR,
        };
        let kept = libc::O_EXCL | libc::O_APPEND | libc::O_SYNC | libc::O_DSYNC | libc::O_DIRECT;
        let oflags =
            (self.client_flags(flags) & kept) | access | libc::O_TMPFILE | libc::O_NONBLOCK;
        let umask = self.umask_in(&p, ctx);
        let pfd = p.fd()?;
        let file = {
            let _creds = self.creds(ctx)?;
            sys::openat_mode(pfd.as_fd(), c".", oflags, mode & 0o7777 & !umask)
                .map_err(|e| self.fd_error(e))?
        };
        self.opened_new(file, flags)
    }

    /// The node and handle of a file CREATE or TMPFILE just opened.
    fn opened_new(&self, file: OwnedFd, flags: i32) -> io::Result<(Entry, Open)> {
        let stx = sys::statx_fd(file.as_fd())?;
        if u32::from(stx.stx_mode) & libc::S_IFMT != libc::S_IFREG {
            return Err(err(
                if u32::from(stx.stx_mode) & libc::S_IFMT == libc::S_IFDIR {
                    libc::EISDIR
                } else {
                    libc::ENXIO
                },
            ));
        }
        if flags & libc::O_NONBLOCK == 0 {
            if let Ok(fl) = rustix::fs::fcntl_getfl(&file) {
                let _ = rustix::fs::fcntl_setfl(&file, fl - rustix::fs::OFlags::NONBLOCK);
            }
        }
        // The node's O_PATH descriptor names the very inode just opened (no second lookup
        // by name that a concurrent rename could redirect).
        let path_fd = sys::openat(
            self.proc_self_fd.as_fd(),
            &Self::proc_name(file.as_fd()),
            libc::O_PATH,
        )
        .map_err(|e| self.fd_error(e))?;
        let entry = self.entry(path_fd)?;
        let (fh, handle) = self.insert_handle(entry.node, file);
        Ok((
            entry,
            Open {
                fh,
                backing: Some(handle),
            },
        ))
    }

    /// Read into `buf` at `offset`; short only at end of file.
    pub fn read(&self, fh: u64, offset: u64, buf: &mut [u8]) -> io::Result<usize> {
        let h = self.handle(fh)?;
        let mut done = 0;
        while done < buf.len() {
            let at = sys::checked_offset(offset.saturating_add(done as u64), libc::EINVAL)?;
            let n = aligned::pread(h.fd(), &mut buf[done..], at, h.direct)?;
            if n == 0 {
                break;
            }
            done += n;
        }
        Ok(done)
    }

    /// Write all of `data` at `offset` (O_APPEND handles append at the host). Set-id bits
    /// stay as they are: a write that must clear them says so (FUSE_WRITE_KILL_SUIDGID) and
    /// the dispatch calls [`FileSystem::kill_suidgid`] first.
    pub fn write(&self, _ctx: &Context, fh: u64, offset: u64, data: &[u8]) -> io::Result<usize> {
        self.writable()?;
        let h = self.handle(fh)?;
        let mut done = 0;
        while done < data.len() {
            let at = sys::checked_offset(offset.saturating_add(done as u64), libc::EFBIG)?;
            let n = aligned::pwrite(h.fd(), &data[done..], at, h.direct)?;
            if n == 0 {
                break;
            }
            done += n;
        }
        Ok(done)
    }

    /// Clears the set-user-id and set-group-id bits of the file open as `fh`, as the host
    /// kernel clears them before a write or truncate by `ctx` when it lacks CAP_FSETID
    /// (FUSE_HANDLE_KILLPRIV_V2: the client kernel leaves this to the server and says when,
    /// with FUSE_WRITE_KILL_SUIDGID, FATTR_KILL_SUIDGID and FUSE_OPEN_KILL_SUIDGID).
    ///
    /// Done explicitly, the mode read and then set as root, rather than by running the
    /// write without CAP_FSETID and letting the host kernel decide (virtiofsd's way): the
    /// host judges "the caller is in the file's group" by the daemon thread's fsgid and
    /// supplementary groups, which are root's (group 0 among them), not the caller's, so a
    /// set-gid file of group 0 would keep its bit when a caller outside the group writes it;
    /// and switching to the caller's fsuid would change the permission checks of an open.
    /// The rule is the host's (setattr_should_drop_suidgid): set-user-id always, set-group-id
    /// when the group may execute or the caller's group is not the file's (the caller's
    /// supplementary groups are not on the wire, so one in the file's group only through one
    /// of them loses the bit too: the safe side). Regular files only. Before the data
    /// changes, as the host does, so no moment shows new contents with the old bits. Not
    /// atomic with the check: a chmod landing between the two is undone. A host refusal
    /// (EPERM: an unprivileged daemon on a file it does not own) is not an error: the host
    /// kernel then clears the bits itself on the write, the daemon lacking CAP_FSETID.
    /// `security.capability` needs nothing here: the host kernel removes it on every write
    /// and truncate, whoever writes.
    ///
    /// Returns whether the bits go (now, or with the host's own clearing on the write): the
    /// client's cached mode is stale then.
    pub fn kill_suidgid(&self, ctx: &Context, fh: u64) -> io::Result<bool> {
        let h = self.handle(fh)?;
        let stx = sys::statx_fd(h.fd())?;
        let kill = suidgid_to_kill(u32::from(stx.stx_mode), stx.stx_gid, ctx.gid);
        if kill == 0 {
            return Ok(false);
        }
        self.writable()?;
        let mode = u32::from(stx.stx_mode) & 0o7777 & !kill;
        permitted(sys::fchmod(h.fd(), mode))
    }

    /// [`FileSystem::kill_suidgid`] for `node` (a truncate without a handle, an open that
    /// truncates).
    pub fn kill_suidgid_node(&self, ctx: &Context, node: u64) -> io::Result<bool> {
        let inode = self.inode(node)?;
        if !inode.is_reg() {
            return Ok(false);
        }
        let fd = inode.fd()?;
        let stx = sys::statx_fd(fd.as_fd())?;
        let kill = suidgid_to_kill(u32::from(stx.stx_mode), stx.stx_gid, ctx.gid);
        if kill == 0 {
            return Ok(false);
        }
        self.writable()?;
        let mode = u32::from(stx.stx_mode) & 0o7777 & !kill;
        permitted(sys::fchmodat(
            self.proc_self_fd.as_fd(),
            &Self::proc_name(fd.as_fd()),
            mode,
        ))
    }

    /// The host file `name` in `parent` names, as [`FileSystem::file_identity`] gives it,
    /// when it is a regular file with a set-id bit: what a CREATE that may truncate an
    /// existing file (FUSE_OPEN_KILL_SUIDGID) notes before opening, so that the bits go only
    /// when the file it opened is that one (a file the CREATE made keeps the mode asked for).
    pub fn set_id_file(&self, parent: u64, name: &CStr) -> Option<(u64, u64)> {
        check_new_name(name).ok()?;
        let p = self.dir_inode(parent).ok()?;
        let st = sys::stat_at(p.fd().ok()?.as_fd(), name).ok()?;
        let mode = st.st_mode;
        (mode & libc::S_IFMT == libc::S_IFREG && mode & (libc::S_ISUID | libc::S_ISGID) != 0)
            .then_some((st.st_dev, st.st_ino))
    }

    /// FUSE_FLUSH: closes a duplicate of the handle's descriptor, so POSIX locks go and
    /// close(2)'s error is the answer, as at a close on the host.
    pub fn flush(&self, fh: u64) -> io::Result<()> {
        sys::flush_fd(self.handle(fh)?.fd())
    }

    /// Closes open file handle `fh`.
    pub fn release(&self, fh: u64) -> io::Result<()> {
        self.remove_handle(fh).map(drop)
    }

    /// fsync(2), or fdatasync(2) with `datasync`, of the handle's file.
    pub fn fsync(&self, fh: u64, datasync: bool) -> io::Result<()> {
        sys::fsync(self.handle(fh)?.fd(), datasync)
    }

    /// A descriptor of regular file `node` for the DAX window (the guest's fault path names
    /// files by node id, not by handle): read-write when `write`, else read-only. Unknown
    /// node: ESTALE; not a regular file: EINVAL; read-write on a read-only export: EROFS.
    pub fn dax_open(&self, node: u64, write: bool) -> io::Result<OwnedFd> {
        if write {
            self.writable()?;
        }
        let inode = self.inode(node)?;
        if !inode.is_reg() {
            return Err(err(libc::EINVAL));
        }
        let flags = if write { libc::O_RDWR } else { libc::O_RDONLY };
        self.reopen(&inode, flags | libc::O_NONBLOCK)
    }

    /// The host file `node` names, as (st_dev, st_ino): the same for every node id of one
    /// file (bind mounts inside the share give one file several node ids).
    pub fn file_identity(&self, node: u64) -> Option<(u64, u64)> {
        self.inodes.get(node).map(|i| (i.key.dev, i.key.ino))
    }

    /// The node an open handle belongs to.
    pub fn handle_node(&self, fh: u64) -> Option<u64> {
        self.handle(fh).ok().map(|h| h.node)
    }

    /// fallocate(2) on the backing file: plain, KEEP_SIZE, PUNCH_HOLE, ZERO_RANGE (and any
    /// other mode the host filesystem accepts).
    pub fn fallocate(&self, fh: u64, mode: i32, offset: u64, len: u64) -> io::Result<()> {
        self.writable()?;
        sys::fallocate(self.handle(fh)?.fd(), mode, offset, len)
    }

    /// lseek answered from the backing file; SEEK_DATA/SEEK_HOLE report its real holes.
    pub fn lseek(&self, fh: u64, offset: i64, whence: i32) -> io::Result<u64> {
        match whence {
            libc::SEEK_SET | libc::SEEK_END | libc::SEEK_DATA | libc::SEEK_HOLE => {}
            _ => return Err(err(libc::EINVAL)),
        }
        sys::lseek(self.handle(fh)?.fd(), offset, whence).map(|o| o as u64)
    }

    /// syncfs(2) of the filesystem holding `node` (FUSE_SYNCFS).
    pub fn syncfs(&self, node: u64) -> io::Result<()> {
        let mut inode = self.inode(node)?;
        // syncfs needs a real descriptor, not O_PATH: reopen the node (or, for a symlink or
        // special file, the root) read-only.
        if !(inode.is_dir() || inode.is_reg()) {
            inode = self.inode(ROOT_NODE)?;
        }
        let fd = self.reopen(&inode, libc::O_RDONLY | libc::O_NONBLOCK)?;
        sys::syncfs(fd.as_fd())
    }

    /// copy_file_range(2) between two open handles on the host; the answer is the bytes
    /// copied.
    pub fn copy_file_range(
        &self,
        fh_in: u64,
        off_in: u64,
        fh_out: u64,
        off_out: u64,
        len: u64,
        flags: u32,
    ) -> io::Result<usize> {
        self.writable()?;
        let h_in = self.handle(fh_in)?;
        let h_out = self.handle(fh_out)?;
        sys::copy_file_range(h_in.fd(), off_in, h_out.fd(), off_out, len, flags)
    }
}

/// The set-id bits of a file of `mode` and group `file_gid` that a write or truncate by a
/// caller of group `caller_gid` without CAP_FSETID clears on the host
/// (setattr_should_drop_suidgid): set-user-id always, set-group-id when the group may execute
/// or the caller is not in the group; only on regular files.
pub(crate) fn suidgid_to_kill(mode: u32, file_gid: u32, caller_gid: u32) -> u32 {
    if mode & libc::S_IFMT != libc::S_IFREG {
        return 0;
    }
    let mut kill = mode & libc::S_ISUID;
    if mode & libc::S_ISGID != 0 && (mode & libc::S_IXGRP != 0 || file_gid != caller_gid) {
        kill |= libc::S_ISGID;
    }
    kill
}

/// A chmod the host refused for want of privilege (an unprivileged daemon on a file it does
/// not own) is no failure: lacking CAP_FSETID, the daemon's own write or truncate makes the
/// host clear the bits.
fn permitted(r: io::Result<()>) -> io::Result<bool> {
    match r {
        Ok(()) => Ok(true),
        Err(e) if e.raw_os_error() == Some(libc::EPERM) => Ok(true),
        Err(e) => Err(e),
    }
}
