//! The /dev/fuse transport of `zerodax mount`: the host kernel's FUSE device, read by worker
//! threads, every request answered by the same dispatch as virtio-fs ([`Server`]).
//!
//! A read of the device returns exactly one request and a write takes exactly one reply,
//! so a request is a plain byte buffer ([`ByteChain`]) and the transport adds nothing to the
//! protocol but kernel passthrough: registering an open host file with the kernel
//! ([`DeviceBacking`]) is done through ioctls on the device.

use std::collections::HashMap;
use std::io;
use std::os::fd::{AsRawFd, BorrowedFd, OwnedFd};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;

use protocol::abi::{FuseInHeader, FuseOutHeader, FuseWriteIn};
use protocol::{reply, Wire};
use rustix::io::Errno;

use crate::chain::ByteChain;
use crate::server::{BackingFiles, Notifier, Server, MAX_COPIED_REQUEST, MAX_PAGES};

/// `--passthrough`: kernel FUSE passthrough of reads, writes and mmap to the backing file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Passthrough {
    /// Use it when the kernel offers it, otherwise serve I/O in the daemon.
    Auto,
    /// Require it: the mount fails if the kernel refuses.
    On,
    /// Never use it.
    Off,
}

/// Largest WRITE payload and READ answer: INIT's max_write and max_pages (256 pages).
const MAX_IO: usize = MAX_PAGES as usize * 4096;
/// A device read must have room for the largest request the kernel may send: a WRITE of
/// max_write, or anything else up to what the dispatch copies (names, xattr values).
const REQUEST_BUF: usize = {
    let write = FuseInHeader::SIZE + FuseWriteIn::SIZE + MAX_IO;
    if write > MAX_COPIED_REQUEST {
        write
    } else {
        MAX_COPIED_REQUEST
    }
};
/// Room for the largest reply: a READ of max_pages (READDIR's buffer is no larger).
const REPLY_BUF: usize = FuseOutHeader::SIZE + MAX_IO;

/// The kernel's /dev/fuse ioctls (include/uapi/linux/fuse.h, magic 229).
mod ioctl {
    /// `FUSE_DEV_IOC_CLONE`, `_IOR(229, 0, uint32_t)`: attach a new device descriptor to
    /// the connection of the descriptor whose number it is given.
    pub const CLONE: libc::c_ulong = 0x8004_e500;
    /// `FUSE_DEV_IOC_BACKING_OPEN`, `_IOW(229, 1, struct fuse_backing_map)`: returns a
    /// backing id for the file.
    pub const BACKING_OPEN: libc::c_ulong = 0x4010_e501;
    /// `FUSE_DEV_IOC_BACKING_CLOSE`, `_IOW(229, 2, uint32_t)`.
    pub const BACKING_CLOSE: libc::c_ulong = 0x4004_e502;

    /// `struct fuse_backing_map`.
    #[repr(C)]
    pub struct BackingMap {
        pub fd: i32,
        pub flags: u32,
        pub padding: u64,
    }
}

fn efault() -> io::Error {
    io::Error::from_raw_os_error(libc::EFAULT)
}

/// A second descriptor on the connection of `dev`, so that each worker thread reads its own
/// (the kernel then keeps a processing list per descriptor instead of one shared lock).
pub fn clone_device(dev: BorrowedFd<'_>) -> io::Result<OwnedFd> {
    let fd = open_device()?;
    let master = u32::try_from(dev.as_raw_fd()).map_err(|_| efault())?;
    // SAFETY: FUSE_DEV_IOC_CLONE reads one u32 through the pointer, which points at
    // `master`, alive for the call; `fd` is an open /dev/fuse descriptor.
    if unsafe { libc::ioctl(fd.as_raw_fd(), ioctl::CLONE, &master as *const u32) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(fd)
}

/// A worker's request and reply buffers.
struct Buffers {
    request: Vec<u8>,
    reply: Vec<u8>,
}

impl Buffers {
    fn new() -> Self {
        Buffers {
            request: vec![0u8; REQUEST_BUF],
            reply: vec![0u8; REPLY_BUF],
        }
    }

    /// Reads one request from `dev` and writes its reply. Ok(false): the connection ended
    /// (unmounted, or aborted through /sys/fs/fuse/connections).
    fn serve_one(&mut self, dev: BorrowedFd<'_>, server: &Server) -> io::Result<bool> {
        let n = match rustix::io::read(dev, &mut self.request) {
            Ok(n) => n,
            // ENOENT: the request was interrupted and withdrawn before it was read.
            Err(Errno::INTR) | Err(Errno::AGAIN) | Err(Errno::NOENT) => return Ok(true),
            Err(Errno::NODEV) => return Ok(false),
            Err(e) => return Err(e.into()),
        };
        let mut chain = ByteChain::new(&self.request[..n], &mut self.reply);
        let len = server.handle(&mut chain, false) as usize;
        if len == 0 {
            return Ok(true);
        }
        match rustix::io::write(dev, &self.reply[..len]) {
            Ok(_) => Ok(true),
            // The request was interrupted and the kernel no longer waits for it.
            Err(Errno::NOENT) => Ok(true),
            Err(Errno::NODEV) => Ok(false),
            Err(e) => {
                tracing::debug!("reply of {len} bytes refused by /dev/fuse: {e}");
                Ok(true)
            }
        }
    }
}

/// Answers the first request on a fresh connection: INIT, which the kernel sends as it
/// mounts.
pub fn serve_init(dev: BorrowedFd<'_>, server: &Server) -> io::Result<()> {
    match Buffers::new().serve_one(dev, server)? {
        true => Ok(()),
        false => Err(io::Error::new(
            io::ErrorKind::ConnectionAborted,
            "the connection ended before INIT",
        )),
    }
}

/// Serves requests from `dev` until the connection ends (Ok) or the device fails (Err).
pub fn serve_device(dev: BorrowedFd<'_>, server: &Server) -> io::Result<()> {
    let mut buffers = Buffers::new();
    while buffers.serve_one(dev, server)? {}
    Ok(())
}

/// Kernel passthrough over a /dev/fuse connection: one backing id per node (the kernel
/// refuses two backing files for one inode), shared by the node's open handles and closed
/// with the last of them.
#[derive(Debug)]
pub struct DeviceBacking {
    dev: OwnedFd,
    mode: Passthrough,
    /// Cleared in `auto` when the kernel refuses a backing file: from then on the daemon
    /// serves I/O itself.
    enabled: AtomicBool,
    /// `--passthrough on` and the kernel did not offer it: the mount must end.
    refused: AtomicBool,
    table: Mutex<BackingTable>,
}

#[derive(Debug, Default)]
struct BackingTable {
    /// Node → (backing id, open handles using it).
    by_node: HashMap<u64, (i32, usize)>,
    /// Handle → node, for RELEASE.
    fh_node: HashMap<u64, u64>,
    /// Node → its open handles the daemon serves, asked so ([`BackingFiles::open`]'s
    /// `by_daemon`): later handles of the node are served by the daemon too while any is
    /// open.
    by_daemon: HashMap<u64, usize>,
    /// Handle → node, for those.
    fh_daemon: HashMap<u64, u64>,
}

impl DeviceBacking {
    /// Passthrough as `mode` says, registering files through `dev` (any descriptor of the
    /// connection).
    pub fn new(dev: OwnedFd, mode: Passthrough) -> Self {
        DeviceBacking {
            dev,
            mode,
            enabled: AtomicBool::new(false),
            refused: AtomicBool::new(false),
            table: Mutex::new(BackingTable::default()),
        }
    }

    /// INIT found `--passthrough on` impossible.
    pub fn refused(&self) -> bool {
        self.refused.load(Ordering::Relaxed)
    }

    fn register(&self, fd: BorrowedFd<'_>) -> io::Result<i32> {
        let map = ioctl::BackingMap {
            fd: fd.as_raw_fd(),
            flags: 0,
            padding: 0,
        };
        // SAFETY: BACKING_OPEN reads one `struct fuse_backing_map` through the pointer,
        // which points at `map`, alive for the call.
        let id = unsafe { libc::ioctl(self.dev.as_raw_fd(), ioctl::BACKING_OPEN, &map) };
        if id < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(id)
    }

    fn unregister(&self, id: i32) {
        let id = id as u32;
        // SAFETY: BACKING_CLOSE reads one u32 through the pointer, which points at `id`.
        if unsafe { libc::ioctl(self.dev.as_raw_fd(), ioctl::BACKING_CLOSE, &id) } != 0 {
            tracing::debug!("closing backing id {id}: {}", io::Error::last_os_error());
        }
    }
}

impl BackingFiles for DeviceBacking {
    fn negotiate(&self, offered: bool) -> Result<bool, i32> {
        let enabled = match (self.mode, offered) {
            (Passthrough::Off, _) => false,
            (_, true) => {
                tracing::info!("kernel FUSE passthrough enabled");
                true
            }
            (Passthrough::On, false) => {
                tracing::error!("--passthrough on: the kernel does not offer FUSE passthrough");
                self.refused.store(true, Ordering::Relaxed);
                return Err(libc::EPROTO);
            }
            (Passthrough::Auto, false) => {
                tracing::info!("kernel does not offer FUSE passthrough; the daemon serves I/O");
                false
            }
        };
        self.enabled.store(enabled, Ordering::Relaxed);
        Ok(enabled)
    }

    fn open(
        &self,
        node: u64,
        fh: u64,
        fd: BorrowedFd<'_>,
        by_daemon: bool,
    ) -> io::Result<Option<i32>> {
        if !self.enabled.load(Ordering::Relaxed) {
            return Ok(None);
        }
        let mut t = self.table.lock().unwrap_or_else(|e| e.into_inner());
        if !t.by_node.contains_key(&node) && (by_daemon || t.by_daemon.contains_key(&node)) {
            *t.by_daemon.entry(node).or_insert(0) += 1;
            t.fh_daemon.insert(fh, node);
            return Ok(None);
        }
        let id = match t.by_node.get_mut(&node) {
            Some((id, opens)) => {
                *opens += 1;
                *id
            }
            None => match self.register(fd) {
                Ok(id) => {
                    t.by_node.insert(node, (id, 1));
                    id
                }
                Err(e) if self.mode == Passthrough::On => {
                    tracing::error!("kernel refused a passthrough backing file: {e}");
                    return Err(e);
                }
                Err(e) => {
                    if self.enabled.swap(false, Ordering::Relaxed) {
                        tracing::warn!(
                            "kernel refused a passthrough backing file ({e}); serving I/O in the daemon from now on"
                        );
                    }
                    return Ok(None);
                }
            },
        };
        t.fh_node.insert(fh, node);
        Ok(Some(id))
    }

    fn release(&self, fh: u64) {
        let mut t = self.table.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(node) = t.fh_daemon.remove(&fh) {
            if let Some(opens) = t.by_daemon.get_mut(&node) {
                *opens -= 1;
                if *opens == 0 {
                    t.by_daemon.remove(&node);
                }
            }
            return;
        }
        let Some(node) = t.fh_node.remove(&fh) else {
            return;
        };
        let last = match t.by_node.get_mut(&node) {
            Some((id, opens)) => {
                *opens -= 1;
                (*opens == 0).then_some(*id)
            }
            None => None,
        };
        if let Some(id) = last {
            t.by_node.remove(&node);
            self.unregister(id);
        }
    }
}

/// Notifications over a /dev/fuse connection: a message written to the device with unique 0.
#[derive(Debug)]
pub struct DeviceNotifier {
    dev: OwnedFd,
}

impl DeviceNotifier {
    /// Notifications written to `dev` (any descriptor of the connection).
    pub fn new(dev: OwnedFd) -> Self {
        DeviceNotifier { dev }
    }
}

impl Notifier for DeviceNotifier {
    fn attrs_changed(&self, node: u64) {
        let mut msg = Vec::with_capacity(64);
        let written = reply::notify_inval_attrs(&mut msg, node)
            .map_err(|e| io::Error::other(e.to_string()))
            .and_then(|_| Ok(rustix::io::write(&self.dev, &msg)?));
        // ENOENT: the kernel holds no inode for the node (nothing cached to drop).
        match written {
            Ok(_) => {}
            Err(e) if e.raw_os_error() == Some(libc::ENOENT) => {}
            Err(e) => tracing::debug!(node, "attribute invalidation refused by /dev/fuse: {e}"),
        }
    }
}

/// Opens /dev/fuse for a new connection.
pub fn open_device() -> io::Result<OwnedFd> {
    Ok(rustix::fs::open(
        "/dev/fuse",
        rustix::fs::OFlags::RDWR | rustix::fs::OFlags::CLOEXEC,
        rustix::fs::Mode::empty(),
    )?)
}

/// A second owned descriptor of `fd` (for the passthrough table, which outlives no worker).
pub fn dup(fd: BorrowedFd<'_>) -> io::Result<OwnedFd> {
    Ok(rustix::io::fcntl_dupfd_cloexec(fd, 0)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The ioctl numbers, rebuilt from the _IOC encoding (dir << 30 | size << 16 | type << 8
    /// | nr), so a typo cannot pass.
    #[test]
    fn ioctl_numbers_match_the_ioc_encoding() {
        let ioc = |dir: u64, size: usize, nr: u64| {
            (dir << 30 | (size as u64) << 16 | 229 << 8 | nr) as libc::c_ulong
        };
        assert_eq!(ioctl::CLONE, ioc(2, 4, 0));
        assert_eq!(
            ioctl::BACKING_OPEN,
            ioc(1, std::mem::size_of::<ioctl::BackingMap>(), 1)
        );
        assert_eq!(ioctl::BACKING_CLOSE, ioc(1, 4, 2));
    }
}
