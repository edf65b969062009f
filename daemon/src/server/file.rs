//! File operations: open, create (CREATE and TMPFILE), read, write, fallocate, lseek,
//! copy_file_range.

use std::ffi::CStr;
use std::sync::atomic::Ordering;

use protocol::abi::*;
use protocol::reply;
use protocol::Opcode;

use super::answer::{empty, entry_out, errno, sent, sink, Answer, Outcome};
use super::{Call, Server};
use crate::chain::Chain;
use crate::fs::{self, Context};

impl Server {
    pub(super) fn open(&self, chain: &mut dyn Chain, c: &Call<'_>, o: &FuseOpenIn) -> Outcome {
        let node = c.node;
        let trunc = o.flags as i32 & libc::O_TRUNC != 0;
        // A truncating open by a caller without CAP_FSETID (HANDLE_KILLPRIV_V2): the set-id
        // bits go first, as the host's own O_TRUNC clears them before the size changes.
        if trunc && o.open_flags & FUSE_OPEN_KILL_SUIDGID != 0 {
            self.kill_suidgid_node(&c.ctx, node)?;
        }
        if trunc {
            self.will_shrink(node, 0);
        }
        let open = self.fs.open(&c.ctx, node, self.open_flags(o.flags));
        if trunc {
            self.file_changed(|| Some(node));
        }
        let open = open.map_err(errno)?;
        let out = self.backed_open_out(node, &open)?;
        sent(reply::reply_open(&mut sink(chain), c.unique, &out))
    }

    pub(super) fn create(
        &self,
        chain: &mut dyn Chain,
        c: &Call<'_>,
        arg: &FuseCreateIn,
        name: &CStr,
    ) -> Outcome {
        // CREATE of a file that may exist, truncating, by a caller without CAP_FSETID
        // (HANDLE_KILLPRIV_V2): the set-id bits of the file that was there go, not those of
        // a file this CREATE makes. The open truncates before they can go.
        let flags = arg.flags as i32;
        let existing = (arg.open_flags & FUSE_OPEN_KILL_SUIDGID != 0
            && flags & libc::O_TRUNC != 0
            && flags & libc::O_EXCL == 0)
            .then(|| self.fs.set_id_file(c.node, name))
            .flatten();
        let (e, open) = self
            .fs
            .create(
                &c.with_umask(arg.umask),
                c.node,
                name,
                arg.mode,
                self.open_flags(arg.flags),
            )
            .map_err(errno)?;
        // CREATE of an existing file with O_TRUNC (Linux sends it so): ranges of it that are
        // live are cut to the new size before the reply (not before the truncate: the node
        // is only known now).
        if arg.flags as i32 & libc::O_TRUNC != 0 {
            self.file_changed(|| Some(e.node));
        }
        if existing.is_some() && existing == self.fs.file_identity(e.node) {
            if let Err(error) = self.kill_suidgid(&c.ctx, open.fh) {
                let _ = self.fs.release(open.fh);
                self.fs.forget(e.node, 1);
                return Err(error);
            }
        }
        self.created(chain, c, &e, &open)
    }

    /// An unnamed file (O_TMPFILE): answered as CREATE is; LINK names it later.
    pub(super) fn tmpfile(
        &self,
        chain: &mut dyn Chain,
        c: &Call<'_>,
        arg: &FuseCreateIn,
    ) -> Outcome {
        let (e, open) = self
            .fs
            .tmpfile(&c.with_umask(arg.umask), c.node, arg.mode, arg.flags as i32)
            .map_err(errno)?;
        self.created(chain, c, &e, &open)
    }

    /// CREATE and TMPFILE: the new node labelled, then its entry and its open handle.
    fn created(
        &self,
        chain: &mut dyn Chain,
        c: &Call<'_>,
        e: &fs::Entry,
        open: &fs::Open,
    ) -> Outcome {
        if let Err(error) = self.label(c.req, e) {
            let _ = self.fs.release(open.fh);
            return Err(error);
        }
        let out = self.backed_open_out(e.node, open)?;
        sent(reply::reply_create(
            &mut sink(chain),
            c.unique,
            &entry_out(e, c.dax, c.submounts, &self.ids),
            &out,
        ))
    }

    /// The OPEN/CREATE answer for a new handle `open` of `node`: with the kernel's backing
    /// id when passthrough was agreed and the core offers the host file. A transport that
    /// cannot register it fails the open (and the handle is released).
    fn backed_open_out(&self, node: u64, open: &fs::Open) -> Result<FuseOpenOut, i32> {
        let mut out = open_out(open.fh, self.opts.cache.open_flags());
        let backing = self.opts.backing.as_ref();
        if let (true, Some(backing), Some(handle)) = (
            self.passthrough.load(Ordering::Relaxed),
            backing,
            open.backing.as_deref(),
        ) {
            // A file with a set-id bit under HANDLE_KILLPRIV_V2 is served by the daemon: the
            // kernel's passthrough write clears nothing then (its file_remove_privs leaves it
            // to the server, which a passthrough write never reaches) and writes to the
            // backing file with the daemon's credentials, CAP_FSETID among them.
            let by_daemon = self.killpriv_v2.load(Ordering::Relaxed)
                && fs::sys::statx_fd(handle.fd()).is_ok_and(|stx| {
                    u32::from(stx.stx_mode) & (libc::S_ISUID | libc::S_ISGID) != 0
                });
            match backing.open(node, open.fh, handle.fd(), by_daemon) {
                Ok(Some(id)) => {
                    out.open_flags |= FOPEN_PASSTHROUGH;
                    out.backing_id = id;
                }
                Ok(None) => {}
                Err(e) => {
                    let _ = self.fs.release(open.fh);
                    return Err(errno(e));
                }
            }
        }
        Ok(out)
    }

    /// WRITE with its data copied out of the chain and parsed: a WRITE `Server::request`
    /// did not hand to the file directly (`parse_write_prefix` refused it, e.g. one with
    /// extensions, and the full parser did not).
    pub(super) fn write(
        &self,
        chain: &mut dyn Chain,
        c: &Call<'_>,
        arg: &FuseWriteIn,
        data: &[u8],
    ) -> Outcome {
        let fs = &*self.fs;
        if arg.write_flags & FUSE_WRITE_KILL_SUIDGID != 0 {
            self.kill_suidgid(&c.ctx, arg.fh)?;
        }
        let n = fs.write(&c.ctx, arg.fh, arg.offset, data).map_err(errno)?;
        self.file_changed(|| fs.handle_node(arg.fh));
        sent(reply::reply_write(
            &mut sink(chain),
            c.unique,
            u32::try_from(n).unwrap_or(u32::MAX),
        ))
    }

    /// WRITE with its data handed from the chain to the file (pwritev from the request
    /// buffers), for a request whose header and fixed argument `parse_write_prefix` checked.
    ///
    /// FUSE_WRITE_KILL_SUIDGID is honoured whether or not HANDLE_KILLPRIV_V2 was agreed: the
    /// client kernel also sets it on a direct-I/O write (FOPEN_DIRECT_IO, `--cache never`)
    /// by a caller without CAP_FSETID, a path where it clears nothing itself.
    pub(super) fn write_direct(
        &self,
        chain: &mut dyn Chain,
        h: &FuseInHeader,
        w: &FuseWriteIn,
    ) -> Outcome {
        if self.fs.config().read_only {
            return Err(libc::EROFS);
        }
        if w.write_flags & FUSE_WRITE_KILL_SUIDGID != 0 {
            self.kill_suidgid(&self.caller(h), w.fh)?;
        }
        let handle = self.fs.handle(w.fh).map_err(errno)?;
        let off = FuseInHeader::SIZE + FuseWriteIn::SIZE;
        let n = chain
            .write_request_to_file(off, handle.fd(), handle.direct(), w.offset)
            .map_err(errno)?;
        self.file_changed(|| Some(handle.node));
        sent(reply::reply_write(
            &mut sink(chain),
            h.unique,
            u32::try_from(n).unwrap_or(u32::MAX),
        ))
    }

    /// READ: the file's bytes go straight into the reply buffers (preadv), after the
    /// reply header's room.
    pub(super) fn read(&self, chain: &mut dyn Chain, unique: u64, r: &FuseReadIn) -> Outcome {
        let handle = self.fs.handle(r.fh).map_err(errno)?;
        let room = chain.reply_room();
        if room < FuseOutHeader::SIZE {
            return Err(libc::EIO);
        }
        let want = (r.size as usize)
            .min(room - FuseOutHeader::SIZE)
            .min(fs::MAX_IO as usize);
        let n = chain
            .read_file_to_reply(
                FuseOutHeader::SIZE,
                want,
                handle.fd(),
                handle.direct(),
                r.offset,
            )
            .map_err(errno)?;
        let header = reply::out_header(unique, n).map_err(|_| libc::EIO)?;
        chain.write_reply(0, &header).map_err(errno)?;
        Ok(Answer::Sent(FuseOutHeader::SIZE + n))
    }

    pub(super) fn fallocate(
        &self,
        chain: &mut dyn Chain,
        c: &Call<'_>,
        f: &FuseFallocateIn,
    ) -> Outcome {
        let fs = &*self.fs;
        self.kill_unmarked(c, f.fh)?;
        let r = fs.fallocate(f.fh, f.mode as i32, f.offset, f.length);
        if r.is_ok() {
            self.file_changed(|| fs.handle_node(f.fh));
        }
        empty(chain, c.unique, r)
    }

    pub(super) fn lseek(&self, chain: &mut dyn Chain, c: &Call<'_>, l: &FuseLseekIn) -> Outcome {
        // The kernel's loff_t, as the client sent it: a negative offset is the host's to
        // answer (ENXIO for SEEK_DATA/SEEK_HOLE, EINVAL for SEEK_SET).
        let offset = l.offset as i64;
        let pos = self
            .fs
            .lseek(l.fh, offset, l.whence as i32)
            .map_err(errno)?;
        sent(reply::reply_lseek(&mut sink(chain), c.unique, pos))
    }

    /// COPY_FILE_RANGE (a 32-bit count in a WRITE reply) and COPY_FILE_RANGE_64.
    pub(super) fn copy_file_range(
        &self,
        chain: &mut dyn Chain,
        c: &Call<'_>,
        r: &FuseCopyFileRangeIn,
    ) -> Outcome {
        let fs = &*self.fs;
        let flags = u32::try_from(r.flags).map_err(|_| libc::EINVAL)?;
        self.kill_unmarked(c, r.fh_out)?;
        let n = fs
            .copy_file_range(r.fh_in, r.off_in, r.fh_out, r.off_out, r.len, flags)
            .map_err(errno)?;
        self.file_changed(|| fs.handle_node(r.fh_out));
        if c.req.opcode() == Opcode::CopyFileRange {
            sent(reply::reply_write(
                &mut sink(chain),
                c.unique,
                u32::try_from(n).unwrap_or(u32::MAX),
            ))
        } else {
            sent(reply::reply_copy_file_range_64(
                &mut sink(chain),
                c.unique,
                n as u64,
            ))
        }
    }

    /// [`FileSystem::kill_suidgid`](crate::fs::FileSystem::kill_suidgid), and the client told
    /// its cached mode is stale when the bits went.
    pub(super) fn kill_suidgid(&self, ctx: &Context, fh: u64) -> Result<(), i32> {
        if self.fs.kill_suidgid(ctx, fh).map_err(errno)? {
            if let Some(node) = self.fs.handle_node(fh) {
                self.attrs_changed(node);
            }
        }
        Ok(())
    }

    /// [`FileSystem::kill_suidgid_node`](crate::fs::FileSystem::kill_suidgid_node), and the
    /// client told its cached mode is stale when the bits went.
    pub(super) fn kill_suidgid_node(&self, ctx: &Context, node: u64) -> Result<(), i32> {
        if self.fs.kill_suidgid_node(ctx, node).map_err(errno)? {
            self.attrs_changed(node);
        }
        Ok(())
    }

    fn attrs_changed(&self, node: u64) {
        if let Some(n) = &self.opts.notifier {
            n.attrs_changed(node);
        }
    }

    /// FALLOCATE and COPY_FILE_RANGE under HANDLE_KILLPRIV_V2: the client kernel's
    /// file_modified() leaves the set-id bits to the server there too, but these requests
    /// carry no flag saying whether the caller has CAP_FSETID. A caller other than the
    /// client's root (its own uid 0, before any `--translate-uid`) is taken to lack it (the
    /// usual case), root to have it, and the bits go as for a write. Without
    /// HANDLE_KILLPRIV_V2 the client clears them itself (a SETATTR of the mode).
    fn kill_unmarked(&self, c: &Call<'_>, fh: u64) -> Result<(), i32> {
        if self.killpriv_v2.load(Ordering::Relaxed) && c.req.header.uid != 0 {
            self.kill_suidgid(&c.ctx, fh)?;
        }
        Ok(())
    }

    /// A client's open flags as the host open needs them. With a writeback cache the client
    /// kernel reads pages around partial writes through any open file, so write-only opens
    /// become read-write, and it computes append offsets itself, so O_APPEND goes (the host
    /// would otherwise move every cached write to the end).
    fn open_flags(&self, flags: u32) -> i32 {
        let mut flags = flags as i32;
        if self.writeback.load(Ordering::Relaxed) {
            if flags & libc::O_ACCMODE == libc::O_WRONLY {
                flags = (flags & !libc::O_ACCMODE) | libc::O_RDWR;
            }
            flags &= !libc::O_APPEND;
        }
        flags
    }
}

/// The OPEN/OPENDIR/CREATE reply's body.
pub(super) fn open_out(fh: u64, open_flags: u32) -> FuseOpenOut {
    FuseOpenOut {
        fh,
        open_flags,
        backing_id: 0,
    }
}
