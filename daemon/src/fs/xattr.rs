//! Extended attributes, through `--xattrmap` and the POSIX ACL rules.

use super::*;

impl FileSystem {
    /// Xattrs go through a descriptor reopened via `/proc/self/fd/N`, for regular files and
    /// directories only; symlinks and special files have none here (the host refuses
    /// user.* on them anyway). No path is used, so this works after a chroot.
    /// Runs an xattr call on `inode`: `call(fd, None)` with a descriptor reopened through
    /// `/proc/self/fd` for the f*xattr calls, for regular files and directories; other types
    /// (symlinks, device nodes, FIFOs, sockets) cannot be opened without side effects or
    /// following the link, so they get `call(/proc/self/fd, Some(its O_PATH descriptor's
    /// number))` for the *xattrat calls, as ext4 allows xattrs on every type. A kernel
    /// without those (before 6.13) answers `unsupported`.
    fn on_xattrs<T>(
        &self,
        inode: &Inode,
        call: impl FnOnce(BorrowedFd<'_>, Option<&CStr>) -> io::Result<T>,
        unsupported: impl FnOnce() -> io::Result<T>,
    ) -> io::Result<T> {
        if !self.cfg.xattr {
            return Err(err(libc::ENOSYS));
        }
        self.xattr_call(inode, call, unsupported)
    }

    /// `on_xattrs` without the `--xattr` gate (security labels at create are not guest xattr
    /// requests).
    pub(super) fn xattr_call<T>(
        &self,
        inode: &Inode,
        call: impl FnOnce(BorrowedFd<'_>, Option<&CStr>) -> io::Result<T>,
        unsupported: impl FnOnce() -> io::Result<T>,
    ) -> io::Result<T> {
        if inode.is_reg() || inode.is_dir() {
            let fd = self.reopen(inode, libc::O_RDONLY | libc::O_NONBLOCK)?;
            return call(fd.as_fd(), None);
        }
        let fd = inode.fd()?;
        let name = Self::proc_name(fd.as_fd());
        match call(self.proc_self_fd.as_fd(), Some(&name)) {
            Err(e) if e.raw_os_error() == Some(libc::ENOSYS) => unsupported(),
            r => r,
        }
    }

    /// The host name for xattr `name` from the client, through `--xattrmap` if one is set.
    /// A `bad` name gets `bad_errno`: virtiofsd answers GETXATTR with ENODATA (the name does
    /// not exist as far as the client can tell) and SETXATTR/REMOVEXATTR with EPERM.
    fn host_xattr_name<'a>(&self, name: &'a CStr, bad_errno: i32) -> io::Result<Cow<'a, CStr>> {
        if !self.cfg.xattr {
            return Err(err(libc::ENOSYS));
        }
        // Without negotiated ACLs the client kernel neither enforces nor expects them: a
        // host ACL set through here would change access behind its back (virtiofsd refuses
        // them the same way).
        if !self.posix_acl.load(Ordering::Relaxed)
            && [POSIX_ACL_ACCESS, POSIX_ACL_DEFAULT].contains(&name.to_bytes())
        {
            return Err(err(libc::EOPNOTSUPP));
        }
        let Some(map) = &self.cfg.xattrmap else {
            return Ok(Cow::Borrowed(name));
        };
        map.to_host(name).map_err(|r| {
            err(match r {
                Refusal::Bad => bad_errno,
                Refusal::Unsupported => libc::EOPNOTSUPP,
                // What the host kernel answers for a name past XATTR_NAME_MAX.
                Refusal::TooLong => libc::ERANGE,
            })
        })
    }

    /// The value of xattr `name`; with `size` 0 only its size, and ERANGE when it does not
    /// fit in `size`.
    pub fn getxattr(&self, _ctx: &Context, node: u64, name: &CStr, size: u32) -> io::Result<Xattr> {
        let inode = self.inode(node)?;
        let name = self.host_xattr_name(name, libc::ENODATA)?;
        let mut buf = vec![0u8; size.min(XATTR_SIZE_MAX) as usize];
        let n = self.on_xattrs(
            &inode,
            |fd, at| match at {
                None => sys::getxattr(fd, &name, &mut buf),
                Some(path) => sys::getxattr_at(fd, path, &name, &mut buf),
            },
            || Err(err(libc::ENODATA)),
        )?;
        if size == 0 {
            return Ok(Xattr::Size(n as u32));
        }
        buf.truncate(n);
        Ok(Xattr::Data(buf))
    }

    /// The names of `node`'s xattrs. With `--xattrmap` the client gets the mapped list, which
    /// can be shorter than the host's: the whole host list is read even for the size query
    /// or a small buffer, so the size the client is told is the size it then gets, and a
    /// buffer too small for the mapped list (not the host's) gets ERANGE.
    pub fn listxattr(&self, _ctx: &Context, node: u64, size: u32) -> io::Result<Xattr> {
        let inode = self.inode(node)?;
        let map = self.cfg.xattrmap.as_ref();
        let room = match map {
            Some(_) => XATTR_LIST_MAX,
            None => size.min(XATTR_LIST_MAX),
        };
        let mut buf = vec![0u8; room as usize];
        let n = self.on_xattrs(
            &inode,
            |fd, at| match at {
                None => sys::listxattr(fd, &mut buf),
                Some(path) => sys::listxattr_at(fd, path, &mut buf),
            },
            || Ok(0),
        )?;
        let len = match map {
            Some(map) => {
                buf.truncate(n);
                buf = map.list_to_client(&buf);
                buf.len()
            }
            // A size query read nothing: `n` is the host's answer.
            None => n,
        };
        if size == 0 {
            return Ok(Xattr::Size(len as u32));
        }
        if len > size as usize {
            return Err(err(libc::ERANGE));
        }
        buf.truncate(len);
        Ok(Xattr::Data(buf))
    }

    /// `setxattr_flags` are SETXATTR_EXT's: with ACLs on, FUSE_SETXATTR_ACL_KILL_SGID on
    /// `system.posix_acl_access` asks that the set-group-id bit go, as the client kernel
    /// would clear it for a caller outside the file's group without CAP_FSETID.
    pub fn setxattr(
        &self,
        _ctx: &Context,
        node: u64,
        name: &CStr,
        value: &[u8],
        flags: i32,
        setxattr_flags: u32,
    ) -> io::Result<()> {
        self.writable()?;
        let inode = self.inode(node)?;
        let kill_sgid = self.posix_acl.load(Ordering::Relaxed)
            && setxattr_flags & protocol::abi::FUSE_SETXATTR_ACL_KILL_SGID != 0
            && name.to_bytes() == POSIX_ACL_ACCESS;
        let name = self.host_xattr_name(name, libc::EPERM)?;
        if kill_sgid {
            let stx = sys::statx_fd(inode.fd()?.as_fd())?;
            let mode = u32::from(stx.stx_mode);
            if mode & libc::S_ISGID != 0 && !inode.is_symlink() {
                sys::fchmodat(
                    self.proc_self_fd.as_fd(),
                    &Self::proc_name(inode.fd()?.as_fd()),
                    mode & 0o7777 & !libc::S_ISGID,
                )?;
            }
        }
        self.on_xattrs(
            &inode,
            |fd, at| match at {
                None => sys::setxattr(fd, &name, value, flags),
                Some(path) => sys::setxattr_at(fd, path, &name, value, flags),
            },
            || Err(err(libc::EPERM)),
        )
    }

    /// Removes xattr `name` (through `--xattrmap` when one is set).
    pub fn removexattr(&self, _ctx: &Context, node: u64, name: &CStr) -> io::Result<()> {
        self.writable()?;
        let inode = self.inode(node)?;
        let name = self.host_xattr_name(name, libc::EPERM)?;
        self.on_xattrs(
            &inode,
            |fd, at| match at {
                None => sys::removexattr(fd, &name),
                Some(path) => sys::removexattr_at(fd, path, &name),
            },
            || Err(err(libc::EPERM)),
        )
    }
}
