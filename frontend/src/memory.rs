//! Guest RAM: one memfd, mapped `MAP_SHARED` here and handed to the backend with
//! SET_MEM_TABLE, so both processes see the same pages, as with QEMU's
//! `memory-backend-memfd,share=on`.
//!
//! Every access goes through vm-memory's bounds-checked, volatile accessors: the backend
//! writes this memory concurrently, so no Rust reference into it is ever formed.

use std::ffi::CStr;
use std::fmt;
use std::fs::File;
use std::io;
use std::sync::atomic::Ordering;

use rustix::fs::MemfdFlags;
use vhost::VhostUserMemoryRegionInfo;
use vm_memory::{
    AtomicAccess, Bytes, FileOffset, GuestAddress, GuestMemoryBackend, GuestMemoryMmap,
    GuestMemoryRegion,
};

/// Where guest RAM starts in guest-physical space. Not 0, so that a backend confusing guest
/// addresses with offsets into the region is caught, and so that GPA 0 is outside RAM.
pub const RAM_BASE: u64 = 0x10_0000;

/// Errors of guest RAM.
#[derive(Debug)]
pub enum MemoryError {
    /// memfd_create or ftruncate failed.
    Memfd(io::Error),
    /// vm-memory could not map the memfd.
    Map(String),
    /// An access fell outside guest RAM.
    OutOfRange {
        /// Guest-physical address of the access.
        gpa: u64,
        /// Its length.
        len: usize,
    },
    /// vm-memory refused the access.
    Access(vm_memory::GuestMemoryError),
}

impl fmt::Display for MemoryError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            MemoryError::Memfd(e) => write!(f, "guest RAM memfd: {e}"),
            MemoryError::Map(e) => write!(f, "mapping guest RAM: {e}"),
            MemoryError::OutOfRange { gpa, len } => {
                write!(f, "guest access {gpa:#x}+{len:#x} outside guest RAM")
            }
            MemoryError::Access(e) => write!(f, "guest memory access: {e}"),
        }
    }
}

impl std::error::Error for MemoryError {}

impl From<vm_memory::GuestMemoryError> for MemoryError {
    fn from(e: vm_memory::GuestMemoryError) -> Self {
        MemoryError::Access(e)
    }
}

/// The guest's RAM: a single memfd-backed region at [`RAM_BASE`].
#[derive(Debug)]
pub struct GuestRam {
    mem: GuestMemoryMmap,
    size: u64,
}

impl GuestRam {
    /// Creates `size` bytes of guest RAM (rounded up to whole pages) in a fresh memfd.
    pub fn new(size: usize) -> Result<Self, MemoryError> {
        Self::with_backing(size, None)
    }

    /// Like [`GuestRam::new`], but the memfd holds only `backing` bytes when given: a region
    /// larger than its file, as a broken or hostile VMM may announce. Touching RAM past
    /// `backing` is SIGBUS, for this process as for the backend.
    pub fn with_backing(size: usize, backing: Option<usize>) -> Result<Self, MemoryError> {
        let size = size.div_ceil(4096).max(1) * 4096;
        let name: &CStr = c"zerodax-frontend-ram";
        let file = File::from(
            rustix::fs::memfd_create(name, MemfdFlags::CLOEXEC)
                .map_err(|e| MemoryError::Memfd(e.into()))?,
        );
        file.set_len(backing.map_or(size, |b| b.min(size)) as u64)
            .map_err(MemoryError::Memfd)?;
        let mem = GuestMemoryMmap::from_ranges_with_files([(
            GuestAddress(RAM_BASE),
            size,
            Some(FileOffset::new(file, 0)),
        )])
        .map_err(|e| MemoryError::Map(e.to_string()))?;
        Ok(Self {
            mem,
            size: size as u64,
        })
    }

    /// The vm-memory view, for code that wants its accessors directly.
    pub fn memory(&self) -> &GuestMemoryMmap {
        &self.mem
    }

    /// Bytes of guest RAM.
    pub fn size(&self) -> u64 {
        self.size
    }

    /// First guest-physical address past RAM.
    pub fn end(&self) -> u64 {
        RAM_BASE + self.size
    }

    /// The SET_MEM_TABLE entries (one region, with the memfd to pass).
    pub fn region_infos(&self) -> Result<Vec<VhostUserMemoryRegionInfo>, MemoryError> {
        self.mem
            .iter()
            .map(|r| {
                VhostUserMemoryRegionInfo::from_guest_region(r)
                    .map_err(|e| MemoryError::Map(e.to_string()))
            })
            .collect()
    }

    fn check(&self, gpa: u64, len: usize) -> Result<GuestAddress, MemoryError> {
        let end = gpa.checked_add(len as u64);
        match end {
            Some(end) if gpa >= RAM_BASE && end <= self.end() => Ok(GuestAddress(gpa)),
            _ => Err(MemoryError::OutOfRange { gpa, len }),
        }
    }

    /// The frontend's (VMM's) virtual address of `gpa`: vhost-user ring addresses are given
    /// in the frontend's address space and translated by the backend through the memory table.
    pub fn host_address(&self, gpa: u64) -> Result<u64, MemoryError> {
        let addr = self.check(gpa, 1)?;
        let region = self
            .mem
            .find_region(addr)
            .ok_or(MemoryError::OutOfRange { gpa, len: 1 })?;
        let offset = gpa - region.start_addr().0;
        Ok(region.as_ptr() as u64 + offset)
    }

    /// Copies `data` into guest RAM at `gpa`.
    pub fn write(&self, gpa: u64, data: &[u8]) -> Result<(), MemoryError> {
        let addr = self.check(gpa, data.len())?;
        self.mem.write_slice(data, addr)?;
        Ok(())
    }

    /// Copies guest RAM at `gpa` into `buf`.
    pub fn read(&self, gpa: u64, buf: &mut [u8]) -> Result<(), MemoryError> {
        let addr = self.check(gpa, buf.len())?;
        self.mem.read_slice(buf, addr)?;
        Ok(())
    }

    /// Fills `len` bytes at `gpa` with `byte` (to poison reply buffers before a request).
    pub fn fill(&self, gpa: u64, len: usize, byte: u8) -> Result<(), MemoryError> {
        let chunk = [byte; 4096];
        let mut done = 0usize;
        while done < len {
            let n = (len - done).min(chunk.len());
            self.write(gpa + done as u64, &chunk[..n])?;
            done += n;
        }
        Ok(())
    }

    /// Atomic store (ring indices the backend reads concurrently).
    pub fn store<T: AtomicAccess>(&self, gpa: u64, val: T) -> Result<(), MemoryError> {
        let addr = self.check(gpa, std::mem::size_of::<T>())?;
        self.mem.store(val, addr, Ordering::Release)?;
        Ok(())
    }

    /// Atomic load (ring indices the backend writes concurrently).
    pub fn load<T: AtomicAccess>(&self, gpa: u64) -> Result<T, MemoryError> {
        let addr = self.check(gpa, std::mem::size_of::<T>())?;
        Ok(self.mem.load(addr, Ordering::Acquire)?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ram_is_bounds_checked_and_shared_through_the_memfd() {
        let ram = GuestRam::new(10_000).unwrap();
        assert_eq!(ram.size(), 12_288);
        ram.write(RAM_BASE + 5, b"hello").unwrap();
        let mut b = [0u8; 5];
        ram.read(RAM_BASE + 5, &mut b).unwrap();
        assert_eq!(&b, b"hello");
        assert!(ram.write(RAM_BASE - 1, b"x").is_err());
        assert!(ram.write(ram.end() - 1, b"xy").is_err());
        assert!(ram.read(u64::MAX - 1, &mut b).is_err());
        ram.store::<u16>(RAM_BASE + 16, 0xBEEF).unwrap();
        assert_eq!(ram.load::<u16>(RAM_BASE + 16).unwrap(), 0xBEEF);
        let infos = ram.region_infos().unwrap();
        assert_eq!(infos.len(), 1);
        assert_eq!(infos[0].guest_phys_addr, RAM_BASE);
        assert_eq!(infos[0].memory_size, ram.size());
        assert!(infos[0].mmap_handle >= 0);
        assert_eq!(
            ram.host_address(RAM_BASE + 5).unwrap(),
            infos[0].userspace_addr + 5
        );
        // The memfd really holds the bytes (what the backend maps).
        let mut via_fd = [0u8; 5];
        // SAFETY: mmap_handle is the memfd owned by `ram`, alive for this call; pread writes
        // at most 5 bytes into the 5-byte buffer.
        let n = unsafe { libc::pread(infos[0].mmap_handle, via_fd.as_mut_ptr().cast(), 5, 5) };
        assert_eq!(n, 5);
        assert_eq!(&via_fd, b"hello");
    }
}
