//! Operations on nodes and names: lookup and forget, attributes, creating, linking,
//! renaming and removing entries, statfs and access checks.

use super::*;

impl FileSystem {
    /// The node of `name` in directory `parent`, one more lookup reference on it (a single
    /// component, resolved beneath the share without following symlinks).
    pub fn lookup(&self, _ctx: &Context, parent: u64, name: &CStr) -> io::Result<Entry> {
        let parent = self.dir_inode(parent)?;
        self.lookup_in(&parent, name)
    }

    /// Drops `count` lookup references; at zero the node and its descriptor go.
    pub fn forget(&self, node: u64, count: u64) {
        self.inodes.forget(node, count);
    }

    /// [`FileSystem::forget`] for each (node, count) pair (FUSE_BATCH_FORGET).
    pub fn batch_forget(&self, nodes: &[(u64, u64)]) {
        for &(node, count) in nodes {
            self.inodes.forget(node, count);
        }
    }

    /// The attributes of `node`, through open handle `fh` when it is one of this node's.
    pub fn getattr(&self, _ctx: &Context, node: u64, fh: Option<u64>) -> io::Result<Attr> {
        let stx = match fh.and_then(|fh| self.handle(fh).ok()) {
            Some(h) if h.node == node => sys::statx_fd(h.fd())?,
            _ => sys::statx_fd(self.inode(node)?.fd()?.as_fd())?,
        };
        Ok(Attr::from_statx(&stx, node))
    }

    /// Change attributes in the order chown, chmod, truncate, times: a root chown clears
    /// set-id bits on the host, so an explicit mode in the same request must come after it.
    pub fn setattr(&self, _ctx: &Context, node: u64, set: &SetAttr) -> io::Result<Attr> {
        self.writable()?;
        let inode = self.inode(node)?;
        let fd = inode.fd()?;
        let handle = match set.fh {
            Some(fh) => self.handle(fh).ok().filter(|h| h.node == node),
            None => None,
        };
        if set.uid.is_some() || set.gid.is_some() {
            sys::fchownat_fd(
                fd.as_fd(),
                set.uid.unwrap_or(u32::MAX),
                set.gid.unwrap_or(u32::MAX),
            )?;
        }
        if let Some(mode) = set.mode {
            let mode = mode & 0o7777;
            match &handle {
                Some(h) => sys::fchmod(h.fd(), mode)?,
                None if inode.is_symlink() => return Err(err(libc::EOPNOTSUPP)),
                None => sys::fchmodat(
                    self.proc_self_fd.as_fd(),
                    &Self::proc_name(fd.as_fd()),
                    mode,
                )?,
            }
        }
        if let Some(size) = set.size {
            if inode.is_dir() {
                return Err(err(libc::EISDIR));
            }
            if !inode.is_reg() {
                return Err(err(libc::EINVAL));
            }
            match &handle {
                Some(h) => sys::ftruncate(h.fd(), size)?,
                None => {
                    let fd = self.reopen(&inode, libc::O_WRONLY | libc::O_NONBLOCK)?;
                    sys::ftruncate(fd.as_fd(), size)?;
                }
            }
        }
        if set.atime.is_some() || set.mtime.is_some() {
            let times = rustix::fs::Timestamps {
                last_access: timespec(set.atime),
                last_modification: timespec(set.mtime),
            };
            if inode.is_symlink() {
                sys::utimensat(
                    fd.as_fd(),
                    c"",
                    &times,
                    libc::AT_EMPTY_PATH | libc::AT_SYMLINK_NOFOLLOW,
                )?;
            } else {
                sys::utimensat(
                    self.proc_self_fd.as_fd(),
                    &Self::proc_name(fd.as_fd()),
                    &times,
                    0,
                )?;
            }
        }
        Ok(Attr::from_statx(&sys::statx_fd(fd.as_fd())?, node))
    }

    /// The target of symlink `node` (EINVAL for anything else), never resolved here.
    pub fn readlink(&self, _ctx: &Context, node: u64) -> io::Result<Vec<u8>> {
        let inode = self.inode(node)?;
        if !inode.is_symlink() {
            return Err(err(libc::EINVAL));
        }
        sys::readlink_fd(inode.fd()?.as_fd())
    }

    /// Creates a device node, FIFO, socket or regular file as the caller (its fsuid/fsgid,
    /// its umask).
    pub fn mknod(
        &self,
        ctx: &Context,
        parent: u64,
        name: &CStr,
        mode: u32,
        rdev: u64,
    ) -> io::Result<Entry> {
        self.writable()?;
        let p = self.dir_inode(parent)?;
        check_new_name(name)?;
        let umask = self.umask_in(&p, ctx);
        let pfd = p.fd()?;
        {
            let _creds = self.creds(ctx)?;
            sys::mknodat(pfd.as_fd(), name, mode & !umask, rdev)?;
        }
        self.lookup_in(&p, name)
    }

    /// Creates a directory as the caller.
    pub fn mkdir(&self, ctx: &Context, parent: u64, name: &CStr, mode: u32) -> io::Result<Entry> {
        self.writable()?;
        let p = self.dir_inode(parent)?;
        check_new_name(name)?;
        let umask = self.umask_in(&p, ctx);
        let pfd = p.fd()?;
        {
            let _creds = self.creds(ctx)?;
            sys::mkdirat(pfd.as_fd(), name, mode & 0o7777 & !umask)?;
        }
        self.lookup_in(&p, name)
    }

    /// Creates a symlink to `target` as the caller; the target is stored, not checked.
    pub fn symlink(
        &self,
        ctx: &Context,
        parent: u64,
        name: &CStr,
        target: &CStr,
    ) -> io::Result<Entry> {
        self.writable()?;
        let p = self.dir_inode(parent)?;
        check_new_name(name)?;
        let pfd = p.fd()?;
        {
            let _creds = self.creds(ctx)?;
            sys::symlinkat(target, pfd.as_fd(), name)?;
        }
        self.lookup_in(&p, name)
    }

    /// Removes the non-directory `name` from `parent`.
    pub fn unlink(&self, _ctx: &Context, parent: u64, name: &CStr) -> io::Result<()> {
        self.writable()?;
        let p = self.dir_inode(parent)?;
        check_new_name(name)?;
        sys::unlinkat(p.fd()?.as_fd(), name, 0)
    }

    /// Removes the empty directory `name` from `parent`.
    pub fn rmdir(&self, _ctx: &Context, parent: u64, name: &CStr) -> io::Result<()> {
        self.writable()?;
        let p = self.dir_inode(parent)?;
        check_new_name(name)?;
        sys::unlinkat(p.fd()?.as_fd(), name, libc::AT_REMOVEDIR)
    }

    /// renameat2 between two parents' descriptors: both ends are single names inside the
    /// tree, so nothing can be moved in or out of it.
    pub fn rename(
        &self,
        _ctx: &Context,
        parent: u64,
        name: &CStr,
        new_parent: u64,
        new_name: &CStr,
        flags: u32,
    ) -> io::Result<()> {
        self.writable()?;
        const KNOWN: u32 = libc::RENAME_NOREPLACE | libc::RENAME_EXCHANGE | libc::RENAME_WHITEOUT;
        if flags & !KNOWN != 0 {
            return Err(err(libc::EINVAL));
        }
        let p = self.dir_inode(parent)?;
        let np = self.dir_inode(new_parent)?;
        check_new_name(name)?;
        check_new_name(new_name)?;
        sys::renameat2(p.fd()?.as_fd(), name, np.fd()?.as_fd(), new_name, flags)
    }

    /// A new hard link to `node` in `new_parent` (linkat through its /proc/self/fd magic link,
    /// which needs no capability).
    pub fn link(
        &self,
        _ctx: &Context,
        node: u64,
        new_parent: u64,
        new_name: &CStr,
    ) -> io::Result<Entry> {
        self.writable()?;
        let inode = self.inode(node)?;
        if inode.is_dir() {
            return Err(err(libc::EPERM));
        }
        let np = self.dir_inode(new_parent)?;
        check_new_name(new_name)?;
        sys::link_fd(
            self.proc_self_fd.as_fd(),
            &Self::proc_name(inode.fd()?.as_fd()),
            np.fd()?.as_fd(),
            new_name,
        )?;
        self.lookup_in(&np, new_name)
    }

    /// statfs of the filesystem holding `node`.
    pub fn statfs(&self, _ctx: &Context, node: u64) -> io::Result<StatFs> {
        let st = sys::fstatfs(self.inode(node)?.fd()?.as_fd())?;
        Ok(StatFs {
            blocks: st.f_blocks,
            bfree: st.f_bfree,
            bavail: st.f_bavail,
            files: st.f_files,
            ffree: st.f_ffree,
            bsize: st.f_bsize as u32,
            namelen: st.f_namemax as u32,
            frsize: st.f_frsize as u32,
        })
    }

    /// access(2) as the caller (faccessat2 with AT_EACCESS under the caller's fsuid/fsgid).
    pub fn access(&self, ctx: &Context, node: u64, mask: i32) -> io::Result<()> {
        let inode = self.inode(node)?;
        if mask & libc::W_OK != 0 && self.cfg.read_only {
            return Err(err(libc::EROFS));
        }
        let fd = inode.fd()?;
        let _creds = self.creds(ctx)?;
        sys::faccessat_fd(fd.as_fd(), mask & (libc::R_OK | libc::W_OK | libc::X_OK))
    }
}
