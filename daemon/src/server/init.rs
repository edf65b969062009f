//! Session: INIT (the negotiation) and DESTROY.

use std::sync::atomic::Ordering;

use protocol::abi::*;
use protocol::reply;

use super::answer::{sent, sink, Outcome};
use super::{AclMode, Server, INIT_FLAGS};
use crate::chain::Chain;
use crate::dax::{DaxInodes, MAP_ALIGNMENT_LOG2};

/// The guest page size the INIT sizes are counted in (x86_64 and aarch64-4k guests).
const PAGE_SIZE: u32 = 4096;

/// The INIT flags `needed` to ask for under `mode` when the guest `offered` these: all of
/// them or none; `always` with a guest that lacks one fails INIT (EPROTO).
fn optional_feature(mode: AclMode, offered: u64, needed: u64, flag: &str) -> Result<u64, i32> {
    match mode {
        AclMode::Never => Ok(0),
        _ if offered & needed == needed => Ok(needed),
        AclMode::Auto => {
            tracing::warn!("{flag}=auto: the guest cannot do it; serving without");
            Ok(0)
        }
        AclMode::Always => {
            tracing::error!("{flag}=always: the guest cannot do it");
            Err(libc::EPROTO)
        }
    }
}

impl Server {
    /// INIT: negotiates the session's flags and sizes with the guest, and starts a new
    /// session (a second INIT is a guest that reset its device).
    pub(super) fn init(&self, chain: &mut dyn Chain, unique: u64, k: &FuseInitIn) -> Outcome {
        let dax = self.dax.as_ref().filter(|d| d.active());
        let mut wanted = match dax {
            Some(_) => INIT_FLAGS | FUSE_MAP_ALIGNMENT | FUSE_HAS_INODE_DAX,
            None => INIT_FLAGS,
        };
        if !self.opts.readdirplus {
            wanted &= !(FUSE_DO_READDIRPLUS | FUSE_READDIRPLUS_AUTO);
        }
        if self.opts.allow_mmap {
            wanted |= FUSE_DIRECT_IO_ALLOW_MMAP;
        }
        if self.opts.announce_submounts {
            wanted |= FUSE_SUBMOUNTS;
        }
        if self.opts.writeback {
            wanted |= FUSE_WRITEBACK_CACHE;
        }
        // POSIX ACLs need all three: the client enforcing ACLs, sending modes without its
        // umask (the host applies a default ACL or the umask: fs::umask_in), and saying when
        // setting an access ACL must clear set-group-id.
        let offered = k.flags64();
        wanted |= optional_feature(
            self.opts.posix_acl,
            offered,
            FUSE_POSIX_ACL | FUSE_DONT_MASK | FUSE_SETXATTR_EXT,
            "--posix-acl",
        )?;
        wanted |= optional_feature(
            self.opts.security_label,
            offered,
            FUSE_SECURITY_CTX,
            "--security-label",
        )?;
        if self.opts.killpriv_v2 {
            if offered & FUSE_HANDLE_KILLPRIV_V2 != 0 {
                wanted |= FUSE_HANDLE_KILLPRIV_V2;
            } else {
                tracing::warn!("--killpriv-v2: the client cannot do it; serving without");
            }
        }
        if let Some(backing) = &self.opts.backing {
            if backing.negotiate(offered & FUSE_PASSTHROUGH != 0)? {
                wanted |= FUSE_PASSTHROUGH;
            }
        }
        let mut out = match FuseInitOut::negotiate(k, wanted) {
            Ok(out) => out,
            Err(_) => {
                tracing::error!(
                    "guest speaks FUSE {}.{}, zerodax needs 7.{FUSE_MIN_MINOR_VERSION} or later",
                    k.major,
                    k.minor
                );
                return Err(libc::EPROTO);
            }
        };
        if k.major == FUSE_KERNEL_VERSION {
            // A second INIT on one connection is a guest that reset its device (a reboot):
            // nothing of the old session may leak into the new one.
            self.end_session();
            let max_pages = self.max_pages();
            out.max_pages = max_pages;
            out.max_write = u32::from(max_pages) * PAGE_SIZE;
            out.time_gran = 1;
            if out.flags64() & FUSE_MAP_ALIGNMENT != 0 {
                out.map_alignment = MAP_ALIGNMENT_LOG2;
            }
            let accepted = out.flags64();
            if accepted & FUSE_PASSTHROUGH != 0 {
                // Depth 2 lets the shared directory sit on overlayfs; the mount itself then
                // cannot be stacked under another overlay.
                out.max_stack_depth = 2;
            }
            self.passthrough
                .store(accepted & FUSE_PASSTHROUGH != 0, Ordering::Relaxed);
            self.fs.set_posix_acl(accepted & FUSE_POSIX_ACL != 0);
            self.setxattr_ext
                .store(accepted & FUSE_SETXATTR_EXT != 0, Ordering::Relaxed);
            self.submounts
                .store(accepted & FUSE_SUBMOUNTS != 0, Ordering::Relaxed);
            self.writeback
                .store(accepted & FUSE_WRITEBACK_CACHE != 0, Ordering::Relaxed);
            self.security_ctx
                .store(accepted & FUSE_SECURITY_CTX != 0, Ordering::Relaxed);
            self.killpriv_v2
                .store(accepted & FUSE_HANDLE_KILLPRIV_V2 != 0, Ordering::Relaxed);
            let inode_dax = out.flags64() & FUSE_HAS_INODE_DAX != 0
                && dax.is_some_and(|d| d.config().inodes == DaxInodes::All);
            self.inode_dax.store(inode_dax, Ordering::Relaxed);
            tracing::info!(
                "INIT: FUSE {}.{}, flags {:#x}, max_pages {max_pages}",
                out.major,
                out.minor,
                out.flags64()
            );
        }
        let r = sent(reply::reply_init(&mut sink(chain), unique, &out));
        if r.is_ok() && k.major == FUSE_KERNEL_VERSION {
            self.initialized.store(true, Ordering::Release);
        }
        r
    }

    /// DESTROY: the guest's session ends.
    pub(super) fn destroy(&self, chain: &mut dyn Chain, unique: u64) -> Outcome {
        self.end_session();
        self.initialized.store(false, Ordering::Release);
        sent(reply::reply_empty(&mut sink(chain), unique))
    }

    /// The guest's FUSE session ends (DESTROY) or starts anew (INIT): the DAX window is
    /// emptied (a guest unmounting sends no REMOVEMAPPING; docs/dax.md, *Session
    /// lifecycle*), and every node and handle of the old session forgotten.
    fn end_session(&self) {
        if let Some(dax) = &self.dax {
            dax.end_session();
        }
        self.fs.reset_session();
    }
}
