//! Directory operations: OPENDIR, READDIR and READDIRPLUS (RELEASEDIR and FSYNCDIR are one
//! core call each, in the dispatch).

use std::sync::atomic::Ordering;

use protocol::abi::*;
use protocol::reply::{self, DirentBuf};

use super::answer::{entry_out, errno, sent, sink, Outcome};
use super::file::open_out;
use super::{Call, Server};
use crate::chain::Chain;
use crate::fs::Context;

/// Largest READDIR/READDIRPLUS buffer built in the daemon.
const MAX_DIR_BUF: usize = 1 << 20;

impl Server {
    pub(super) fn opendir(&self, chain: &mut dyn Chain, c: &Call<'_>) -> Outcome {
        let fh = self.fs.opendir(&c.ctx, c.node).map_err(errno)?;
        let out = open_out(fh, self.opts.cache.opendir_flags());
        sent(reply::reply_open(&mut sink(chain), c.unique, &out))
    }

    /// The buffer READDIR/READDIRPLUS fill: what the guest asked for, what its reply room
    /// holds, at most [`MAX_DIR_BUF`].
    fn dir_buf(chain: &dyn Chain, size: u32) -> Vec<u8> {
        let room = chain.reply_room().saturating_sub(FuseOutHeader::SIZE);
        vec![0u8; (size as usize).min(room).min(MAX_DIR_BUF)]
    }

    pub(super) fn readdir(&self, chain: &mut dyn Chain, unique: u64, r: &FuseReadIn) -> Outcome {
        let mut buf = Self::dir_buf(chain, r.size);
        let mut d = DirentBuf::new(&mut buf);
        let res = self.fs.readdir(r.fh, r.offset, |e| {
            d.push(e.ino, e.offset, e.file_type >> 12, e.name.to_bytes())
                .unwrap_or(true)
        });
        if let Err(e) = res {
            if d.is_empty() {
                return Err(errno(e));
            }
        }
        sent(reply::reply_data(&mut sink(chain), unique, d.as_bytes()))
    }

    pub(super) fn readdirplus(
        &self,
        chain: &mut dyn Chain,
        ctx: &Context,
        unique: u64,
        r: &FuseReadIn,
    ) -> Outcome {
        let mut buf = Self::dir_buf(chain, r.size);
        let mut d = DirentBuf::new(&mut buf);
        let res = self.fs.readdirplus(ctx, r.fh, r.offset, |e, entry| {
            let out = match entry {
                Some(en) => entry_out(
                    en,
                    self.inode_dax.load(Ordering::Relaxed),
                    self.submounts.load(Ordering::Relaxed),
                    &self.ids,
                ),
                None => FuseEntryOut {
                    attr: FuseAttr {
                        ino: e.ino,
                        mode: e.file_type,
                        ..Default::default()
                    },
                    ..Default::default()
                },
            };
            match d.push_plus(&out, e.offset, e.file_type >> 12, e.name.to_bytes()) {
                Ok(fits) => fits,
                Err(_) => {
                    // A name the guest kernel would refuse: skip it, and drop the lookup
                    // reference it will never FORGET.
                    if let Some(en) = entry {
                        self.fs.forget(en.node, 1);
                    }
                    true
                }
            }
        });
        if let Err(e) = res {
            if d.is_empty() {
                return Err(errno(e));
            }
        }
        sent(reply::reply_data(&mut sink(chain), unique, d.as_bytes()))
    }
}
