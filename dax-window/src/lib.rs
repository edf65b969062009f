//! The DAX window: a range of address space into which file ranges are mapped so that
//! their holes read as the kernel's shared zero page (nothing allocated, nothing copied)
//! and their data as the file's own pages. The first write to a hole of a writable
//! mapping allocates the block in the file and puts the file page where the zero page
//! was, in the manner of fsdax's pfn_mkwrite path, through a userfaultfd write-protect
//! handler. A window without that handler ([`Window::without_fault_handler`]) needs no
//! userfaultfd at all: enough for a VMM's SHMEM_MAP target. See docs/dax-window.md for the
//! design.

#![warn(missing_docs)]

mod extents;
mod pages;
pub mod procfs;
mod sys;
mod uffd;
mod volatile;
mod window;

pub use extents::{data_extents, hole_extents, Extent};
pub use pages::{page_states, PageRun, PageState, PageStates, PAGE_SIZE};
pub use window::{Granule, MappingInfo, Window, WindowOptions, WindowStats, HUGE_SIZE};

use std::fmt;
use std::io;

/// Errors of window operations.
#[derive(Debug)]
pub enum Error {
    /// A system call failed.
    Io {
        /// The call or step that failed, as printed first in the message.
        op: &'static str,
        /// The error the kernel returned.
        source: io::Error,
    },
    /// An offset or length is not 4 KiB aligned.
    Unaligned,
    /// A range is empty, overflows, or leaves the window.
    InvalidRange(&'static str),
    /// The range overlaps a live mapping.
    Overlap,
    /// An unmap cuts through a mapping instead of covering it whole.
    PartialUnmap,
    /// The file range starts at or past EOF; or a window read or write would touch a file
    /// page at or past its file's current EOF (a load or store there is SIGBUS).
    BeyondEof,
    /// A writable mapping was asked of a file that cannot be opened for writing.
    NotWritable,
    /// A window write would touch memory outside writable mappings (unmapped or read-only:
    /// a store there is SIGSEGV).
    ReadOnly,
    /// A window read or write would touch a page poisoned by a failed upgrade (SIGBUS).
    Poisoned {
        /// Offset of the poisoned page from the window's start.
        window_offset: usize,
    },
    /// The operation needs the window's userfaultfd fault handler (a writable `map_file`,
    /// whose holes are upgraded on the first write), and the window was made without one
    /// (`Window::without_fault_handler`). Nothing was changed.
    NoFaultHandler,
    /// Mapping would take the process too close to `vm.max_map_count`.
    VmaBudget {
        /// VMAs the mapping may add: one per data extent and per hole, two for the split of
        /// the memory around it.
        needed: usize,
        /// VMAs the process has now (/proc/self/maps).
        in_use: usize,
        /// VMAs kept free for the fault handler's own splits (`WindowOptions::vma_headroom`).
        headroom: usize,
        /// The system's `vm.max_map_count`.
        max_map_count: usize,
    },
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::Io { op, source } => write!(f, "{op}: {source}"),
            Error::Unaligned => write!(f, "offset or length not 4 KiB aligned"),
            Error::InvalidRange(why) => write!(f, "invalid range: {why}"),
            Error::Overlap => write!(f, "range overlaps a live mapping"),
            Error::PartialUnmap => write!(f, "unmap must cover whole mappings"),
            Error::BeyondEof => write!(f, "file range starts at or past end of file"),
            Error::NotWritable => write!(f, "file is not open for writing"),
            Error::ReadOnly => write!(f, "range is not inside writable mappings"),
            Error::Poisoned { window_offset } => {
                write!(f, "page at window offset {window_offset:#x} is poisoned")
            }
            Error::NoFaultHandler => write!(
                f,
                "the window has no fault handler (userfaultfd), which a writable map_file needs"
            ),
            Error::VmaBudget {
                needed,
                in_use,
                headroom,
                max_map_count,
            } => write!(
                f,
                "VMA budget exhausted: {needed} more VMAs wanted, {in_use} in use, \
                 {headroom} kept free, vm.max_map_count = {max_map_count}"
            ),
        }
    }
}

impl std::error::Error for Error {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            Error::Io { source, .. } => Some(source),
            _ => None,
        }
    }
}

/// The result of window operations.
pub type Result<T> = std::result::Result<T, Error>;
