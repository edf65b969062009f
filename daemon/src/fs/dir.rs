//! Directory handles and listings: READDIR and READDIRPLUS, with the inode numbers they
//! report.

use super::*;

impl FileSystem {
    /// Opens directory `node` for readdir; the answer is the handle id.
    pub fn opendir(&self, _ctx: &Context, node: u64) -> io::Result<u64> {
        let inode = self.dir_inode(node)?;
        let noatime = match self.cfg.atime {
            Atime::Host => 0,
            Atime::NotDirs | Atime::Never => libc::O_NOATIME,
        };
        let file = self.reopen(&inode, libc::O_RDONLY | libc::O_DIRECTORY | noatime)?;
        Ok(self.insert_handle(node, file).0)
    }

    /// Closes directory handle `fh`.
    pub fn releasedir(&self, fh: u64) -> io::Result<()> {
        self.remove_handle(fh).map(drop)
    }

    /// fsync(2), or fdatasync(2) with `datasync`, of the handle's directory.
    pub fn fsyncdir(&self, fh: u64, datasync: bool) -> io::Result<()> {
        sys::fsync(self.handle(fh)?.fd(), datasync)
    }

    /// Entries from `offset` (0 = start, else a cookie from an earlier entry) until `emit`
    /// returns false (the transport's buffer is full) or the directory ends.
    pub fn readdir(
        &self,
        fh: u64,
        offset: u64,
        mut emit: impl FnMut(&DirEntry) -> bool,
    ) -> io::Result<()> {
        let h = self.handle(fh)?;
        let dir = self.inode(h.node)?;
        let _guard = h.dir_lock.lock().unwrap_or_else(|e| e.into_inner());
        let offset = i64::try_from(offset).map_err(|_| err(libc::EINVAL))?;
        // The cookies are getdents64's d_off: lseek to one and the next getdents64 goes on
        // with the entry after the one it came with. RawDir reads from the descriptor's
        // current position and hands each entry's d_off out as `next_entry_cookie`, so the
        // seek below is all a resumed READDIR needs.
        sys::lseek(h.fd(), offset, libc::SEEK_SET)?;
        let mut buf = Vec::with_capacity(32 * 1024);
        let mut entries = rustix::fs::RawDir::new(h.fd(), buf.spare_capacity_mut());
        while let Some(entry) = entries.next() {
            let entry = entry?;
            let name = entry.file_name().to_owned();
            let mut file_type = dtype_to_mode(entry.file_type());
            if file_type == 0 {
                file_type = sys::stat_at(h.fd(), &name)
                    .map(|st| st.st_mode & libc::S_IFMT)
                    .unwrap_or(libc::S_IFREG);
            }
            let entry = DirEntry {
                ino: self.dirent_number(&dir, &name, entry.ino()),
                offset: entry.next_entry_cookie(),
                file_type,
                name,
            };
            if !emit(&entry) {
                return Ok(());
            }
        }
        Ok(())
    }

    /// The inode number clients see for directory entry `name` of `dir` whose host d_ino is
    /// `ino`: entries live on the directory's mount (a mount point shows the directory
    /// under it, as on the host), and `..` of the share is the share.
    fn dirent_number(&self, dir: &Inode, name: &CStr, ino: u64) -> u64 {
        if dir.node == ROOT_NODE && name.to_bytes() == b".." {
            return ROOT_NODE;
        }
        self.inodes
            .number_of(InodeKey { ino, ..dir.key })
            .unwrap_or(ino)
    }

    /// As readdir, with a lookup per entry. `.` and `..` come with `None` (no lookup
    /// reference is taken for them). An entry `emit` refuses is forgotten again, so the
    /// lookup count matches what the client received.
    pub fn readdirplus(
        &self,
        _ctx: &Context,
        fh: u64,
        offset: u64,
        mut emit: impl FnMut(&DirEntry, Option<&Entry>) -> bool,
    ) -> io::Result<()> {
        let h = self.handle(fh)?;
        let dir = self.dir_inode(h.node)?;
        self.readdir(fh, offset, |d| {
            if matches!(d.name.to_bytes(), b"." | b"..") {
                return emit(d, None);
            }
            match self.lookup_in(&dir, &d.name) {
                Ok(entry) => {
                    if emit(d, Some(&entry)) {
                        true
                    } else {
                        self.forget(entry.node, 1);
                        false
                    }
                }
                // Removed since getdents, or a name the core refuses: skip it.
                Err(_) => true,
            }
        })
    }
}
