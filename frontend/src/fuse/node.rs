//! Requests on nodes and names: lookup and forget, attributes, and creating, linking,
//! renaming and removing directory entries.

use super::*;

impl FuseClient {
    /// FUSE_LOOKUP.
    pub fn lookup(&mut self, parent: u64, name: &str) -> Result<FuseEntryOut, FuseError> {
        let name = cstr(name)?;
        self.request_struct(parent, Operation::Lookup { name: &name })
    }

    /// FUSE_FORGET (hiprio queue, no reply).
    pub fn forget(&mut self, nodeid: u64, nlookup: u64) -> Result<(), FuseError> {
        self.send_no_reply(nodeid, Operation::Forget(FuseForgetIn { nlookup }))
    }

    /// FUSE_BATCH_FORGET of `(nodeid, nlookup)` pairs (hiprio queue, no reply).
    pub fn batch_forget(&mut self, nodes: &[(u64, u64)]) -> Result<(), FuseError> {
        let entries: Vec<FuseForgetOne> = nodes
            .iter()
            .map(|&(nodeid, nlookup)| FuseForgetOne { nodeid, nlookup })
            .collect();
        let bytes = encode_list(&entries);
        let list = ForgetList::from_bytes(&bytes).ok_or(FuseError::BadName)?;
        self.send_no_reply(0, Operation::BatchForget(list))
    }

    /// FUSE_GETATTR, with the file handle when given.
    pub fn getattr(&mut self, nodeid: u64, fh: Option<u64>) -> Result<FuseAttrOut, FuseError> {
        let arg = FuseGetattrIn {
            getattr_flags: if fh.is_some() { FUSE_GETATTR_FH } else { 0 },
            dummy: 0,
            fh: fh.unwrap_or(0),
        };
        self.request_struct(nodeid, Operation::Getattr(arg))
    }

    /// FUSE_SETATTR.
    pub fn setattr(&mut self, nodeid: u64, arg: &FuseSetattrIn) -> Result<FuseAttrOut, FuseError> {
        self.request_struct(nodeid, Operation::Setattr(*arg))
    }

    /// FUSE_READLINK.
    pub fn readlink(&mut self, nodeid: u64) -> Result<Vec<u8>, FuseError> {
        self.request_data(nodeid, Operation::Readlink, 4096)
    }

    /// FUSE_SYMLINK: `name` in `parent` pointing at `target`.
    pub fn symlink(
        &mut self,
        parent: u64,
        name: &str,
        target: &str,
    ) -> Result<FuseEntryOut, FuseError> {
        let (name, target) = (cstr(name)?, cstr(target)?);
        self.request_struct(
            parent,
            Operation::Symlink {
                name: &name,
                target: &target,
            },
        )
    }

    /// FUSE_MKNOD.
    pub fn mknod(
        &mut self,
        parent: u64,
        name: &str,
        mode: u32,
        rdev: u32,
        umask: u32,
    ) -> Result<FuseEntryOut, FuseError> {
        let name = cstr(name)?;
        let arg = FuseMknodIn {
            mode,
            rdev,
            umask,
            padding: 0,
        };
        self.request_struct(parent, Operation::Mknod { arg, name: &name })
    }

    /// FUSE_MKDIR.
    pub fn mkdir(
        &mut self,
        parent: u64,
        name: &str,
        mode: u32,
        umask: u32,
    ) -> Result<FuseEntryOut, FuseError> {
        let name = cstr(name)?;
        let arg = FuseMkdirIn { mode, umask };
        self.request_struct(parent, Operation::Mkdir { arg, name: &name })
    }

    /// FUSE_UNLINK.
    pub fn unlink(&mut self, parent: u64, name: &str) -> Result<(), FuseError> {
        let name = cstr(name)?;
        self.request_empty(parent, Operation::Unlink { name: &name })
    }

    /// FUSE_RMDIR.
    pub fn rmdir(&mut self, parent: u64, name: &str) -> Result<(), FuseError> {
        let name = cstr(name)?;
        self.request_empty(parent, Operation::Rmdir { name: &name })
    }

    /// FUSE_RENAME.
    pub fn rename(
        &mut self,
        parent: u64,
        name: &str,
        newdir: u64,
        newname: &str,
    ) -> Result<(), FuseError> {
        let (name, newname) = (cstr(name)?, cstr(newname)?);
        self.request_empty(
            parent,
            Operation::Rename {
                arg: FuseRenameIn { newdir },
                name: &name,
                newname: &newname,
            },
        )
    }

    /// FUSE_RENAME2 with RENAME_* `flags`.
    pub fn rename2(
        &mut self,
        parent: u64,
        name: &str,
        newdir: u64,
        newname: &str,
        flags: u32,
    ) -> Result<(), FuseError> {
        let (name, newname) = (cstr(name)?, cstr(newname)?);
        self.request_empty(
            parent,
            Operation::Rename2 {
                arg: FuseRename2In {
                    newdir,
                    flags,
                    padding: 0,
                },
                name: &name,
                newname: &newname,
            },
        )
    }

    /// FUSE_LINK: a new name `newname` in `newparent` for `nodeid`.
    pub fn link(
        &mut self,
        nodeid: u64,
        newparent: u64,
        newname: &str,
    ) -> Result<FuseEntryOut, FuseError> {
        let name = cstr(newname)?;
        self.request_struct(
            newparent,
            Operation::Link {
                arg: FuseLinkIn { oldnodeid: nodeid },
                name: &name,
            },
        )
    }

    /// FUSE_STATFS.
    pub fn statfs(&mut self, nodeid: u64) -> Result<FuseKstatfs, FuseError> {
        let out: FuseStatfsOut = self.request_struct(nodeid, Operation::Statfs)?;
        Ok(out.st)
    }

    /// FUSE_ACCESS with R_OK/W_OK/X_OK `mask`.
    pub fn access(&mut self, nodeid: u64, mask: u32) -> Result<(), FuseError> {
        self.request_empty(nodeid, Operation::Access(FuseAccessIn { mask, padding: 0 }))
    }
}
