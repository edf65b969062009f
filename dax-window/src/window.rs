//! The window: a reserved range whose unmapped parts read as the zero page, file ranges
//! mapped into it, and the userfaultfd handler that upgrades hole pages on first write
//! (absent from a window made with [`Window::without_fault_handler`]).

use std::collections::BTreeMap;
use std::ffi::c_void;
use std::fs::File;
use std::io;
use std::os::fd::{AsRawFd, BorrowedFd, OwnedFd};
use std::os::unix::fs::FileExt;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread::JoinHandle;

use rustix::event::{eventfd, poll, EventfdFlags, PollFd, PollFlags};
use rustix::fs::{FallocateFlags, OFlags};
use rustix::io::Errno;
use rustix::mm::{self, Advice, MapFlags, MprotectFlags, ProtFlags};

use crate::extents::{data_extents, Extent};
use crate::pages::{page_states, PageStates, PAGE_SIZE};
use crate::uffd::Uffd;
use crate::{procfs, sys, volatile, Error, Result};

/// 2 MiB: the huge zero page, the largest page-cache folio, the window's alignment.
pub const HUGE_SIZE: usize = 2 << 20;

/// Allocation granule of a write upgrade.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Granule {
    /// 4 KiB while the VMA budget is comfortable, 2 MiB once the process uses more than
    /// half of its budget, `vm.max_map_count` less the headroom (each isolated 4 KiB
    /// upgrade costs up to two VMAs).
    Adaptive,
    /// Always 4 KiB.
    Page,
    /// Always 2 MiB (clipped to the hole and EOF).
    Huge,
}

/// Tunables of a window.
#[derive(Debug, Clone, Copy)]
pub struct WindowOptions {
    /// How much of a hole the first write to it allocates and maps.
    pub granule: Granule,
    /// VMAs kept free below `vm.max_map_count` for the handler's own splits; `None` picks
    /// max(256, max_map_count / 16).
    pub vma_headroom: Option<usize>,
}

impl Default for WindowOptions {
    fn default() -> Self {
        WindowOptions {
            granule: Granule::Adaptive,
            vma_headroom: None,
        }
    }
}

/// Counters kept by the fault handler.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct WindowStats {
    /// Write faults resolved by mapping file pages.
    pub upgrades: u64,
    /// Write faults whose upgrade failed (no space, mapping failed, past EOF). The page was
    /// handed to the kernel's own shared file mapping (the faulting store gets SIGBUS, or
    /// the kernel-mode writer EFAULT, from the filesystem's `page_mkwrite`; later reads see
    /// the hole, later writes allocate anew), or poisoned when even that mapping failed.
    pub failed: u64,
    /// Messages for pages already resolved, or outside any writable hole: only woken.
    pub stale: u64,
}

/// One live mapping of a file range in the window.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MappingInfo {
    /// Where the mapping starts in the window.
    pub window_offset: usize,
    /// Mapped length: the requested length clipped to EOF rounded up to a page.
    pub len: usize,
    /// The file offset mapped at `window_offset`.
    pub file_offset: u64,
    /// Whether the mapping is writable (its holes upgrade on the first write).
    pub writable: bool,
    /// Window-offset ranges mapped as file pages (data extents and upgraded granules).
    pub file_backed: Vec<(usize, usize)>,
    /// Window offsets of hole pages whose upgrade failed, now plain shared file pages over
    /// the (unallocated) hole: also listed in `file_backed`.
    pub failed_upgrades: Vec<usize>,
    /// Window offsets of pages poisoned because even that file mapping failed (SIGBUS on
    /// any access until the range is unmapped).
    pub poisoned: Vec<usize>,
}

struct Mapping {
    len: usize,
    file: Arc<File>,
    file_offset: u64,
    writable: bool,
    /// File-backed window-offset intervals, start -> end, disjoint and merged.
    backed: BTreeMap<usize, usize>,
    /// Hole pages handed to a plain file mapping after a failed upgrade.
    failed_upgrades: Vec<usize>,
    /// Pages poisoned because even that failed.
    poisoned: Vec<usize>,
}

impl Mapping {
    fn backed_contains(&self, off: usize) -> bool {
        self.backed
            .range(..=off)
            .next_back()
            .is_some_and(|(_, &e)| off < e)
    }

    /// The zero-reading interval around `off`, bounded by file-backed intervals.
    fn hole_around(&self, start: usize, off: usize) -> (usize, usize) {
        let lo = self
            .backed
            .range(..=off)
            .next_back()
            .map(|(_, &e)| e)
            .unwrap_or(start)
            .max(start);
        let hi = self
            .backed
            .range(off..)
            .next()
            .map(|(&s, _)| s)
            .unwrap_or(start + self.len)
            .min(start + self.len);
        (lo, hi)
    }

    fn insert_backed(&mut self, mut s: usize, mut e: usize) {
        if let Some((&ps, &pe)) = self.backed.range(..=s).next_back() {
            if pe >= s {
                s = ps;
                e = e.max(pe);
            }
        }
        let later: Vec<(usize, usize)> = self.backed.range(s..=e).map(|(&a, &b)| (a, b)).collect();
        for (a, b) in later {
            self.backed.remove(&a);
            e = e.max(b);
        }
        self.backed.insert(s, e);
    }
}

struct State {
    /// Window offset -> mapping.
    mappings: BTreeMap<usize, Mapping>,
}

impl State {
    /// Whether a mapping intersects `[start, end)`. Mappings never overlap, so only the
    /// last one starting before `end` can.
    fn overlaps(&self, start: usize, end: usize) -> bool {
        self.mappings
            .range(..end)
            .next_back()
            .is_some_and(|(&o, m)| o + m.len > start)
    }
}

struct Inner {
    base: usize,
    len: usize,
    /// `None` for a window without fault handler: nothing is ever registered.
    uffd: Option<Uffd>,
    state: Mutex<State>,
    granule: Granule,
    max_map_count: usize,
    headroom: usize,
    /// Process VMAs as last counted plus two for every upgrade since.
    vma_estimate: AtomicUsize,
    upgrades: AtomicU64,
    failed: AtomicU64,
    stale: AtomicU64,
}

/// A window of address space that reads as zeros, with file ranges mapped into it.
///
/// Unmapped ranges are anonymous private `PROT_READ` memory: reads map the (huge) zero
/// page, writes fault as on any read-only mapping (SIGSEGV, EFAULT for syscalls).
///
/// A window made with [`Window::new`] or [`Window::with_options`] owns a userfaultfd and a
/// fault-handler thread (`dax-window-uffd`) for the write upgrade of writable
/// [`Window::map_file`] holes. One made with [`Window::without_fault_handler`] has neither,
/// as a VMM's SHMEM_MAP target needs neither: [`Window::map_fd_raw`], [`Window::unmap`],
/// read-only [`Window::map_file`], the copies and page-state probing all work without them,
/// and a writable [`Window::map_file`] is refused with [`Error::NoFaultHandler`].
pub struct Window {
    inner: Arc<Inner>,
    /// The handler's thread and the eventfd that stops it; `None` without a handler.
    handler: Option<(OwnedFd, JoinHandle<()>)>,
}

fn round_up(x: u64, to: u64) -> u64 {
    x.div_ceil(to) * to
}

fn os_err(op: &'static str) -> impl FnOnce(Errno) -> Error {
    move |e| Error::Io {
        op,
        source: e.into(),
    }
}

fn io_err(op: &'static str) -> impl FnOnce(io::Error) -> Error {
    move |source| Error::Io { op, source }
}

/// Replaces `[addr, addr+len)` with fresh anonymous private read-only memory.
///
/// # Safety
/// The range must lie inside a window this process owns; whatever was mapped there goes.
unsafe fn map_zero_readonly(addr: usize, len: usize) -> Result<()> {
    // SAFETY: MAP_FIXED replaces exactly the caller's window range, which no Rust
    // reference points into (windows are only accessed through raw pointers).
    unsafe {
        mm::mmap_anonymous(
            addr as *mut c_void,
            len,
            ProtFlags::READ,
            MapFlags::PRIVATE | MapFlags::NORESERVE | MapFlags::FIXED,
        )
    }
    .map_err(os_err("mmap anonymous"))?;
    // SAFETY: advice on memory we just mapped; MADV_HUGEPAGE changes no contents.
    let _ = unsafe { mm::madvise(addr as *mut c_void, len, Advice::LinuxHugepage) };
    dont_fork(addr, len);
    Ok(())
}

/// How much of a mapping's data [`advise_file_pages`] reads ahead, per map call: enough for
/// the guest's 2 MiB DAX ranges and for files with a modest amount of data, bounded so that
/// mapping a file with a huge data set does not read it all at map time.
const PREFETCH_BUDGET: usize = 64 << 20;

/// Advice for file pages just mapped into the window at `[addr, addr+len)`.
///
/// No read-around on faults (MADV_RANDOM): with the disk's readahead window (128 KiB to a few
/// MiB) a fault on a data page would read the neighbouring holes into the page cache, which is
/// exactly the cost zero-page holes exist to avoid; fadvise(RANDOM) does not reach the mmap
/// fault path. But then every data page would be one synchronous 4 KiB read, so the range
/// itself, and nothing beyond it, is read ahead asynchronously (MADV_WILLNEED) while
/// `budget` lasts; past it, data pages fault in one by one.
fn advise_file_pages(addr: usize, len: usize, budget: &mut usize) {
    // SAFETY: advice on file pages mapped in our own window; changes no contents.
    let _ = unsafe { mm::madvise(addr as *mut c_void, len, Advice::Random) };
    let ahead = len.min(*budget);
    if ahead > 0 {
        *budget -= ahead;
        // SAFETY: as above; WILLNEED starts readahead of exactly this range.
        let _ = unsafe { mm::madvise(addr as *mut c_void, ahead, Advice::WillNeed) };
    }
}

/// Keeps a window range out of forked children. A child's copy of a write-protected hole
/// would not be registered with our userfaultfd, so its writes would make silent private
/// copies; without the range the child faults instead (SIGSEGV).
fn dont_fork(addr: usize, len: usize) {
    // SAFETY: advice on a range of our own window; changes no contents.
    let _ = unsafe { mm::madvise(addr as *mut c_void, len, Advice::LinuxDontFork) };
}

impl Window {
    /// Reserves a window of `len` bytes (rounded up to 2 MiB), 2 MiB aligned.
    pub fn new(len: usize) -> Result<Window> {
        Window::with_options(len, WindowOptions::default())
    }

    /// As [`Window::new`], with the granule and VMA headroom of `options`.
    pub fn with_options(len: usize, options: WindowOptions) -> Result<Window> {
        Window::create(len, options, true)
    }

    /// As [`Window::new`], without the fault handler: no userfaultfd is opened and no
    /// thread started, so no userfaultfd feature (WP_UNPOPULATED, POISON) is needed. What a
    /// VMM does with its DAX window works (as QEMU, which only mmaps `MAP_FIXED` over its
    /// reserved region): [`Window::map_fd_raw`], [`Window::unmap`], read-only
    /// [`Window::map_file`], [`Window::read_at`], [`Window::write_at`] on writable raw
    /// mappings, [`Window::page_states`]. A writable [`Window::map_file`], whose holes
    /// need the handler's write upgrade, fails with [`Error::NoFaultHandler`].
    pub fn without_fault_handler(len: usize) -> Result<Window> {
        Window::create(len, WindowOptions::default(), false)
    }

    fn create(len: usize, options: WindowOptions, fault_handler: bool) -> Result<Window> {
        if len == 0 {
            return Err(Error::InvalidRange("empty window"));
        }
        let len = len
            .checked_next_multiple_of(HUGE_SIZE)
            .ok_or(Error::InvalidRange("window too large"))?;
        let reserve = len
            .checked_add(HUGE_SIZE)
            .ok_or(Error::InvalidRange("window too large"))?;
        // SAFETY: a fresh anonymous reservation at an address of the kernel's choosing.
        let raw = unsafe {
            mm::mmap_anonymous(
                std::ptr::null_mut(),
                reserve,
                ProtFlags::empty(),
                MapFlags::PRIVATE | MapFlags::NORESERVE,
            )
        }
        .map_err(os_err("mmap reserve"))?;
        let raw = raw as usize;
        let base = raw.next_multiple_of(HUGE_SIZE);
        // SAFETY: trims the unaligned head and tail of the reservation we own.
        unsafe {
            if base > raw {
                let _ = mm::munmap(raw as *mut c_void, base - raw);
            }
            let tail = base + len;
            if raw + reserve > tail {
                let _ = mm::munmap(tail as *mut c_void, raw + reserve - tail);
            }
        }
        // SAFETY: the aligned range is ours; nothing references it yet.
        if let Err(e) = unsafe { map_zero_readonly(base, len) } {
            // SAFETY: releasing our own reservation.
            let _ = unsafe { mm::munmap(base as *mut c_void, len) };
            return Err(e);
        }
        let unmap_on_err = |e: Error| {
            // SAFETY: releasing our own reservation.
            let _ = unsafe { mm::munmap(base as *mut c_void, len) };
            e
        };
        let uffd = if fault_handler {
            let uffd = Uffd::open()
                .map_err(io_err("userfaultfd"))
                .map_err(unmap_on_err)?;
            Some(uffd)
        } else {
            None
        };
        let max_map_count = procfs::max_map_count()
            .map_err(io_err("read vm.max_map_count"))
            .map_err(unmap_on_err)?;
        let headroom = options
            .vma_headroom
            .unwrap_or_else(|| (max_map_count / 16).max(256));
        let (vmas, _) = procfs::vma_counts(0, 0).unwrap_or((0, 0));
        let inner = Arc::new(Inner {
            base,
            len,
            uffd,
            state: Mutex::new(State {
                mappings: BTreeMap::new(),
            }),
            granule: options.granule,
            max_map_count,
            headroom,
            vma_estimate: AtomicUsize::new(vmas),
            upgrades: AtomicU64::new(0),
            failed: AtomicU64::new(0),
            stale: AtomicU64::new(0),
        });
        if inner.uffd.is_none() {
            return Ok(Window {
                inner,
                handler: None,
            });
        }
        let stop = eventfd(0, EventfdFlags::CLOEXEC | EventfdFlags::NONBLOCK)
            .map_err(|e| unmap_on_err(os_err("eventfd")(e)))?;
        let stop_fd = stop.try_clone().map_err(io_err("dup eventfd"));
        let stop_fd = match stop_fd {
            Ok(fd) => fd,
            Err(e) => return Err(unmap_on_err(e)),
        };
        let thread_inner = Arc::clone(&inner);
        let handler = std::thread::Builder::new()
            .name("dax-window-uffd".into())
            .spawn(move || thread_inner.run_handler(stop_fd))
            .map_err(io_err("spawn handler"));
        let handler = match handler {
            Ok(h) => h,
            Err(e) => return Err(unmap_on_err(e)),
        };
        Ok(Window {
            inner,
            handler: Some((stop, handler)),
        })
    }

    /// Whether the window has the userfaultfd fault handler (false when made with
    /// [`Window::without_fault_handler`]).
    pub fn has_fault_handler(&self) -> bool {
        self.inner.uffd.is_some()
    }

    /// Start of the window.
    pub fn as_ptr(&self) -> *mut u8 {
        self.inner.base as *mut u8
    }

    /// Length of the window in bytes (a multiple of 2 MiB).
    pub fn len(&self) -> usize {
        self.inner.len
    }

    /// Always false: an empty window is refused at creation.
    pub fn is_empty(&self) -> bool {
        self.inner.len == 0
    }

    /// Whether kernel-mode writers (O_DIRECT reads, process_vm_writev, io_uring) get the
    /// write upgrade; without it (unprivileged, UFFD_USER_MODE_ONLY) they get EFAULT.
    /// False for a window without fault handler, which upgrades nothing.
    pub fn kernel_faults(&self) -> bool {
        self.inner.uffd.as_ref().is_some_and(Uffd::kernel_faults)
    }

    /// The fault handler's counters so far.
    pub fn stats(&self) -> WindowStats {
        WindowStats {
            upgrades: self.inner.upgrades.load(Ordering::Relaxed),
            failed: self.inner.failed.load(Ordering::Relaxed),
            stale: self.inner.stale.load(Ordering::Relaxed),
        }
    }

    /// The end of `[offset, offset+len)`, which must lie inside the window.
    fn check_bounds(&self, offset: usize, len: usize) -> Result<usize> {
        let end = offset
            .checked_add(len)
            .ok_or(Error::InvalidRange("offset + len overflows"))?;
        if end > self.inner.len {
            return Err(Error::InvalidRange("range outside the window"));
        }
        Ok(end)
    }

    /// As `check_bounds`, for a page-aligned range.
    fn check_range(&self, offset: usize, len: usize) -> Result<usize> {
        if offset % PAGE_SIZE != 0 || len % PAGE_SIZE != 0 {
            return Err(Error::Unaligned);
        }
        self.check_bounds(offset, len)
    }

    /// As `check_range`, for a new mapping from file offset `file_offset`: not empty, the
    /// file offset page-aligned too.
    fn check_new_mapping(
        &self,
        window_offset: usize,
        len: usize,
        file_offset: u64,
    ) -> Result<usize> {
        let end = self.check_range(window_offset, len)?;
        if len == 0 {
            return Err(Error::InvalidRange("empty mapping"));
        }
        if file_offset % PAGE_SIZE as u64 != 0 {
            return Err(Error::Unaligned);
        }
        Ok(end)
    }

    /// Copies window bytes out, with volatile loads.
    ///
    /// Window memory is shared: the guest, other mappings of the same files and other
    /// threads change it at any time. The copy is therefore made of volatile accesses,
    /// aligned 8-byte loads for the bulk and single bytes at the unaligned edges (`buf` needs
    /// no alignment), never plain `memcpy`: a concurrent writer is no undefined behaviour.
    /// Each aligned 8-byte word is seen whole, from before or after a concurrent store to it;
    /// the copy is not a snapshot across words.
    ///
    /// Unmapped ranges and holes read as zeros.
    ///
    /// # Faults
    /// Every byte of the window stays mapped while the window lives (unmapped ranges are
    /// read-only anonymous memory), so a load faults only where a mapped file page has no
    /// backing. Before copying, the range is checked against the mappings: a file page at or
    /// past its file's current EOF (rounded up to a page) is refused with
    /// `Error::BeyondEof`, a poisoned page with `Error::Poisoned`, instead of faulting.
    /// What the check cannot see still raises SIGBUS at the faulting load, as with any mmap
    /// access: a truncation racing with the copy, an I/O error reading a data page. With the
    /// default disposition that ends the process; it is a signal at the access, never
    /// undefined behaviour (no Rust reference into window memory exists, so nothing is left
    /// half-borrowed). A caller that must survive it keeps the files from shrinking under
    /// their mappings (the daemon's job for DAX) or handles SIGBUS itself.
    pub fn read_at(&self, offset: usize, buf: &mut [u8]) -> Result<()> {
        self.check_access(offset, buf.len(), false)?;
        // SAFETY: the range lies inside the window (checked), which is mapped for the
        // window's whole life and never referenced by Rust references; `buf` is a distinct
        // Rust buffer. The copy uses volatile loads only on the window side.
        unsafe { volatile::copy_from_shared((self.inner.base + offset) as *const u8, buf) };
        Ok(())
    }

    /// Copies bytes into the window, with volatile stores (aligned 8-byte words for the bulk,
    /// single bytes at the unaligned edges; `data` needs no alignment). A hole of a writable
    /// mapping is upgraded on the way, as a CPU store upgrades it.
    ///
    /// The range must lie inside writable mappings (`Error::ReadOnly` otherwise: a store to
    /// unmapped or read-only window memory is SIGSEGV), below each file's current EOF
    /// rounded up to a page (`Error::BeyondEof`), and off poisoned pages
    /// (`Error::Poisoned`); nothing is written when a check fails.
    ///
    /// # Faults
    /// As for [`Window::read_at`], what the check cannot see raises a signal at the faulting
    /// store, never undefined behaviour: a racing truncation or `unmap` (SIGBUS, SIGSEGV),
    /// and a write to a hole whose upgrade fails (no space: SIGBUS for that store, as
    /// fsdax's failing write fault; see docs/dax-window.md). The bytes before the faulting
    /// store have been written.
    pub fn write_at(&self, offset: usize, data: &[u8]) -> Result<()> {
        self.check_access(offset, data.len(), true)?;
        // SAFETY: the range lies inside the window (checked), mapped for the window's whole
        // life and never referenced by Rust references; it is never `data`, which is a Rust
        // buffer. The copy uses volatile stores only on the window side.
        unsafe { volatile::copy_to_shared((self.inner.base + offset) as *mut u8, data) };
        Ok(())
    }

    /// Bounds, then what a load (or store) would find in `[offset, offset+len)` right now:
    /// file pages past EOF and poisoned pages; for a store, memory outside writable mappings.
    /// The lock is released before the caller copies (a store may fault into the handler,
    /// which takes it).
    fn check_access(&self, offset: usize, len: usize, write: bool) -> Result<()> {
        let end = self.check_bounds(offset, len)?;
        if len == 0 {
            return Ok(());
        }
        let st = self.inner.lock();
        let mut covered = 0;
        // Mappings are disjoint: those meeting the range are the last few starting before
        // its end.
        for (&o, m) in st.mappings.range(..end).rev() {
            if o + m.len <= offset {
                break;
            }
            let (a, b) = (offset.max(o), end.min(o + m.len));
            covered += b - a;
            if write && !m.writable {
                return Err(Error::ReadOnly);
            }
            if let Some(&p) = m.poisoned.iter().find(|&&p| p < b && p + PAGE_SIZE > a) {
                return Err(Error::Poisoned { window_offset: p });
            }
            let md = m.file.metadata().map_err(io_err("fstat"))?;
            if !md.is_file() {
                // Devices and the like report no size; their mapping is the caller's.
                continue;
            }
            // Window offset where the file's last page ends.
            let eof_page = round_up(md.len(), PAGE_SIZE as u64);
            let eof_w = o.saturating_add(eof_page.saturating_sub(m.file_offset) as usize);
            if eof_w >= b {
                continue;
            }
            let past = (a.max(eof_w), b);
            // A store past EOF always faults (a hole page there cannot be upgraded); a load
            // only on file pages (holes read their own zeros).
            // Backed intervals are disjoint: only the last one starting before the end can
            // reach into the range.
            let faults = write
                || m.backed
                    .range(..past.1)
                    .next_back()
                    .is_some_and(|(_, &e)| e > past.0);
            if faults {
                return Err(Error::BeyondEof);
            }
        }
        if write && covered < len {
            return Err(Error::ReadOnly);
        }
        Ok(())
    }

    /// Page states of `[offset, offset+len)` of the window (PAGEMAP_SCAN).
    pub fn page_states(&self, offset: usize, len: usize) -> Result<PageStates> {
        self.check_range(offset, len)?;
        page_states(self.inner.base + offset, len).map_err(io_err("PAGEMAP_SCAN"))
    }

    /// VMAs of the whole process and of the window (from /proc/self/maps).
    pub fn vma_counts(&self) -> Result<(usize, usize)> {
        procfs::vma_counts(self.inner.base, self.inner.base + self.inner.len)
            .map_err(io_err("read /proc/self/maps"))
    }

    /// The live mappings, in window order.
    pub fn mappings(&self) -> Vec<MappingInfo> {
        let st = self.inner.lock();
        st.mappings
            .iter()
            .map(|(&off, m)| MappingInfo {
                window_offset: off,
                len: m.len,
                file_offset: m.file_offset,
                writable: m.writable,
                file_backed: m.backed.iter().map(|(&a, &b)| (a, b)).collect(),
                failed_upgrades: m.failed_upgrades.clone(),
                poisoned: m.poisoned.clone(),
            })
            .collect()
    }

    /// Maps `[file_offset, file_offset+len)` of `file` at `window_offset`: its data extents
    /// as shared file pages, its holes left reading as the zero page. A writable mapping
    /// write-protects its holes so that the first write to one allocates the block and maps
    /// the file page there. Never maps past EOF: the mapped length is clipped to EOF
    /// rounded up to a page, and the rest stays unmapped (read-only zeros).
    ///
    /// All of `window_offset`, `len`, `file_offset` must be 4 KiB aligned. Returns the
    /// mapping as set up.
    ///
    /// A writable mapping needs the fault handler: on a window made with
    /// [`Window::without_fault_handler`] it fails with [`Error::NoFaultHandler`], before
    /// anything is mapped. A read-only one works on any window.
    pub fn map_file(
        &self,
        window_offset: usize,
        len: usize,
        file: &File,
        file_offset: u64,
        writable: bool,
    ) -> Result<MappingInfo> {
        if writable && !self.has_fault_handler() {
            return Err(Error::NoFaultHandler);
        }
        let end = self.check_new_mapping(window_offset, len, file_offset)?;
        let mut st = self.inner.lock();
        if st.overlaps(window_offset, end) {
            return Err(Error::Overlap);
        }
        let own = Arc::new(reopen(file, writable)?);
        let size = own.metadata().map_err(io_err("fstat"))?.len();
        let eof_page = round_up(size, PAGE_SIZE as u64);
        let file_end = eof_page.min(file_offset.saturating_add(len as u64));
        if file_end <= file_offset {
            return Err(Error::BeyondEof);
        }
        let map_len = (file_end - file_offset) as usize;
        let wstart = self.inner.base + window_offset;

        // Page-rounded data extents, merged, as window offsets.
        let mut data: Vec<(usize, usize)> = Vec::new();
        for Extent { start, end } in
            data_extents(&own, file_offset, file_end).map_err(io_err("SEEK_DATA"))?
        {
            let s = (start / PAGE_SIZE as u64 * PAGE_SIZE as u64 - file_offset) as usize;
            let e = (round_up(end, PAGE_SIZE as u64).min(file_end) - file_offset) as usize;
            match data.last_mut() {
                Some(last) if last.1 >= s => last.1 = last.1.max(e),
                _ => data.push((s, e)),
            }
        }
        let mut holes = Vec::new();
        let mut pos = 0;
        for &(s, e) in &data {
            if s > pos {
                holes.push((pos, s));
            }
            pos = e;
        }
        if pos < map_len {
            holes.push((pos, map_len));
        }

        let (vmas, _) = procfs::vma_counts(0, 0).map_err(io_err("read /proc/self/maps"))?;
        let needed = data.len() + holes.len() + 2;
        if vmas + needed + self.inner.headroom > self.inner.max_map_count {
            return Err(Error::VmaBudget {
                needed,
                in_use: vmas,
                headroom: self.inner.headroom,
                max_map_count: self.inner.max_map_count,
            });
        }

        let result =
            self.inner
                .setup_mapping(wstart, map_len, &own, file_offset, writable, &data, &holes);
        if let Err(e) = result {
            // Back to the unmapped state, whatever got half done.
            // SAFETY: the range is inside our window and not yet recorded as mapped.
            let _ = unsafe { map_zero_readonly(wstart, map_len) };
            return Err(e);
        }
        let mut m = Mapping {
            len: map_len,
            file: own,
            file_offset,
            writable,
            backed: BTreeMap::new(),
            failed_upgrades: Vec::new(),
            poisoned: Vec::new(),
        };
        for &(s, e) in &data {
            m.insert_backed(window_offset + s, window_offset + e);
        }
        let info = MappingInfo {
            window_offset,
            len: map_len,
            file_offset,
            writable,
            file_backed: m.backed.iter().map(|(&a, &b)| (a, b)).collect(),
            failed_upgrades: Vec::new(),
            poisoned: Vec::new(),
        };
        st.mappings.insert(window_offset, m);
        self.inner.recount_vmas();
        Ok(info)
    }

    /// Maps exactly `[fd_offset, fd_offset+len)` of `fd` at `window_offset`
    /// (`MAP_SHARED|MAP_FIXED`, read-only or read-write), as a VMM serves a vhost-user
    /// SHMEM_MAP: no extent lookup, no EOF clipping, no write upgrade. Deciding what to map
    /// (only data extents, never past EOF) is the caller's business; this only enforces the
    /// vhost-user rule that a map over a live mapping fails (`Error::Overlap`).
    pub fn map_fd_raw(
        &self,
        window_offset: usize,
        len: usize,
        fd: BorrowedFd<'_>,
        fd_offset: u64,
        writable: bool,
    ) -> Result<MappingInfo> {
        let end = self.check_new_mapping(window_offset, len, fd_offset)?;
        if fd_offset.checked_add(len as u64).is_none() {
            return Err(Error::InvalidRange("file offset + len overflows"));
        }
        let mut st = self.inner.lock();
        if st.overlaps(window_offset, end) {
            return Err(Error::Overlap);
        }
        let own = File::from(fd.try_clone_to_owned().map_err(io_err("dup"))?);
        let prot = if writable {
            ProtFlags::READ | ProtFlags::WRITE
        } else {
            ProtFlags::READ
        };
        let addr = self.inner.base + window_offset;
        // SAFETY: replaces our own window range (checked above, and free of mappings); no
        // Rust reference points into window memory.
        let p = unsafe {
            mm::mmap(
                addr as *mut c_void,
                len,
                prot,
                MapFlags::SHARED | MapFlags::FIXED,
                &own,
                fd_offset,
            )
        };
        if let Err(e) = p {
            // The failed MAP_FIXED may have unmapped the old range: restore read-only zeros.
            // SAFETY: the range is inside our window and not recorded as mapped.
            let _ = unsafe { map_zero_readonly(addr, len) };
            return Err(os_err("mmap shared")(e));
        }
        // SAFETY: advice on the mapping just made in our window; changes no contents.
        let _ = unsafe { mm::madvise(addr as *mut c_void, len, Advice::Random) };
        // Only the file's data is read ahead: the range may be a hole the backend mapped for
        // writing, and reading a hole ahead would fill the page cache with zeros.
        let mut prefetch = PREFETCH_BUDGET;
        let fd_end = fd_offset + len as u64;
        for x in data_extents(&own, fd_offset, fd_end).unwrap_or_default() {
            // Extents are block-aligned, blocks may be smaller than pages: round out.
            let s = (x.start / PAGE_SIZE as u64 * PAGE_SIZE as u64).max(fd_offset);
            let e = x.end.min(fd_end);
            if s < e {
                let off = (s - fd_offset) as usize;
                advise_file_pages(addr + off, (e - s) as usize, &mut prefetch);
            }
        }
        dont_fork(addr, len);
        let mut backed = BTreeMap::new();
        backed.insert(window_offset, end);
        let info = MappingInfo {
            window_offset,
            len,
            file_offset: fd_offset,
            writable,
            file_backed: vec![(window_offset, end)],
            failed_upgrades: Vec::new(),
            poisoned: Vec::new(),
        };
        // Wholly file-backed: the fault handler never treats any of it as a hole.
        st.mappings.insert(
            window_offset,
            Mapping {
                len,
                file: Arc::new(own),
                file_offset: fd_offset,
                writable,
                backed,
                failed_upgrades: Vec::new(),
                poisoned: Vec::new(),
            },
        );
        drop(st);
        self.inner.recount_vmas();
        Ok(info)
    }

    /// Returns `[offset, offset+len)` to the unmapped state (read-only zeros). The range
    /// must cover whole mappings. The replacement is one atomic MAP_FIXED of read-only
    /// anonymous memory, so no instant exists in which a write could make a private copy;
    /// threads parked on a write fault there are woken and then fault as on a read-only
    /// mapping.
    pub fn unmap(&self, offset: usize, len: usize) -> Result<()> {
        let end = self.check_range(offset, len)?;
        let mut st = self.inner.lock();
        let hit: Vec<usize> = st
            .mappings
            .range(..end)
            .filter(|(&o, m)| o + m.len > offset)
            .map(|(&o, _)| o)
            .collect();
        for &o in &hit {
            let m = &st.mappings[&o];
            if o < offset || o + m.len > end {
                return Err(Error::PartialUnmap);
            }
        }
        let addr = self.inner.base + offset;
        // SAFETY: the range is inside our window.
        unsafe { map_zero_readonly(addr, len)? };
        for o in hit {
            st.mappings.remove(&o);
        }
        if let Some(uffd) = &self.inner.uffd {
            let _ = uffd.wake(addr, len);
        }
        drop(st);
        self.inner.recount_vmas();
        Ok(())
    }
}

/// Allocates `[foff, foff+len)` of a mapping's file (unwritten extents where it was a hole).
fn allocate(m: &Mapping, foff: u64, len: usize) -> io::Result<()> {
    // KEEP_SIZE never changes i_size.
    Ok(rustix::fs::fallocate(
        &*m.file,
        FallocateFlags::KEEP_SIZE,
        foff,
        len as u64,
    )?)
}

fn reopen(file: &File, writable: bool) -> Result<File> {
    let path = format!("/proc/self/fd/{}", file.as_raw_fd());
    let own = std::fs::OpenOptions::new()
        .read(true)
        .write(writable)
        .open(&path)
        .or_else(|_| file.try_clone())
        .map_err(io_err("reopen file"))?;
    if writable {
        match rustix::fs::fcntl_getfl(&own) {
            Ok(fl) if fl & OFlags::ACCMODE != OFlags::RDONLY => {}
            _ => return Err(Error::NotWritable),
        }
    }
    // Random access advice keeps read(2) priming of one page to one order-0 folio, so a
    // write through the window dirties (and allocates) exactly that page. It affects only
    // this open file description.
    let _ = rustix::fs::fadvise(&own, 0, None, rustix::fs::Advice::Random);
    Ok(own)
}

impl Inner {
    fn lock(&self) -> MutexGuard<'_, State> {
        // A poisoned lock only means a panic elsewhere; the state itself stays consistent
        // because every mutation is completed before the guard is dropped.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn recount_vmas(&self) {
        if let Ok((n, _)) = procfs::vma_counts(0, 0) {
            self.vma_estimate.store(n, Ordering::Relaxed);
        }
    }

    #[allow(clippy::too_many_arguments)]
    fn setup_mapping(
        &self,
        wstart: usize,
        map_len: usize,
        file: &File,
        file_offset: u64,
        writable: bool,
        data: &[(usize, usize)],
        holes: &[(usize, usize)],
    ) -> Result<()> {
        if writable {
            // Holes first become huge zero pages (no memory used) while still read-only,
            // then get registered and write-protected, and only then become writable: no
            // instant exists in which a write to a hole could copy silently.
            for &(s, e) in holes {
                // SAFETY: populating (read-faulting) anonymous memory of our window.
                let _ = unsafe {
                    mm::madvise(
                        (wstart + s) as *mut c_void,
                        e - s,
                        Advice::LinuxPopulateRead,
                    )
                };
            }
            // Refused before anything was changed (`map_file`); checked again here so that
            // no writable hole can ever exist without the handler.
            let uffd = self.uffd.as_ref().ok_or(Error::NoFaultHandler)?;
            uffd.register_wp(wstart, map_len)
                .map_err(io_err("UFFDIO_REGISTER"))?;
            uffd.writeprotect(wstart, map_len)
                .map_err(io_err("UFFDIO_WRITEPROTECT"))?;
        }
        let prot = if writable {
            ProtFlags::READ | ProtFlags::WRITE
        } else {
            ProtFlags::READ
        };
        let mut prefetch = PREFETCH_BUDGET;
        for &(s, e) in data {
            // SAFETY: maps file pages over our own window range (MAP_FIXED), never past
            // EOF (extents are clipped to it).
            unsafe {
                mm::mmap(
                    (wstart + s) as *mut c_void,
                    e - s,
                    prot,
                    MapFlags::SHARED | MapFlags::FIXED,
                    file,
                    file_offset + s as u64,
                )
            }
            .map_err(os_err("mmap file extent"))?;
            advise_file_pages(wstart + s, e - s, &mut prefetch);
            dont_fork(wstart + s, e - s);
        }
        if writable {
            // SAFETY: changes protection of our own window range only.
            unsafe {
                mm::mprotect(
                    wstart as *mut c_void,
                    map_len,
                    MprotectFlags::READ | MprotectFlags::WRITE,
                )
            }
            .map_err(os_err("mprotect"))?;
        }
        Ok(())
    }

    fn run_handler(&self, stop: OwnedFd) {
        let Some(uffd) = &self.uffd else {
            return;
        };
        let mut msgs = [sys::UffdMsg::default(); 64];
        loop {
            let mut fds = [
                PollFd::from_borrowed_fd(uffd.fd(), PollFlags::IN),
                PollFd::new(&stop, PollFlags::IN),
            ];
            if let Err(e) = poll(&mut fds, None) {
                // Never give up while the window lives: a writer parked in a hole would
                // wait forever. What poll can fail with here (EINTR, ENOMEM) passes.
                if e != Errno::INTR {
                    std::thread::sleep(std::time::Duration::from_millis(10));
                }
                continue;
            }
            if !fds[1].revents().is_empty() {
                break;
            }
            if fds[0]
                .revents()
                .intersects(PollFlags::ERR | PollFlags::HUP | PollFlags::NVAL)
            {
                // Nothing to read on a userfaultfd in this state; don't spin on it.
                std::thread::sleep(std::time::Duration::from_millis(10));
                continue;
            }
            loop {
                match uffd.read_msgs(&mut msgs) {
                    Ok(0) => break,
                    Ok(n) => {
                        for msg in &msgs[..n] {
                            if msg.event == sys::UFFD_EVENT_PAGEFAULT {
                                self.handle_fault(uffd, msg.pf_address as usize, msg.pf_flags);
                            }
                        }
                    }
                    Err(e) if e.raw_os_error() == Some(libc::EINTR) => continue,
                    Err(_) => break,
                }
            }
        }
    }

    fn granule_size(&self) -> usize {
        match self.granule {
            Granule::Page => PAGE_SIZE,
            Granule::Huge => HUGE_SIZE,
            Granule::Adaptive => {
                let budget = self.max_map_count.saturating_sub(self.headroom);
                if self.vma_estimate.load(Ordering::Relaxed) > budget / 2 {
                    HUGE_SIZE
                } else {
                    PAGE_SIZE
                }
            }
        }
    }

    /// Resolves one write-protect fault. Every path ends with the faulting page woken.
    fn handle_fault(&self, uffd: &Uffd, addr: usize, flags: u64) {
        let page = addr & !(PAGE_SIZE - 1);
        if page < self.base || page >= self.base + self.len {
            let _ = uffd.wake(page, PAGE_SIZE);
            return;
        }
        let off = page - self.base;
        let is_wp_write = flags & sys::UFFD_PAGEFAULT_FLAG_WP != 0;
        let mut st = self.lock();
        let found = st
            .mappings
            .range_mut(..=off)
            .next_back()
            .filter(|(&o, m)| off < o + m.len);
        let Some((&mstart, m)) = found else {
            drop(st);
            self.stale.fetch_add(1, Ordering::Relaxed);
            let _ = uffd.wake(page, PAGE_SIZE);
            return;
        };
        if !is_wp_write || !m.writable || m.backed_contains(off) || m.poisoned.contains(&off) {
            drop(st);
            self.stale.fetch_add(1, Ordering::Relaxed);
            let _ = uffd.wake(page, PAGE_SIZE);
            return;
        }
        let (hs, he) = m.hole_around(mstart, off);
        let g = self.granule_size();
        let gbase = off & !(g - 1);
        let gs = gbase.max(hs);
        let mut ge = (gbase + g).min(he);

        // Never past EOF: a hole page past a (shrunk) EOF fails like any mmap past EOF.
        let eof_page = match m.file.metadata() {
            Ok(md) => round_up(md.len(), PAGE_SIZE as u64),
            Err(_) => 0,
        };
        let file_of = |w: usize| m.file_offset + (w - mstart) as u64;
        let foff_page = file_of(off);
        if foff_page >= eof_page {
            self.fail(uffd, m, off, foff_page);
            return;
        }
        if file_of(ge) > eof_page {
            ge = mstart + (eof_page - m.file_offset) as usize;
        }
        let glen = ge - gs;
        let foff = file_of(gs);
        let done = if glen > PAGE_SIZE {
            // The faulting page first: a write must not fail for want of a whole granule
            // (fsdax likewise falls back from a PMD fault to a 4 KiB one). Then the granule;
            // if that fails (part of it may stay allocated: fallocate is not atomic), the
            // page alone.
            allocate(m, foff_page, PAGE_SIZE).and_then(|()| {
                self.upgrade(m, gs, glen, foff)
                    .map(|()| (gs, ge))
                    .or_else(|_| {
                        self.upgrade(m, off, PAGE_SIZE, foff_page)
                            .map(|()| (off, off + PAGE_SIZE))
                    })
            })
        } else {
            self.upgrade(m, gs, glen, foff).map(|()| (gs, ge))
        };
        match done {
            Ok((s, e)) => {
                m.insert_backed(s, e);
                self.upgrades.fetch_add(1, Ordering::Relaxed);
                self.vma_estimate.fetch_add(2, Ordering::Relaxed);
                let _ = uffd.wake(self.base + s, e - s);
            }
            Err(_) => self.fail(uffd, m, off, foff_page),
        }
    }

    /// Allocates `[foff, foff+glen)` in the file and maps it over the zero pages.
    fn upgrade(&self, m: &Mapping, gs: usize, glen: usize, foff: u64) -> io::Result<()> {
        allocate(m, foff, glen)?;
        if glen == PAGE_SIZE {
            // Put an order-0 folio in the page cache (the descriptor reads with
            // POSIX_FADV_RANDOM) so the writer's fault finds it instead of reading ahead
            // a large folio whose whole extent the write would then allocate.
            let mut buf = [0u8; PAGE_SIZE];
            let _ = m.file.read_at(&mut buf, foff);
        }
        // SAFETY: maps file pages over our own window range; the range is a hole of a
        // writable mapping, inside EOF, with no Rust reference into it.
        unsafe {
            mm::mmap(
                (self.base + gs) as *mut c_void,
                glen,
                ProtFlags::READ | ProtFlags::WRITE,
                MapFlags::SHARED | MapFlags::FIXED,
                &*m.file,
                foff,
            )?
        };
        dont_fork(self.base + gs, glen);
        Ok(())
    }

    /// Resolves a write fault whose upgrade failed, so that the failure is that write's
    /// alone, as in fsdax (where the failing `iomap_begin` of a write fault makes that fault
    /// SIGBUS and leaves the hole as it was).
    ///
    /// The hole page at window offset `off` (file offset `foff`) is handed to the kernel's
    /// own shared file mapping, unallocated: one `MAP_SHARED|MAP_FIXED` page over the zero
    /// page, then the wake. The writer retries on an ordinary file page, and the
    /// filesystem's `page_mkwrite` makes the allocation attempt: while there is no space it
    /// fails with VM_FAULT_SIGBUS, i.e. SIGBUS (BUS_ADRERR) for that CPU store, EFAULT for
    /// a kernel-mode writer; once there is, the write succeeds and lands in the file. Reads
    /// of the page see what the file has there (the hole's zeros, from one page-cache page
    /// instead of the zero page), never a fault below EOF. Past EOF the file page behaves as
    /// any mmap past EOF (SIGBUS), and as a file page again if the file grows back.
    ///
    /// Only when even that one-page mmap fails (vm.max_map_count reached) is the page
    /// poisoned instead (see `poison`).
    fn fail(&self, uffd: &Uffd, m: &mut Mapping, off: usize, foff: u64) {
        self.failed.fetch_add(1, Ordering::Relaxed);
        let addr = self.base + off;
        // An order-0 folio for the retry to find, as in `upgrade`: a large folio read around
        // the fault would make page_mkwrite reserve (and allocate) all of it.
        let mut buf = [0u8; PAGE_SIZE];
        let _ = m.file.read_at(&mut buf, foff);
        // SAFETY: maps one file page over one hole page of a writable mapping in our own
        // window (MAP_FIXED, atomic: the zero page is replaced, nothing in between); no Rust
        // reference points into window memory.
        let p = unsafe {
            mm::mmap(
                addr as *mut c_void,
                PAGE_SIZE,
                ProtFlags::READ | ProtFlags::WRITE,
                MapFlags::SHARED | MapFlags::FIXED,
                &*m.file,
                foff,
            )
        };
        if p.is_err() {
            self.poison(uffd, m, off);
            return;
        }
        // SAFETY: advice on the page just mapped; no read-around into neighbouring holes.
        let _ = unsafe { mm::madvise(addr as *mut c_void, PAGE_SIZE, Advice::Random) };
        dont_fork(addr, PAGE_SIZE);
        m.insert_backed(off, off + PAGE_SIZE);
        m.failed_upgrades.push(off);
        self.vma_estimate.fetch_add(2, Ordering::Relaxed);
        let _ = uffd.wake(addr, PAGE_SIZE);
    }

    /// Poisons the page at window offset `off` so its writer gets SIGBUS (CPU store) or
    /// EFAULT (kernel-mode access) instead of a silent private copy, and wakes it. The last
    /// resort of `fail`: reads fault too, until the range is unmapped.
    fn poison(&self, uffd: &Uffd, m: &mut Mapping, off: usize) {
        let addr = self.base + off;
        let a = addr as *mut c_void;
        // Read-only while the page is empty: a write arriving between the discard and the
        // poison faults instead of allocating an anonymous page. The VMA budget keeps
        // headroom for this split.
        // SAFETY: protection and discard of one page of our own window; the page holds
        // the zero page (nothing to lose) and is write-protected.
        let _ = unsafe { mm::mprotect(a, PAGE_SIZE, MprotectFlags::READ) };
        // SAFETY: as above.
        let _ = unsafe { mm::madvise(a, PAGE_SIZE, Advice::LinuxDontNeed) };
        let mut poisoned = uffd.poison(addr, PAGE_SIZE).is_ok();
        // Write permission back, so that a write reaches the poison marker (SIGBUS) rather
        // than stopping at the protection check; poison once more if the kernel wanted it.
        // SAFETY: as above.
        let _ = unsafe { mm::mprotect(a, PAGE_SIZE, MprotectFlags::READ | MprotectFlags::WRITE) };
        if !poisoned {
            poisoned = uffd.poison(addr, PAGE_SIZE).is_ok();
        }
        if !poisoned {
            // Last resort: writes must still fault rather than copy. Read-only if we can,
            // else a fresh write-protect marker (the writer then faults here again).
            // SAFETY: as above.
            let still_ro = unsafe { mm::mprotect(a, PAGE_SIZE, MprotectFlags::READ) }.is_ok();
            if !still_ro {
                let _ = uffd.writeprotect(addr, PAGE_SIZE);
            }
        }
        m.poisoned.push(off);
        let _ = uffd.wake(addr, PAGE_SIZE);
    }
}

impl Drop for Window {
    fn drop(&mut self) {
        if let Some((stop, thread)) = self.handler.take() {
            let _ = rustix::io::write(&stop, &1u64.to_ne_bytes());
            let _ = thread.join();
        }
        let (base, len) = (self.inner.base, self.inner.len);
        // Make every page inaccessible first, then wake whoever is parked: they retry and
        // fault as on unmapped memory instead of sleeping forever. Closing the userfaultfd
        // (when `inner` drops) wakes anything left as well.
        // SAFETY: replaces our own window; nobody may use it after drop.
        let _ = unsafe {
            mm::mmap_anonymous(
                base as *mut c_void,
                len,
                ProtFlags::empty(),
                MapFlags::PRIVATE | MapFlags::NORESERVE | MapFlags::FIXED,
            )
        };
        if let Some(uffd) = &self.inner.uffd {
            let _ = uffd.wake(base, len);
        }
        // SAFETY: releases our own window mapping.
        let _ = unsafe { mm::munmap(base as *mut c_void, len) };
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mapping(len: usize) -> Mapping {
        Mapping {
            len,
            file: Arc::new(File::open("/proc/self/exe").unwrap()),
            file_offset: 0,
            writable: true,
            backed: BTreeMap::new(),
            failed_upgrades: Vec::new(),
            poisoned: Vec::new(),
        }
    }

    #[test]
    fn backed_intervals_merge_and_bound_holes() {
        let base = 0x10000;
        let mut m = mapping(0x100000);
        m.insert_backed(base + 0x3000, base + 0x4000);
        m.insert_backed(base + 0x8000, base + 0x9000);
        assert_eq!(
            m.hole_around(base, base + 0x5000),
            (base + 0x4000, base + 0x8000)
        );
        assert_eq!(m.hole_around(base, base), (base, base + 0x3000));
        assert_eq!(
            m.hole_around(base, base + 0xA000),
            (base + 0x9000, base + 0x100000)
        );
        assert!(m.backed_contains(base + 0x3000));
        assert!(!m.backed_contains(base + 0x4000));
        // Adjacent and overlapping inserts merge into one interval.
        m.insert_backed(base + 0x4000, base + 0x5000);
        m.insert_backed(base + 0x2000, base + 0x3000);
        m.insert_backed(base + 0x5000, base + 0x8800);
        assert_eq!(
            m.backed.iter().map(|(&a, &b)| (a, b)).collect::<Vec<_>>(),
            vec![(base + 0x2000, base + 0x9000)]
        );
        m.insert_backed(base + 0x20000, base + 0x21000);
        assert_eq!(m.backed.len(), 2);
        assert_eq!(
            m.hole_around(base, base + 0x10000),
            (base + 0x9000, base + 0x20000)
        );
    }
}
