//! The inode table: node ids handed to the client, each backed by an O_PATH descriptor.
//!
//! A node is identified on the host by (st_dev, st_ino, mount id). The mount id keeps two
//! bind mounts of one filesystem inside the shared directory apart (same st_dev and st_ino
//! on both sides, different mounts), and hard links of one file collapse onto one node so
//! the client sees one inode, as the host does.

use std::collections::HashMap;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::sync::{Arc, Mutex, MutexGuard};

/// Node id of the shared directory itself, fixed by the FUSE protocol.
pub const ROOT_NODE: u64 = 1;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct InodeKey {
    pub dev: u64,
    pub ino: u64,
    pub mnt_id: u64,
}

impl InodeKey {
    pub fn from_statx(stx: &libc::statx) -> Self {
        InodeKey {
            dev: libc::makedev(stx.stx_dev_major, stx.stx_dev_minor),
            ino: stx.stx_ino,
            mnt_id: stx.stx_mnt_id,
        }
    }
}

/// One node: the O_PATH descriptor that pins the host inode, and its file type bits.
#[derive(Debug)]
pub struct Inode {
    pub node: u64,
    pub key: InodeKey,
    /// `st_mode & S_IFMT` when the node was first seen; file types never change.
    pub file_type: u32,
    fd: OwnedFd,
}

impl Inode {
    pub fn fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }

    pub fn is_dir(&self) -> bool {
        self.file_type == libc::S_IFDIR
    }

    pub fn is_reg(&self) -> bool {
        self.file_type == libc::S_IFREG
    }

    pub fn is_symlink(&self) -> bool {
        self.file_type == libc::S_IFLNK
    }
}

struct Slot {
    inode: Arc<Inode>,
    /// The FUSE lookup count: how many references the client holds.
    lookups: u64,
}

struct Tables {
    by_node: HashMap<u64, Slot>,
    by_key: HashMap<InodeKey, u64>,
    next_node: u64,
}

/// Node id → inode, and host identity → node id, under one lock so a lookup racing a
/// forget can never resurrect a removed node or leave the two maps disagreeing.
pub struct InodeTable {
    tables: Mutex<Tables>,
}

impl InodeTable {
    pub fn new(root_fd: OwnedFd, root_key: InodeKey) -> Self {
        let root = Arc::new(Inode {
            node: ROOT_NODE,
            key: root_key,
            file_type: libc::S_IFDIR,
            fd: root_fd,
        });
        let mut by_node = HashMap::new();
        // The root is never forgotten: the kernel holds it for the mount's lifetime.
        by_node.insert(
            ROOT_NODE,
            Slot {
                inode: root,
                lookups: u64::MAX / 2,
            },
        );
        let mut by_key = HashMap::new();
        by_key.insert(root_key, ROOT_NODE);
        InodeTable {
            tables: Mutex::new(Tables {
                by_node,
                by_key,
                next_node: ROOT_NODE + 1,
            }),
        }
    }

    fn lock(&self) -> MutexGuard<'_, Tables> {
        // A panic while holding the lock cannot leave the maps half-updated (each update is
        // a single insert/remove pair), so a poisoned lock is still consistent.
        self.tables.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub fn get(&self, node: u64) -> Option<Arc<Inode>> {
        self.lock().by_node.get(&node).map(|s| s.inode.clone())
    }

    /// Add one lookup reference for the host inode `key`, creating the node with `fd` if it
    /// is new (otherwise `fd` is dropped: the existing descriptor already pins the inode).
    pub fn acquire(&self, key: InodeKey, file_type: u32, fd: OwnedFd) -> Arc<Inode> {
        let mut t = self.lock();
        if let Some(&node) = t.by_key.get(&key) {
            if let Some(slot) = t.by_node.get_mut(&node) {
                slot.lookups = slot.lookups.saturating_add(1);
                return slot.inode.clone();
            }
        }
        let node = t.next_node;
        t.next_node += 1;
        let inode = Arc::new(Inode {
            node,
            key,
            file_type,
            fd,
        });
        t.by_node.insert(
            node,
            Slot {
                inode: inode.clone(),
                lookups: 1,
            },
        );
        t.by_key.insert(key, node);
        inode
    }

    /// Add one lookup reference to the node of `key` only if the table already has it.
    pub fn acquire_existing(&self, key: InodeKey) -> Option<Arc<Inode>> {
        let mut t = self.lock();
        let node = *t.by_key.get(&key)?;
        let slot = t.by_node.get_mut(&node)?;
        slot.lookups = slot.lookups.saturating_add(1);
        Some(slot.inode.clone())
    }

    /// Drop `count` lookup references; the node (and its descriptor, once no operation still
    /// holds the Arc) goes away at zero. Unknown nodes are ignored: forget has no reply.
    pub fn forget(&self, node: u64, count: u64) {
        if node == ROOT_NODE {
            return;
        }
        let mut t = self.lock();
        let gone = match t.by_node.get_mut(&node) {
            Some(slot) => {
                slot.lookups = slot.lookups.saturating_sub(count);
                (slot.lookups == 0).then_some(slot.inode.key)
            }
            None => None,
        };
        if let Some(key) = gone {
            t.by_node.remove(&node);
            if t.by_key.get(&key) == Some(&node) {
                t.by_key.remove(&key);
            }
        }
    }

    pub fn len(&self) -> usize {
        self.lock().by_node.len()
    }

    /// Forgets every node but the root (a new FUSE session). Node ids are not reused, so a
    /// node id of the old session is ESTALE in the new one, never another file.
    pub fn reset(&self) {
        let mut t = self.lock();
        t.by_node.retain(|&node, _| node == ROOT_NODE);
        t.by_key.retain(|_, node| *node == ROOT_NODE);
    }
}
