//! The guest's virtio-fs driver below FUSE: puts request bytes and reply space into guest
//! RAM, chains them into descriptors, kicks, and waits for the used ring with a deadline.
//!
//! Two ways in: [`FsDriver::call`] builds a well-formed chain (device-readable segments, then
//! device-writable ones), and [`FsDriver::submit_raw`] writes whatever descriptors a test
//! describes ([`RawChain`]): lying lengths, wrong directions, addresses outside RAM, indices
//! past the table, loops. Either way the outcome is a [`Completion`] or a [`DriverError`]
//! that says what the device did (timed out, hung up, signalled an error).

use std::collections::HashMap;
use std::fmt;
use std::io;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use vhost::vhost_user::{VhostUserFrontend, VhostUserProtocolFeatures};
use virtio_bindings::bindings::virtio_ring::{
    VIRTIO_RING_F_EVENT_IDX, VIRTIO_RING_F_INDIRECT_DESC,
};

use crate::memory::{GuestRam, MemoryError, RAM_BASE};
use crate::shmem::{BackendReqServer, ShmemWindow};
use crate::virtqueue::{
    QueueError, RawDescriptor, SplitQueue, DESC_F_INDIRECT, DESC_F_NEXT, DESC_F_WRITE,
};
use crate::vmm::{connect_socket, Negotiated, VhostUserFs, VmmError};

/// Queue 0 of a virtio-fs device: FORGET, BATCH_FORGET and INTERRUPT travel here.
pub const HIPRIO_QUEUE: u16 = 0;
/// The first request queue.
pub const REQUEST_QUEUE: u16 = 1;

/// Feature bit: chains may be handed over as indirect descriptor tables.
pub const F_INDIRECT_DESC: u64 = 1 << VIRTIO_RING_F_INDIRECT_DESC;
/// Feature bit: notifications are suppressed through `used_event` / `avail_event`.
pub const F_EVENT_IDX: u64 = 1 << VIRTIO_RING_F_EVENT_IDX;

/// Byte written into reply buffers before a request, so bytes the device did not write are
/// recognisable.
pub const POISON: u8 = 0xA5;

/// Errors of the driver.
#[derive(Debug)]
pub enum DriverError {
    /// Setting the device up failed.
    Vmm(VmmError),
    /// Guest RAM refused an access.
    Memory(MemoryError),
    /// A virtqueue failed, or the device broke the virtqueue rules.
    Queue(QueueError),
    /// The request does not fit in the free part of guest RAM.
    RamFull {
        /// Bytes wanted.
        need: u64,
    },
    /// A queue index this device does not have.
    NoSuchQueue(u16),
    /// A raw chain refers to a buffer or slot it does not have.
    BadRawChain(&'static str),
    /// The device did not return the chain before the deadline.
    Timeout {
        /// Queue.
        queue: u16,
        /// How long we waited.
        waited: Duration,
    },
    /// The backend closed the vhost-user socket (it exited or dropped the device).
    BackendGone,
    /// The backend signalled the queue's error eventfd.
    DeviceError {
        /// Queue.
        queue: u16,
    },
    /// The backend sent an unsolicited message on the vhost-user socket.
    UnexpectedMessage,
    /// poll(2) failed.
    Poll(io::Error),
    /// The DAX window (GET_SHMEM_CONFIG's region 0) could not be created.
    DaxWindow(dax_window::Error),
}

impl fmt::Display for DriverError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DriverError::Vmm(e) => write!(f, "{e}"),
            DriverError::Memory(e) => write!(f, "{e}"),
            DriverError::Queue(e) => write!(f, "virtqueue: {e}"),
            DriverError::RamFull { need } => {
                write!(f, "no room for {need} bytes in guest RAM")
            }
            DriverError::NoSuchQueue(q) => write!(f, "no queue {q}"),
            DriverError::BadRawChain(why) => write!(f, "raw chain: {why}"),
            DriverError::Timeout { queue, waited } => {
                write!(f, "queue {queue}: no used buffer after {waited:?}")
            }
            DriverError::BackendGone => write!(f, "backend closed the vhost-user socket"),
            DriverError::DeviceError { queue } => {
                write!(f, "backend signalled an error on queue {queue}")
            }
            DriverError::UnexpectedMessage => {
                write!(f, "backend sent an unsolicited vhost-user message")
            }
            DriverError::Poll(e) => write!(f, "poll: {e}"),
            DriverError::DaxWindow(e) => write!(f, "DAX window: {e}"),
        }
    }
}

impl std::error::Error for DriverError {}

impl From<VmmError> for DriverError {
    fn from(e: VmmError) -> Self {
        DriverError::Vmm(e)
    }
}

impl From<MemoryError> for DriverError {
    fn from(e: MemoryError) -> Self {
        DriverError::Memory(e)
    }
}

impl From<QueueError> for DriverError {
    fn from(e: QueueError) -> Self {
        DriverError::Queue(e)
    }
}

/// How the device is set up.
#[derive(Clone, Debug)]
pub struct DriverConfig {
    /// Request queues (the hiprio queue comes on top).
    pub request_queues: u16,
    /// Entries per queue (power of two).
    pub queue_size: u16,
    /// Bytes of guest RAM.
    pub ram_size: usize,
    /// Bytes of the memfd behind guest RAM, when a test wants a VMM that announces a memory
    /// region larger than its file (the driver itself stays below it); `None`: all of RAM.
    pub ram_backing: Option<usize>,
    /// Deadline for every wait on the backend (socket replies, used buffers, connect).
    pub timeout: Duration,
    /// Protocol features to acknowledge if offered.
    pub protocol_features: VhostUserProtocolFeatures,
    /// Ring features to acknowledge if offered: [`F_INDIRECT_DESC`] (well-formed chains then
    /// travel as one indirect table, as Linux sends them) and [`F_EVENT_IDX`].
    pub ring_features: u64,
}

impl DriverConfig {
    /// What a Linux guest negotiates: indirect descriptors and event indices, if offered.
    pub fn linux_like() -> Self {
        Self {
            ring_features: F_INDIRECT_DESC | F_EVENT_IDX,
            ..Self::default()
        }
    }
}

impl Default for DriverConfig {
    fn default() -> Self {
        Self {
            request_queues: 1,
            queue_size: 128,
            ram_size: 64 << 20,
            ram_backing: None,
            timeout: Duration::from_secs(10),
            protocol_features: VhostUserProtocolFeatures::MQ | VhostUserProtocolFeatures::REPLY_ACK,
            ring_features: 0,
        }
    }
}

/// What the device returned for one chain.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Completion {
    /// Bytes the device says it wrote (the used-ring `len`, unchecked).
    pub used_len: u32,
    /// The device-writable buffers read back, concatenated, cut to `used_len` (or to their
    /// total size when `used_len` claims more).
    pub written: Vec<u8>,
    /// Total size of the device-writable buffers.
    pub writable_len: u64,
}

/// A chain in flight, to wait for.
#[derive(Debug)]
#[must_use = "a submitted chain must be waited for"]
pub struct Token {
    queue: u16,
    head: u16,
    /// Device-writable buffers to read back, in chain order.
    reply: Vec<(u64, u32)>,
}

impl Token {
    /// The queue the chain went to.
    pub fn queue(&self) -> u16 {
        self.queue
    }
}

/// A buffer of a hand-made chain, placed in guest RAM by the driver.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RawBuffer {
    /// Bytes for the device to read.
    Data(Vec<u8>),
    /// Room (poisoned with [`POISON`]) for the device to write; read back on completion.
    Space(u32),
    /// An indirect descriptor table: the descriptors are written into the buffer with their
    /// addresses resolved; [`RawLink::Slot`] in `next` is an index into this table.
    Table(Vec<RawDesc>),
}

/// Where a raw descriptor points.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RawAddr {
    /// Into buffer `.0` of the chain, at offset `.1` (may point past its end).
    Buffer(usize, u64),
    /// A literal guest-physical address (outside RAM, unaligned, anything).
    Gpa(u64),
}

/// A descriptor index in a raw chain.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RawLink {
    /// The table index of the chain's descriptor `.0` (chosen by the driver).
    Slot(usize),
    /// A literal index (past the table, or one owned by nobody).
    Index(u16),
}

/// One descriptor of a raw chain.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RawDesc {
    /// Buffer address.
    pub addr: RawAddr,
    /// Length as written, whatever the buffer's size.
    pub len: u32,
    /// Flags as written.
    pub flags: u16,
    /// Next index, used by the device only with [`DESC_F_NEXT`].
    pub next: RawLink,
}

/// A hand-made descriptor chain: buffers, descriptors over them, and the head to publish.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RawChain {
    /// Buffers placed in guest RAM.
    pub buffers: Vec<RawBuffer>,
    /// Descriptors, written to table slots the driver reserves.
    pub descs: Vec<RawDesc>,
    /// What goes in the available ring.
    pub head: RawLink,
}

impl RawChain {
    /// The well-formed chain as one ring descriptor pointing at an indirect table (what
    /// [`FsDriver::submit`] sends when INDIRECT_DESC is negotiated). Buffer `n` is the
    /// table, `n` being the number of segments.
    pub fn well_formed_indirect(readable: &[&[u8]], writable: &[u32]) -> Self {
        let direct = Self::well_formed(readable, writable);
        let n = direct.buffers.len();
        let mut buffers = direct.buffers;
        buffers.push(RawBuffer::Table(direct.descs));
        Self {
            buffers,
            descs: vec![RawDesc {
                addr: RawAddr::Buffer(n, 0),
                len: 16 * n as u32,
                flags: DESC_F_INDIRECT,
                next: RawLink::Slot(0),
            }],
            head: RawLink::Slot(0),
        }
    }

    /// The well-formed chain for `readable` segments followed by `writable` reply room, one
    /// descriptor per segment, as [`FsDriver::call`] would build it. Tests start from this
    /// and break one thing.
    pub fn well_formed(readable: &[&[u8]], writable: &[u32]) -> Self {
        let segments: Vec<(u32, u16)> = readable
            .iter()
            .map(|r| (r.len() as u32, 0))
            .chain(writable.iter().map(|&w| (w, DESC_F_WRITE)))
            .collect();
        let n = segments.len();
        let descs = segments
            .iter()
            .enumerate()
            .map(|(i, &(len, dir))| {
                let last = i + 1 == n;
                RawDesc {
                    addr: RawAddr::Buffer(i, 0),
                    len,
                    flags: if last { dir } else { dir | DESC_F_NEXT },
                    next: RawLink::Slot(if last { 0 } else { i + 1 }),
                }
            })
            .collect();
        let buffers = readable
            .iter()
            .map(|r| RawBuffer::Data(r.to_vec()))
            .chain(writable.iter().map(|&w| RawBuffer::Space(w)))
            .collect();
        Self {
            buffers,
            descs,
            head: RawLink::Slot(0),
        }
    }
}

/// Bump allocation of request and reply buffers in guest RAM, above the rings. A chain's
/// buffers are held until the device returns the chain; chains the device never returns
/// keep theirs for good (the device may still write them).
#[derive(Debug)]
struct Arena {
    base: u64,
    end: u64,
    live: HashMap<(u16, u16), (u64, u64)>,
}

impl Arena {
    fn alloc(&mut self, key: (u16, u16), sizes: &[u64]) -> Result<Vec<u64>, DriverError> {
        let mut cursor = self
            .live
            .values()
            .map(|&(_, end)| end)
            .max()
            .unwrap_or(self.base);
        let start = cursor;
        let mut out = Vec::with_capacity(sizes.len());
        for &s in sizes {
            cursor = cursor.next_multiple_of(64);
            out.push(cursor);
            cursor = cursor
                .checked_add(s)
                .ok_or(DriverError::RamFull { need: s })?;
        }
        if cursor > self.end {
            return Err(DriverError::RamFull {
                need: cursor - start,
            });
        }
        self.live.insert(key, (start, cursor));
        Ok(out)
    }

    fn free(&mut self, key: (u16, u16)) {
        self.live.remove(&key);
    }
}

/// The virtio-fs device as a guest driver sees it, set up over a vhost-user socket.
#[derive(Debug)]
pub struct FsDriver {
    ram: GuestRam,
    vmm: VhostUserFs,
    queues: Vec<SplitQueue>,
    arena: Arena,
    /// Returned chains not yet claimed by a waiter: (queue, head) -> used len.
    done: HashMap<(u16, u16), u32>,
    timeout: Duration,
    indirect: bool,
    event_idx: bool,
    /// The backend-request channel and the DAX window (SHMEM negotiated). Declared last:
    /// dropped after the vhost-user connection, so the backend sees the device go first.
    backend_req: Option<BackendReqServer>,
}

impl FsDriver {
    /// Connects to the backend at `socket` and sets the device up: features, guest RAM,
    /// hiprio queue and `config.request_queues` request queues.
    pub fn connect(socket: &Path, config: &DriverConfig) -> Result<Self, DriverError> {
        let stream = connect_socket(socket, config.timeout)?;
        let queues = config
            .request_queues
            .checked_add(1)
            .ok_or(DriverError::NoSuchQueue(config.request_queues))?;
        // The DAX window: asked for with SHMEM|BACKEND_REQ in the protocol features. The
        // backend-request channel must exist before SET_BACKEND_REQ_FD.
        let dax_wanted = config
            .protocol_features
            .contains(VhostUserProtocolFeatures::SHMEM | VhostUserProtocolFeatures::BACKEND_REQ);
        let mut backend_req: Option<BackendReqServer> = None;
        let mut vmm = VhostUserFs::negotiate_with(
            stream,
            queues,
            config.ring_features,
            config.protocol_features,
            config.timeout,
            |acked| {
                if !dax_wanted || !acked.contains(VhostUserProtocolFeatures::SHMEM) {
                    return None;
                }
                let reply_ack = acked.contains(VhostUserProtocolFeatures::REPLY_ACK);
                match BackendReqServer::start(reply_ack) {
                    Ok(server) => {
                        let fd = server.backend_end();
                        backend_req = Some(server);
                        Some(fd)
                    }
                    Err(_) => None,
                }
            },
        )?;
        if let Some(server) = &backend_req {
            let config = vmm.with_frontend("GET_SHMEM_CONFIG", |f| f.get_shmem_config())?;
            let len = if config.nregions > 0 {
                config.memory_sizes[0]
            } else {
                0
            };
            if len > 0 {
                server.shmem().create(len).map_err(DriverError::DaxWindow)?;
            }
        }
        let acked = vmm.negotiated().acked_features;
        let ram = GuestRam::with_backing(config.ram_size, config.ram_backing)?;
        vmm.set_mem_table(&ram)?;
        let mut base = RAM_BASE;
        let mut qs = Vec::with_capacity(usize::from(queues));
        for i in 0..queues {
            let q = SplitQueue::new(&ram, i, config.queue_size, base)?;
            base = q.layout().end;
            vmm.start_queue(&ram, &q)?;
            qs.push(q);
        }
        let arena = Arena {
            base,
            end: ram.end(),
            live: HashMap::new(),
        };
        Ok(Self {
            ram,
            vmm,
            queues: qs,
            arena,
            done: HashMap::new(),
            timeout: config.timeout,
            indirect: acked & F_INDIRECT_DESC != 0,
            event_idx: acked & F_EVENT_IDX != 0,
            backend_req,
        })
    }

    /// The DAX window (shared memory region 0), when SHMEM was negotiated and the backend
    /// reported a region.
    pub fn dax(&self) -> Option<&Arc<ShmemWindow>> {
        self.backend_req
            .as_ref()
            .map(|s| s.shmem())
            .filter(|s| s.window().is_some())
    }

    /// Guest RAM.
    pub fn ram(&self) -> &GuestRam {
        &self.ram
    }

    /// What was negotiated with the backend.
    pub fn negotiated(&self) -> Negotiated {
        self.vmm.negotiated()
    }

    /// The vhost-user connection.
    pub fn vmm(&mut self) -> &mut VhostUserFs {
        &mut self.vmm
    }

    /// Number of queues (hiprio included).
    pub fn queue_count(&self) -> u16 {
        self.queues.len() as u16
    }

    /// Entries per queue.
    pub fn queue_size(&self) -> u16 {
        self.queues.first().map_or(0, |q| q.size())
    }

    /// The default deadline for waits.
    pub fn timeout(&self) -> Duration {
        self.timeout
    }

    /// Changes the default deadline for waits.
    pub fn set_timeout(&mut self, timeout: Duration) {
        self.timeout = timeout;
    }

    fn queue_mut(&mut self, queue: u16) -> Result<&mut SplitQueue, DriverError> {
        self.queues
            .get_mut(usize::from(queue))
            .ok_or(DriverError::NoSuchQueue(queue))
    }

    /// Sends `readable` segments followed by `writable` reply room as one chain, one
    /// descriptor per segment, and waits for it with the default deadline.
    pub fn call(
        &mut self,
        queue: u16,
        readable: &[&[u8]],
        writable: &[u32],
    ) -> Result<Completion, DriverError> {
        let token = self.submit(queue, readable, writable)?;
        self.wait(token, self.timeout)
    }

    /// Places and publishes a well-formed chain and kicks; wait for it with [`FsDriver::wait`].
    /// With INDIRECT_DESC negotiated, a chain of several segments goes as one indirect table.
    pub fn submit(
        &mut self,
        queue: u16,
        readable: &[&[u8]],
        writable: &[u32],
    ) -> Result<Token, DriverError> {
        if self.indirect && readable.len() + writable.len() > 1 {
            return self.submit_raw(queue, &RawChain::well_formed_indirect(readable, writable));
        }
        self.submit_raw(queue, &RawChain::well_formed(readable, writable))
    }

    /// Places and publishes a hand-made chain exactly as described, and kicks.
    pub fn submit_raw(&mut self, queue: u16, chain: &RawChain) -> Result<Token, DriverError> {
        if chain.descs.is_empty() {
            return Err(DriverError::Queue(QueueError::EmptyChain));
        }
        let ids = self.queue_mut(queue)?.reserve(chain.descs.len())?;
        match self.place_raw(queue, chain, &ids) {
            Ok((head, reply)) => {
                let q = &mut self.queues[usize::from(queue)];
                q.adopt(head, ids);
                q.publish(&self.ram, head)?;
                q.notify()?;
                Ok(Token { queue, head, reply })
            }
            Err(e) => {
                // Nothing was published: the descriptors go back to the free list.
                self.queues[usize::from(queue)].release(ids);
                Err(e)
            }
        }
    }

    /// Writes a raw chain's buffers and descriptors into guest RAM; returns the head to
    /// publish and the device-writable buffers.
    fn place_raw(
        &mut self,
        queue: u16,
        chain: &RawChain,
        ids: &[u16],
    ) -> Result<(u16, Vec<(u64, u32)>), DriverError> {
        let slot_of = |link: RawLink| -> Result<u16, DriverError> {
            match link {
                RawLink::Slot(i) => ids.get(i).copied().ok_or(DriverError::BadRawChain(
                    "slot past the chain's descriptors",
                )),
                RawLink::Index(i) => Ok(i),
            }
        };
        let head = slot_of(chain.head)?;
        if self.queues[usize::from(queue)].is_in_flight(head)
            || self.done.contains_key(&(queue, head))
        {
            return Err(DriverError::BadRawChain("head already in flight"));
        }
        let sizes: Vec<u64> = chain
            .buffers
            .iter()
            .map(|b| match b {
                RawBuffer::Data(d) => d.len() as u64,
                RawBuffer::Space(n) => u64::from(*n),
                RawBuffer::Table(t) => 16 * t.len() as u64,
            })
            .collect();
        let addrs = self.arena.alloc((queue, head), &sizes)?;
        let placed = (|| {
            let resolve = |addr: RawAddr| -> Result<u64, DriverError> {
                match addr {
                    RawAddr::Buffer(i, off) => Ok(addrs
                        .get(i)
                        .ok_or(DriverError::BadRawChain(
                            "buffer index past the chain's buffers",
                        ))?
                        .wrapping_add(off)),
                    RawAddr::Gpa(a) => Ok(a),
                }
            };
            // What the device may write is what the descriptors say, not what the buffers
            // were meant for: a raw chain with a wrong direction gets its reply read back
            // from where the device really put it (parts outside RAM are skipped).
            let mut reply = Vec::new();
            let mut note_writable = |addr: u64, d: &RawDesc| {
                let in_ram = addr >= RAM_BASE
                    && addr
                        .checked_add(u64::from(d.len))
                        .is_some_and(|end| end <= self.ram.end());
                if d.flags & DESC_F_WRITE != 0 && in_ram {
                    reply.push((addr, d.len));
                }
            };
            for (b, &gpa) in chain.buffers.iter().zip(&addrs) {
                match b {
                    RawBuffer::Data(d) => self.ram.write(gpa, d)?,
                    RawBuffer::Space(n) => self.ram.fill(gpa, *n as usize, POISON)?,
                    RawBuffer::Table(table) => {
                        let mut bytes = Vec::with_capacity(16 * table.len());
                        for d in table {
                            let addr = resolve(d.addr)?;
                            let next = match d.next {
                                RawLink::Slot(i) => i as u16,
                                RawLink::Index(i) => i,
                            };
                            let raw = RawDescriptor {
                                addr,
                                len: d.len,
                                flags: d.flags,
                                next,
                            };
                            bytes.extend_from_slice(&raw.to_bytes());
                            note_writable(addr, d);
                        }
                        self.ram.write(gpa, &bytes)?;
                    }
                }
            }
            for (d, &id) in chain.descs.iter().zip(ids) {
                let addr = resolve(d.addr)?;
                let raw = RawDescriptor {
                    addr,
                    len: d.len,
                    flags: d.flags,
                    next: slot_of(d.next)?,
                };
                self.queues[usize::from(queue)].write_descriptor(&self.ram, id, raw)?;
                note_writable(addr, d);
            }
            Ok(reply)
        })();
        match placed {
            Ok(reply) => Ok((head, reply)),
            Err(e) => {
                self.arena.free((queue, head));
                Err(e)
            }
        }
    }

    /// Collects every chain the device returned on `queue`.
    fn drain(&mut self, queue: u16) -> Result<(), DriverError> {
        let q = &mut self.queues[usize::from(queue)];
        while let Some(u) = q.pop_used(&self.ram)? {
            // pop_used only returns heads it had in flight, which fit in u16.
            let head = u.id as u16;
            self.arena.free((queue, head));
            self.done.insert((queue, head), u.len);
        }
        Ok(())
    }

    /// Waits until the device returns `token`'s chain, the deadline passes, the backend
    /// hangs up or signals an error. A chain that timed out stays in flight (its descriptors
    /// and buffers are not reused, since the device may still complete it).
    pub fn wait(&mut self, token: Token, timeout: Duration) -> Result<Completion, DriverError> {
        let queue = token.queue;
        let deadline = Instant::now() + timeout;
        loop {
            self.drain(queue)?;
            if self.event_idx {
                // Ask for a notification at the next used entry, then look once more: an
                // entry that landed before the request was visible raises no notification.
                let q = &self.queues[usize::from(queue)];
                q.set_used_event(&self.ram, q.last_used())?;
                std::sync::atomic::fence(std::sync::atomic::Ordering::SeqCst);
                self.drain(queue)?;
            }
            if let Some(used_len) = self.done.remove(&(queue, token.head)) {
                return self.read_back(&token, used_len);
            }
            let now = Instant::now();
            if now >= deadline {
                return Err(DriverError::Timeout {
                    queue,
                    waited: timeout,
                });
            }
            self.poll_events(queue, deadline - now)?;
        }
    }

    /// Sleeps until the queue's call or error eventfd fires, the socket shows the backend
    /// is gone, or `left` passes.
    fn poll_events(&mut self, queue: u16, left: Duration) -> Result<(), DriverError> {
        use std::os::fd::AsRawFd;
        let q = &self.queues[usize::from(queue)];
        let mut fds = [
            libc::pollfd {
                fd: q.call_fd().as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            },
            libc::pollfd {
                fd: q.err_fd().as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            },
            libc::pollfd {
                fd: self.vmm.socket_fd(),
                events: libc::POLLIN | libc::POLLRDHUP,
                revents: 0,
            },
        ];
        let ms = left.as_millis().clamp(1, i32::MAX as u128) as i32;
        // libc's poll and recv: none of these descriptors' owners (vmm-sys-util's EventFd,
        // vhost's Frontend) lends a BorrowedFd, so rustix would take three unsafe
        // borrow_raw calls where this takes one unsafe poll.
        // SAFETY: `fds` is a valid array of 3 initialised pollfd structs that outlives the
        // call; poll writes only their `revents` fields.
        let n = unsafe { libc::poll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, ms) };
        if n < 0 {
            let e = io::Error::last_os_error();
            if e.kind() == io::ErrorKind::Interrupted {
                return Ok(());
            }
            return Err(DriverError::Poll(e));
        }
        if fds[0].revents != 0 {
            q.ack_call();
        }
        if fds[1].revents != 0 {
            q.ack_err();
            // A chain the device already returned wins over the error report.
            self.drain(queue)?;
            return Err(DriverError::DeviceError { queue });
        }
        if fds[2].revents != 0 {
            let mut b = [0u8; 1];
            // SAFETY: the socket fd is owned by the vhost frontend and open; recv peeks at
            // most one byte into the one-byte buffer.
            let r = unsafe {
                libc::recv(
                    fds[2].fd,
                    b.as_mut_ptr().cast(),
                    1,
                    libc::MSG_PEEK | libc::MSG_DONTWAIT,
                )
            };
            return Err(if r > 0 {
                DriverError::UnexpectedMessage
            } else {
                DriverError::BackendGone
            });
        }
        Ok(())
    }

    fn read_back(&self, token: &Token, used_len: u32) -> Result<Completion, DriverError> {
        let writable_len: u64 = token.reply.iter().map(|&(_, n)| u64::from(n)).sum();
        let want = u64::from(used_len).min(writable_len) as usize;
        let mut written = vec![0u8; want];
        let mut at = 0usize;
        for &(gpa, n) in &token.reply {
            if at == want {
                break;
            }
            let take = (n as usize).min(want - at);
            self.ram.read(gpa, &mut written[at..at + take])?;
            at += take;
        }
        Ok(Completion {
            used_len,
            written,
            writable_len,
        })
    }

    /// Whether well-formed chains travel as indirect tables (INDIRECT_DESC negotiated).
    pub fn uses_indirect(&self) -> bool {
        self.indirect
    }

    /// Whether notifications go through event indices (EVENT_IDX negotiated).
    pub fn uses_event_idx(&self) -> bool {
        self.event_idx
    }

    /// Chains published on `queue` that the device has not returned.
    pub fn in_flight(&self, queue: u16) -> usize {
        self.queues
            .get(usize::from(queue))
            .map_or(0, |q| q.in_flight())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn well_formed_chains_put_readable_before_writable() {
        let c = RawChain::well_formed(&[b"header", b"args"], &[16, 100]);
        assert_eq!(c.buffers.len(), 4);
        assert_eq!(c.head, RawLink::Slot(0));
        let flags: Vec<u16> = c.descs.iter().map(|d| d.flags).collect();
        assert_eq!(
            flags,
            [
                DESC_F_NEXT,
                DESC_F_NEXT,
                DESC_F_NEXT | DESC_F_WRITE,
                DESC_F_WRITE
            ]
        );
        assert_eq!(c.descs[1].next, RawLink::Slot(2));
        assert_eq!(c.descs[3].len, 100);
        assert_eq!(c.descs[0].addr, RawAddr::Buffer(0, 0));
    }

    #[test]
    fn arena_reuses_space_only_when_nothing_is_in_flight_above_it() {
        let mut a = Arena {
            base: 0x1000,
            end: 0x10000,
            live: HashMap::new(),
        };
        let x = a.alloc((1, 0), &[100, 10]).unwrap();
        assert_eq!(x, [0x1000, 0x1080]);
        let y = a.alloc((1, 1), &[16]).unwrap();
        assert_eq!(y, [0x10c0]);
        a.free((1, 0));
        // (1, 1) is still live: new buffers go above it, never under a live one's feet.
        assert_eq!(a.alloc((1, 2), &[8]).unwrap(), [0x1100]);
        a.free((1, 1));
        a.free((1, 2));
        assert_eq!(a.alloc((1, 3), &[8]).unwrap(), [0x1000]);
        assert!(matches!(
            a.alloc((1, 4), &[0x10000]),
            Err(DriverError::RamFull { .. })
        ));
    }
}
