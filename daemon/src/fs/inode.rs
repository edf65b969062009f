//! The inode table: node ids handed to the client, each backed by an O_PATH descriptor or,
//! with `--inode-file-handles=mandatory` (and `prefer`, where it can), by a file handle (see
//! `handle`).
//!
//! A node is identified on the host by (st_dev, st_ino, mount id). The mount id keeps two
//! bind mounts of one filesystem inside the shared directory apart (same st_dev and st_ino
//! on both sides, different mounts), and hard links of one file collapse onto one node so
//! the client sees one inode, as the host does.

use std::collections::HashMap;
use std::io;
use std::os::fd::{AsFd, OwnedFd};
use std::sync::{Arc, Mutex, MutexGuard};

use super::handle::{HandleRef, InodeFd};

/// Node id of the shared directory itself, fixed by the FUSE protocol.
pub const ROOT_NODE: u64 = 1;

/// A host inode's identity: hard links share it, the same inode on two mounts does not.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct InodeKey {
    /// `st_dev`.
    pub dev: u64,
    /// `st_ino`.
    pub ino: u64,
    /// The mount id (`STATX_MNT_ID`).
    pub mnt_id: u64,
}

impl InodeKey {
    /// The key of a statx result taken with `STATX_MNT_ID`.
    pub fn from_statx(stx: &rustix::fs::Statx) -> Self {
        InodeKey {
            dev: rustix::fs::makedev(stx.stx_dev_major, stx.stx_dev_minor),
            ino: stx.stx_ino,
            mnt_id: stx.stx_mnt_id,
        }
    }
}

/// How a node reaches its host inode.
#[derive(Debug)]
pub enum HostRef {
    /// An O_PATH descriptor, which pins the inode.
    Fd(OwnedFd),
    /// A file handle, reopened per operation; pins nothing.
    Handle(HandleRef),
}

/// How an existing node of a key relates to the inode a lookup found under it
/// ([`InodeTable::acquire_current`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fit {
    /// It is that inode, referenced as wanted.
    Current,
    /// It is that inode, but takes the lookup's reference to it instead of its own.
    SameInode,
    /// It is a deleted inode whose number the host gave to this one.
    OtherInode,
}

/// One node: its reference to the host inode, and its file type bits.
#[derive(Debug)]
pub struct Inode {
    /// The node id the client knows it by.
    pub node: u64,
    /// The host identity it was found under.
    pub key: InodeKey,
    /// `st_mode & S_IFMT` when the node was first seen; file types never change.
    pub file_type: u32,
    host: HostRef,
}

impl Inode {
    /// An O_PATH descriptor of the node for the length of one operation (use
    /// `/proc/self/fd/N` to reopen it for I/O): the kept one, or, for a handle-backed node,
    /// one opened from the handle (ESTALE when the host inode is gone).
    pub fn fd(&self) -> io::Result<InodeFd<'_>> {
        match &self.host {
            HostRef::Fd(fd) => Ok(InodeFd::Kept(fd.as_fd())),
            HostRef::Handle(h) => h.open(libc::O_PATH).map(InodeFd::Opened),
        }
    }

    /// The node's file handle, when it has one instead of a descriptor.
    pub fn handle(&self) -> Option<&HandleRef> {
        match &self.host {
            HostRef::Fd(_) => None,
            HostRef::Handle(h) => Some(h),
        }
    }

    /// A directory.
    pub fn is_dir(&self) -> bool {
        self.file_type == libc::S_IFDIR
    }

    /// A regular file.
    pub fn is_reg(&self) -> bool {
        self.file_type == libc::S_IFREG
    }

    /// A symbolic link.
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
    /// Node ids for keys [`node_number`] has none for: from [`COUNTED`] up.
    next_node: u64,
}

/// Where the node ids of inodes without a number of their own start (see [`node_number`]).
const COUNTED: u64 = 1 << 62;
/// Numbers of inodes on other mounts than the share's: this bit, the mount id, the inode.
const OTHER_MOUNT: u64 = 1 << 63;

impl Tables {
    /// The next counted node id.
    fn counted(&mut self) -> u64 {
        self.next_node += 1;
        self.next_node - 1
    }

    /// A new node `node` for `key`, with one lookup reference; `key` names it from now on.
    fn insert(&mut self, node: u64, key: InodeKey, file_type: u32, host: HostRef) -> Arc<Inode> {
        let inode = Arc::new(Inode {
            node,
            key,
            file_type,
            host,
        });
        self.by_node.insert(
            node,
            Slot {
                inode: inode.clone(),
                lookups: 1,
            },
        );
        self.by_key.insert(key, node);
        inode
    }
}

/// The node id of host inode `key` in a share whose root is `root`, which is also the inode
/// number clients see (st_ino and d_ino alike): one number per inode, known without a
/// lookup, so READDIR can report what a later LOOKUP or GETATTR will.
///
/// - The root: [`ROOT_NODE`], as the protocol fixes.
/// - An inode on the share's own mount: its host st_ino, so `ls -i` agrees with the host.
/// - An inode on another mount inside the share (a submount or a bind mount, where host
///   inode numbers can repeat): `OTHER_MOUNT | mount id << 48 | st_ino`.
/// - Beyond those bit widths: `None`; the table then counts from [`COUNTED`] (a READDIR
///   before the LOOKUP cannot know that number: d_ino then is the host's).
pub fn node_number(root: InodeKey, key: InodeKey) -> Option<u64> {
    if key == root {
        Some(ROOT_NODE)
    } else if key.dev == root.dev
        && key.mnt_id == root.mnt_id
        && key.ino > ROOT_NODE
        && key.ino < COUNTED
    {
        Some(key.ino)
    } else if key.mnt_id < 1 << 15 && key.ino < 1 << 48 {
        Some(OTHER_MOUNT | key.mnt_id << 48 | key.ino)
    } else {
        None
    }
}

/// Node id → inode, and host identity → node id, under one lock so a lookup racing a
/// forget can never resurrect a removed node or leave the two maps disagreeing.
pub struct InodeTable {
    tables: Mutex<Tables>,
    root_key: InodeKey,
}

impl InodeTable {
    pub fn new(root_fd: OwnedFd, root_key: InodeKey) -> Self {
        let root = Arc::new(Inode {
            node: ROOT_NODE,
            key: root_key,
            file_type: libc::S_IFDIR,
            host: HostRef::Fd(root_fd),
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
                next_node: COUNTED,
            }),
            root_key,
        }
    }

    /// The number clients see for host inode `key` ([`node_number`]): its node id if the
    /// table has it, else the one it will get, else None.
    pub fn number_of(&self, key: InodeKey) -> Option<u64> {
        node_number(self.root_key, key).or_else(|| self.lock().by_key.get(&key).copied())
    }

    fn lock(&self) -> MutexGuard<'_, Tables> {
        // A panic while holding the lock cannot leave the maps half-updated (each update is
        // a single insert/remove pair), so a poisoned lock is still consistent.
        self.tables.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub fn get(&self, node: u64) -> Option<Arc<Inode>> {
        self.lock().by_node.get(&node).map(|s| s.inode.clone())
    }

    /// Add one lookup reference for the host inode `key`, creating the node with `host` if it
    /// is new (otherwise `host` is dropped: the existing node already references the inode).
    pub fn acquire(&self, key: InodeKey, file_type: u32, host: HostRef) -> Arc<Inode> {
        let mut t = self.lock();
        if let Some(&node) = t.by_key.get(&key) {
            if let Some(slot) = t.by_node.get_mut(&node) {
                slot.lookups = slot.lookups.saturating_add(1);
                return slot.inode.clone();
            }
        }
        let node = node_number(self.root_key, key).unwrap_or_else(|| t.counted());
        t.insert(node, key, file_type, host)
    }

    /// For nodes referenced by file handle, where nothing pins the host inode: as
    /// [`InodeTable::acquire`], with `fit` saying what the node `key` has is. [`Fit::SameInode`]:
    /// it takes `host` (a descriptor for a handle, say), keeping its id and lookups.
    /// [`Fit::OtherInode`] (its inode was deleted and the host gave its number to a new one):
    /// the new inode gets a node id
    /// of its own, counted ([`COUNTED`]), and `key` names it from now on. The old id is not
    /// handed on: the client may still hold it, and would take the new inode for the old one
    /// it has cached (a directory it removed stays dead in a Linux client's cache, so creating
    /// in the new one would fail with ENOENT). The old node stays, ESTALE, until forgotten.
    pub fn acquire_current(
        &self,
        key: InodeKey,
        file_type: u32,
        host: HostRef,
        fit: impl Fn(&Inode) -> Fit,
    ) -> Arc<Inode> {
        {
            let mut t = self.lock();
            if let Some(&node) = t.by_key.get(&key) {
                if let Some(slot) = t.by_node.get_mut(&node) {
                    match fit(&slot.inode) {
                        Fit::Current => {
                            slot.lookups = slot.lookups.saturating_add(1);
                            return slot.inode.clone();
                        }
                        Fit::SameInode => {
                            slot.lookups = slot.lookups.saturating_add(1);
                            slot.inode = Arc::new(Inode {
                                node,
                                key,
                                file_type,
                                host,
                            });
                            return slot.inode.clone();
                        }
                        Fit::OtherInode => {
                            let node = t.counted();
                            return t.insert(node, key, file_type, host);
                        }
                    }
                }
            }
        }
        self.acquire(key, file_type, host)
    }

    /// Add one lookup reference to the node of `key` if the table has it and `current`
    /// accepts it.
    pub fn acquire_existing_if(
        &self,
        key: InodeKey,
        current: impl Fn(&Inode) -> bool,
    ) -> Option<Arc<Inode>> {
        let mut t = self.lock();
        let node = *t.by_key.get(&key)?;
        let slot = t.by_node.get_mut(&node)?;
        if !current(&slot.inode) {
            return None;
        }
        slot.lookups = slot.lookups.saturating_add(1);
        Some(slot.inode.clone())
    }

    /// The node of `key`, if any, without a lookup reference (it may be forgotten meanwhile).
    pub fn peek(&self, key: InodeKey) -> Option<Arc<Inode>> {
        let t = self.lock();
        let node = t.by_key.get(&key)?;
        Some(t.by_node.get(node)?.inode.clone())
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

    /// Forgets every node but the root (a new FUSE session): a node id of the old session
    /// is ESTALE in the new one until a lookup makes the node again. A node id only ever
    /// names one inode ([`node_number`]; a number the host reuses for a new inode after
    /// the old one is gone names the new one, as the host's st_ino does).
    pub fn reset(&self) {
        let mut t = self.lock();
        t.by_node.retain(|&node, _| node == ROOT_NODE);
        t.by_key.retain(|_, node| *node == ROOT_NODE);
    }
}
