//! Node operations: lookup and forget, attributes, symlinks, device nodes and directories
//! made, names removed, renamed and linked, statfs; and the security labels the guest sends
//! with the nodes it creates.

use std::ffi::CStr;
use std::io;
use std::sync::atomic::Ordering;

use protocol::abi::*;
use protocol::reply;
use protocol::{ForgetList, Operation, Request};

use super::answer::{empty, entry_out, errno, fuse_attr, sent, sink, Answer, Outcome};
use super::{Call, Server};
use crate::chain::Chain;
use crate::fs::{self, SetAttr, SetTime, Timespec};

impl Server {
    pub(super) fn lookup(&self, chain: &mut dyn Chain, c: &Call<'_>, name: &CStr) -> Outcome {
        self.entry(chain, c, self.fs.lookup(&c.ctx, c.node, name))
    }

    pub(super) fn forget(&self, c: &Call<'_>, f: &FuseForgetIn) -> Outcome {
        self.fs.forget(c.node, f.nlookup);
        Ok(Answer::NoReply)
    }

    pub(super) fn batch_forget(&self, list: ForgetList<'_>) -> Outcome {
        let nodes: Vec<(u64, u64)> = list.iter().map(|f| (f.nodeid, f.nlookup)).collect();
        self.fs.batch_forget(&nodes);
        Ok(Answer::NoReply)
    }

    pub(super) fn getattr(
        &self,
        chain: &mut dyn Chain,
        c: &Call<'_>,
        g: &FuseGetattrIn,
    ) -> Outcome {
        let fh = (g.getattr_flags & FUSE_GETATTR_FH != 0).then_some(g.fh);
        self.attr(chain, c, self.fs.getattr(&c.ctx, c.node, fh))
    }

    pub(super) fn setattr(
        &self,
        chain: &mut dyn Chain,
        c: &Call<'_>,
        s: &FuseSetattrIn,
    ) -> Outcome {
        let node = c.node;
        // A truncate by a caller without CAP_FSETID (HANDLE_KILLPRIV_V2): the set-id bits go
        // before the size changes, as on the host.
        if s.valid & (FATTR_SIZE | FATTR_KILL_SUIDGID) == FATTR_SIZE | FATTR_KILL_SUIDGID {
            self.kill_suidgid_node(&c.ctx, node)?;
        }
        if s.valid & FATTR_SIZE != 0 {
            self.will_shrink(node, s.size);
        }
        let mut set = set_attr(s);
        // A new owner named in guest ids; a forbidden one is refused.
        if let Some(uid) = set.uid {
            set.uid = Some(self.ids.0.to_host(uid).ok_or(libc::EPERM)?);
        }
        if let Some(gid) = set.gid {
            set.gid = Some(self.ids.1.to_host(gid).ok_or(libc::EPERM)?);
        }
        let r = self.fs.setattr(&c.ctx, node, &set);
        if r.is_ok() && s.valid & FATTR_SIZE != 0 {
            self.file_changed(|| Some(node));
        }
        self.attr(chain, c, r)
    }

    pub(super) fn readlink(&self, chain: &mut dyn Chain, c: &Call<'_>) -> Outcome {
        let target = self.fs.readlink(&c.ctx, c.node).map_err(errno)?;
        sent(reply::reply_data(&mut sink(chain), c.unique, &target))
    }

    pub(super) fn symlink(
        &self,
        chain: &mut dyn Chain,
        c: &Call<'_>,
        name: &CStr,
        target: &CStr,
    ) -> Outcome {
        self.new_entry(chain, c, self.fs.symlink(&c.ctx, c.node, name, target))
    }

    pub(super) fn mknod(
        &self,
        chain: &mut dyn Chain,
        c: &Call<'_>,
        arg: &FuseMknodIn,
        name: &CStr,
    ) -> Outcome {
        let ctx = c.with_umask(arg.umask);
        let r = self
            .fs
            .mknod(&ctx, c.node, name, arg.mode, u64::from(arg.rdev));
        self.new_entry(chain, c, r)
    }

    pub(super) fn mkdir(
        &self,
        chain: &mut dyn Chain,
        c: &Call<'_>,
        arg: &FuseMkdirIn,
        name: &CStr,
    ) -> Outcome {
        let r = self
            .fs
            .mkdir(&c.with_umask(arg.umask), c.node, name, arg.mode);
        self.new_entry(chain, c, r)
    }

    /// RENAME (`flags` 0) and RENAME2.
    pub(super) fn rename(
        &self,
        chain: &mut dyn Chain,
        c: &Call<'_>,
        name: &CStr,
        newdir: u64,
        newname: &CStr,
        flags: u32,
    ) -> Outcome {
        let r = self.fs.rename(&c.ctx, c.node, name, newdir, newname, flags);
        empty(chain, c.unique, r)
    }

    pub(super) fn link(
        &self,
        chain: &mut dyn Chain,
        c: &Call<'_>,
        oldnodeid: u64,
        name: &CStr,
    ) -> Outcome {
        self.entry(chain, c, self.fs.link(&c.ctx, oldnodeid, c.node, name))
    }

    pub(super) fn statfs(&self, chain: &mut dyn Chain, c: &Call<'_>) -> Outcome {
        let s = self.fs.statfs(&c.ctx, c.node).map_err(errno)?;
        let st = FuseKstatfs {
            blocks: s.blocks,
            bfree: s.bfree,
            bavail: s.bavail,
            files: s.files,
            ffree: s.ffree,
            bsize: s.bsize,
            namelen: s.namelen,
            frsize: s.frsize,
            ..Default::default()
        };
        sent(reply::reply_statfs(&mut sink(chain), c.unique, &st))
    }

    /// An ENTRY reply for a node looked up or linked.
    fn entry(&self, chain: &mut dyn Chain, c: &Call<'_>, r: io::Result<fs::Entry>) -> Outcome {
        let e = r.map_err(errno)?;
        let out = entry_out(&e, c.dax, c.submounts, &self.ids);
        sent(reply::reply_entry(&mut sink(chain), c.unique, &out))
    }

    /// An ENTRY reply for a node just made (MKNOD, MKDIR, SYMLINK), labelled first.
    fn new_entry(&self, chain: &mut dyn Chain, c: &Call<'_>, r: io::Result<fs::Entry>) -> Outcome {
        let e = r.map_err(errno)?;
        self.label(c.req, &e)?;
        let out = entry_out(&e, c.dax, c.submounts, &self.ids);
        sent(reply::reply_entry(&mut sink(chain), c.unique, &out))
    }

    /// An ATTR reply.
    fn attr(&self, chain: &mut dyn Chain, c: &Call<'_>, r: io::Result<fs::Attr>) -> Outcome {
        let a = r.map_err(errno)?;
        let timeout = self.fs.config().attr_timeout;
        let out = FuseAttrOut {
            attr_valid: timeout.as_secs(),
            attr_valid_nsec: timeout.subsec_nanos(),
            dummy: 0,
            attr: fuse_attr(&a, c.dax, &self.ids),
        };
        sent(reply::reply_attr(&mut sink(chain), c.unique, &out))
    }

    /// The LSM labels the guest kernel sent with a create (SECURITY_CTX), when INIT accepted
    /// them.
    fn contexts<'r>(&self, req: &Request<'r>) -> impl Iterator<Item = (&'r CStr, &'r [u8])> {
        let on = self.security_ctx.load(Ordering::Relaxed);
        req.extensions.security_contexts().filter(move |_| on)
    }

    /// A request that creates a node may carry `security.*` labels only: anything else is
    /// refused (EPERM) before the node is made.
    pub(super) fn check_contexts(&self, req: &Request<'_>) -> Result<(), i32> {
        let creating = matches!(
            req.op,
            Operation::Create { .. }
                | Operation::Mkdir { .. }
                | Operation::Mknod { .. }
                | Operation::Symlink { .. }
                | Operation::Tmpfile { .. }
        );
        if creating
            && self
                .contexts(req)
                .any(|(name, _)| !name.to_bytes().starts_with(b"security."))
        {
            return Err(libc::EPERM);
        }
        Ok(())
    }

    /// Sets the request's labels on the node it just made (not atomic with the making: a
    /// failure leaves it unlabelled, drops the lookup reference and fails the request).
    pub(super) fn label(&self, req: &Request<'_>, e: &fs::Entry) -> Result<(), i32> {
        for (name, value) in self.contexts(req) {
            if let Err(error) = self.fs.set_security_context(e.node, name, value) {
                self.fs.forget(e.node, 1);
                return Err(errno(error));
            }
        }
        Ok(())
    }
}

fn set_time(valid: u32, now: u32, at: u32, sec: u64, nsec: u32) -> Option<SetTime> {
    if valid & now != 0 {
        Some(SetTime::Now)
    } else if valid & at != 0 {
        Some(SetTime::At(Timespec {
            sec: sec as i64,
            nsec,
        }))
    } else {
        None
    }
}

fn set_attr(s: &FuseSetattrIn) -> SetAttr {
    let v = s.valid;
    let has = |bit: u32| v & bit != 0;
    SetAttr {
        mode: has(FATTR_MODE).then_some(s.mode),
        uid: has(FATTR_UID).then_some(s.uid),
        gid: has(FATTR_GID).then_some(s.gid),
        size: has(FATTR_SIZE).then_some(s.size),
        atime: set_time(v, FATTR_ATIME_NOW, FATTR_ATIME, s.atime, s.atimensec),
        mtime: set_time(v, FATTR_MTIME_NOW, FATTR_MTIME, s.mtime, s.mtimensec),
        fh: has(FATTR_FH).then_some(s.fh),
    }
}
