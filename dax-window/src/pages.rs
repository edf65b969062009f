//! How each page of a range is backed right now, from `ioctl(PAGEMAP_SCAN)`.
//!
//! PAGEMAP_SCAN needs no privilege and answers for a whole range in one call, huge zero
//! pages included. Categories map to states this way:
//! - `PFNZERO`: the shared zero page (4 KiB or, with `HUGE`, the 2 MiB huge zero page);
//! - `PRESENT|FILE`: a page-cache page of a file mapping;
//! - `PRESENT` without `FILE` or `PFNZERO`: a private anonymous page. In a window that is
//!   a silent private copy and must never exist;
//! - `SWAPPED` (not present but not empty): a userfaultfd write-protect marker or a poison
//!   marker (no swap is configured for windows; a swapped-out private page would also land
//!   here);
//! - nothing: not populated.

use std::fs::File;
use std::io;
use std::os::fd::AsFd;

use crate::sys;

/// The page size windows and page states work in: 4 KiB, the only one supported.
pub const PAGE_SIZE: usize = 4096;

/// The backing of one page.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum PageState {
    /// The shared 4 KiB zero page.
    Zero,
    /// Part of the shared 2 MiB huge zero page.
    HugeZero,
    /// A file's page-cache page.
    File,
    /// A present anonymous page that is not the zero page: a private copy.
    PrivateAnon,
    /// Not present, but the page table holds a marker (uffd-wp or poison) or a swap entry.
    Marker,
    /// Nothing mapped in the page table.
    NotPopulated,
}

impl PageState {
    fn from_categories(c: u64) -> PageState {
        if c & sys::PAGE_IS_PFNZERO != 0 {
            if c & sys::PAGE_IS_HUGE != 0 {
                PageState::HugeZero
            } else {
                PageState::Zero
            }
        } else if c & sys::PAGE_IS_PRESENT != 0 {
            if c & sys::PAGE_IS_FILE != 0 {
                PageState::File
            } else {
                PageState::PrivateAnon
            }
        } else if c & sys::PAGE_IS_SWAPPED != 0 {
            PageState::Marker
        } else {
            PageState::NotPopulated
        }
    }

    /// A short lowercase name, as used in reports.
    pub fn name(self) -> &'static str {
        match self {
            PageState::Zero => "zero",
            PageState::HugeZero => "huge_zero",
            PageState::File => "file",
            PageState::PrivateAnon => "private_anon",
            PageState::Marker => "marker",
            PageState::NotPopulated => "not_populated",
        }
    }
}

/// A run of pages in one state; `offset` is relative to the start of the scanned range.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PageRun {
    /// Byte offset of the run's first page.
    pub offset: usize,
    /// Length in bytes, a multiple of `PAGE_SIZE`.
    pub len: usize,
    /// The backing of every page of the run.
    pub state: PageState,
}

/// Page counts by state and the runs they came from.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PageStates {
    /// 4 KiB zero pages.
    pub zero: u64,
    /// 4 KiB pages covered by huge zero pages.
    pub huge_zero: u64,
    /// Page-cache pages of a file.
    pub file: u64,
    /// Private anonymous pages: silent copies, which a window must never contain.
    pub private_anon: u64,
    /// Pages holding a uffd-wp or poison marker (or a swap entry).
    pub marker: u64,
    /// Pages with nothing in the page table.
    pub not_populated: u64,
    /// The runs, in address order, that the counts sum up.
    pub runs: Vec<PageRun>,
}

impl PageStates {
    /// Zero-page-backed 4 KiB pages, small and huge together.
    pub fn zero_total(&self) -> u64 {
        self.zero + self.huge_zero
    }

    /// All pages counted, whatever their state.
    pub fn total(&self) -> u64 {
        self.zero
            + self.huge_zero
            + self.file
            + self.private_anon
            + self.marker
            + self.not_populated
    }

    fn add(&mut self, offset: usize, len: usize, state: PageState) {
        let pages = (len / PAGE_SIZE) as u64;
        match state {
            PageState::Zero => self.zero += pages,
            PageState::HugeZero => self.huge_zero += pages,
            PageState::File => self.file += pages,
            PageState::PrivateAnon => self.private_anon += pages,
            PageState::Marker => self.marker += pages,
            PageState::NotPopulated => self.not_populated += pages,
        }
        if let Some(last) = self.runs.last_mut() {
            if last.state == state && last.offset + last.len == offset {
                last.len += len;
                return;
            }
        }
        self.runs.push(PageRun { offset, len, state });
    }
}

/// Scans `[addr, addr + len)` of this process. Parts of the range with no VMA are reported
/// as not populated.
pub fn page_states(addr: usize, len: usize) -> io::Result<PageStates> {
    if addr % PAGE_SIZE != 0 || len % PAGE_SIZE != 0 {
        return Err(io::Error::from_raw_os_error(libc::EINVAL));
    }
    let pagemap = File::open("/proc/self/pagemap")?;
    let mut out = PageStates::default();
    let end = addr
        .checked_add(len)
        .ok_or_else(|| io::Error::from_raw_os_error(libc::EINVAL))?;
    let mut regions = vec![sys::PageRegion::default(); 512];
    let mut cursor = addr;
    while cursor < end {
        let mut arg = sys::PmScanArg {
            size: std::mem::size_of::<sys::PmScanArg>() as u64,
            start: cursor as u64,
            end: end as u64,
            vec: regions.as_mut_ptr() as u64,
            vec_len: regions.len() as u64,
            return_mask: sys::PAGE_IS_PRESENT
                | sys::PAGE_IS_FILE
                | sys::PAGE_IS_SWAPPED
                | sys::PAGE_IS_PFNZERO
                | sys::PAGE_IS_HUGE,
            ..Default::default()
        };
        // SAFETY: `arg` is a pm_scan_arg whose `vec` points at `regions`, a live buffer of
        // `vec_len` page_region entries the kernel may fill; both outlive the call.
        let n = unsafe { sys::ioctl(pagemap.as_fd(), sys::PAGEMAP_SCAN, &mut arg)? } as usize;
        for r in &regions[..n.min(regions.len())] {
            let (s, e) = (r.start as usize, r.end as usize);
            if s > cursor {
                // No VMA there: the scan skips it.
                out.add(cursor - addr, s - cursor, PageState::NotPopulated);
            }
            out.add(s - addr, e - s, PageState::from_categories(r.categories));
            cursor = e;
        }
        let walk_end = arg.walk_end as usize;
        if walk_end > cursor {
            out.add(cursor - addr, walk_end - cursor, PageState::NotPopulated);
            cursor = walk_end;
        }
        if n == 0 && walk_end <= cursor && cursor < end {
            // The kernel made no progress; do not spin.
            out.add(cursor - addr, end - cursor, PageState::NotPopulated);
            cursor = end;
        }
    }
    Ok(out)
}
