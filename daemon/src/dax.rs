//! The virtio-fs DAX window as the backend keeps it: FUSE_SETUPMAPPING/REMOVEMAPPING turned
//! into vhost-user SHMEM_MAP/SHMEM_UNMAP backend requests, and the bookkeeping that keeps
//! the window coherent with the files zerodax itself changes.
//!
//! Two records, both under one mutex:
//! - *ranges*: what the guest set up (SETUPMAPPING's moffset, len, node, foffset, and
//!   whether it asked for WRITE), indexed by window offset and by node;
//! - *regions*: what was actually sent to the frontend with SHMEM_MAP (window offset, len,
//!   writable). Every region lies inside one range. With `--dax-holes zero` a READ range has
//!   regions only over its data extents; its holes stay unmapped in the VMM's window, which
//!   reads as the zero page there.
//!
//! vhost-user rules the code follows: a SHMEM_MAP over a live region fails, and a
//! SHMEM_UNMAP covers whole regions. So new data is only ever mapped into free parts of a
//! range, and data a guest may be reading is never unmapped and remapped, except for the
//! part of a region cut by a truncate (the guest breaks its DAX layouts before truncating).
//!
//! The mutex is held across the backend requests (each waits for the frontend's ack). That
//! is safe because the frontend's side of the conversation never waits for a guest request:
//! the thread serving the backend channel answers on its own, and no vring lock is held by a
//! thread that gets here (docs/serve.md, *Queues and the thread model*).

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fmt;
use std::io;
use std::num::NonZeroU64;
use std::os::fd::{AsFd, BorrowedFd};
use std::sync::{Arc, Mutex, MutexGuard};

use rustix::fs::Advice;
use rustix::mm;

use protocol::abi::{
    FuseSetupmappingIn, FUSE_SETUPMAPPING_FLAG_READ, FUSE_SETUPMAPPING_FLAG_WRITE,
};

use crate::fs::FileSystem;

/// Granularity of window and file offsets (the guest page size; MAP_ALIGNMENT = 12).
pub const DAX_PAGE: u64 = 4096;
/// log2 of [`DAX_PAGE`], sent as `map_alignment` in FUSE_INIT.
pub const MAP_ALIGNMENT_LOG2: u16 = 12;

/// The frontend's side of the window: SHMEM_MAP and SHMEM_UNMAP of shared memory region 0.
/// Each call returns once the frontend acknowledged it.
pub trait ShmemChannel: Send + Sync {
    /// SHMEM_MAP: map `len` bytes of `fd` from `fd_offset` at `window_offset`, writable or
    /// read-only. An error is the frontend's refusal (or no answer in time).
    fn map(
        &self,
        window_offset: u64,
        len: u64,
        fd: BorrowedFd<'_>,
        fd_offset: u64,
        writable: bool,
    ) -> io::Result<()>;
    /// SHMEM_UNMAP: return `[window_offset, window_offset + len)`, which covers whole
    /// mappings, to the frontend's unmapped state.
    fn unmap(&self, window_offset: u64, len: u64) -> io::Result<()>;
}

/// `--dax-holes`: what a SETUPMAPPING maps of a file's holes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum DaxHoles {
    /// The whole range from the file (up to EOF), holes included, as virtiofsd's DAX did.
    /// Safe with any VMM that speaks SHMEM_MAP.
    #[default]
    Map,
    /// Only the data extents; holes stay unmapped, so a VMM whose unmapped window is
    /// anonymous private PROT_READ memory shows them as the zero page.
    Zero,
}

/// `--dax-inodes`: which inodes carry FUSE_ATTR_DAX (used by guests mounted without
/// `-o dax=always`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum DaxInodes {
    /// Every regular file.
    #[default]
    All,
    /// None (a guest then uses DAX only with `-o dax=always`).
    None,
}

/// How the window is set up.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DaxConfig {
    /// Bytes of the window (shared memory region 0) the operator asked for; the window
    /// offered to the VMM may be smaller ([`Dax::window_len`]).
    pub window_len: u64,
    /// `--dax-holes`: whether holes are mapped from the file or left unmapped.
    pub holes: DaxHoles,
    /// `--dax-inodes`: which files carry FUSE_ATTR_DAX.
    pub inodes: DaxInodes,
    /// `--dax-slots`: how many SHMEM_MAP regions may be live at once.
    pub slots: u32,
    /// `--dax-ack-timeout`: how long a SHMEM_MAP/SHMEM_UNMAP may wait for the VMM's ack.
    pub ack_timeout: std::time::Duration,
}

/// Default of `--dax-ack-timeout`.
pub const DEFAULT_ACK_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

/// Default of `--dax-slots`. QEMU 11.1 turns every SHMEM_MAP region into a memory slot of
/// every vhost-user device and aborts the VM past 512, guest RAM included: half of them
/// leaves room for RAM and for a second device like this one.
pub const DEFAULT_SLOTS: u32 = 256;

/// Size of the guest's mapping unit (fs/fuse/dax.c FUSE_DAX_SZ): every SETUPMAPPING names
/// a file offset aligned to it, so one range is one aligned 2 MiB block of the file.
pub const RANGE: u64 = 2 << 20;

impl DaxConfig {
    /// The most regions of the file itself one range can hold. `map` mode maps a range as
    /// one region. `zero` mode maps a READ range's data as one region (first data page to
    /// last), and a WRITE adds the holes before and after it, as two more regions, so that
    /// no region is ever unmapped while the guest may be reading it.
    fn file_regions_per_range(&self, read_only: bool) -> u64 {
        match self.holes {
            DaxHoles::Map => 1,
            DaxHoles::Zero if read_only => 1,
            DaxHoles::Zero => 3,
        }
    }

    /// The most regions one range can hold: those of the file, and one for the file's last
    /// page when it is partial ([`Tail`]).
    pub fn regions_per_range(&self, read_only: bool) -> u64 {
        self.file_regions_per_range(read_only) + 1
    }

    /// The window offered to the VMM: what was asked for, cut to whole ranges that
    /// `slots` can map all at once, and to a power of two. A guest may fill every range
    /// before it reclaims any, so a window larger than this could drive the VMM past its
    /// slots; a smaller one only makes the guest reclaim sooner. QEMU exposes the window as
    /// a PCI BAR, which must be a power of two (it aborts otherwise).
    pub fn offered_window(&self, read_only: bool) -> u64 {
        let ranges = u64::from(self.slots) / self.regions_per_range(read_only);
        let len = self.window_len.min(ranges * RANGE);
        if len == 0 {
            0
        } else {
            1 << len.ilog2()
        }
    }
}

#[derive(Debug, Clone, Copy)]
struct Region {
    len: u64,
    writable: bool,
}

/// The last page of a file whose size is not a multiple of the page size, as the VMM sees it
/// through one range: a one-page memfd, kept in step with the file.
///
/// Why: a VMM may refuse to map a file past its size (QEMU 11.1 maps each SHMEM_MAP with
/// memory_region_init_ram_from_fd, which checks offset + len against the file's size), and a
/// page-granular mapping of a file's last partial page always reaches past it. So that page
/// is copied into a memfd, mapped in its place. The guest's stores into it (through a WRITE
/// range) reach the file when zerodax *settles* the tail: before it serves any request that
/// reads or changes that file, and before the range is removed. Only the bytes the guest
/// changed since the last sync are written back, so concurrent changes of other bytes of the
/// page are kept; bytes past EOF are never written (as any filesystem drops them).
struct Tail {
    node: u64,
    file_id: FileId,
    /// The file, to write the guest's stores back to (read-write on a writable export).
    file: std::os::fd::OwnedFd,
    memfd: std::os::fd::OwnedFd,
    /// File offset of the page.
    foffset: u64,
    /// Bytes of file data in the page (1..DAX_PAGE).
    len: usize,
    /// The page as last synced with the file: what the guest has not changed.
    base: Vec<u8>,
}

impl Tail {
    fn new(
        (node, file_id): (u64, FileId),
        file: BorrowedFd<'_>,
        foffset: u64,
        len: usize,
    ) -> io::Result<Self> {
        let memfd = rustix::fs::memfd_create("zerodax-tail", rustix::fs::MemfdFlags::CLOEXEC)?;
        rustix::fs::ftruncate(&memfd, DAX_PAGE)?;
        let mut t = Tail {
            node,
            file_id,
            file: file.try_clone_to_owned()?,
            memfd,
            foffset,
            len,
            base: vec![0; DAX_PAGE as usize],
        };
        t.refresh(len)?;
        Ok(t)
    }

    /// Writes back what the guest stored into the page since the last sync.
    fn settle(&mut self) -> io::Result<()> {
        let mut now = vec![0u8; DAX_PAGE as usize];
        read_full(self.memfd.as_fd(), &mut now, 0)?;
        let mut i = 0;
        while i < self.len {
            if now[i] == self.base[i] {
                i += 1;
                continue;
            }
            let mut j = i;
            while j < self.len && now[j] != self.base[j] {
                j += 1;
            }
            write_full(self.file.as_fd(), &now[i..j], self.foffset + i as u64)?;
            i = j;
        }
        self.base = now;
        Ok(())
    }

    /// Loads the page from the file, now holding `len` bytes of data (zeros past EOF).
    fn refresh(&mut self, len: usize) -> io::Result<()> {
        let mut page = vec![0u8; DAX_PAGE as usize];
        read_full(self.file.as_fd(), &mut page[..len], self.foffset)?;
        write_full(self.memfd.as_fd(), &page, 0)?;
        self.len = len;
        self.base = page;
        Ok(())
    }
}

fn read_full(fd: BorrowedFd<'_>, mut buf: &mut [u8], mut off: u64) -> io::Result<()> {
    while !buf.is_empty() {
        match rustix::io::pread(fd, &mut *buf, off)? {
            // The file got shorter: what is past its end reads as zeros.
            0 => {
                buf.fill(0);
                return Ok(());
            }
            n => {
                buf = &mut buf[n..];
                off += n as u64;
            }
        }
    }
    Ok(())
}

fn write_full(fd: BorrowedFd<'_>, mut buf: &[u8], mut off: u64) -> io::Result<()> {
    while !buf.is_empty() {
        let n = rustix::io::pwrite(fd, buf, off)?;
        buf = &buf[n..];
        off += n as u64;
    }
    Ok(())
}

/// A file as the host knows it (st_dev, st_ino): one file may be reached through several
/// node ids (a bind mount inside the share), and coherence is per file.
type FileId = (u64, u64);

#[derive(Debug, Clone, Copy)]
struct LiveRange {
    node: u64,
    file_id: FileId,
    foffset: u64,
    len: u64,
    /// The guest asked for WRITE: the whole range (to EOF) is mapped, holes included.
    write: bool,
}

#[derive(Default)]
struct State {
    regions: BTreeMap<u64, Region>,
    /// The regions that are a file's last partial page, by window offset.
    tails: BTreeMap<u64, Tail>,
    ranges: BTreeMap<u64, LiveRange>,
    /// Window offsets of the live ranges of each file.
    by_file: HashMap<FileId, BTreeSet<u64>>,
    /// The pages of each region, kept resident while it is mapped ([`Pin`]).
    pins: BTreeMap<u64, Pin>,
    stats: DaxStats,
}

/// The pages of a mapped region, locked in the host page cache while the VMM maps them.
///
/// The preload only helps while the pages stay: the host may evict clean page cache at any
/// time (DAMON's proactive reclaim does, with no memory pressure), and the VMM's next fault
/// on an evicted page then reads the 2 MiB around it through its MADV_HUGEPAGE mapping. So
/// zerodax maps each region itself and mlocks it: at most the window's size of locked
/// memory, released at SHMEM_UNMAP. Best effort: a region that cannot be pinned is still
/// served.
struct Pin {
    addr: usize,
    len: usize,
}

impl Pin {
    fn new(fd: BorrowedFd<'_>, foffset: u64, len: u64) -> io::Result<Pin> {
        let len = usize::try_from(len).map_err(|_| io::Error::from_raw_os_error(libc::EINVAL))?;
        // SAFETY: a fresh read-only shared mapping of a descriptor we hold, at a page-aligned
        // offset, never dereferenced by Rust code; unmapped in Drop.
        let addr = unsafe {
            mm::mmap(
                std::ptr::null_mut(),
                len,
                mm::ProtFlags::READ,
                mm::MapFlags::SHARED,
                fd,
                foffset,
            )?
        };
        let pin = Pin {
            addr: addr as usize,
            len,
        };
        // SAFETY: the mapping made above, of `len` bytes; mlock faults the pages in (read)
        // and keeps them resident.
        unsafe { mm::mlock(addr, len)? };
        Ok(pin)
    }
}

impl Drop for Pin {
    fn drop(&mut self) {
        // SAFETY: exactly the mapping made in `Pin::new`, unmapped once (munmap also
        // unlocks it).
        let _ = unsafe { mm::munmap(self.addr as *mut std::ffi::c_void, self.len) };
    }
}

impl State {
    /// SHMEM_MAP of `[start, end)` from `fd` at `foffset`, recorded once the VMM acked it.
    ///
    /// First the pages are read into the host page cache as small folios (FADV_WILLNEED
    /// reads exactly the range, order-0) and pinned there ([`Pin`]): the VMM may madvise
    /// its mapping MADV_HUGEPAGE (QEMU does), and a fault on an uncached page of such a
    /// mapping reads a 2 MiB folio around it whatever the file's readahead advice, so holes
    /// would fill the page cache and a 4 KiB store into a hole would dirty, and allocate,
    /// 2 MiB of the file.
    fn map(
        &mut self,
        channel: &dyn ShmemChannel,
        (start, end): (u64, u64),
        fd: BorrowedFd<'_>,
        foffset: u64,
        writable: bool,
    ) -> Result<(), i32> {
        let len = end - start;
        let _ = rustix::fs::fadvise(fd, foffset, NonZeroU64::new(len), Advice::WillNeed);
        let pin = Pin::new(fd, foffset, len)
            .map_err(|e| tracing::debug!(start, len, "region not pinned: {e}"))
            .ok();
        let bucket = (self.regions.len() / LATENCY_BUCKET).min(LATENCY_BUCKETS - 1);
        let t0 = std::time::Instant::now();
        channel
            .map(start, len, fd, foffset, writable)
            .map_err(|e| {
                tracing::warn!("SHMEM_MAP {start:#x}+{len:#x}: {e}");
                libc::EIO
            })?;
        let b = &mut self.stats.map_latency[bucket];
        b.0 += 1;
        b.1 += u64::try_from(t0.elapsed().as_nanos()).unwrap_or(u64::MAX);
        tracing::debug!(start, len, foffset, writable, "SHMEM_MAP");
        self.regions.insert(start, Region { len, writable });
        if let Some(pin) = pin {
            self.pins.insert(start, pin);
        }
        self.stats.shmem_maps += 1;
        self.stats.peak_regions = self.stats.peak_regions.max(self.regions.len() as u64);
        Ok(())
    }

    /// SHMEM_UNMAP of the region at `start`, forgotten once the VMM acked it. A tail's
    /// stores are written back first.
    fn unmap(&mut self, channel: &dyn ShmemChannel, start: u64) -> Result<(), i32> {
        let Some(r) = self.regions.get(&start).copied() else {
            return Ok(());
        };
        if let Some(t) = self.tails.get_mut(&start) {
            if let Err(e) = t.settle() {
                tracing::warn!(node = t.node, "DAX tail page write-back: {e}");
            }
        }
        channel.unmap(start, r.len).map_err(|e| {
            tracing::warn!("SHMEM_UNMAP {start:#x}+{:#x}: {e}", r.len);
            libc::EIO
        })?;
        tracing::debug!(start, len = r.len, "SHMEM_UNMAP");
        self.regions.remove(&start);
        self.tails.remove(&start);
        self.pins.remove(&start);
        self.stats.shmem_unmaps += 1;
        Ok(())
    }

    /// The regions lying in `[start, end)`, as (start, end).
    fn regions_in(&self, start: u64, end: u64) -> Vec<(u64, u64)> {
        self.regions
            .range(start..end)
            .map(|(&o, r)| (o, o + r.len))
            .collect()
    }
}

/// Window-level view for tests and logs.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DaxCounts {
    /// Live ranges (SETUPMAPPINGs not yet removed).
    pub ranges: usize,
    /// Live regions (SHMEM_MAPs not yet unmapped).
    pub regions: usize,
    /// Bytes mapped by the live regions.
    pub mapped_bytes: u64,
}

/// What the window did since the daemon started, for the log line at exit and for tests.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct DaxStats {
    /// FUSE_SETUPMAPPING requests served.
    pub setups: u64,
    /// FUSE_REMOVEMAPPING requests served.
    pub removes: u64,
    /// SHMEM_MAP requests sent to the frontend.
    pub shmem_maps: u64,
    /// SHMEM_UNMAP requests sent to the frontend.
    pub shmem_unmaps: u64,
    /// Regions remapped together with a neighbour because their range was at its cap.
    pub merges: u64,
    /// The most regions live at once (never above `--dax-slots`).
    pub peak_regions: u64,
    /// SHMEM_MAP round trips (request to the VMM's ack), by the number of regions live
    /// when it was sent, in buckets of [`LATENCY_BUCKET`]: (count, total nanoseconds).
    pub map_latency: [(u64, u64); LATENCY_BUCKETS],
}

/// Width of a [`DaxStats::map_latency`] bucket, in live regions.
pub const LATENCY_BUCKET: usize = 64;
const LATENCY_BUCKETS: usize = 8;

impl fmt::Display for DaxStats {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "setupmapping={} removemapping={} shmem_map={} shmem_unmap={} merges={} peak_regions={}",
            self.setups, self.removes, self.shmem_maps, self.shmem_unmaps, self.merges,
            self.peak_regions
        )?;
        // The VMM's cost of a mapping as the live mappings grow (QEMU rebuilds its memory
        // map and every vhost-user device's memory table on each one).
        for (i, &(n, ns)) in self.map_latency.iter().enumerate() {
            if let Some(mean) = ns.checked_div(n) {
                let lo = i * LATENCY_BUCKET;
                let hi = if i + 1 == LATENCY_BUCKETS {
                    "".to_string()
                } else {
                    format!("{}", lo + LATENCY_BUCKET - 1)
                };
                write!(f, " shmem_map[{lo}-{hi} live]={n}x{}us", mean / 1000)?;
            }
        }
        Ok(())
    }
}

fn round_up(x: u64) -> u64 {
    x.div_ceil(DAX_PAGE) * DAX_PAGE
}

fn aligned(x: u64) -> bool {
    x % DAX_PAGE == 0
}

/// The DAX window of one device.
pub struct Dax {
    cfg: DaxConfig,
    /// The window offered to the VMM ([`DaxConfig::offered_window`]).
    window_len: u64,
    read_only: bool,
    channel: Mutex<Option<Arc<dyn ShmemChannel>>>,
    state: Mutex<State>,
    /// A tail has existed since the frontend connected: requests then settle tails.
    tails_seen: std::sync::atomic::AtomicBool,
    /// The files with live ranges, readable without `state`: requests on other files
    /// never wait for the state lock, which is held across SHMEM round trips.
    live_files: Mutex<std::collections::HashSet<FileId>>,
}

impl fmt::Debug for Dax {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Dax")
            .field("cfg", &self.cfg)
            .field("active", &self.active())
            .finish_non_exhaustive()
    }
}

fn errno(e: &io::Error) -> i32 {
    match e.raw_os_error() {
        Some(n) if (1..=511).contains(&n) => n,
        _ => libc::EIO,
    }
}

impl Dax {
    /// The window of `cfg` on a share that is read-only or not (which sets the regions a
    /// range may need, and so the window offered); no range is served before
    /// [`Dax::set_channel`].
    pub fn new(cfg: DaxConfig, read_only: bool) -> Self {
        let window_len = cfg.offered_window(read_only);
        if window_len < cfg.window_len {
            tracing::warn!(
                "DAX window cut from {} MiB to {} MiB (a power of two; --dax-slots {} maps at \
                 most {} ranges of 2 MiB with {} region(s) each)",
                cfg.window_len >> 20,
                window_len >> 20,
                cfg.slots,
                u64::from(cfg.slots) / cfg.regions_per_range(read_only),
                cfg.regions_per_range(read_only)
            );
        }
        Self {
            cfg,
            window_len,
            read_only,
            channel: Mutex::new(None),
            state: Mutex::new(State::default()),
            tails_seen: std::sync::atomic::AtomicBool::new(false),
            live_files: Mutex::new(std::collections::HashSet::new()),
        }
    }

    /// The configuration the window was made with.
    pub fn config(&self) -> &DaxConfig {
        &self.cfg
    }

    /// Bytes of the window offered to the VMM (GET_SHMEM_CONFIG).
    pub fn window_len(&self) -> u64 {
        self.window_len
    }

    /// The counters since the daemon started (kept across frontends).
    pub fn stats(&self) -> DaxStats {
        self.lock().stats
    }

    /// The frontend set up the backend channel (SET_BACKEND_REQ_FD after SHMEM was
    /// negotiated): from now on SETUPMAPPING is served.
    pub fn set_channel(&self, channel: Arc<dyn ShmemChannel>) {
        *self.channel.lock().unwrap_or_else(|e| e.into_inner()) = Some(channel);
        // A new frontend starts with an empty window (what the guest stored into a tail
        // under the old one is lost with it: the old VMM is gone).
        let mut st = self.lock();
        let stats = st.stats;
        *st = State {
            stats,
            ..State::default()
        };
        self.publish(&st);
    }

    fn channel(&self) -> Option<Arc<dyn ShmemChannel>> {
        self.channel
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Whether the window is usable (a backend channel exists).
    pub fn active(&self) -> bool {
        self.channel().is_some()
    }

    /// Publishes which files have live ranges (after `st.by_file` changed).
    fn publish(&self, st: &State) {
        *self.live_files.lock().unwrap_or_else(|e| e.into_inner()) =
            st.by_file.keys().copied().collect();
    }

    /// The file `node` names, if it has live ranges; without the state lock.
    fn live_file(&self, fs: &FileSystem, node: u64) -> Option<FileId> {
        let file = fs.file_identity(node)?;
        self.live_files
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .contains(&file)
            .then_some(file)
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// What is live in the window now.
    pub fn counts(&self) -> DaxCounts {
        let st = self.lock();
        DaxCounts {
            ranges: st.ranges.len(),
            regions: st.regions.len(),
            mapped_bytes: st.regions.values().map(|r| r.len).sum(),
        }
    }

    /// FUSE_SETUPMAPPING for `node` (the fault path's fh = -1 is never looked at: the node
    /// id names the file). Errors are errnos for the reply.
    pub fn setup(&self, fs: &FileSystem, node: u64, s: &FuseSetupmappingIn) -> Result<(), i32> {
        let channel = self.channel().ok_or(libc::ENOSYS)?;
        let known = FUSE_SETUPMAPPING_FLAG_READ | FUSE_SETUPMAPPING_FLAG_WRITE;
        if s.flags & !known != 0 {
            return Err(libc::EINVAL);
        }
        let write = s.flags & FUSE_SETUPMAPPING_FLAG_WRITE != 0;
        if s.len == 0 || !aligned(s.foffset) || !aligned(s.moffset) || !aligned(s.len) {
            return Err(libc::EINVAL);
        }
        let end = s.moffset.checked_add(s.len).ok_or(libc::EINVAL)?;
        if end > self.window_len || s.foffset.checked_add(s.len).is_none() {
            return Err(libc::EINVAL);
        }
        if write && self.read_only {
            return Err(libc::EROFS);
        }
        tracing::debug!(
            node,
            foffset = s.foffset,
            len = s.len,
            moffset = s.moffset,
            write,
            "SETUPMAPPING"
        );
        let (fd, fd_writable) = self.open(fs, node, write)?;
        let file_id = fs.file_identity(node).ok_or(libc::ESTALE)?;
        let mut st = self.lock();
        st.stats.setups += 1;
        let overlapping: Vec<u64> = st
            .ranges
            .range(..end)
            .filter(|(&o, r)| o + r.len > s.moffset)
            .map(|(&o, _)| o)
            .collect();
        // What to restore if mapping fails: the guest's fault path returns a failed range to
        // its free list without a REMOVEMAPPING and may reuse the offset for another file,
        // which a record left behind would refuse (EBUSY) for good.
        let undo = match overlapping.as_slice() {
            [] => {
                st.ranges.insert(
                    s.moffset,
                    LiveRange {
                        node,
                        file_id,
                        foffset: s.foffset,
                        len: s.len,
                        write,
                    },
                );
                st.by_file.entry(file_id).or_default().insert(s.moffset);
                None
            }
            // The same range again: the WRITE upgrade of the guest's pfn_mkwrite path, or
            // a re-setup (which also picks up data written by others since).
            [o] if *o == s.moffset
                && st.ranges[o].node == node
                && st.ranges[o].foffset == s.foffset
                && st.ranges[o].len == s.len =>
            {
                let r = st.ranges.get_mut(o).ok_or(libc::EIO)?;
                let was_write = r.write;
                r.write |= write;
                Some(was_write)
            }
            _ => {
                tracing::debug!(
                    moffset = s.moffset,
                    len = s.len,
                    "SETUPMAPPING over a live mapping"
                );
                return Err(libc::EBUSY);
            }
        };
        let res = file_size(fd.as_fd()).and_then(|size| {
            self.sync_range(&mut st, &*channel, s.moffset, fd.as_fd(), fd_writable, size)
        });
        if res.is_err() {
            match undo {
                // A new range: unmap what it got and forget it (best effort: the error the
                // guest sees is the mapping's, and a region left mapped is still recorded).
                None => {
                    let _ = Self::drop_ranges(&mut st, &*channel, s.moffset, end);
                }
                Some(was_write) => {
                    if let Some(r) = st.ranges.get_mut(&s.moffset) {
                        r.write = was_write;
                    }
                }
            }
        }
        self.publish(&st);
        res
    }

    /// Opens `node` for the window: read-write when the export allows it (so data mapped at
    /// READ time needs no remap on the WRITE upgrade), read-only otherwise. A WRITE that
    /// cannot get a read-write descriptor fails (EACCES for permission problems).
    fn open(
        &self,
        fs: &FileSystem,
        node: u64,
        write: bool,
    ) -> Result<(std::os::fd::OwnedFd, bool), i32> {
        let (fd, writable) = self.open_inner(fs, node, write)?;
        // The VMM maps this open file description: random-access advice keeps a fault to
        // the page faulted (no read-around into the neighbouring holes' page cache).
        // It affects only this open file description.
        let _ = rustix::fs::fadvise(&fd, 0, None, Advice::Random);
        Ok((fd, writable))
    }

    fn open_inner(
        &self,
        fs: &FileSystem,
        node: u64,
        write: bool,
    ) -> Result<(std::os::fd::OwnedFd, bool), i32> {
        if !self.read_only {
            match fs.dax_open(node, true) {
                Ok(fd) => return Ok((fd, true)),
                Err(e) if write => {
                    return Err(match errno(&e) {
                        libc::EPERM | libc::ETXTBSY => libc::EACCES,
                        n => n,
                    })
                }
                Err(e) if matches!(errno(&e), libc::ESTALE | libc::EINVAL) => {
                    return Err(errno(&e))
                }
                Err(_) => {}
            }
        }
        fs.dax_open(node, false)
            .map(|fd| (fd, false))
            .map_err(|e| errno(&e))
    }

    /// Brings the regions of the range at `moffset` in line with the file, before the reply:
    /// 1. regions past EOF, and read-only regions of a range that needs writing, are
    ///    unmapped (what of them is still wanted is mapped again in step 3);
    /// 2. the wanted part is one interval: the whole range up to EOF in `map` mode or
    ///    after a WRITE, the first data page to the last in `zero` mode;
    /// 3. every uncovered piece of it is mapped into free space. A range at its region cap
    ///    gets the piece remapped together with its neighbouring regions instead, so the
    ///    live regions never exceed what `--dax-slots` was sized for. Only then is a region
    ///    the guest may be reading unmapped and mapped again (a file grown in small steps
    ///    under a live range).
    fn sync_range(
        &self,
        st: &mut State,
        channel: &dyn ShmemChannel,
        moffset: u64,
        fd: BorrowedFd<'_>,
        fd_writable: bool,
        size: u64,
    ) -> Result<(), i32> {
        let Some(range) = st.ranges.get(&moffset).copied() else {
            return Ok(());
        };
        let eof_page = round_up(size);
        let fend = eof_page.min(range.foffset + range.len).max(range.foffset);
        let wend = moffset + (fend - range.foffset);
        let rend = moffset + range.len;
        let foffset_of = |w: u64| range.foffset + (w - moffset);

        // A partial last page inside the range is a tail ([`Tail`]); the file's own
        // regions end before it.
        let tail = (size % DAX_PAGE != 0)
            .then_some(size / DAX_PAGE * DAX_PAGE)
            .filter(|&fo| fo >= range.foffset && fo < range.foffset + range.len)
            .map(|fo| (moffset + fo - range.foffset, (size % DAX_PAGE) as usize));
        let file_end = tail.map_or(wend, |(w, _)| w);

        // 1.
        let stale: Vec<u64> = st
            .regions
            .range(moffset..rend)
            .filter(|(&o, r)| {
                let moved = if st.tails.contains_key(&o) {
                    Some(o) != tail.map(|t| t.0)
                } else {
                    o + r.len > file_end
                };
                moved || (range.write && !r.writable)
            })
            .map(|(&o, _)| o)
            .collect();
        for o in stale {
            st.unmap(channel, o)?;
        }
        if range.write && !fd_writable {
            return Err(libc::EACCES);
        }
        if let Some((w, len)) = tail {
            if let Some(t) = st.tails.get_mut(&w) {
                // zerodax may just have changed the page: the guest's stores first, then
                // the file's bytes.
                t.settle().and_then(|()| t.refresh(len)).map_err(|e| {
                    tracing::warn!(node = range.node, "DAX tail page: {e}");
                    errno(&e)
                })?;
            }
        }

        // 2.
        let wanted = if self.cfg.holes == DaxHoles::Map || range.write {
            (moffset, wend)
        } else {
            let file = std::fs::File::from(fd.try_clone_to_owned().map_err(|e| errno(&e))?);
            let extents =
                dax_window::data_extents(&file, range.foffset, fend).map_err(|e| errno(&e))?;
            match (extents.first(), extents.last()) {
                (Some(first), Some(last)) => {
                    let s = (first.start / DAX_PAGE * DAX_PAGE).max(range.foffset);
                    let t = round_up(last.end).min(fend);
                    (moffset + s - range.foffset, moffset + t - range.foffset)
                }
                _ => (moffset, moffset),
            }
        };
        let tail_wanted = tail.filter(|&(w, _)| wanted.1 > w);
        let wanted = (wanted.0.min(file_end), wanted.1.min(file_end));

        // 3.
        let cap = self.cfg.file_regions_per_range(self.read_only);
        let file_regions = |st: &State| -> Vec<(u64, u64)> {
            st.regions_in(moffset, rend)
                .into_iter()
                .filter(|(o, _)| !st.tails.contains_key(o))
                .collect()
        };
        while let Some(gap) = first_gap(&file_regions(st), wanted) {
            let live = file_regions(st);
            if (live.len() as u64) < cap {
                st.map(channel, gap, fd, foffset_of(gap.0), fd_writable)?;
                continue;
            }
            let mut merged: Vec<(u64, u64)> = live
                .iter()
                .copied()
                .filter(|&(s, e)| e == gap.0 || s == gap.1)
                .collect();
            if merged.is_empty() {
                merged = live;
            }
            let start = merged.iter().map(|r| r.0).min().unwrap_or(gap.0).min(gap.0);
            let end = merged.iter().map(|r| r.1).max().unwrap_or(gap.1).max(gap.1);
            for (s, _) in merged {
                st.unmap(channel, s)?;
            }
            st.stats.merges += 1;
            st.map(channel, (start, end), fd, foffset_of(start), fd_writable)?;
        }

        // 4. The tail, from its memfd.
        if let Some((w, len)) = tail_wanted {
            if !st.regions.contains_key(&w) {
                let t = Tail::new((range.node, range.file_id), fd, foffset_of(w), len).map_err(
                    |e| {
                        tracing::warn!(node = range.node, "DAX tail page: {e}");
                        errno(&e)
                    },
                )?;
                st.map(channel, (w, w + DAX_PAGE), t.memfd.as_fd(), 0, fd_writable)?;
                st.tails.insert(w, t);
                self.tails_seen
                    .store(true, std::sync::atomic::Ordering::Release);
            }
        }
        Ok(())
    }

    /// FUSE_REMOVEMAPPING: every range must lie in the window and cover whole live ranges;
    /// each region inside is unmapped (SHMEM_UNMAP) and the ranges are dropped. Ranges with
    /// nothing mapped are fine.
    pub fn remove(&self, list: &[(u64, u64)]) -> Result<(), i32> {
        let channel = self.channel().ok_or(libc::ENOSYS)?;
        for &(moffset, len) in list {
            if !aligned(moffset) || !aligned(len) || len == 0 {
                return Err(libc::EINVAL);
            }
            let end = moffset.checked_add(len).ok_or(libc::EINVAL)?;
            if end > self.window_len {
                return Err(libc::EINVAL);
            }
        }
        let mut st = self.lock();
        st.stats.removes += 1;
        for &(moffset, len) in list {
            tracing::debug!(moffset, len, "REMOVEMAPPING");
            let end = moffset + len;
            let cut = st
                .ranges
                .range(..end)
                .any(|(&o, r)| o + r.len > moffset && (o < moffset || o + r.len > end));
            if cut {
                return Err(libc::EINVAL);
            }
        }
        let res = list
            .iter()
            .try_for_each(|&(o, len)| Self::drop_ranges(&mut st, &*channel, o, o + len));
        self.publish(&st);
        res
    }

    /// The guest's FUSE session ended (DESTROY: its unmount, which sends no REMOVEMAPPING):
    /// every region is unmapped and every range forgotten, so the VMM holds no mapping of
    /// a session that is gone (QEMU 11.1 crashes at the next device start if it still holds
    /// some when the guest resets: docs/dax.md).
    pub fn end_session(&self) {
        let Some(channel) = self.channel() else {
            return;
        };
        let mut st = self.lock();
        let live = (st.ranges.len(), st.regions.len());
        if let Err(e) = Self::drop_ranges(&mut st, &*channel, 0, u64::MAX) {
            // A VMM that refuses the unmap has no such mapping any more (it dropped its
            // mappings at the device reset that came before this INIT): forget the rest, or
            // the new session would find its window offsets taken (EBUSY).
            tracing::warn!(
                "DAX session end: errno {e}; forgetting {} regions the VMM no longer holds",
                st.regions.len()
            );
            let stats = st.stats;
            *st = State {
                stats,
                ..State::default()
            };
        }
        tracing::debug!(
            ranges = live.0,
            regions = live.1,
            "DAX session ended: window emptied"
        );
    }

    /// Unmaps every region in `[moffset, end)` (SHMEM_UNMAP) and forgets the ranges that
    /// start there. Stops at the first unmap the frontend refuses; what is left stays
    /// recorded.
    fn drop_ranges(
        st: &mut State,
        channel: &dyn ShmemChannel,
        moffset: u64,
        end: u64,
    ) -> Result<(), i32> {
        for (o, _) in st.regions_in(moffset, end) {
            st.unmap(channel, o)?;
        }
        let ranges: Vec<(u64, FileId)> = st
            .ranges
            .range(moffset..end)
            .map(|(&o, r)| (o, r.file_id))
            .collect();
        for (o, file_id) in ranges {
            st.ranges.remove(&o);
            if let Some(set) = st.by_file.get_mut(&file_id) {
                set.remove(&o);
                if set.is_empty() {
                    st.by_file.remove(&file_id);
                }
            }
        }
        Ok(())
    }

    /// Writes back the guest's stores into `node`'s tail pages ([`Tail`]); `None`: every
    /// node's. Called before zerodax serves a request that reads or changes the file, so
    /// that the file holds what the guest wrote through the window.
    pub fn settle(&self, fs: &FileSystem, node: Option<u64>) {
        if !self.tails_seen.load(std::sync::atomic::Ordering::Acquire) {
            return;
        }
        let file = match node {
            Some(n) => match self.live_file(fs, n) {
                Some(f) => Some(f),
                None => return,
            },
            None => None,
        };
        let mut st = self.lock();
        for t in st.tails.values_mut() {
            if file.is_none_or(|f| f == t.file_id) {
                if let Err(e) = t.settle() {
                    tracing::warn!(node = t.node, "DAX tail page write-back: {e}");
                }
            }
        }
    }

    /// Coherence: zerodax changed `node`'s data or size (WRITE, COPY_FILE_RANGE, FALLOCATE,
    /// SETATTR size, OPEN/CREATE with O_TRUNC). Its live ranges get the new data mapped and
    /// anything past the new EOF unmapped, before the request is answered. Failures are
    /// logged; the request's own result stands.
    pub fn file_changed(&self, fs: &FileSystem, node: u64) {
        self.resync(fs, node, u64::MAX);
    }

    /// Coherence before zerodax makes `node` shorter than `new_size` bytes (a truncating
    /// SETATTR, O_TRUNC): what its live ranges map past `new_size` is unmapped first, so
    /// the VMM never holds a mapping past EOF, where an access is SIGBUS for the VMM.
    pub fn will_shrink(&self, fs: &FileSystem, node: u64, new_size: u64) {
        self.resync(fs, node, new_size);
    }

    /// Brings every live range of the file `node` names in line, through whichever node
    /// id each range was set up with (one file, several node ids: a bind mount).
    fn resync(&self, fs: &FileSystem, node: u64, size_cap: u64) {
        let Some(channel) = self.channel() else {
            return;
        };
        let Some(file_id) = self.live_file(fs, node) else {
            return;
        };
        let mut st = self.lock();
        let Some(ranges) = st.by_file.get(&file_id).cloned() else {
            return;
        };
        let mut fds: HashMap<u64, (std::os::fd::OwnedFd, bool)> = HashMap::new();
        for moffset in ranges {
            let Some(owner) = st.ranges.get(&moffset).map(|r| r.node) else {
                continue;
            };
            if let std::collections::hash_map::Entry::Vacant(v) = fds.entry(owner) {
                match self.open(fs, owner, false) {
                    Ok(x) => v.insert(x),
                    Err(e) => {
                        tracing::warn!(node = owner, "DAX coherence: cannot open node: errno {e}");
                        continue;
                    }
                };
            }
            let (fd, fd_writable) = &fds[&owner];
            let res = file_size(fd.as_fd()).and_then(|size| {
                let size = size.min(size_cap);
                self.sync_range(&mut st, &*channel, moffset, fd.as_fd(), *fd_writable, size)
            });
            if let Err(e) = res {
                tracing::warn!(node = owner, moffset, "DAX coherence: errno {e}");
            }
        }
    }
}

/// The first part of `wanted` that no interval of `taken` (sorted, disjoint) covers.
fn first_gap(taken: &[(u64, u64)], (start, end): (u64, u64)) -> Option<(u64, u64)> {
    let mut pos = start;
    for &(s, e) in taken {
        if e <= pos {
            continue;
        }
        if s > pos {
            break;
        }
        pos = e;
    }
    if pos >= end {
        return None;
    }
    let next = taken.iter().map(|r| r.0).find(|&s| s > pos).unwrap_or(end);
    Some((pos, next.min(end)))
}

fn file_size(fd: BorrowedFd<'_>) -> Result<u64, i32> {
    let f = std::fs::File::from(fd.try_clone_to_owned().map_err(|e| errno(&e))?);
    f.metadata().map(|m| m.len()).map_err(|e| errno(&e))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fs::{Config, Context};
    use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

    /// The VMM's side, answering SHMEM_MAP with a refusal while `refuse` is set.
    #[derive(Default)]
    struct Frontend {
        refuse: AtomicBool,
        mapped: AtomicUsize,
    }

    impl ShmemChannel for Frontend {
        fn map(&self, _: u64, _: u64, _: BorrowedFd<'_>, _: u64, _: bool) -> io::Result<()> {
            if self.refuse.load(Ordering::SeqCst) {
                return Err(io::Error::from_raw_os_error(libc::ENOMEM));
            }
            self.mapped.fetch_add(1, Ordering::SeqCst);
            Ok(())
        }
        fn unmap(&self, _: u64, _: u64) -> io::Result<()> {
            Ok(())
        }
    }

    /// A scratch directory holding one file `f`, served by a `FileSystem`; removed on drop.
    struct OneFile {
        dir: std::path::PathBuf,
        fs: FileSystem,
        node: u64,
    }

    impl OneFile {
        fn new(tag: &str, contents: &[u8]) -> Self {
            let dir =
                std::env::temp_dir().join(format!("zerodax-dax-{tag}-{}", std::process::id()));
            std::fs::create_dir_all(&dir).unwrap();
            std::fs::write(dir.join("f"), contents).unwrap();
            let fs = FileSystem::new(&dir, Config::default()).unwrap();
            let node = fs.lookup(&Context::default(), 1, c"f").unwrap().node;
            OneFile { dir, fs, node }
        }

        fn path(&self) -> std::path::PathBuf {
            self.dir.join("f")
        }
    }

    impl Drop for OneFile {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }

    /// A 4 MiB window in `holes` mode whose VMM side is `vmm`.
    fn window(holes: DaxHoles, vmm: Arc<dyn ShmemChannel>) -> Dax {
        let dax = Dax::new(
            DaxConfig {
                window_len: 4 << 20,
                holes,
                inodes: DaxInodes::All,
                slots: DEFAULT_SLOTS,
                ack_timeout: DEFAULT_ACK_TIMEOUT,
            },
            false,
        );
        dax.set_channel(vmm);
        dax
    }

    /// SETUPMAPPING of file range 0 at window offset 0, as the guest's fault path sends it.
    fn first_range(flags: u64) -> FuseSetupmappingIn {
        FuseSetupmappingIn {
            fh: u64::MAX,
            foffset: 0,
            len: RANGE,
            flags,
            moffset: 0,
        }
    }

    #[test]
    fn a_failed_setup_leaves_the_window_offset_free() {
        let f = OneFile::new("unit", &[7u8; 64 * 1024]);
        let (fs, node) = (&f.fs, f.node);
        let frontend = Arc::new(Frontend::default());
        let dax = window(DaxHoles::Map, frontend.clone());
        let setup = first_range(FUSE_SETUPMAPPING_FLAG_READ);

        frontend.refuse.store(true, Ordering::SeqCst);
        assert_eq!(dax.setup(fs, node, &setup), Err(libc::EIO));
        assert_eq!(dax.counts(), DaxCounts::default(), "nothing stays recorded");

        // The guest reuses the offset (its fault path frees a failed range without a
        // REMOVEMAPPING): it must not get EBUSY.
        frontend.refuse.store(false, Ordering::SeqCst);
        assert_eq!(dax.setup(fs, node, &setup), Ok(()));
        assert_eq!(frontend.mapped.load(Ordering::SeqCst), 1);
        assert_eq!(dax.counts().ranges, 1);
    }

    /// A VMM as strict as vhost-user's rules, and QEMU 11.1's: a map over a live region,
    /// an unmap that is not exactly one region, and a map past the end of its file are
    /// refused. It keeps each region's descriptor, as a VMM's mapping does.
    #[derive(Default)]
    struct StrictVmm {
        live: Mutex<BTreeMap<u64, u64>>,
        fds: Mutex<BTreeMap<u64, (std::os::fd::OwnedFd, u64)>>,
    }

    impl ShmemChannel for StrictVmm {
        fn map(&self, o: u64, len: u64, fd: BorrowedFd<'_>, off: u64, _: bool) -> io::Result<()> {
            let mut live = self.live.lock().unwrap();
            if live.range(..o + len).any(|(&s, &l)| s + l > o) {
                return Err(io::Error::from_raw_os_error(libc::EEXIST));
            }
            if file_size(fd).unwrap() < off + len {
                return Err(io::Error::from_raw_os_error(libc::EFAULT));
            }
            live.insert(o, len);
            self.fds
                .lock()
                .unwrap()
                .insert(o, (fd.try_clone_to_owned()?, off));
            Ok(())
        }
        fn unmap(&self, o: u64, len: u64) -> io::Result<()> {
            self.fds.lock().unwrap().remove(&o);
            match self.live.lock().unwrap().remove(&o) {
                Some(l) if l == len => Ok(()),
                _ => Err(io::Error::from_raw_os_error(libc::EINVAL)),
            }
        }
    }

    impl StrictVmm {
        /// Live regions and the bytes they cover from window offset 0 on without a gap.
        fn shape(&self) -> (usize, u64) {
            let live = self.live.lock().unwrap();
            let mut end = 0;
            for (&s, &l) in live.iter() {
                if s != end {
                    break;
                }
                end = s + l;
            }
            (live.len(), end)
        }
    }

    #[test]
    fn the_offered_window_fits_the_slots_and_is_a_power_of_two() {
        let cfg = |holes, slots, window_len| DaxConfig {
            window_len,
            holes,
            inodes: DaxInodes::All,
            slots,
            ack_timeout: DEFAULT_ACK_TIMEOUT,
        };
        // 256 slots: 128 ranges of one region and a tail (256 MiB), or 64 of three and a
        // tail (128 MiB).
        let window = |holes, slots, len, ro| cfg(holes, slots, len).offered_window(ro);
        assert_eq!(window(DaxHoles::Map, 256, 1 << 30, false), 256 << 20);
        assert_eq!(window(DaxHoles::Zero, 256, 1 << 30, false), 128 << 20);
        assert_eq!(window(DaxHoles::Zero, 256, 1 << 30, true), 256 << 20);
        // What was asked for, when the slots afford it; a power of two below it otherwise.
        assert_eq!(window(DaxHoles::Map, 256, 64 << 20, false), 64 << 20);
        assert_eq!(window(DaxHoles::Map, 4096, 6 << 20, false), 4 << 20);
        assert_eq!(window(DaxHoles::Zero, 4, 1 << 30, false), 2 << 20);
        assert_eq!(window(DaxHoles::Zero, 200, 1 << 30, false), 64 << 20);
    }

    /// A file whose size is not a multiple of the page size: its last page is mapped from a
    /// memfd (the VMM refuses a map past the file's end), the guest's stores into it reach
    /// the file when zerodax settles, bytes past EOF never do, and other bytes changed in
    /// the file meanwhile are kept.
    #[test]
    fn a_partial_last_page_is_a_tail_kept_in_step_with_the_file() {
        use std::os::unix::fs::FileExt;
        let f = OneFile::new("tail", &[1u8; 5000]);
        let (fs, node, path) = (&f.fs, f.node, f.path());
        for holes in [DaxHoles::Map, DaxHoles::Zero] {
            let vmm = Arc::new(StrictVmm::default());
            let dax = window(holes, vmm.clone());
            let setup = first_range(FUSE_SETUPMAPPING_FLAG_READ | FUSE_SETUPMAPPING_FLAG_WRITE);
            dax.setup(fs, node, &setup).unwrap();
            assert_eq!(
                vmm.shape(),
                (2, 8192),
                "{holes:?}: the file's page, then the tail"
            );
            let tail = {
                let fds = vmm.fds.lock().unwrap();
                let (fd, off) = &fds[&4096];
                assert_eq!(*off, 0);
                std::fs::File::from(fd.try_clone().unwrap())
            };
            let mut page = vec![0u8; 4096];
            tail.read_exact_at(&mut page, 0).unwrap();
            assert!(page[..904].iter().all(|&b| b == 1), "{holes:?}");
            assert!(
                page[904..].iter().all(|&b| b == 0),
                "{holes:?}: zeros past EOF"
            );

            // The guest stores into the tail, past EOF too; the host changes another byte.
            tail.write_all_at(b"guest", 100).unwrap();
            tail.write_all_at(b"past EOF", 2000).unwrap();
            let file = std::fs::OpenOptions::new().write(true).open(&path).unwrap();
            file.write_all_at(b"H", 4096 + 500).unwrap();
            dax.settle(fs, Some(node));
            let bytes = std::fs::read(&path).unwrap();
            assert_eq!(bytes.len(), 5000, "{holes:?}: the size is the file's");
            assert_eq!(&bytes[4196..4201], b"guest", "{holes:?}");
            assert_eq!(bytes[4596], b'H', "{holes:?}: the host's byte is kept");

            // zerodax grows the file past the page: the tail becomes the file's own page.
            file.set_len(10000).unwrap();
            dax.file_changed(fs, node);
            let (regions, covered) = vmm.shape();
            assert_eq!(covered, 12288, "{holes:?}");
            assert!(regions <= 4, "{holes:?}: {regions}");
            assert_eq!(dax.counts().regions, regions);
            dax.remove(&[(0, RANGE)]).unwrap();
            assert_eq!(vmm.shape(), (0, 0));
            std::fs::write(&path, vec![1u8; 5000]).unwrap();
        }
    }

    /// A file that grows a page at a time under a live range (a guest appending with
    /// FUSE_WRITE) keeps the range within its region cap and mapped without a gap.
    #[test]
    fn growth_under_a_live_range_stays_within_the_region_cap() {
        for (holes, cap) in [(DaxHoles::Map, 1), (DaxHoles::Zero, 3)] {
            let f = OneFile::new(&format!("grow-{holes:?}"), &[1u8; 4096]);
            let (fs, node, path) = (&f.fs, f.node, f.path());
            let vmm = Arc::new(StrictVmm::default());
            let dax = window(holes, vmm.clone());
            let setup = first_range;
            dax.setup(fs, node, &setup(FUSE_SETUPMAPPING_FLAG_READ))
                .unwrap();
            let file = std::fs::OpenOptions::new().write(true).open(&path).unwrap();
            for pages in 2..=64u64 {
                use std::os::unix::fs::FileExt;
                file.write_all_at(&[2u8; 4096], (pages - 1) * 4096).unwrap();
                dax.file_changed(fs, node);
                if pages == 32 {
                    // The guest's write fault upgrades the range halfway.
                    dax.setup(fs, node, &setup(FUSE_SETUPMAPPING_FLAG_WRITE))
                        .unwrap();
                }
                let (regions, covered) = vmm.shape();
                assert!(
                    regions <= cap,
                    "{holes:?}: {regions} regions at {pages} pages"
                );
                assert_eq!(covered, pages * 4096, "{holes:?}: mapped without a gap");
            }
            assert!(dax.stats().merges > 0, "{holes:?}");
            assert_eq!(dax.counts().regions, vmm.shape().0);
        }
    }
}
