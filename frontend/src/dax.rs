//! The virtio-fs DAX window, both halves.
//!
//! VMM half ([`ShmemWindow`], [`BackendReqServer`]): the backend-request channel
//! (SET_BACKEND_REQ_FD) served on a thread of its own, so a backend request is answered while
//! a guest request waits for it. SHMEM_MAP and SHMEM_UNMAP of region 0 go into a dax-window
//! [`Window`] whose unmapped state is anonymous private `PROT_READ` memory (it reads the zero
//! page). The vhost-user rules are enforced, so a backend bug cannot hide behind a lenient
//! VMM: a map over a live mapping and an unmap that cuts a mapping are refused (the backend
//! gets an error ack), as is anything outside the window or on another shmid.
//!
//! Guest half ([`DaxGuest`]): what Linux's fs/fuse/dax.c does with the window. Files are
//! mapped in 2 MiB ranges set up on first access (READ for a read, READ|WRITE for a write,
//! fh = -1 as from the fault path); the first write to a read-only range sends SETUPMAPPING
//! again with WRITE at the same window offset (the pfn_mkwrite upgrade); an access at or
//! past EOF is refused (the guest would get SIGBUS); a write that extends the file goes as
//! FUSE_WRITE; when the window is full the least recently used range is reclaimed with
//! REMOVEMAPPING.

use std::collections::HashMap;
use std::fmt;
use std::io;
use std::ops::Range;
use std::os::fd::{AsRawFd, BorrowedFd, OwnedFd, RawFd};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::thread::JoinHandle;

use dax_window::Window;
use protocol::abi::{
    FuseSetupmappingIn, FUSE_SETUPMAPPING_FLAG_READ, FUSE_SETUPMAPPING_FLAG_WRITE,
};
use vhost::vhost_user::message::{VhostUserMMap, VhostUserMMapFlags};
use vhost::vhost_user::{FrontendReqHandler, HandlerResult, VhostUserFrontendReqHandler};

use crate::fuse::{FuseClient, FuseError};

/// The guest's DAX range size (FUSE_DAX_SZ).
pub const RANGE_SIZE: u64 = 2 << 20;

/// Errors of the DAX window.
#[derive(Debug)]
pub enum DaxError {
    /// The device has no window (SHMEM not negotiated, or no region 0).
    NoWindow,
    /// A FUSE request failed.
    Fuse(FuseError),
    /// The VMM window refused an operation.
    Window(dax_window::Error),
    /// An access at or past EOF (the guest would get SIGBUS).
    PastEof {
        /// First byte asked for.
        offset: u64,
        /// File size.
        size: u64,
    },
    /// The window cannot hold even one range.
    WindowTooSmall,
    /// The backend channel could not be set up.
    Channel(io::Error),
}

impl fmt::Display for DaxError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DaxError::NoWindow => write!(f, "the device has no DAX window"),
            DaxError::Fuse(e) => write!(f, "{e}"),
            DaxError::Window(e) => write!(f, "DAX window: {e}"),
            DaxError::PastEof { offset, size } => {
                write!(f, "access at {offset} past EOF {size} (SIGBUS)")
            }
            DaxError::WindowTooSmall => write!(f, "DAX window smaller than one range"),
            DaxError::Channel(e) => write!(f, "backend request channel: {e}"),
        }
    }
}

impl std::error::Error for DaxError {}

impl From<FuseError> for DaxError {
    fn from(e: FuseError) -> Self {
        DaxError::Fuse(e)
    }
}

impl From<dax_window::Error> for DaxError {
    fn from(e: dax_window::Error) -> Self {
        DaxError::Window(e)
    }
}

/// Counters of the backend requests served.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ShmemStats {
    /// SHMEM_MAP requests carried out.
    pub maps: u64,
    /// SHMEM_UNMAP requests carried out.
    pub unmaps: u64,
    /// Requests refused (rule broken, outside the window, window not set up yet).
    pub refused: u64,
}

/// The VMM's shared memory region 0 and the handler of SHMEM_MAP/SHMEM_UNMAP.
#[derive(Default)]
pub struct ShmemWindow {
    window: OnceLock<Window>,
    maps: AtomicU64,
    unmaps: AtomicU64,
    refused: AtomicU64,
    /// Milliseconds the next SHMEM_MAP waits before it is served: a slow or hung VMM.
    stall_ms: AtomicU64,
}

impl fmt::Debug for ShmemWindow {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ShmemWindow")
            .field("len", &self.window.get().map(|w| w.len()))
            .field("stats", &self.stats())
            .finish()
    }
}

fn refuse(msg: String) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidInput, msg)
}

impl ShmemWindow {
    /// Creates region 0 of `len` bytes (GET_SHMEM_CONFIG's size). Only once.
    pub fn create(&self, len: u64) -> dax_window::Result<&Window> {
        let len = usize::try_from(len)
            .map_err(|_| dax_window::Error::InvalidRange("window too large"))?;
        let w = Window::new(len)?;
        let _ = self.window.set(w);
        Ok(self
            .window
            .get()
            .unwrap_or_else(|| unreachable!("just set")))
    }

    /// The window, once created.
    pub fn window(&self) -> Option<&Window> {
        self.window.get()
    }

    /// Makes the next SHMEM_MAP wait `d` before it is served and acked, as a VMM that is
    /// slow or stopped answering would.
    pub fn stall_next_map(&self, d: std::time::Duration) {
        self.stall_ms.store(
            u64::try_from(d.as_millis()).unwrap_or(u64::MAX),
            Ordering::Relaxed,
        );
    }

    /// Requests served so far.
    pub fn stats(&self) -> ShmemStats {
        ShmemStats {
            maps: self.maps.load(Ordering::Relaxed),
            unmaps: self.unmaps.load(Ordering::Relaxed),
            refused: self.refused.load(Ordering::Relaxed),
        }
    }

    fn checked(&self, req: &VhostUserMMap) -> io::Result<(&Window, usize, usize)> {
        let shmid = req.shmid;
        if shmid != 0 {
            return Err(refuse(format!("no shared memory region {shmid}")));
        }
        let w = self
            .window
            .get()
            .ok_or_else(|| refuse("window not set up".into()))?;
        let off = usize::try_from(req.shm_offset).map_err(|_| refuse("offset".into()))?;
        let len = usize::try_from(req.len).map_err(|_| refuse("len".into()))?;
        Ok((w, off, len))
    }

    fn count<T>(&self, r: io::Result<T>, ok: &AtomicU64) -> HandlerResult<u64> {
        match r {
            Ok(_) => {
                ok.fetch_add(1, Ordering::Relaxed);
                Ok(0)
            }
            Err(e) => {
                self.refused.fetch_add(1, Ordering::Relaxed);
                Err(e)
            }
        }
    }
}

impl VhostUserFrontendReqHandler for ShmemWindow {
    fn shmem_map(&self, req: &VhostUserMMap, fd: &dyn AsRawFd) -> HandlerResult<u64> {
        let stall = self.stall_ms.swap(0, Ordering::Relaxed);
        if stall > 0 {
            std::thread::sleep(std::time::Duration::from_millis(stall));
        }
        let r = self.checked(req).and_then(|(w, off, len)| {
            let flags = req.flags;
            let writable = VhostUserMMapFlags::from_bits(flags)
                .ok_or_else(|| refuse(format!("unknown flags {flags:#x}")))?
                .contains(VhostUserMMapFlags::WRITABLE);
            // SAFETY: the descriptor came with the message and stays open for this call.
            let fd = unsafe { BorrowedFd::borrow_raw(fd.as_raw_fd()) };
            w.map_fd_raw(off, len, fd, req.fd_offset, writable)
                .map_err(|e| refuse(format!("SHMEM_MAP {off:#x}+{len:#x}: {e}")))
        });
        self.count(r, &self.maps)
    }

    fn shmem_unmap(&self, req: &VhostUserMMap) -> HandlerResult<u64> {
        let r = self.checked(req).and_then(|(w, off, len)| {
            w.unmap(off, len)
                .map_err(|e| refuse(format!("SHMEM_UNMAP {off:#x}+{len:#x}: {e}")))
        });
        self.count(r, &self.unmaps)
    }
}

/// The thread serving the backend-request channel.
pub struct BackendReqServer {
    shmem: Arc<ShmemWindow>,
    /// A duplicate of our end of the channel, to shut it down (which ends the thread).
    stop: OwnedFd,
    thread: Option<JoinHandle<()>>,
    /// The end handed to the backend with SET_BACKEND_REQ_FD (owned by the thread's handler,
    /// alive until it is joined).
    backend_end: RawFd,
}

impl fmt::Debug for BackendReqServer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("BackendReqServer")
            .field("shmem", &self.shmem)
            .finish_non_exhaustive()
    }
}

impl BackendReqServer {
    /// Creates the channel and starts serving it; `reply_ack` as negotiated.
    pub fn start(reply_ack: bool) -> Result<Self, DaxError> {
        let shmem = Arc::new(ShmemWindow::default());
        let mut handler = FrontendReqHandler::new(Arc::clone(&shmem))
            .map_err(|e| DaxError::Channel(io::Error::other(e)))?;
        handler.set_reply_ack_flag(reply_ack);
        let backend_end = handler.get_tx_raw_fd();
        // SAFETY: the handler's own end is open while the handler lives; dup makes an owned
        // descriptor of the same socket.
        let stop = unsafe { BorrowedFd::borrow_raw(handler.as_raw_fd()) }
            .try_clone_to_owned()
            .map_err(DaxError::Channel)?;
        let thread = std::thread::Builder::new()
            .name("vhost-user-backend-req".into())
            .spawn(move || loop {
                match handler.handle_request() {
                    Ok(_) => {}
                    // The handler refused (a vhost-user rule broken); the backend got an
                    // error ack. Keep serving.
                    Err(vhost::vhost_user::Error::ReqHandlerError(_)) => {}
                    Err(_) => break,
                }
            })
            .map_err(DaxError::Channel)?;
        Ok(Self {
            shmem,
            stop,
            thread: Some(thread),
            backend_end,
        })
    }

    /// The descriptor to send with SET_BACKEND_REQ_FD.
    pub fn backend_end(&self) -> RawFd {
        self.backend_end
    }

    /// Region 0 and its request counters.
    pub fn shmem(&self) -> &Arc<ShmemWindow> {
        &self.shmem
    }
}

impl Drop for BackendReqServer {
    fn drop(&mut self) {
        // Shutdown of a socket we own a duplicate of; the blocked read then fails.
        let _ = rustix::net::shutdown(&self.stop, rustix::net::Shutdown::Both);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// One 2 MiB range of a file in the window.
#[derive(Debug, Clone, Copy)]
struct Slot {
    node: u64,
    index: u64,
    writable: bool,
    last_use: u64,
}

/// `len` bytes from file offset `offset` cut at range boundaries: for each piece, its range
/// index, its offset inside that range and its span of the caller's buffer.
fn pieces(offset: u64, len: usize) -> impl Iterator<Item = (u64, usize, Range<usize>)> {
    let mut done = 0usize;
    std::iter::from_fn(move || {
        (done < len).then(|| {
            let pos = offset + done as u64;
            let in_range = (pos % RANGE_SIZE) as usize;
            let n = (RANGE_SIZE as usize - in_range).min(len - done);
            let span = done..done + n;
            done += n;
            (pos / RANGE_SIZE, in_range, span)
        })
    })
}

/// The guest's use of the window (fs/fuse/dax.c): ranges per (node, 2 MiB index), set up on
/// first access, upgraded on first write, reclaimed when the window is full.
#[derive(Debug)]
pub struct DaxGuest {
    shmem: Arc<ShmemWindow>,
    slots: Vec<Option<Slot>>,
    by_file: HashMap<(u64, u64), usize>,
    clock: u64,
    /// REMOVEMAPPINGs sent to make room.
    pub reclaims: u64,
    /// SETUPMAPPINGs sent (first use and upgrades).
    pub setups: u64,
}

impl DaxGuest {
    /// The guest side of the window of `client`'s device.
    pub fn new(client: &mut FuseClient) -> Result<Self, DaxError> {
        let shmem = client.driver().dax().ok_or(DaxError::NoWindow)?.clone();
        let len = shmem.window().ok_or(DaxError::NoWindow)?.len() as u64;
        let n = (len / RANGE_SIZE) as usize;
        if n == 0 {
            return Err(DaxError::WindowTooSmall);
        }
        Ok(Self {
            shmem,
            slots: vec![None; n],
            by_file: HashMap::new(),
            clock: 0,
            reclaims: 0,
            setups: 0,
        })
    }

    /// The VMM's window.
    pub fn window(&self) -> &Window {
        self.shmem.window().expect("created before DaxGuest::new")
    }

    /// The VMM's request counters.
    pub fn shmem(&self) -> &Arc<ShmemWindow> {
        &self.shmem
    }

    /// Window offset of `node`'s range holding file offset `offset`, if set up.
    pub fn window_offset(&self, node: u64, offset: u64) -> Option<usize> {
        let slot = *self.by_file.get(&(node, offset / RANGE_SIZE))?;
        Some(slot * RANGE_SIZE as usize + (offset % RANGE_SIZE) as usize)
    }

    fn size(client: &mut FuseClient, node: u64) -> Result<u64, DaxError> {
        Ok(client.getattr(node, None)?.attr.size)
    }

    /// Makes `(node, index)` mapped, writable if `write`; returns its slot.
    fn ensure(
        &mut self,
        client: &mut FuseClient,
        node: u64,
        index: u64,
        write: bool,
    ) -> Result<usize, DaxError> {
        self.clock += 1;
        if let Some(&slot) = self.by_file.get(&(node, index)) {
            let s = self.slots[slot].as_mut().expect("mapped slot");
            s.last_use = self.clock;
            if write && !s.writable {
                // The pfn_mkwrite upgrade: same window offset, WRITE.
                self.setups += 1;
                client.setupmapping(node, setup_arg(index, slot, true))?;
                if let Some(s) = self.slots[slot].as_mut() {
                    s.writable = true;
                }
            }
            return Ok(slot);
        }
        let slot = match self.slots.iter().position(Option::is_none) {
            Some(free) => free,
            None => self.reclaim(client)?,
        };
        self.setups += 1;
        client.setupmapping(node, setup_arg(index, slot, write))?;
        self.slots[slot] = Some(Slot {
            node,
            index,
            writable: write,
            last_use: self.clock,
        });
        self.by_file.insert((node, index), slot);
        Ok(slot)
    }

    /// Frees the least recently used range (REMOVEMAPPING).
    fn reclaim(&mut self, client: &mut FuseClient) -> Result<usize, DaxError> {
        let (slot, s) = self
            .slots
            .iter()
            .enumerate()
            .filter_map(|(i, s)| s.map(|s| (i, s)))
            .min_by_key(|(_, s)| s.last_use)
            .ok_or(DaxError::WindowTooSmall)?;
        client.removemapping(s.node, &[(slot as u64 * RANGE_SIZE, RANGE_SIZE)])?;
        self.reclaims += 1;
        self.slots[slot] = None;
        self.by_file.remove(&(s.node, s.index));
        Ok(slot)
    }

    /// Reads `buf.len()` bytes of `node` at `offset` through the window, as a guest's mmap
    /// load or DAX read does. The whole span must lie before EOF.
    pub fn read(
        &mut self,
        client: &mut FuseClient,
        node: u64,
        offset: u64,
        buf: &mut [u8],
    ) -> Result<(), DaxError> {
        let size = Self::size(client, node)?;
        let end = offset.saturating_add(buf.len() as u64);
        if end > size {
            return Err(DaxError::PastEof { offset, size });
        }
        for (index, in_range, span) in pieces(offset, buf.len()) {
            let slot = self.ensure(client, node, index, false)?;
            self.window()
                .read_at(slot * RANGE_SIZE as usize + in_range, &mut buf[span])?;
        }
        Ok(())
    }

    /// Maps the ranges covering `[offset, offset+len)` for reading and returns nothing; for
    /// page-state checks of what a guest read would map.
    pub fn map_for_read(
        &mut self,
        client: &mut FuseClient,
        node: u64,
        offset: u64,
        len: u64,
    ) -> Result<(), DaxError> {
        let size = Self::size(client, node)?;
        if offset >= size {
            return Err(DaxError::PastEof { offset, size });
        }
        let end = offset.saturating_add(len).min(size);
        let mut idx = offset / RANGE_SIZE;
        while idx * RANGE_SIZE < end {
            self.ensure(client, node, idx, false)?;
            idx += 1;
        }
        Ok(())
    }

    /// Writes `data` at `offset` of `node` (open handle `fh` for FUSE_WRITE): through the
    /// window when it stays inside the file (upgrading read-only ranges), as FUSE_WRITE
    /// when it extends the file.
    pub fn write(
        &mut self,
        client: &mut FuseClient,
        node: u64,
        fh: u64,
        offset: u64,
        data: &[u8],
    ) -> Result<(), DaxError> {
        let size = Self::size(client, node)?;
        let end = offset.saturating_add(data.len() as u64);
        if end > size {
            let mut done = 0;
            while done < data.len() {
                let n = (data.len() - done).min(128 << 10);
                let w = client.write(node, fh, offset + done as u64, &data[done..done + n])?;
                if w == 0 {
                    return Err(DaxError::Fuse(FuseError::Errno(libc::EIO)));
                }
                done += w as usize;
            }
            return Ok(());
        }
        for (index, in_range, span) in pieces(offset, data.len()) {
            let slot = self.ensure(client, node, index, true)?;
            self.window()
                .write_at(slot * RANGE_SIZE as usize + in_range, &data[span])?;
        }
        Ok(())
    }

    /// Removes every range of `node` (inode eviction).
    pub fn evict(&mut self, client: &mut FuseClient, node: u64) -> Result<(), DaxError> {
        let mut ranges = Vec::new();
        for (i, s) in self.slots.iter_mut().enumerate() {
            if s.is_some_and(|s| s.node == node) {
                let s = s.take().expect("checked");
                self.by_file.remove(&(s.node, s.index));
                ranges.push((i as u64 * RANGE_SIZE, RANGE_SIZE));
            }
        }
        if !ranges.is_empty() {
            client.removemapping(node, &ranges)?;
        }
        Ok(())
    }

    /// Live ranges.
    pub fn ranges(&self) -> usize {
        self.by_file.len()
    }
}

fn setup_arg(index: u64, slot: usize, write: bool) -> FuseSetupmappingIn {
    FuseSetupmappingIn {
        fh: u64::MAX,
        foffset: index * RANGE_SIZE,
        len: RANGE_SIZE,
        flags: if write {
            FUSE_SETUPMAPPING_FLAG_READ | FUSE_SETUPMAPPING_FLAG_WRITE
        } else {
            FUSE_SETUPMAPPING_FLAG_READ
        },
        moffset: slot as u64 * RANGE_SIZE,
    }
}
