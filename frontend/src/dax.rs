//! The guest half of the virtio-fs DAX window ([`DaxGuest`]): what Linux's fs/fuse/dax.c
//! does with the window the VMM set up ([`crate::shmem`]). Files are mapped in 2 MiB ranges
//! set up on first access (READ for a read, READ|WRITE for a write, fh = -1 as from the fault
//! path); the first write to a read-only range sends SETUPMAPPING again with WRITE at the same
//! window offset (the pfn_mkwrite upgrade); an access at or past EOF is refused (the guest
//! would get SIGBUS); a write that extends the file goes as FUSE_WRITE; when the window is
//! full the least recently used range is reclaimed with REMOVEMAPPING.

use std::collections::HashMap;
use std::fmt;
use std::ops::Range;
use std::sync::Arc;

use dax_window::Window;
use protocol::abi::{
    FuseSetupmappingIn, FUSE_SETUPMAPPING_FLAG_READ, FUSE_SETUPMAPPING_FLAG_WRITE,
};

use crate::fuse::{FuseClient, FuseError};
use crate::shmem::ShmemWindow;

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
