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
use std::os::fd::{AsFd, BorrowedFd};
use std::sync::{Arc, Mutex, MutexGuard};

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
    fn map(
        &self,
        window_offset: u64,
        len: u64,
        fd: BorrowedFd<'_>,
        fd_offset: u64,
        writable: bool,
    ) -> io::Result<()>;
    fn unmap(&self, window_offset: u64, len: u64) -> io::Result<()>;
}

/// `--dax-holes`: what a SETUPMAPPING maps of a file's holes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
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
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
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
    /// Bytes of the window (shared memory region 0).
    pub window_len: u64,
    pub holes: DaxHoles,
    pub inodes: DaxInodes,
}

#[derive(Debug, Clone, Copy)]
struct Region {
    len: u64,
    writable: bool,
}

#[derive(Debug, Clone, Copy)]
struct LiveRange {
    node: u64,
    foffset: u64,
    len: u64,
    /// The guest asked for WRITE: the whole range (to EOF) is mapped, holes included.
    write: bool,
}

#[derive(Default)]
struct State {
    regions: BTreeMap<u64, Region>,
    ranges: BTreeMap<u64, LiveRange>,
    by_node: HashMap<u64, BTreeSet<u64>>,
}

/// Window-level view for tests and logs.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DaxCounts {
    pub ranges: usize,
    pub regions: usize,
    pub mapped_bytes: u64,
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
    read_only: bool,
    channel: Mutex<Option<Arc<dyn ShmemChannel>>>,
    state: Mutex<State>,
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
    pub fn new(cfg: DaxConfig, read_only: bool) -> Self {
        Self {
            cfg,
            read_only,
            channel: Mutex::new(None),
            state: Mutex::new(State::default()),
        }
    }

    pub fn config(&self) -> &DaxConfig {
        &self.cfg
    }

    /// The frontend set up the backend channel (SET_BACKEND_REQ_FD after SHMEM was
    /// negotiated): from now on SETUPMAPPING is served.
    pub fn set_channel(&self, channel: Arc<dyn ShmemChannel>) {
        *self.channel.lock().unwrap_or_else(|e| e.into_inner()) = Some(channel);
        // A new frontend starts with an empty window.
        *self.lock() = State::default();
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

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

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
        if end > self.cfg.window_len || s.foffset.checked_add(s.len).is_none() {
            return Err(libc::EINVAL);
        }
        if write && self.read_only {
            return Err(libc::EROFS);
        }
        let (fd, fd_writable) = self.open(fs, node, write)?;
        let mut st = self.lock();
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
                        foffset: s.foffset,
                        len: s.len,
                        write,
                    },
                );
                st.by_node.entry(node).or_default().insert(s.moffset);
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
        // SAFETY: advice on a descriptor we own; it affects only this open file description.
        unsafe {
            libc::posix_fadvise(
                std::os::fd::AsRawFd::as_raw_fd(&fd),
                0,
                0,
                libc::POSIX_FADV_RANDOM,
            )
        };
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

    /// Brings the regions of the range at `moffset` in line with the file: regions past EOF
    /// unmapped (a region cut by EOF keeps its part before EOF), read-only regions of a
    /// range that needs writing replaced, then every wanted part not yet mapped mapped into
    /// the free space. Wanted: the whole range up to EOF in `map` mode or after a WRITE;
    /// only the data extents in `zero` mode.
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
        let need_writable = range.write;

        // 1. Regions that must go: past EOF, or read-only where writing is now wanted.
        let stale: Vec<(u64, Region)> = st
            .regions
            .range(moffset..rend)
            .filter(|(&o, r)| o + r.len > wend || (need_writable && !r.writable))
            .map(|(&o, &r)| (o, r))
            .collect();
        for (o, r) in stale {
            channel.unmap(o, r.len).map_err(|e| {
                tracing::warn!("SHMEM_UNMAP {o:#x}+{:#x}: {e}", r.len);
                libc::EIO
            })?;
            st.regions.remove(&o);
        }
        if need_writable && !fd_writable {
            return Err(libc::EACCES);
        }

        // 2. What should be mapped, as window intervals.
        let wanted: Vec<(u64, u64)> = if self.cfg.holes == DaxHoles::Map || range.write {
            vec![(moffset, wend)]
        } else {
            let mut v: Vec<(u64, u64)> = Vec::new();
            let extents = dax_window::data_extents(
                &std::fs::File::from(fd.try_clone_to_owned().map_err(|e| errno(&e))?),
                range.foffset,
                fend,
            )
            .map_err(|e| errno(&e))?;
            for e in extents {
                let s =
                    moffset + (e.start / DAX_PAGE * DAX_PAGE).max(range.foffset) - range.foffset;
                let t = moffset + round_up(e.end).min(fend) - range.foffset;
                match v.last_mut() {
                    Some(last) if last.1 >= s => last.1 = last.1.max(t),
                    _ if t > s => v.push((s, t)),
                    _ => {}
                }
            }
            v
        };

        // 3. Map the free parts of each wanted interval.
        for (ws, we) in wanted {
            let mut pos = ws;
            let taken: Vec<(u64, u64)> = st
                .regions
                .range(..we)
                .filter(|(&o, r)| o + r.len > ws)
                .map(|(&o, r)| (o, o + r.len))
                .collect();
            let mut gaps = Vec::new();
            for (a, b) in taken {
                if a > pos {
                    gaps.push((pos, a));
                }
                pos = pos.max(b);
            }
            if pos < we {
                gaps.push((pos, we));
            }
            for (a, b) in gaps {
                let foff = range.foffset + (a - moffset);
                channel.map(a, b - a, fd, foff, fd_writable).map_err(|e| {
                    tracing::warn!("SHMEM_MAP {a:#x}+{:#x}: {e}", b - a);
                    libc::EIO
                })?;
                st.regions.insert(
                    a,
                    Region {
                        len: b - a,
                        writable: fd_writable,
                    },
                );
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
            if end > self.cfg.window_len {
                return Err(libc::EINVAL);
            }
        }
        let mut st = self.lock();
        for &(moffset, len) in list {
            let end = moffset + len;
            let cut = st
                .ranges
                .range(..end)
                .any(|(&o, r)| o + r.len > moffset && (o < moffset || o + r.len > end));
            if cut {
                return Err(libc::EINVAL);
            }
        }
        for &(moffset, len) in list {
            Self::drop_ranges(&mut st, &*channel, moffset, moffset + len)?;
        }
        Ok(())
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
        let regions: Vec<(u64, u64)> = st
            .regions
            .range(moffset..end)
            .map(|(&o, r)| (o, r.len))
            .collect();
        for (o, l) in regions {
            channel.unmap(o, l).map_err(|e| {
                tracing::warn!("SHMEM_UNMAP {o:#x}+{l:#x}: {e}");
                libc::EIO
            })?;
            st.regions.remove(&o);
        }
        let ranges: Vec<(u64, u64)> = st
            .ranges
            .range(moffset..end)
            .map(|(&o, r)| (o, r.node))
            .collect();
        for (o, node) in ranges {
            st.ranges.remove(&o);
            if let Some(set) = st.by_node.get_mut(&node) {
                set.remove(&o);
                if set.is_empty() {
                    st.by_node.remove(&node);
                }
            }
        }
        Ok(())
    }

    /// Coherence: zerodax changed `node`'s data or size (WRITE, COPY_FILE_RANGE, FALLOCATE,
    /// SETATTR size). Its live ranges get the new data mapped and anything past the new EOF
    /// unmapped, before the request is answered. Failures are logged; the request's own
    /// result stands.
    pub fn file_changed(&self, fs: &FileSystem, node: u64) {
        let Some(channel) = self.channel() else {
            return;
        };
        let mut st = self.lock();
        let Some(ranges) = st.by_node.get(&node).cloned() else {
            return;
        };
        let (fd, fd_writable) = match self.open(fs, node, false) {
            Ok(x) => x,
            Err(e) => {
                tracing::warn!(node, "DAX coherence: cannot open node: errno {e}");
                return;
            }
        };
        let size = match file_size(fd.as_fd()) {
            Ok(s) => s,
            Err(e) => {
                tracing::warn!(node, "DAX coherence: fstat: errno {e}");
                return;
            }
        };
        for moffset in ranges {
            if let Err(e) =
                self.sync_range(&mut st, &*channel, moffset, fd.as_fd(), fd_writable, size)
            {
                tracing::warn!(node, moffset, "DAX coherence: errno {e}");
            }
        }
    }
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

    #[test]
    fn a_failed_setup_leaves_the_window_offset_free() {
        let dir = std::env::temp_dir().join(format!("zerodax-dax-unit-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("f"), vec![7u8; 64 * 1024]).unwrap();
        let fs = FileSystem::new(&dir, Config::default()).unwrap();
        let ctx = Context::default();
        let node = fs.lookup(&ctx, 1, c"f").unwrap().node;
        let dax = Dax::new(
            DaxConfig {
                window_len: 4 << 20,
                holes: DaxHoles::Map,
                inodes: DaxInodes::All,
            },
            false,
        );
        let frontend = Arc::new(Frontend::default());
        dax.set_channel(frontend.clone());
        let setup = FuseSetupmappingIn {
            fh: u64::MAX,
            foffset: 0,
            len: 2 << 20,
            flags: FUSE_SETUPMAPPING_FLAG_READ,
            moffset: 0,
        };

        frontend.refuse.store(true, Ordering::SeqCst);
        assert_eq!(dax.setup(&fs, node, &setup), Err(libc::EIO));
        assert_eq!(dax.counts(), DaxCounts::default(), "nothing stays recorded");

        // The guest reuses the offset (its fault path frees a failed range without a
        // REMOVEMAPPING): it must not get EBUSY.
        frontend.refuse.store(false, Ordering::SeqCst);
        assert_eq!(dax.setup(&fs, node, &setup), Ok(()));
        assert_eq!(frontend.mapped.load(Ordering::SeqCst), 1);
        assert_eq!(dax.counts().ranges, 1);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
