//! The VMM's half: the vhost-user conversation that sets a virtio-fs device up, as QEMU's
//! `vhost-user-fs-pci` does it, through the vhost crate's frontend.
//!
//! Sequence: connect, SET_OWNER, GET_FEATURES, GET/SET_PROTOCOL_FEATURES, GET_QUEUE_NUM,
//! SET_FEATURES, SET_MEM_TABLE (the guest RAM memfd), then per queue SET_VRING_NUM, _BASE,
//! _ADDR, _CALL, _ERR, _KICK and finally SET_VRING_ENABLE.
//!
//! Every message runs under a deadline. The vhost crate retries a socket read that timed
//! out (EAGAIN) forever, so socket timeouts alone cannot bound a wait; instead a watchdog
//! thread shuts the socket down when a message overruns its deadline, which turns the
//! blocked read into an error. A backend that stops answering is then an error, not a hang.

use std::fmt;
use std::io;
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use vhost::vhost_user::message::VhostUserHeaderFlag;
use vhost::vhost_user::{Frontend, VhostUserFrontend, VhostUserProtocolFeatures};
use vhost::{VhostBackend, VringConfigData};
use virtio_bindings::bindings::virtio_config::VIRTIO_F_VERSION_1;

use crate::memory::{GuestRam, MemoryError};
use crate::virtqueue::SplitQueue;

/// The virtio feature bit telling that vhost-user protocol features exist.
pub const VHOST_USER_F_PROTOCOL_FEATURES: u64 = 1 << 30;

/// Errors of the vhost-user (VMM) side.
#[derive(Debug)]
pub enum VmmError {
    /// The socket could not be reached before the deadline.
    Connect {
        /// Socket path.
        path: String,
        /// Last error seen.
        error: io::Error,
    },
    /// A vhost-user message failed (includes timeouts and a closed socket).
    VhostUser {
        /// Which step of the setup.
        step: &'static str,
        /// The vhost crate's error.
        error: vhost::Error,
    },
    /// The backend did not answer a message before the deadline (the connection is shut
    /// down and unusable afterwards).
    NoAnswer {
        /// Which step of the setup.
        step: &'static str,
        /// The deadline.
        waited: Duration,
    },
    /// The watchdog thread could not be started.
    Watchdog(io::Error),
    /// The backend lacks a feature a virtio-fs device must offer.
    MissingFeature(&'static str),
    /// The backend offers fewer queues than asked for.
    TooFewQueues {
        /// Queues asked for (hiprio plus request queues).
        want: u64,
        /// Queues the backend offers.
        have: u64,
    },
    /// Guest RAM could not be described to the backend.
    Memory(MemoryError),
}

impl fmt::Display for VmmError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            VmmError::Connect { path, error } => {
                write!(f, "connecting to vhost-user socket {path}: {error}")
            }
            VmmError::VhostUser { step, error } => write!(f, "vhost-user {step}: {error}"),
            VmmError::NoAnswer { step, waited } => {
                write!(
                    f,
                    "vhost-user {step}: no answer from the backend in {waited:?}"
                )
            }
            VmmError::Watchdog(e) => write!(f, "starting the vhost-user watchdog: {e}"),
            VmmError::MissingFeature(what) => write!(f, "backend does not offer {what}"),
            VmmError::TooFewQueues { want, have } => {
                write!(f, "backend offers {have} queues, {want} needed")
            }
            VmmError::Memory(e) => write!(f, "{e}"),
        }
    }
}

impl std::error::Error for VmmError {}

impl From<MemoryError> for VmmError {
    fn from(e: MemoryError) -> Self {
        VmmError::Memory(e)
    }
}

#[derive(Debug, Default)]
struct WatchdogState {
    deadline: Option<Instant>,
    fired: bool,
    stop: bool,
}

/// Shuts a socket down when an armed deadline passes.
#[derive(Debug)]
struct Watchdog {
    shared: Arc<(Mutex<WatchdogState>, Condvar)>,
    thread: Option<JoinHandle<()>>,
}

impl Watchdog {
    /// Watches `fd`, which must stay open until the watchdog is dropped.
    fn new(fd: RawFd) -> io::Result<Self> {
        let shared = Arc::new((Mutex::new(WatchdogState::default()), Condvar::new()));
        let theirs = Arc::clone(&shared);
        let thread = std::thread::Builder::new()
            .name("vhost-user-watchdog".into())
            .spawn(move || {
                let (lock, cv) = &*theirs;
                let mut st = lock.lock().unwrap_or_else(|p| p.into_inner());
                while !st.stop {
                    match st.deadline {
                        None => st = cv.wait(st).unwrap_or_else(|p| p.into_inner()),
                        Some(d) if Instant::now() >= d => {
                            // SAFETY: `fd` is the frontend's socket, kept open until this
                            // thread is joined (Watchdog::drop runs before the socket
                            // closes); shutdown only changes the socket's state.
                            unsafe { libc::shutdown(fd, libc::SHUT_RDWR) };
                            st.fired = true;
                            st.deadline = None;
                        }
                        Some(d) => {
                            let left = d.saturating_duration_since(Instant::now());
                            st = cv
                                .wait_timeout(st, left)
                                .unwrap_or_else(|p| p.into_inner())
                                .0;
                        }
                    }
                }
            })?;
        Ok(Self {
            shared,
            thread: Some(thread),
        })
    }

    fn set(&self, f: impl FnOnce(&mut WatchdogState)) {
        let (lock, cv) = &*self.shared;
        f(&mut lock.lock().unwrap_or_else(|p| p.into_inner()));
        cv.notify_all();
    }

    fn arm(&self, timeout: Duration) {
        self.set(|st| st.deadline = Some(Instant::now() + timeout));
    }

    /// Disarms; true if the deadline passed (and the socket was shut down).
    fn disarm(&self) -> bool {
        let mut fired = false;
        self.set(|st| {
            st.deadline = None;
            fired = st.fired;
        });
        fired
    }
}

impl Drop for Watchdog {
    fn drop(&mut self) {
        self.set(|st| st.stop = true);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// What was agreed with the backend.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Negotiated {
    /// Virtio features the backend offered.
    pub offered_features: u64,
    /// Virtio features acknowledged.
    pub acked_features: u64,
    /// Protocol features the backend offered.
    pub offered_protocol: VhostUserProtocolFeatures,
    /// Protocol features acknowledged.
    pub acked_protocol: VhostUserProtocolFeatures,
    /// Queues the backend supports (GET_QUEUE_NUM; 0 when MQ was not offered).
    pub backend_queues: u64,
}

/// Connects to `path`, retrying while the socket does not exist yet or refuses, until
/// `timeout` passes.
pub fn connect_socket(path: &Path, timeout: Duration) -> Result<UnixStream, VmmError> {
    let deadline = Instant::now() + timeout;
    loop {
        match UnixStream::connect(path) {
            Ok(s) => return Ok(s),
            Err(e)
                if Instant::now() < deadline
                    && matches!(
                        e.kind(),
                        io::ErrorKind::NotFound | io::ErrorKind::ConnectionRefused
                    ) =>
            {
                std::thread::sleep(Duration::from_millis(20));
            }
            Err(error) => {
                return Err(VmmError::Connect {
                    path: path.display().to_string(),
                    error,
                })
            }
        }
    }
}

/// A configured vhost-user-fs device: the vhost-user connection after setup.
pub struct VhostUserFs {
    // Dropped before `frontend`, so the watchdog never touches a closed descriptor.
    watchdog: Watchdog,
    frontend: Frontend,
    negotiated: Negotiated,
    timeout: Duration,
}

impl fmt::Debug for VhostUserFs {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("VhostUserFs")
            .field("negotiated", &self.negotiated)
            .field("timeout", &self.timeout)
            .finish_non_exhaustive()
    }
}

impl VhostUserFs {
    /// Runs one vhost-user exchange under the deadline.
    fn call<T>(
        &mut self,
        step: &'static str,
        f: impl FnOnce(&mut Frontend) -> vhost::Result<T>,
    ) -> Result<T, VmmError> {
        self.watchdog.arm(self.timeout);
        let r = f(&mut self.frontend);
        if self.watchdog.disarm() {
            return Err(VmmError::NoAnswer {
                step,
                waited: self.timeout,
            });
        }
        r.map_err(|error| VmmError::VhostUser { step, error })
    }

    /// Negotiates features over `stream` for `queues` queues (hiprio + request queues),
    /// waiting at most `timeout` for each answer. VIRTIO_F_VERSION_1 and
    /// VHOST_USER_F_PROTOCOL_FEATURES are required; `want_features` (ring features such as
    /// INDIRECT_DESC and EVENT_IDX) and `want_protocol` are acknowledged where offered.
    pub fn negotiate(
        stream: UnixStream,
        queues: u16,
        want_features: u64,
        want_protocol: VhostUserProtocolFeatures,
        timeout: Duration,
    ) -> Result<Self, VmmError> {
        Self::negotiate_with(
            stream,
            queues,
            want_features,
            want_protocol,
            timeout,
            |_| None,
        )
    }

    /// [`negotiate`](Self::negotiate), and when BACKEND_REQ was acknowledged, SET_BACKEND_REQ_FD
    /// right after SET_PROTOCOL_FEATURES (where QEMU sends it) with the socket that
    /// `backend_req` returns for the acknowledged protocol features (`None`: not sent).
    pub fn negotiate_with(
        stream: UnixStream,
        queues: u16,
        want_features: u64,
        want_protocol: VhostUserProtocolFeatures,
        timeout: Duration,
        backend_req: impl FnOnce(VhostUserProtocolFeatures) -> Option<RawFd>,
    ) -> Result<Self, VmmError> {
        let watchdog = Watchdog::new(stream.as_raw_fd()).map_err(VmmError::Watchdog)?;
        let mut dev = Self {
            watchdog,
            frontend: Frontend::from_stream(stream, u64::from(queues)),
            negotiated: Negotiated {
                offered_features: 0,
                acked_features: 0,
                offered_protocol: VhostUserProtocolFeatures::empty(),
                acked_protocol: VhostUserProtocolFeatures::empty(),
                backend_queues: 0,
            },
            timeout,
        };
        dev.call("SET_OWNER", |f| f.set_owner())?;
        let offered_features = dev.call("GET_FEATURES", |f| f.get_features())?;
        let version_1 = 1u64 << VIRTIO_F_VERSION_1;
        if offered_features & version_1 == 0 {
            return Err(VmmError::MissingFeature("VIRTIO_F_VERSION_1"));
        }
        if offered_features & VHOST_USER_F_PROTOCOL_FEATURES == 0 {
            return Err(VmmError::MissingFeature("VHOST_USER_F_PROTOCOL_FEATURES"));
        }
        let offered_protocol = dev.call("GET_PROTOCOL_FEATURES", |f| f.get_protocol_features())?;
        let acked_protocol = offered_protocol & want_protocol;
        dev.call("SET_PROTOCOL_FEATURES", |f| {
            f.set_protocol_features(acked_protocol)
        })?;
        if acked_protocol.contains(VhostUserProtocolFeatures::BACKEND_REQ) {
            if let Some(fd) = backend_req(acked_protocol) {
                dev.call("SET_BACKEND_REQ_FD", |f| f.set_backend_request_fd(&fd))?;
            }
        }
        let mut backend_queues = 0;
        if acked_protocol.contains(VhostUserProtocolFeatures::MQ) {
            backend_queues = dev.call("GET_QUEUE_NUM", |f| f.get_queue_num())?;
            if backend_queues < u64::from(queues) {
                return Err(VmmError::TooFewQueues {
                    want: u64::from(queues),
                    have: backend_queues,
                });
            }
        } else if queues > 2 {
            return Err(VmmError::MissingFeature("VHOST_USER_PROTOCOL_F_MQ"));
        }
        let acked_features =
            version_1 | VHOST_USER_F_PROTOCOL_FEATURES | (want_features & offered_features);
        dev.call("SET_FEATURES", |f| f.set_features(acked_features))?;
        if acked_protocol.contains(VhostUserProtocolFeatures::REPLY_ACK) {
            // Every setup message from now on waits for the backend's ack, so a refused
            // step fails here instead of surfacing as a dead queue later.
            dev.frontend.set_hdr_flags(VhostUserHeaderFlag::NEED_REPLY);
        }
        dev.negotiated = Negotiated {
            offered_features,
            acked_features,
            offered_protocol,
            acked_protocol,
            backend_queues,
        };
        Ok(dev)
    }

    /// SET_MEM_TABLE with the guest RAM memfd.
    pub fn set_mem_table(&mut self, ram: &GuestRam) -> Result<(), VmmError> {
        let regions = ram.region_infos()?;
        self.call("SET_MEM_TABLE", |f| f.set_mem_table(&regions))?;
        Ok(())
    }

    /// Hands one queue to the backend and enables it.
    pub fn start_queue(&mut self, ram: &GuestRam, q: &SplitQueue) -> Result<(), VmmError> {
        let i = usize::from(q.index());
        let l = q.layout();
        let config = VringConfigData {
            queue_max_size: q.size(),
            queue_size: q.size(),
            flags: 0,
            desc_table_addr: ram.host_address(l.desc)?,
            used_ring_addr: ram.host_address(l.used)?,
            avail_ring_addr: ram.host_address(l.avail)?,
            log_addr: None,
        };
        self.call("SET_VRING_NUM", |f| f.set_vring_num(i, q.size()))?;
        self.call("SET_VRING_BASE", |f| f.set_vring_base(i, 0))?;
        self.call("SET_VRING_ADDR", |f| f.set_vring_addr(i, &config))?;
        self.call("SET_VRING_CALL", |f| f.set_vring_call(i, q.call_fd()))?;
        self.call("SET_VRING_ERR", |f| f.set_vring_err(i, q.err_fd()))?;
        self.call("SET_VRING_KICK", |f| f.set_vring_kick(i, q.kick_fd()))?;
        self.call("SET_VRING_ENABLE", |f| f.set_vring_enable(i, true))?;
        Ok(())
    }

    /// GET_VRING_BASE: stops queue `index` on the backend and returns its next avail index.
    pub fn stop_queue(&mut self, index: u16) -> Result<u32, VmmError> {
        self.call("GET_VRING_BASE", |f| f.get_vring_base(usize::from(index)))
    }

    /// What was negotiated.
    pub fn negotiated(&self) -> Negotiated {
        self.negotiated
    }

    /// Runs a vhost-user exchange this type has no helper for (the DAX step adds
    /// GET_SHMEM_CONFIG and SET_BACKEND_REQ_FD this way) under the same deadline.
    pub fn with_frontend<T>(
        &mut self,
        step: &'static str,
        f: impl FnOnce(&mut Frontend) -> vhost::Result<T>,
    ) -> Result<T, VmmError> {
        self.call(step, f)
    }

    /// The socket's file descriptor, to notice a backend that hung up.
    pub fn socket_fd(&self) -> RawFd {
        self.frontend.as_raw_fd()
    }
}
