//! Replies: the sink that writes them into the chain, what a request produced
//! ([`Outcome`]), errno mapping, and the core's values as the guest sees them.

use std::io;

use protocol::abi::*;
use protocol::reply::{self, ReplySink};
use protocol::{ParseError, ReplyError};

use crate::chain::Chain;
use crate::fs;
use crate::idmap::IdMap;

/// A [`ReplySink`] writing one reply at the start of a chain's reply area.
pub(super) struct ChainSink<'c> {
    chain: &'c mut dyn Chain,
    pos: usize,
}

impl ReplySink for ChainSink<'_> {
    fn write_parts(&mut self, total: usize, parts: &[&[u8]]) -> Result<(), ReplyError> {
        let have = self.chain.reply_room().saturating_sub(self.pos);
        if total > have {
            return Err(ReplyError::NoSpace { need: total, have });
        }
        for p in parts {
            self.chain
                .write_reply(self.pos, p)
                .map_err(|_| ReplyError::NoSpace { need: total, have })?;
            self.pos += p.len();
        }
        Ok(())
    }
}

/// The reply sink for `chain`: replies start at the beginning of its reply area.
pub(super) fn sink(chain: &mut dyn Chain) -> ChainSink<'_> {
    ChainSink { chain, pos: 0 }
}

/// What a request produced.
pub(super) enum Answer {
    /// A reply of this many bytes was written.
    Sent(usize),
    /// The opcode takes no reply.
    NoReply,
}

/// A request's outcome before the reply: an answer, or an errno to reply with.
pub(super) type Outcome = Result<Answer, i32>;

/// The errno a reply carries for a host error (EIO for one the guest could not take).
pub(super) fn errno(e: io::Error) -> i32 {
    match e.raw_os_error() {
        Some(n) if (1..=511).contains(&n) => n,
        _ => libc::EIO,
    }
}

/// The outcome of encoding a reply into the chain: EIO when it does not fit.
pub(super) fn sent(r: Result<usize, ReplyError>) -> Outcome {
    match r {
        Ok(n) => Ok(Answer::Sent(n)),
        Err(e) => {
            tracing::debug!("reply does not fit the guest's buffer: {e}");
            Err(libc::EIO)
        }
    }
}

/// The errno for a request the protocol crate refused.
pub(super) fn parse_errno(e: &ParseError) -> i32 {
    match e {
        ParseError::UnknownOpcode(_) => libc::ENOSYS,
        ParseError::ForeignByteOrder => libc::EPROTO,
        _ => libc::EINVAL,
    }
}

/// An empty reply for `r`'s success, its errno otherwise.
pub(super) fn empty(chain: &mut dyn Chain, unique: u64, r: io::Result<()>) -> Outcome {
    r.map_err(errno)?;
    sent(reply::reply_empty(&mut sink(chain), unique))
}

/// The attributes as the guest sees them: host ids made guest ids (`--translate-uid/gid`).
pub(super) fn fuse_attr(a: &fs::Attr, dax: bool, ids: &(IdMap, IdMap)) -> FuseAttr {
    FuseAttr {
        ino: a.ino,
        size: a.size,
        blocks: a.blocks,
        atime: a.atime.sec as u64,
        mtime: a.mtime.sec as u64,
        ctime: a.ctime.sec as u64,
        atimensec: a.atime.nsec,
        mtimensec: a.mtime.nsec,
        ctimensec: a.ctime.nsec,
        mode: a.mode,
        nlink: a.nlink,
        uid: ids.0.to_guest(a.uid),
        gid: ids.1.to_guest(a.gid),
        rdev: a.rdev,
        blksize: a.blksize,
        flags: if dax && a.mode & libc::S_IFMT == libc::S_IFREG {
            FUSE_ATTR_DAX
        } else {
            0
        },
    }
}

/// A node's entry as the guest sees it. `submounts`: the session announces submounts
/// (`--announce-submounts`, FUSE_SUBMOUNTS).
pub(super) fn entry_out(
    e: &fs::Entry,
    dax: bool,
    submounts: bool,
    ids: &(IdMap, IdMap),
) -> FuseEntryOut {
    let mut attr = fuse_attr(&e.attr, dax, ids);
    if submounts && e.submount {
        attr.flags |= FUSE_ATTR_SUBMOUNT;
    }
    FuseEntryOut {
        nodeid: e.node,
        generation: e.generation,
        entry_valid: e.entry_timeout.as_secs(),
        attr_valid: e.attr_timeout.as_secs(),
        entry_valid_nsec: e.entry_timeout.subsec_nanos(),
        attr_valid_nsec: e.attr_timeout.subsec_nanos(),
        attr,
    }
}
