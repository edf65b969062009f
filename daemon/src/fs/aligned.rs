//! Page-aligned bounce buffers for I/O on descriptors opened O_DIRECT (`serve
//! --allow-direct-io`).
//!
//! O_DIRECT asks the host for aligned buffers, offsets and lengths. The offset and length are
//! the client's: an unaligned one fails EINVAL, as it would on the host. But where the daemon
//! moves the data through a buffer of its own (a request copied out of the transport, the
//! /dev/fuse transport's read buffer, the test chain), that buffer's alignment is the
//! daemon's, not the client's: [`pread`] and [`pwrite`] then go through a page-aligned copy,
//! so the client's correct request does not fail on the daemon's buffer.

use std::alloc::{self, Layout};
use std::io;
use std::os::fd::BorrowedFd;

/// Alignment of the bounce buffer: a page, which satisfies every block device's O_DIRECT
/// memory alignment.
pub const ALIGN: usize = 4096;

/// A zeroed, page-aligned heap buffer.
struct AlignedBuf {
    ptr: std::ptr::NonNull<u8>,
    len: usize,
    layout: Layout,
}

impl AlignedBuf {
    fn new(len: usize) -> io::Result<Self> {
        let nomem = || io::Error::from_raw_os_error(libc::ENOMEM);
        let size = len
            .max(1)
            .checked_next_multiple_of(ALIGN)
            .ok_or_else(nomem)?;
        let layout = Layout::from_size_align(size, ALIGN).map_err(|_| nomem())?;
        // SAFETY: `layout` has a non-zero size.
        let raw = unsafe { alloc::alloc_zeroed(layout) };
        let ptr = std::ptr::NonNull::new(raw).ok_or_else(nomem)?;
        Ok(Self { ptr, len, layout })
    }

    fn as_slice(&self) -> &[u8] {
        // SAFETY: `ptr` is a live allocation of at least `len` initialised (zeroed) bytes,
        // borrowed as long as `self`.
        unsafe { std::slice::from_raw_parts(self.ptr.as_ptr(), self.len) }
    }

    fn as_mut_slice(&mut self) -> &mut [u8] {
        // SAFETY: as `as_slice`, and `&mut self` makes the borrow unique.
        unsafe { std::slice::from_raw_parts_mut(self.ptr.as_ptr(), self.len) }
    }
}

impl Drop for AlignedBuf {
    fn drop(&mut self) {
        // SAFETY: `ptr` came from `alloc_zeroed` with this very `layout`, freed only here.
        unsafe { alloc::dealloc(self.ptr.as_ptr(), self.layout) }
    }
}

/// Whether `fd` was opened O_DIRECT (false if its flags cannot be read).
pub fn is_direct(fd: BorrowedFd<'_>) -> bool {
    rustix::fs::fcntl_getfl(fd).is_ok_and(|f| f.contains(rustix::fs::OFlags::DIRECT))
}

fn misaligned(ptr: *const u8) -> bool {
    ptr as usize % ALIGN != 0
}

/// pread(2) into `buf`; with `direct` and `buf` not page aligned, through an aligned copy.
/// The offset reaches the kernel as given (past i64::MAX: EINVAL there).
pub fn pread(fd: BorrowedFd<'_>, buf: &mut [u8], offset: u64, direct: bool) -> io::Result<usize> {
    if !direct || !misaligned(buf.as_ptr()) {
        return Ok(rustix::io::pread(fd, buf, offset)?);
    }
    let mut bounce = AlignedBuf::new(buf.len())?;
    let n = rustix::io::pread(fd, bounce.as_mut_slice(), offset)?;
    let n = n.min(buf.len());
    buf[..n].copy_from_slice(&bounce.as_slice()[..n]);
    Ok(n)
}

/// pwrite(2) of `buf`; with `direct` and `buf` not page aligned, through an aligned copy.
/// The offset reaches the kernel as given (past i64::MAX: EINVAL there).
pub fn pwrite(fd: BorrowedFd<'_>, buf: &[u8], offset: u64, direct: bool) -> io::Result<usize> {
    if !direct || !misaligned(buf.as_ptr()) {
        return Ok(rustix::io::pwrite(fd, buf, offset)?);
    }
    let mut bounce = AlignedBuf::new(buf.len())?;
    bounce.as_mut_slice().copy_from_slice(buf);
    Ok(rustix::io::pwrite(fd, bounce.as_slice(), offset)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bounce_buffers_are_page_aligned_and_sized() {
        for len in [0, 1, 4095, 4096, 4097, 1 << 20] {
            let mut b = AlignedBuf::new(len).unwrap();
            assert_eq!(b.as_slice().len(), len);
            assert!(!misaligned(b.as_mut_slice().as_ptr()), "{len}");
            assert!(b.as_slice().iter().all(|&x| x == 0));
        }
    }
}
