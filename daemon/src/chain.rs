//! Descriptor-chain I/O: the request and reply buffers of one FUSE request, as a transport
//! holds them (virtiofsd's `descriptor_utils`).
//!
//! [`Chain`] is what the dispatcher (`server`) reads a request from and writes its reply to.
//! Two kinds of chain implement it:
//!
//! - `GuestChain` (crate-internal: only `vhost_user` builds them): a virtqueue descriptor
//!   chain over guest memory (vm-memory), checked against that memory when it is built. WRITE payloads go from its readable buffers
//!   straight into `pwritev`, READ data straight from `preadv` into its writable buffers
//!   (raw iovecs over guest memory: no copy in the daemon).
//! - [`BufChain`]: plain byte buffers, for tests and tools.
//!
//! This module knows nothing of FUSE or of vhost-user: `vhost_user` (the queues) builds
//! chains, `server` (the dispatch) uses them, and neither is imported here.

use std::io;
use std::os::fd::{AsRawFd, BorrowedFd};

use virtio_queue::desc::split::Descriptor;
use vm_memory::{GuestMemoryBackend, GuestMemoryMmap, VolatileSlice};

use crate::fs::aligned;

/// Guest memory as the backend maps it (no dirty-page bitmap: no live migration).
pub(crate) type GuestMem = GuestMemoryMmap<()>;

/// Iovecs per preadv/pwritev call (the kernel's UIO_MAXIOV).
const IOV_MAX: usize = 1024;

/// The request and reply buffers of one FUSE request, as a transport holds them.
///
/// Offsets are byte offsets into the request (readable) or reply (writable) area. Every
/// method checks its range and fails with `EFAULT` outside it; none may panic.
pub trait Chain {
    /// Bytes of request the guest provided (all readable buffers).
    fn request_len(&self) -> usize;
    /// Copies request bytes `[off, off + buf.len())` into `buf`.
    fn read_request(&self, off: usize, buf: &mut [u8]) -> io::Result<()>;
    /// Writes request bytes `[off, request_len)` to `fd` at `file_off` (pwritev, looping);
    /// returns bytes written (short only if the file refused more). `direct`: `fd` was
    /// opened O_DIRECT, so buffers of the daemon's own go through an aligned copy.
    fn write_request_to_file(
        &self,
        off: usize,
        fd: BorrowedFd<'_>,
        direct: bool,
        file_off: u64,
    ) -> io::Result<usize>;
    /// Bytes the reply may take (all writable buffers).
    fn reply_room(&self) -> usize;
    /// Writes `data` into the reply area at `at`.
    fn write_reply(&mut self, at: usize, data: &[u8]) -> io::Result<()>;
    /// Reads up to `len` bytes of `fd` at `file_off` into the reply area at `at` (preadv,
    /// looping until `len` or end of file); returns bytes read. `direct` as for
    /// [`Chain::write_request_to_file`].
    fn read_file_to_reply(
        &mut self,
        at: usize,
        len: usize,
        fd: BorrowedFd<'_>,
        direct: bool,
        file_off: u64,
    ) -> io::Result<usize>;
}

/// A [`Chain`] over plain byte buffers, for tests and tools.
#[derive(Debug, Clone, Default)]
pub struct BufChain {
    /// The request bytes.
    pub request: Vec<u8>,
    /// The reply area; its length is the room.
    pub reply: Vec<u8>,
}

impl BufChain {
    /// A chain carrying `request` with `room` bytes for the reply.
    pub fn new(request: Vec<u8>, room: usize) -> Self {
        Self {
            request,
            reply: vec![0; room],
        }
    }
}

fn efault() -> io::Error {
    io::Error::from_raw_os_error(libc::EFAULT)
}

/// Moves `len` bytes with positioned reads or writes, `step(done)` moving what one call can
/// from `done` bytes in: retried on EINTR, ended early by a call that moves nothing (end of
/// file, or a file that takes no more). An error after some bytes moved reports those bytes,
/// as read(2) and write(2) do.
fn transfer(len: usize, mut step: impl FnMut(usize) -> io::Result<usize>) -> io::Result<usize> {
    let mut done = 0;
    while done < len {
        match step(done) {
            Ok(0) => break,
            Ok(n) => done += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(_) if done > 0 => break,
            Err(e) => return Err(e),
        }
    }
    Ok(done)
}

/// A byte count returned by a syscall, or the errno it set.
fn syscall_len(n: isize) -> io::Result<usize> {
    usize::try_from(n).map_err(|_| io::Error::last_os_error())
}

fn range(off: usize, len: usize, limit: usize) -> io::Result<std::ops::Range<usize>> {
    match off.checked_add(len) {
        Some(end) if end <= limit => Ok(off..end),
        _ => Err(efault()),
    }
}

/// A [`Chain`] over borrowed byte buffers: one request as /dev/fuse returned it whole, and
/// the room its reply is built in.
#[derive(Debug)]
pub struct ByteChain<'b> {
    request: &'b [u8],
    reply: &'b mut [u8],
}

impl<'b> ByteChain<'b> {
    /// A chain carrying `request`, with `reply` as the reply area.
    pub fn new(request: &'b [u8], reply: &'b mut [u8]) -> Self {
        ByteChain { request, reply }
    }
}

// The byte-buffer chains' I/O, on the buffers themselves. These are the daemon's buffers,
// not the client's: I/O on an O_DIRECT file goes through an aligned copy (fs::aligned).

fn read_bytes(request: &[u8], off: usize, buf: &mut [u8]) -> io::Result<()> {
    let r = range(off, buf.len(), request.len())?;
    buf.copy_from_slice(&request[r]);
    Ok(())
}

fn bytes_to_file(
    request: &[u8],
    off: usize,
    fd: BorrowedFd<'_>,
    direct: bool,
    file_off: u64,
) -> io::Result<usize> {
    let data = request.get(off..).ok_or_else(efault)?;
    transfer(data.len(), |done| {
        // An offset past i64::MAX reaches the kernel as the negative loff_t it always did
        // (EINVAL).
        let pos = file_off.saturating_add(done as u64);
        aligned::pwrite(fd, &data[done..], pos, direct)
    })
}

fn write_bytes(reply: &mut [u8], at: usize, data: &[u8]) -> io::Result<()> {
    let r = range(at, data.len(), reply.len())?;
    reply[r].copy_from_slice(data);
    Ok(())
}

fn file_to_bytes(
    reply: &mut [u8],
    at: usize,
    len: usize,
    fd: BorrowedFd<'_>,
    direct: bool,
    file_off: u64,
) -> io::Result<usize> {
    let r = range(at, len, reply.len())?;
    let buf = &mut reply[r];
    transfer(buf.len(), |done| {
        let pos = file_off.saturating_add(done as u64);
        aligned::pread(fd, &mut buf[done..], pos, direct)
    })
}

impl Chain for ByteChain<'_> {
    fn request_len(&self) -> usize {
        self.request.len()
    }

    fn read_request(&self, off: usize, buf: &mut [u8]) -> io::Result<()> {
        read_bytes(self.request, off, buf)
    }

    fn write_request_to_file(
        &self,
        off: usize,
        fd: BorrowedFd<'_>,
        direct: bool,
        file_off: u64,
    ) -> io::Result<usize> {
        bytes_to_file(self.request, off, fd, direct, file_off)
    }

    fn reply_room(&self) -> usize {
        self.reply.len()
    }

    fn write_reply(&mut self, at: usize, data: &[u8]) -> io::Result<()> {
        write_bytes(self.reply, at, data)
    }

    fn read_file_to_reply(
        &mut self,
        at: usize,
        len: usize,
        fd: BorrowedFd<'_>,
        direct: bool,
        file_off: u64,
    ) -> io::Result<usize> {
        file_to_bytes(self.reply, at, len, fd, direct, file_off)
    }
}

impl Chain for BufChain {
    fn request_len(&self) -> usize {
        self.request.len()
    }

    fn read_request(&self, off: usize, buf: &mut [u8]) -> io::Result<()> {
        read_bytes(&self.request, off, buf)
    }

    fn write_request_to_file(
        &self,
        off: usize,
        fd: BorrowedFd<'_>,
        direct: bool,
        file_off: u64,
    ) -> io::Result<usize> {
        bytes_to_file(&self.request, off, fd, direct, file_off)
    }

    fn reply_room(&self) -> usize {
        self.reply.len()
    }

    fn write_reply(&mut self, at: usize, data: &[u8]) -> io::Result<()> {
        write_bytes(&mut self.reply, at, data)
    }

    fn read_file_to_reply(
        &mut self,
        at: usize,
        len: usize,
        fd: BorrowedFd<'_>,
        direct: bool,
        file_off: u64,
    ) -> io::Result<usize> {
        file_to_bytes(&mut self.reply, at, len, fd, direct, file_off)
    }
}

/// The buffers of one descriptor chain, checked against guest memory.
pub(crate) struct GuestChain<'m> {
    readable: Vec<VolatileSlice<'m, ()>>,
    writable: Vec<VolatileSlice<'m, ()>>,
    readable_len: usize,
    writable_len: usize,
}

impl<'m> GuestChain<'m> {
    /// Collects the chain's buffers. The second value is true when the chain is malformed:
    /// a buffer outside guest memory, a readable buffer after a writable one, more bytes
    /// than fit a usize, or a chain cut short. Each area keeps only its buffers up to the
    /// first bad one, so the bytes it holds are at their true offsets: a request whose
    /// header was readable still gets an error reply in a valid reply buffer.
    ///
    /// Cut short: the walk ended on a descriptor that still has NEXT. virtio-queue's
    /// iterator ends a walk without saying why; with NEXT set that is never the chain's
    /// end but a chain it refused to follow: one that revisits a descriptor (it stops after
    /// as many descriptors as the table, direct or indirect, holds, and a longer chain
    /// must repeat one), a next index past the table, a descriptor or indirect table it
    /// cannot read, or more than 4 GiB in all.
    pub fn new(mem: &'m GuestMem, descriptors: impl Iterator<Item = Descriptor>) -> (Self, bool) {
        let mut chain = GuestChain {
            readable: Vec::new(),
            writable: Vec::new(),
            readable_len: 0,
            writable_len: 0,
        };
        let (mut readable_ok, mut writable_ok) = (true, true);
        let mut seen_writable = false;
        let mut cut_short = false;
        for d in descriptors {
            cut_short = d.has_next();
            let len = d.len() as usize;
            let write = d.is_write_only();
            seen_writable |= write;
            if !write && seen_writable {
                readable_ok = false;
                continue;
            }
            let ok = if write {
                &mut writable_ok
            } else {
                &mut readable_ok
            };
            if !*ok || len == 0 {
                continue;
            }
            let slices: Result<Vec<_>, _> =
                GuestMemoryBackend::get_slices(mem, d.addr(), len).collect();
            let (list, total) = if write {
                (&mut chain.writable, &mut chain.writable_len)
            } else {
                (&mut chain.readable, &mut chain.readable_len)
            };
            match (slices, total.checked_add(len)) {
                (Ok(slices), Some(t)) => {
                    *total = t;
                    list.extend(slices);
                }
                _ => *ok = false,
            }
        }
        (chain, cut_short || !(readable_ok && writable_ok))
    }
}

/// Calls `f` for each piece of `slices` that lies in `[off, off + len)`, with the offset of
/// that piece relative to `off`. Fails with EFAULT if the range does not fit.
fn for_range<'m>(
    slices: &[VolatileSlice<'m, ()>],
    total: usize,
    off: usize,
    len: usize,
    mut f: impl FnMut(usize, VolatileSlice<'m, ()>) -> io::Result<()>,
) -> io::Result<()> {
    if off.checked_add(len).is_none_or(|end| end > total) {
        return Err(efault());
    }
    let (mut skip, mut left, mut done) = (off, len, 0);
    for s in slices {
        if left == 0 {
            break;
        }
        if skip >= s.len() {
            skip -= s.len();
            continue;
        }
        let n = (s.len() - skip).min(left);
        let piece = s.subslice(skip, n).map_err(|_| efault())?;
        f(done, piece)?;
        skip = 0;
        left -= n;
        done += n;
    }
    Ok(())
}

/// Raw iovecs over guest memory for preadv/pwritev. These stay libc calls: rustix's (like
/// std's) take `IoSlice`/`IoSliceMut`, i.e. Rust slices, which memory a guest may write
/// at any moment must not become.
fn iovecs(
    slices: &[VolatileSlice<'_, ()>],
    total: usize,
    off: usize,
    len: usize,
) -> io::Result<Vec<libc::iovec>> {
    let mut iov = Vec::new();
    for_range(slices, total, off, len, |_, piece| {
        if iov.len() < IOV_MAX {
            iov.push(libc::iovec {
                iov_base: piece.ptr_guard_mut().as_ptr().cast(),
                iov_len: piece.len(),
            });
        }
        Ok(())
    })?;
    Ok(iov)
}

impl Chain for GuestChain<'_> {
    fn request_len(&self) -> usize {
        self.readable_len
    }

    fn read_request(&self, off: usize, buf: &mut [u8]) -> io::Result<()> {
        for_range(
            &self.readable,
            self.readable_len,
            off,
            buf.len(),
            |at, piece| {
                piece.copy_to(&mut buf[at..at + piece.len()]);
                Ok(())
            },
        )
    }

    fn write_request_to_file(
        &self,
        off: usize,
        fd: BorrowedFd<'_>,
        // The guest's own buffers: aligned for O_DIRECT or not as the guest laid them out.
        _direct: bool,
        file_off: u64,
    ) -> io::Result<usize> {
        let len = self.readable_len.checked_sub(off).ok_or_else(efault)?;
        transfer(len, |done| {
            let iov = iovecs(&self.readable, self.readable_len, off + done, len - done)?;
            let pos = file_off.saturating_add(done as u64) as libc::off_t;
            // SAFETY: every iovec points into guest memory that `self.readable` keeps mapped
            // (the memory guard outlives this chain) and was bounds-checked when the chain
            // was built; pwritev only reads through them. The guest may change the bytes
            // concurrently, which only changes what is written.
            let n = unsafe { libc::pwritev(fd.as_raw_fd(), iov.as_ptr(), iov.len() as i32, pos) };
            syscall_len(n)
        })
    }

    fn reply_room(&self) -> usize {
        self.writable_len
    }

    fn write_reply(&mut self, at: usize, data: &[u8]) -> io::Result<()> {
        for_range(
            &self.writable,
            self.writable_len,
            at,
            data.len(),
            |from, piece| {
                piece.copy_from(&data[from..from + piece.len()]);
                Ok(())
            },
        )
    }

    fn read_file_to_reply(
        &mut self,
        at: usize,
        len: usize,
        fd: BorrowedFd<'_>,
        _direct: bool,
        file_off: u64,
    ) -> io::Result<usize> {
        transfer(len, |done| {
            let iov = iovecs(&self.writable, self.writable_len, at + done, len - done)?;
            let pos = file_off.saturating_add(done as u64) as libc::off_t;
            // SAFETY: every iovec points into device-writable guest memory that
            // `self.writable` keeps mapped and that was bounds-checked when the chain was
            // built; the guest gave these buffers to the device until the chain is used.
            let n = unsafe { libc::preadv(fd.as_raw_fd(), iov.as_ptr(), iov.len() as i32, pos) };
            syscall_len(n)
        })
    }
}

#[cfg(test)]
mod tests {
    use virtio_bindings::bindings::virtio_ring::{
        VRING_DESC_F_INDIRECT, VRING_DESC_F_NEXT, VRING_DESC_F_WRITE,
    };
    use virtio_queue::{Queue, QueueOwnedT, QueueT};
    use vm_memory::{Bytes, GuestAddress};

    use super::*;

    const QUEUE_SIZE: u16 = 16;
    const DESC_TABLE: u64 = 0x1000;
    const AVAIL_RING: u64 = 0x2000;
    const USED_RING: u64 = 0x3000;
    const INDIRECT_TABLE: u64 = 0x4000;
    const BUFFERS: u64 = 0x8000;

    const NEXT: u16 = VRING_DESC_F_NEXT as u16;
    const WRITE: u16 = VRING_DESC_F_WRITE as u16;

    /// Descriptor `i` of a table: a 64-byte buffer of its own, `flags`, next index `next`.
    fn desc(i: u64, flags: u16, next: u16) -> Descriptor {
        Descriptor::new(BUFFERS + i * 0x100, 64, flags, next)
    }

    /// Publishes one chain (head: descriptor 0 of `direct`; `indirect` is the table at
    /// INDIRECT_TABLE), pops it as the queue worker does, and checks it like `serve_chain`.
    /// Returns (readable bytes, writable bytes, malformed).
    fn check(direct: &[Descriptor], indirect: &[Descriptor]) -> (usize, usize, bool) {
        let mem = GuestMem::from_ranges(&[(GuestAddress(0), 0x10000)]).unwrap();
        let tables = [(DESC_TABLE, direct), (INDIRECT_TABLE, indirect)];
        for (base, table) in tables {
            for (i, d) in table.iter().enumerate() {
                mem.write_obj(*d, GuestAddress(base + 16 * i as u64))
                    .unwrap();
            }
        }
        // Available ring: flags 0, idx 1, ring[0] = head 0.
        mem.write_obj([0u16, 1, 0], GuestAddress(AVAIL_RING))
            .unwrap();
        let mut queue = Queue::new(QUEUE_SIZE).unwrap();
        queue
            .try_set_desc_table_address(GuestAddress(DESC_TABLE))
            .unwrap();
        queue
            .try_set_avail_ring_address(GuestAddress(AVAIL_RING))
            .unwrap();
        queue
            .try_set_used_ring_address(GuestAddress(USED_RING))
            .unwrap();
        queue.set_ready(true);
        let chain = queue.iter(&mem).unwrap().next().unwrap();
        let (guest, broken) = GuestChain::new(&mem, chain);
        (guest.readable_len, guest.writable_len, broken)
    }

    fn indirect_head(entries: u32) -> Descriptor {
        Descriptor::new(
            INDIRECT_TABLE,
            entries * 16,
            VRING_DESC_F_INDIRECT as u16,
            0,
        )
    }

    #[test]
    fn well_formed_chains_pass() {
        let chain = [
            desc(0, NEXT, 1),
            desc(1, WRITE | NEXT, 2),
            desc(2, WRITE, 0),
        ];
        assert_eq!(check(&chain, &[]), (64, 128, false));
        assert_eq!(check(&[indirect_head(3)], &chain), (64, 128, false));
    }

    #[test]
    fn a_chain_that_revisits_a_descriptor_is_malformed() {
        // 0 -> 1 -> 2 -> 1 -> ...: only writable descriptors repeat, so no other check
        // (readable after writable) can catch it.
        let looping = [
            desc(0, NEXT, 1),
            desc(1, WRITE | NEXT, 2),
            desc(2, WRITE | NEXT, 1),
        ];
        assert!(check(&looping, &[]).2, "loop in the descriptor table");
        // virtio-queue stops an indirect walk after the table's length: one lap of the
        // loop, which must not pass for a whole chain.
        assert!(
            check(&[indirect_head(3)], &looping).2,
            "loop in an indirect table"
        );
    }

    #[test]
    fn a_next_index_past_the_table_is_malformed() {
        let past = [desc(0, NEXT, 1), desc(1, WRITE | NEXT, 9)];
        assert!(check(&[indirect_head(2)], &past).2);
        let past = [desc(0, NEXT, 1), desc(1, WRITE | NEXT, QUEUE_SIZE)];
        assert!(check(&past, &[]).2);
    }
}
