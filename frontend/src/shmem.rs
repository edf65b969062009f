//! The VMM half of the virtio-fs DAX window: the backend-request channel
//! (SET_BACKEND_REQ_FD) served on a thread of its own ([`BackendReqServer`]), so a backend
//! request is answered while a guest request waits for it. SHMEM_MAP and SHMEM_UNMAP of
//! region 0 go into a dax-window [`Window`] whose unmapped state is anonymous private
//! `PROT_READ` memory (it reads the zero page) ([`ShmemWindow`]). The window has no fault
//! handler ([`Window::without_fault_handler`]): as QEMU, which only mmaps `MAP_FIXED` over
//! its reserved region, this half maps exactly what the backend says and needs no
//! userfaultfd. The vhost-user rules are enforced, so a backend bug cannot hide behind a lenient VMM: a map over a live mapping and
//! an unmap that cuts a mapping are refused (the backend gets an error ack), as is anything
//! outside the window or on another shmid.
//!
//! The driver owns this half; the guest's use of the window is [`crate::dax`].

use std::fmt;
use std::io;
use std::os::fd::{AsRawFd, BorrowedFd, OwnedFd, RawFd};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::thread::JoinHandle;

use dax_window::Window;
use vhost::vhost_user::message::{VhostUserMMap, VhostUserMMapFlags};
use vhost::vhost_user::{FrontendReqHandler, HandlerResult, VhostUserFrontendReqHandler};

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
    ///
    /// The window has no fault handler, so no userfaultfd is opened: SHMEM_MAP and
    /// SHMEM_UNMAP only mmap over it, and its holes are the backend's business (not mapped,
    /// they read the zero page; mapped from the file for writing, the filesystem allocates
    /// them on the first store).
    pub fn create(&self, len: u64) -> dax_window::Result<&Window> {
        let len = usize::try_from(len)
            .map_err(|_| dax_window::Error::InvalidRange("window too large"))?;
        let w = Window::without_fault_handler(len)?;
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
    pub fn start(reply_ack: bool) -> io::Result<Self> {
        let shmem = Arc::new(ShmemWindow::default());
        let mut handler = FrontendReqHandler::new(Arc::clone(&shmem)).map_err(io::Error::other)?;
        handler.set_reply_ack_flag(reply_ack);
        let backend_end = handler.get_tx_raw_fd();
        // SAFETY: the handler's own end is open while the handler lives; dup makes an owned
        // descriptor of the same socket.
        let stop = unsafe { BorrowedFd::borrow_raw(handler.as_raw_fd()) }.try_clone_to_owned()?;
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
            })?;
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

#[cfg(test)]
mod tests {
    use std::fs::File;
    use std::os::unix::fs::FileExt;

    use super::*;

    fn req(shm_offset: u64, len: u64, writable: bool) -> VhostUserMMap {
        VhostUserMMap {
            shmid: 0,
            fd_offset: 0,
            shm_offset,
            len,
            flags: if writable {
                VhostUserMMapFlags::WRITABLE.bits()
            } else {
                0
            },
            ..Default::default()
        }
    }

    #[test]
    fn region_0_has_no_fault_handler_and_serves_map_and_unmap() {
        let dir = scratch::TempDir::new("shmem-test").unwrap();
        let path = dir.path().join("f");
        let data = vec![0xabu8; 8192];
        std::fs::write(&path, &data).unwrap();
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(&path)
            .unwrap();

        let shmem = ShmemWindow::default();
        let w = shmem.create(4 << 20).unwrap();
        assert!(!w.has_fault_handler(), "the VMM half opens no userfaultfd");

        shmem.shmem_map(&req(1 << 20, 8192, false), &file).unwrap();
        let mut buf = vec![0u8; 8192];
        w.read_at(1 << 20, &mut buf).unwrap();
        assert_eq!(buf, data);
        // A map over a live mapping is still refused.
        assert!(shmem.shmem_map(&req(1 << 20, 4096, false), &file).is_err());
        shmem.shmem_unmap(&req(1 << 20, 8192, false)).unwrap();
        w.read_at(1 << 20, &mut buf).unwrap();
        assert!(buf.iter().all(|&b| b == 0), "unmapped space reads zeros");

        // A writable SHMEM_MAP takes stores into the file.
        shmem.shmem_map(&req(0, 8192, true), &file).unwrap();
        w.write_at(100, b"vmm").unwrap();
        shmem.shmem_unmap(&req(0, 8192, true)).unwrap();
        let mut got = [0u8; 3];
        File::open(&path)
            .unwrap()
            .read_exact_at(&mut got, 100)
            .unwrap();
        assert_eq!(&got, b"vmm");

        // What only the handler can do is refused, not half done.
        assert!(matches!(
            w.map_file(0, 8192, &file, 0, true),
            Err(dax_window::Error::NoFaultHandler)
        ));
        assert!(w.mappings().is_empty());
        assert_eq!(
            shmem.stats(),
            ShmemStats {
                maps: 2,
                unmaps: 2,
                refused: 1
            }
        );
    }
}
