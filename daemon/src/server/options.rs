//! How a server is set up: the cache policy, the optional features, [`ServerOptions`].

use std::io;
use std::os::fd::BorrowedFd;
use std::sync::Arc;
use std::time::Duration;

use protocol::abi::{FOPEN_CACHE_DIR, FOPEN_DIRECT_IO, FOPEN_KEEP_CACHE};

use crate::dax::DaxConfig;
use crate::fs;
use crate::idmap::IdMap;

/// `--cache`: how long the guest may trust what it was told, as virtiofsd's modes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum CachePolicy {
    /// No caching: entry/attr timeouts 0, every open is DIRECT_IO.
    Never,
    /// Metadata cached for a day, file data never (DIRECT_IO).
    Metadata,
    /// Timeouts of 1 s, page cache dropped on open (close-to-open consistency).
    #[default]
    Auto,
    /// Timeouts of a day, page cache kept across opens (KEEP_CACHE, CACHE_DIR).
    Always,
}

impl CachePolicy {
    /// Entry and attribute timeout.
    pub fn timeout(self) -> Duration {
        match self {
            CachePolicy::Never => Duration::ZERO,
            CachePolicy::Auto => Duration::from_secs(1),
            CachePolicy::Metadata | CachePolicy::Always => Duration::from_secs(86400),
        }
    }

    /// The core's configuration for this policy.
    pub fn fs_config(self, read_only: bool, xattr: bool) -> fs::Config {
        fs::Config {
            read_only,
            xattr,
            xattrmap: None,
            entry_timeout: self.timeout(),
            attr_timeout: self.timeout(),
            preserve_noatime: true,
            allow_direct_io: false,
            file_handles: fs::FileHandles::Never,
            atime: fs::Atime::Host,
        }
    }

    /// The open flags every OPEN and CREATE reply carries.
    pub(super) fn open_flags(self) -> u32 {
        match self {
            CachePolicy::Never | CachePolicy::Metadata => FOPEN_DIRECT_IO,
            CachePolicy::Auto => 0,
            CachePolicy::Always => FOPEN_KEEP_CACHE,
        }
    }

    /// The open flags every OPENDIR reply carries.
    pub(super) fn opendir_flags(self) -> u32 {
        match self {
            CachePolicy::Always => FOPEN_KEEP_CACHE | FOPEN_CACHE_DIR,
            _ => 0,
        }
    }
}

/// How the server is set up.
#[derive(Debug, Clone)]
pub struct ServerOptions {
    /// `--cache`.
    pub cache: CachePolicy,
    /// Offer READDIRPLUS (`--no-readdirplus` clears it).
    pub readdirplus: bool,
    /// Offer DIRECT_IO_ALLOW_MMAP (`--allow-mmap`).
    pub allow_mmap: bool,
    /// The DAX window (`--cache-size` > 0), served once the frontend sets up the backend
    /// channel.
    pub dax: Option<DaxConfig>,
    /// `--posix-acl`.
    pub posix_acl: AclMode,
    /// `--announce-submounts`: directories on other mounts carry FUSE_ATTR_SUBMOUNT.
    pub announce_submounts: bool,
    /// `--writeback`: offer the guest a writeback cache (FUSE_WRITEBACK_CACHE).
    pub writeback: bool,
    /// `--translate-uid`: guest and host user ids.
    pub uid_map: IdMap,
    /// `--translate-gid`: guest and host group ids.
    pub gid_map: IdMap,
    /// `--security-label`: label new nodes with the guest's LSM contexts.
    pub security_label: AclMode,
    /// Kernel FUSE passthrough, when the transport has it (/dev/fuse, not virtio-fs).
    pub backing: Option<Arc<dyn BackingFiles>>,
    /// `--killpriv-v2`: negotiate FUSE_HANDLE_KILLPRIV_V2 when the client offers it; the
    /// server then clears set-id bits on the writes, truncates and opens the client marks,
    /// and on a fallocate or copy_file_range by a caller other than root.
    pub killpriv_v2: bool,
    /// Notifications to the client, when the transport has a way to send them (/dev/fuse;
    /// Linux virtio-fs guests read no notification queue).
    pub notifier: Option<Arc<dyn Notifier>>,
}

/// FUSE notifications: messages the server sends its client unasked.
pub trait Notifier: Send + Sync + std::fmt::Debug {
    /// The attributes of `node` changed behind the client's cache, in a way no reply tells
    /// it (set-id bits cleared by the server under HANDLE_KILLPRIV_V2: the client kernel
    /// then drops only size and times after a write, and would keep showing the old mode
    /// until its attribute timeout).
    fn attrs_changed(&self, node: u64);
}

/// Kernel FUSE passthrough, for a transport whose kernel can do a regular file's I/O itself
/// (/dev/fuse; a guest kernel cannot reach host files): the transport registers the open
/// host file with its kernel, which then serves that handle's reads, writes and mmap
/// without asking the daemon.
pub trait BackingFiles: Send + Sync + std::fmt::Debug {
    /// At INIT: whether to accept FUSE_PASSTHROUGH, which the kernel `offered` or not.
    /// `Err(errno)` fails INIT (passthrough required but not offered).
    fn negotiate(&self, offered: bool) -> Result<bool, i32>;
    /// The backing id for the new handle `fh` of `node`, whose host file is `fd`;
    /// `Ok(None)`: the daemon serves this handle's I/O. An error fails the open. `by_daemon`
    /// asks that the daemon serve it, which it does unless `node` has handles the kernel
    /// serves already (the kernel wants all of a file's handles served one way).
    fn open(
        &self,
        node: u64,
        fh: u64,
        fd: BorrowedFd<'_>,
        by_daemon: bool,
    ) -> io::Result<Option<i32>>;
    /// The handle `fh` was released.
    fn release(&self, fh: u64);
}

/// `--posix-acl` and `--security-label`: whether to negotiate the feature with the guest
/// (virtiofsd's values).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum AclMode {
    /// Never (for ACLs: `system.posix_acl_*` xattrs are refused, EOPNOTSUPP).
    #[default]
    Never,
    /// When the guest offers the flags (ACLs: POSIX_ACL, DONT_MASK and SETXATTR_EXT;
    /// labels: SECURITY_CTX).
    Auto,
    /// Required: INIT fails (EPROTO) with a guest that cannot.
    Always,
}

impl Default for ServerOptions {
    fn default() -> Self {
        ServerOptions {
            cache: CachePolicy::default(),
            readdirplus: true,
            allow_mmap: false,
            dax: None,
            posix_acl: AclMode::Never,
            announce_submounts: false,
            writeback: false,
            uid_map: IdMap::default(),
            gid_map: IdMap::default(),
            security_label: AclMode::Never,
            backing: None,
            notifier: None,
            killpriv_v2: false,
        }
    }
}
