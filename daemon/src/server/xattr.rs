//! Extended attributes: SETXATTR, GETXATTR, LISTXATTR (REMOVEXATTR is one core call, in the
//! dispatch).

use std::ffi::CStr;
use std::io;

use protocol::abi::*;
use protocol::reply;

use super::answer::{empty, errno, sent, sink, Outcome};
use super::{Call, Server};
use crate::chain::Chain;
use crate::fs::Xattr;

impl Server {
    pub(super) fn setxattr(
        &self,
        chain: &mut dyn Chain,
        c: &Call<'_>,
        arg: &FuseSetxattrIn,
        name: &CStr,
        value: &[u8],
    ) -> Outcome {
        let r = self.fs.setxattr(
            &c.ctx,
            c.node,
            name,
            value,
            arg.flags as i32,
            arg.setxattr_flags,
        );
        empty(chain, c.unique, r)
    }

    pub(super) fn getxattr(
        &self,
        chain: &mut dyn Chain,
        c: &Call<'_>,
        arg: &FuseGetxattrIn,
        name: &CStr,
    ) -> Outcome {
        xattr(chain, c, self.fs.getxattr(&c.ctx, c.node, name, arg.size))
    }

    pub(super) fn listxattr(
        &self,
        chain: &mut dyn Chain,
        c: &Call<'_>,
        arg: &FuseGetxattrIn,
    ) -> Outcome {
        xattr(chain, c, self.fs.listxattr(&c.ctx, c.node, arg.size))
    }
}

/// GETXATTR/LISTXATTR's reply: the size a zero-size request asked for, or the data.
fn xattr(chain: &mut dyn Chain, c: &Call<'_>, r: io::Result<Xattr>) -> Outcome {
    match r.map_err(errno)? {
        Xattr::Size(n) => sent(reply::reply_xattr_size(&mut sink(chain), c.unique, n)),
        Xattr::Data(v) => sent(reply::reply_data(&mut sink(chain), c.unique, &v)),
    }
}
