//! The DAX window's side of dispatch: SETUPMAPPING and REMOVEMAPPING, and the coherence
//! hooks other operations call (settle the guest's stores before a file is read or changed,
//! cut live ranges when it shrinks or changes).

use protocol::abi::*;
use protocol::reply;
use protocol::{Operation, RemoveMappingList, Request};

use super::answer::{sent, sink, Outcome};
use super::{Call, Server};
use crate::chain::Chain;

impl Server {
    /// Without a window (no --cache-size, or SHMEM/BACKEND_REQ not negotiated): ENOSYS, as
    /// virtiofsd answers.
    pub(super) fn setup_mapping(
        &self,
        chain: &mut dyn Chain,
        c: &Call<'_>,
        s: &FuseSetupmappingIn,
    ) -> Outcome {
        let dax = self.dax.as_ref().ok_or(libc::ENOSYS)?;
        dax.setup(&self.fs, c.node, s)?;
        sent(reply::reply_empty(&mut sink(chain), c.unique))
    }

    /// ENOSYS without a window, as SETUPMAPPING.
    pub(super) fn remove_mapping(
        &self,
        chain: &mut dyn Chain,
        c: &Call<'_>,
        list: RemoveMappingList<'_>,
    ) -> Outcome {
        let dax = self.dax.as_ref().ok_or(libc::ENOSYS)?;
        let ranges: Vec<(u64, u64)> = list.iter().map(|r| (r.moffset, r.len)).collect();
        dax.remove(&ranges)?;
        sent(reply::reply_empty(&mut sink(chain), c.unique))
    }

    /// Before a request is served: the guest's stores into a tail page of the window reach
    /// the file before zerodax reads or changes it.
    pub(super) fn settle(&self, req: &Request<'_>) {
        use Operation as O;
        let Some(d) = &self.dax else {
            return;
        };
        let (fs, node) = (&*self.fs, req.header.nodeid);
        match req.op {
            O::Read(_)
            | O::Write { .. }
            | O::Setattr(_)
            | O::Getattr(_)
            | O::Open(_)
            | O::Flush(_)
            | O::Fsync(_)
            | O::Release(_)
            | O::Lseek(_)
            | O::Fallocate(_) => d.settle(fs, Some(node)),
            O::CopyFileRange(c) | O::CopyFileRange64(c) => {
                d.settle(fs, Some(node));
                d.settle(fs, Some(c.nodeid_out));
            }
            O::Destroy | O::Syncfs(_) => d.settle(fs, None),
            _ => {}
        }
    }

    /// Coherence of the DAX window after zerodax changed the data or size of the node
    /// `node` names (looked up only when there is a window).
    pub(super) fn file_changed(&self, node: impl FnOnce() -> Option<u64>) {
        if let Some(dax) = &self.dax {
            if let Some(node) = node() {
                dax.file_changed(&self.fs, node);
            }
        }
    }

    /// Coherence of the DAX window before zerodax makes the node shorter than `new_size`.
    pub(super) fn will_shrink(&self, node: u64, new_size: u64) {
        if let Some(dax) = &self.dax {
            dax.will_shrink(&self.fs, node, new_size);
        }
    }
}
