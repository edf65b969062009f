//! Inodes referenced by file handle (`serve --inode-file-handles=mandatory`, and `prefer`
//! where a handle can be made and opened): the table keeps a (file handle, mount) pair
//! instead of an open O_PATH descriptor per node, and reopens the inode with
//! open_by_handle_at(2) for each operation.
//!
//! open_by_handle_at needs a descriptor on the mount the handle belongs to. One is kept per
//! mount id while nodes on it live ([`MountFds`]), made from a descriptor the core already
//! has when it meets the mount: the shared directory for the share's own mount (at start,
//! before any sandbox hides paths), and the root of a submount when a lookup crosses into
//! it (a lookup only ever enters a mount through its root, which is inside the share even
//! when the mounted filesystem's own root is not). No path and no /proc/self/mountinfo is used,
//! so pivot_root and chroot change nothing. With CAP_DAC_READ_SEARCH the kernel decodes a
//! handle against the whole filesystem of that mount, which is why the capability is kept.

use std::collections::HashMap;
use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::sync::{Arc, RwLock, Weak};

use super::sys;

/// A descriptor (not O_PATH: open_by_handle_at refuses those) of a directory or regular file
/// on one mount.
#[derive(Debug)]
pub struct MountFd {
    /// The mount id (`STATX_MNT_ID`).
    pub mnt_id: u64,
    /// The `st_dev` of its filesystem: a mount id the kernel reuses for another mount of
    /// another filesystem is told apart by it.
    pub dev: u64,
    fd: OwnedFd,
}

/// A node's host reference in handle mode: its handle and the mount to open it on.
#[derive(Debug)]
pub struct HandleRef {
    handle: sys::FileHandle,
    mount: Arc<MountFd>,
}

impl HandleRef {
    pub fn new(handle: sys::FileHandle, mount: Arc<MountFd>) -> Self {
        HandleRef { handle, mount }
    }

    /// Whether this is a reference by `handle`.
    pub fn is(&self, handle: &sys::FileHandle) -> bool {
        self.handle == *handle
    }

    /// A new descriptor of the inode, opened with `flags` (O_PATH for a plain reference).
    /// ESTALE once the inode is gone from the host.
    pub fn open(&self, flags: libc::c_int) -> io::Result<OwnedFd> {
        sys::open_by_handle(self.mount.fd.as_fd(), &self.handle, flags)
    }
}

/// Mount id → [`MountFd`]. Each handle-backed node holds its mount's `Arc`; the map only
/// finds them, so a submount's descriptor closes with the last node on it (the host can then
/// unmount it, as when each node held an O_PATH descriptor), and an entry replaced after a
/// mount id was reused never changes the mount an existing node is opened on. The share's
/// own mount is held for the daemon's lifetime.
#[derive(Debug)]
pub struct MountFds {
    map: RwLock<HashMap<u64, Weak<MountFd>>>,
    _share: Arc<MountFd>,
}

impl MountFds {
    /// The map, holding `fd` (open for reading) for the share's mount `mnt_id` of filesystem
    /// `dev` from now on.
    pub fn new(mnt_id: u64, dev: u64, fd: OwnedFd) -> Self {
        let share = Arc::new(MountFd { mnt_id, dev, fd });
        MountFds {
            map: RwLock::new(HashMap::from([(mnt_id, Arc::downgrade(&share))])),
            _share: share,
        }
    }

    /// The descriptor of mount `mnt_id` of filesystem `dev`, if a node still holds one.
    pub fn get(&self, mnt_id: u64, dev: u64) -> Option<Arc<MountFd>> {
        self.map
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .get(&mnt_id)
            .and_then(Weak::upgrade)
            .filter(|m| m.dev == dev)
    }

    /// `fd` (open for reading, on mount `mnt_id` of filesystem `dev`) as that mount's
    /// descriptor, unless a concurrent caller made one first; the answer is the one to use.
    pub fn insert(&self, mnt_id: u64, dev: u64, fd: OwnedFd) -> Arc<MountFd> {
        let mut map = self.map.write().unwrap_or_else(|e| e.into_inner());
        if let Some(m) = map.get(&mnt_id).and_then(Weak::upgrade) {
            if m.dev == dev {
                return m;
            }
        }
        // Entries of mounts no node holds any more go now.
        map.retain(|_, m| m.strong_count() > 0);
        let m = Arc::new(MountFd { mnt_id, dev, fd });
        map.insert(mnt_id, Arc::downgrade(&m));
        m
    }
}

/// A descriptor of a node for the length of one operation: its kept O_PATH descriptor, or
/// one just opened from its file handle (closed when this is dropped).
#[derive(Debug)]
pub enum InodeFd<'a> {
    /// The node's own descriptor (`never`, `prefer`'s fallback, and the root).
    Kept(BorrowedFd<'a>),
    /// Opened from the node's file handle for this operation.
    Opened(OwnedFd),
}

impl AsFd for InodeFd<'_> {
    fn as_fd(&self) -> BorrowedFd<'_> {
        match self {
            InodeFd::Kept(fd) => *fd,
            InodeFd::Opened(fd) => fd.as_fd(),
        }
    }
}
