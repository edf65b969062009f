//! The vhost-user virtio-fs device: queues and their worker threads, on vhost-user-backend
//! 0.24 (vhost 0.18, virtio-queue 0.18, vm-memory 0.18).
//!
//! Queue 0 is the high-priority queue (FORGET, BATCH_FORGET, INTERRUPT), queues 1.. carry
//! requests. Each queue has its own vring worker thread (the framework's epoll loop). A worker
//! pops every available chain while holding its vring lock, releases the lock, and then serves
//! the chains itself (`--thread-pool-size 0`) or hands them to the pool. Completing a chain
//! (used ring + call eventfd) takes the vring lock again for just that. So no thread holds a
//! vring lock while a request runs, in particular not while it waits on the frontend (the DAX
//! step's backend requests wait for an ack).
//!
//! A chain is checked before its request is served ([`GuestChain::new`], in `crate::chain`,
//! which also does the chain's I/O): every buffer must lie in guest memory, every
//! device-readable buffer must come before the device-writable ones, and the chain must end
//! (no loop, in the queue's table or an indirect one). A chain that fails gets an EIO reply
//! when it has reply room, otherwise it is returned with 0 bytes used; either way the daemon
//! keeps serving.

use std::fs::File;
use std::io::{self, Write};
use std::os::fd::{BorrowedFd, OwnedFd};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Mutex, RwLock, RwLockReadGuard, RwLockWriteGuard};
use std::thread;
use std::time::Duration;

use vhost::vhost_user::message::{
    VhostUserMMap, VhostUserMMapFlags, VhostUserProtocolFeatures, VhostUserShMemConfig,
    VhostUserVirtioFeatures,
};
use vhost::vhost_user::{Backend, VhostUserFrontendReqHandler};
use vhost_user_backend::{
    VhostUserBackend, VringRwLock, VringState, VringStateGuard, VringStateMutGuard, VringT,
};
use virtio_bindings::bindings::virtio_config::VIRTIO_F_VERSION_1;
use virtio_bindings::bindings::virtio_ring::{
    VIRTIO_RING_F_EVENT_IDX, VIRTIO_RING_F_INDIRECT_DESC,
};
use virtio_queue::{DescriptorChain, Error as QueueError, QueueOwnedT, QueueT};
use vm_memory::{
    Address, FileOffset, GuestAddress, GuestAddressSpace, GuestMemoryAtomic, GuestMemoryBackend,
    GuestMemoryLoadGuard, GuestMemoryMmap, GuestMemoryRegion, GuestRegionMmap, MmapRegion,
};
use vmm_sys_util::epoll::EventSet;
use vmm_sys_util::event::{
    new_event_consumer_and_notifier, EventConsumer, EventFlag, EventNotifier,
};

use crate::chain::{GuestChain, GuestMem};
use crate::dax::ShmemChannel;
use crate::server::Server;

/// The framework's shared, replaceable view of guest memory.
pub type GuestMemAtomic = GuestMemoryAtomic<GuestMem>;
type MemGuard = GuestMemoryLoadGuard<GuestMem>;

/// Largest queue the device accepts (QEMU's VIRTQUEUE_MAX_SIZE).
pub const MAX_QUEUE_SIZE: usize = 1024;
/// The high-priority queue's index.
pub const HIPRIO_QUEUE: usize = 0;
/// Most request queues `--request-queues` may ask for (one worker thread each).
pub const MAX_REQUEST_QUEUES: u16 = 63;
/// Bytes of the virtio-fs config space tag (`struct virtio_fs_config`).
pub const TAG_LEN: usize = 36;

/// A vring as the framework keeps it, plus the frontend's error eventfd, which the framework
/// stores but does not expose: a chain that cannot be returned (its head index is not a
/// descriptor of the queue) is reported there as a device error instead of vanishing.
#[derive(Clone)]
pub struct Vring {
    inner: VringRwLock<GuestMemAtomic>,
    err: Arc<Mutex<Option<File>>>,
}

impl Vring {
    /// Signals the frontend that this queue hit a device error.
    fn signal_error(&self) {
        let err = self.err.lock().unwrap_or_else(|e| e.into_inner());
        match err.as_ref() {
            Some(mut f) => {
                if let Err(e) = f.write_all(&1u64.to_ne_bytes()) {
                    tracing::warn!("signalling a device error: {e}");
                }
            }
            None => tracing::warn!("device error, but the frontend gave no error eventfd"),
        }
    }
}

impl<'a> VringStateGuard<'a, GuestMemAtomic> for Vring {
    type G = RwLockReadGuard<'a, VringState<GuestMemAtomic>>;
}

impl<'a> VringStateMutGuard<'a, GuestMemAtomic> for Vring {
    type G = RwLockWriteGuard<'a, VringState<GuestMemAtomic>>;
}

impl VringT<GuestMemAtomic> for Vring {
    fn new(mem: GuestMemAtomic, max_queue_size: u16) -> Result<Self, QueueError> {
        Ok(Self {
            inner: VringRwLock::new(mem, max_queue_size)?,
            err: Arc::new(Mutex::new(None)),
        })
    }

    fn get_ref(&self) -> <Self as VringStateGuard<'_, GuestMemAtomic>>::G {
        self.inner.get_ref()
    }

    fn get_mut(&self) -> <Self as VringStateMutGuard<'_, GuestMemAtomic>>::G {
        self.inner.get_mut()
    }

    fn add_used(&self, desc_index: u16, len: u32) -> Result<(), QueueError> {
        self.inner.add_used(desc_index, len)
    }

    fn signal_used_queue(&self) -> io::Result<()> {
        self.inner.signal_used_queue()
    }

    fn enable_notification(&self) -> Result<bool, QueueError> {
        self.inner.enable_notification()
    }

    fn disable_notification(&self) -> Result<(), QueueError> {
        self.inner.disable_notification()
    }

    fn needs_notification(&self) -> Result<bool, QueueError> {
        self.inner.needs_notification()
    }

    fn set_enabled(&self, enabled: bool) {
        self.inner.set_enabled(enabled)
    }

    fn set_queue_info(&self, desc: u64, avail: u64, used: u64) -> Result<(), QueueError> {
        self.inner.set_queue_info(desc, avail, used)
    }

    fn queue_next_avail(&self) -> u16 {
        self.inner.queue_next_avail()
    }

    fn set_queue_next_avail(&self, base: u16) {
        self.inner.set_queue_next_avail(base)
    }

    fn set_queue_next_used(&self, idx: u16) {
        self.inner.set_queue_next_used(idx)
    }

    fn queue_used_idx(&self) -> Result<u16, QueueError> {
        self.inner.queue_used_idx()
    }

    fn set_queue_size(&self, num: u16) {
        self.inner.set_queue_size(num)
    }

    fn set_queue_event_idx(&self, enabled: bool) {
        self.inner.set_queue_event_idx(enabled)
    }

    fn set_queue_ready(&self, ready: bool) {
        self.inner.set_queue_ready(ready)
    }

    fn set_kick(&self, file: Option<File>) {
        self.inner.set_kick(file)
    }

    fn read_kick(&self) -> io::Result<bool> {
        self.inner.read_kick()
    }

    fn set_call(&self, file: Option<File>) {
        self.inner.set_call(file)
    }

    fn set_err(&self, file: Option<File>) {
        let mine = file.as_ref().and_then(|f| match f.try_clone() {
            Ok(f) => Some(f),
            Err(e) => {
                tracing::warn!("cannot keep the error eventfd: {e}");
                None
            }
        });
        *self.err.lock().unwrap_or_else(|e| e.into_inner()) = mine;
        self.inner.set_err(file)
    }
}

type Job = Box<dyn FnOnce() + Send>;

/// `--thread-pool-size N`: N threads that serve chains popped by the queue workers.
struct WorkPool {
    tx: Mutex<mpsc::Sender<Job>>,
}

impl WorkPool {
    fn new(threads: usize) -> io::Result<Self> {
        let (tx, rx) = mpsc::channel::<Job>();
        let rx = Arc::new(Mutex::new(rx));
        for i in 0..threads {
            let rx = rx.clone();
            thread::Builder::new()
                .name(format!("fs-pool-{i}"))
                .spawn(move || loop {
                    let job = rx.lock().unwrap_or_else(|e| e.into_inner()).recv();
                    match job {
                        Ok(job) => job(),
                        Err(_) => return,
                    }
                })?;
        }
        Ok(Self { tx: Mutex::new(tx) })
    }

    fn submit(&self, job: Job) -> Result<(), Job> {
        let tx = self.tx.lock().unwrap_or_else(|e| e.into_inner());
        tx.send(job).map_err(|e| e.0)
    }
}

/// How the device is set up.
#[derive(Debug, Clone)]
pub struct DeviceOptions {
    /// Request queues offered (the hiprio queue comes on top).
    pub request_queues: u16,
    /// Pool threads; 0 serves requests on the queue's own worker thread.
    pub thread_pool_size: usize,
    /// The virtio-fs tag for the config space, if the frontend asks the backend for it.
    pub tag: Option<String>,
}

/// The virtio-fs device as a vhost-user backend.
pub struct FsBackend {
    server: Arc<Server>,
    opts: DeviceOptions,
    event_idx: std::sync::atomic::AtomicBool,
    mem: RwLock<Option<GuestMemAtomic>>,
    pool: Option<WorkPool>,
}

impl FsBackend {
    /// The device for `server`; starts the worker pool when `opts.thread_pool_size` > 0.
    pub fn new(server: Arc<Server>, opts: DeviceOptions) -> io::Result<Self> {
        let pool = match opts.thread_pool_size {
            0 => None,
            n => Some(WorkPool::new(n)?),
        };
        Ok(Self {
            server,
            opts,
            event_idx: Default::default(),
            mem: RwLock::new(None),
            pool,
        })
    }

    fn memory(&self) -> Option<MemGuard> {
        let mem = self.mem.read().unwrap_or_else(|e| e.into_inner());
        mem.as_ref().map(|m| m.memory())
    }

    /// Takes every available chain off the queue, holding the vring lock only for that. An
    /// available index more than a queue's worth ahead is a broken driver: a device error,
    /// and `None` so that the caller stops (re-enabling notifications would find the same
    /// bogus index and loop forever).
    fn pop_all(vring: &Vring, mem: &MemGuard) -> Option<Vec<DescriptorChain<MemGuard>>> {
        let mut state = vring.get_mut();
        let queue = state.get_queue_mut();
        match queue.iter(mem.clone()) {
            Ok(chains) => Some(chains.collect()),
            Err(QueueError::QueueNotReady) => None,
            Err(e) => {
                drop(state);
                tracing::debug!("available ring: {e}");
                vring.signal_error();
                None
            }
        }
    }

    fn serve_queue(&self, vring: &Vring, queue: usize) {
        let Some(mem) = self.memory() else {
            tracing::warn!("queue {queue} kicked before the memory table was set");
            return;
        };
        if !rings_in(&mem, vring) {
            // The rings are read and written through the framework's own view of memory,
            // which still holds a region's unbacked part (usable_memory).
            tracing::debug!("queue {queue}: a ring lies outside usable guest memory");
            vring.signal_error();
            return;
        }
        if queue != HIPRIO_QUEUE {
            self.server
                .set_queue_size(vring.get_ref().get_queue().size());
        }
        let event_idx = self.event_idx.load(std::sync::atomic::Ordering::Relaxed);
        loop {
            if event_idx {
                if let Err(e) = vring.disable_notification() {
                    tracing::warn!("queue {queue}: disabling notifications: {e}");
                }
            }
            let Some(chains) = Self::pop_all(vring, &mem) else {
                break;
            };
            for chain in chains {
                let server = self.server.clone();
                let vring2 = vring.clone();
                let mem2 = mem.clone();
                let job: Job =
                    Box::new(move || serve_chain(&server, &vring2, mem2, chain, event_idx));
                match &self.pool {
                    Some(pool) if queue != HIPRIO_QUEUE => {
                        if let Err(job) = pool.submit(job) {
                            job();
                        }
                    }
                    _ => job(),
                }
            }
            if !event_idx {
                break;
            }
            // Re-enable notifications; if the driver added chains meanwhile, go again.
            match vring.enable_notification() {
                Ok(true) => continue,
                Ok(false) => break,
                Err(e) => {
                    tracing::warn!("queue {queue}: enabling notifications: {e}");
                    break;
                }
            }
        }
    }
}

/// Whether the queue's descriptor table and rings lie in `mem`.
fn rings_in(mem: &MemGuard, vring: &Vring) -> bool {
    let state = vring.get_ref();
    let q = state.get_queue();
    let size = u64::from(q.size());
    [
        (q.desc_table(), 16 * size),
        (q.avail_ring(), 6 + 2 * size),
        (q.used_ring(), 6 + 8 * size),
    ]
    .into_iter()
    .all(|(addr, len)| mem.check_range(GuestAddress(addr), len as usize))
}

/// Serves one chain and returns it to the driver: the chain's buffers checked and wrapped
/// as a [`GuestChain`], the request served by [`Server::handle`] (which reads it from, and
/// writes its reply into, that chain), then the head and the reply's length put in the used
/// ring. Runs without any vring lock held except for the used-ring update at the end.
fn serve_chain(
    server: &Server,
    vring: &Vring,
    mem: MemGuard,
    chain: DescriptorChain<MemGuard>,
    event_idx: bool,
) {
    let head = chain.head_index();
    let used = {
        let (mut guest, broken) = GuestChain::new(&mem, chain);
        server.handle(&mut guest, broken)
    };
    // A head that is no descriptor of the queue cannot go into the used ring: a device error.
    if head >= vring.get_ref().get_queue().size() {
        tracing::debug!("chain head {head} is outside the queue");
        vring.signal_error();
        return;
    }
    if let Err(e) = vring.add_used(head, used) {
        tracing::debug!("cannot return chain {head}: {e}");
        vring.signal_error();
        return;
    }
    let notify = !event_idx || vring.needs_notification().unwrap_or(true);
    if notify {
        if let Err(e) = vring.signal_used_queue() {
            tracing::warn!("signalling the guest: {e}");
        }
    }
}

impl VhostUserBackend for FsBackend {
    type Bitmap = ();
    type Vring = Vring;

    fn num_queues(&self) -> usize {
        1 + usize::from(self.opts.request_queues)
    }

    fn max_queue_size(&self) -> usize {
        MAX_QUEUE_SIZE
    }

    fn features(&self) -> u64 {
        (1 << VIRTIO_F_VERSION_1)
            | (1 << VIRTIO_RING_F_INDIRECT_DESC)
            | (1 << VIRTIO_RING_F_EVENT_IDX)
            | VhostUserVirtioFeatures::PROTOCOL_FEATURES.bits()
    }

    fn protocol_features(&self) -> VhostUserProtocolFeatures {
        let mut f = VhostUserProtocolFeatures::MQ
            | VhostUserProtocolFeatures::REPLY_ACK
            | VhostUserProtocolFeatures::CONFIGURE_MEM_SLOTS;
        if self.server.dax().is_some() {
            f |= VhostUserProtocolFeatures::SHMEM
                | VhostUserProtocolFeatures::BACKEND_REQ
                | VhostUserProtocolFeatures::BACKEND_SEND_FD;
        }
        if self.opts.tag.is_some() {
            f | VhostUserProtocolFeatures::CONFIG
        } else {
            f
        }
    }

    fn set_event_idx(&self, enabled: bool) {
        self.event_idx
            .store(enabled, std::sync::atomic::Ordering::Relaxed);
    }

    fn get_config(&self, offset: u32, size: u32) -> Vec<u8> {
        let Some(tag) = &self.opts.tag else {
            return Vec::new();
        };
        let mut config = [0u8; TAG_LEN + 4];
        let n = tag.len().min(TAG_LEN);
        config[..n].copy_from_slice(&tag.as_bytes()[..n]);
        config[TAG_LEN..].copy_from_slice(&u32::from(self.opts.request_queues).to_le_bytes());
        let start = (offset as usize).min(config.len());
        let end = start.saturating_add(size as usize).min(config.len());
        config[start..end].to_vec()
    }

    /// The backend channel (SET_BACKEND_REQ_FD): the framework has already told it whether
    /// REPLY_ACK and SHMEM were negotiated. Requests on it come from the threads serving
    /// SETUPMAPPING/REMOVEMAPPING and coherence updates, never from this message thread.
    fn set_backend_req_fd(&self, backend: Backend) {
        if let Some(dax) = self.server.dax() {
            match BackendChannel::start(backend, dax.config().ack_timeout) {
                Ok(channel) => dax.set_channel(Arc::new(channel)),
                Err(e) => tracing::error!("backend channel thread: {e}; no DAX window"),
            }
        }
    }

    /// Shared memory region 0: the virtio-fs cache window.
    fn get_shmem_config(&self) -> io::Result<VhostUserShMemConfig> {
        match self.server.dax() {
            Some(dax) => Ok(VhostUserShMemConfig::new(1, &[dax.window_len()])),
            None => Err(io::Error::new(
                io::ErrorKind::Unsupported,
                "no DAX window (--cache-size 0)",
            )),
        }
    }

    fn update_memory(&self, mem: GuestMemAtomic) -> io::Result<()> {
        *self.mem.write().unwrap_or_else(|e| e.into_inner()) = Some(usable_memory(mem));
        Ok(())
    }

    /// One worker thread per queue: thread `i` owns queue `i`.
    fn queues_per_thread(&self) -> Vec<u64> {
        (0..self.num_queues()).map(|i| 1u64 << i).collect()
    }

    fn exit_event(&self, _thread_index: usize) -> Option<(EventConsumer, EventNotifier)> {
        match new_event_consumer_and_notifier(EventFlag::NONBLOCK | EventFlag::CLOEXEC) {
            Ok(pair) => Some(pair),
            Err(e) => {
                tracing::error!("cannot create an exit eventfd: {e}");
                None
            }
        }
    }

    fn handle_event(
        &self,
        device_event: u16,
        evset: EventSet,
        vrings: &[Vring],
        thread_id: usize,
    ) -> io::Result<()> {
        if evset != EventSet::IN {
            tracing::warn!("queue {thread_id}: unexpected event set {evset:?}");
            return Ok(());
        }
        // Each thread owns exactly one queue (see queues_per_thread), so the event is its
        // only vring and the queue index is the thread's.
        if let Some(vring) = vrings.get(usize::from(device_event)) {
            self.serve_queue(vring, thread_id);
        }
        Ok(())
    }
}

/// The guest memory zerodax may touch: every region cut to the part its file really backs.
///
/// A frontend may announce a region larger than the memfd behind it (SET_MEM_TABLE,
/// ADD_MEM_REG); the mapping succeeds, and the first access past the file's end is SIGBUS,
/// the end of the daemon. Such a region is cut (and one with nothing backed dropped) in the
/// view zerodax reads and writes through, so a descriptor or ring there is outside guest
/// memory: the request gets an error, and the daemon keeps serving.
fn usable_memory(mem: GuestMemAtomic) -> GuestMemAtomic {
    let full = mem.memory();
    let usable: Vec<u64> = full
        .iter()
        .map(|r| {
            let len = r.len();
            r.file_offset()
                .and_then(|fo| {
                    let m = fo.file().metadata().ok().filter(|m| m.is_file())?;
                    Some(m.len().saturating_sub(fo.start()).min(len) / 4096 * 4096)
                })
                .unwrap_or(len)
        })
        .collect();
    if full.iter().zip(&usable).all(|(r, &u)| u == r.len()) {
        drop(full);
        return mem;
    }
    let mut regions = Vec::new();
    for (r, &u) in full.iter().zip(&usable) {
        if u < r.len() {
            tracing::error!(
                "memory region at guest address {:#x}: {:#x} bytes announced, its file backs \
                 {u:#x}; the rest is treated as outside guest memory",
                r.start_addr().raw_value(),
                r.len()
            );
        }
        let Some(fo) = r.file_offset().filter(|_| u > 0) else {
            continue;
        };
        let remapped = MmapRegion::<()>::from_file(
            FileOffset::from_arc(fo.arc().clone(), fo.start()),
            u as usize,
        )
        .ok()
        .and_then(|m| GuestRegionMmap::new(m, r.start_addr()));
        match remapped {
            Some(region) => regions.push(region),
            None => tracing::error!(
                "memory region at {:#x}: cannot map its backed part; left out",
                r.start_addr().raw_value()
            ),
        }
    }
    GuestMemoryAtomic::new(GuestMemoryMmap::from_regions(regions).unwrap_or_default())
}

/// SHMEM_MAP/SHMEM_UNMAP through the vhost-user backend channel, with a bound on the wait.
///
/// One thread owns the channel (`Backend` serialises requests and, with REPLY_ACK, blocks
/// until the frontend acks; it has no timeout of its own). A caller hands it a request and
/// waits at most `ack_timeout`. A frontend that has not answered by then is taken as hung:
/// the request fails, and so does every later one at once, so no guest request waits on it
/// again (the window is closed for the rest of the connection; the guest sees EIO).
struct BackendChannel {
    requests: Mutex<mpsc::Sender<ChannelRequest>>,
    ack_timeout: Duration,
    hung: AtomicBool,
}

struct ChannelRequest {
    msg: VhostUserMMap,
    /// Present for SHMEM_MAP.
    fd: Option<OwnedFd>,
    done: mpsc::SyncSender<io::Result<()>>,
}

impl BackendChannel {
    fn start(backend: Backend, ack_timeout: Duration) -> io::Result<Self> {
        let (tx, rx) = mpsc::channel::<ChannelRequest>();
        std::thread::Builder::new()
            .name("backend-channel".into())
            .spawn(move || {
                // Ends when the channel is dropped (a new SET_BACKEND_REQ_FD, or exit).
                for req in rx {
                    let r = match &req.fd {
                        Some(fd) => backend.shmem_map(&req.msg, fd),
                        None => backend.shmem_unmap(&req.msg),
                    };
                    let _ = req.done.send(r.map(drop));
                }
            })?;
        Ok(BackendChannel {
            requests: Mutex::new(tx),
            ack_timeout,
            hung: AtomicBool::new(false),
        })
    }

    fn call(&self, msg: VhostUserMMap, fd: Option<OwnedFd>) -> io::Result<()> {
        let what = if fd.is_some() {
            "SHMEM_MAP"
        } else {
            "SHMEM_UNMAP"
        };
        if self.hung.load(Ordering::Acquire) {
            return Err(io::Error::other(
                "the frontend stopped answering SHMEM requests",
            ));
        }
        let (done, result) = mpsc::sync_channel(1);
        self.requests
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .send(ChannelRequest { msg, fd, done })
            .map_err(|_| io::Error::other("the backend channel is gone"))?;
        match result.recv_timeout(self.ack_timeout) {
            Ok(r) => r,
            Err(mpsc::RecvTimeoutError::Timeout) => {
                self.hung.store(true, Ordering::Release);
                tracing::error!(
                    "the frontend did not answer {what} within {:?}: DAX window closed for \
                     this connection",
                    self.ack_timeout
                );
                Err(io::Error::from(io::ErrorKind::TimedOut))
            }
            Err(mpsc::RecvTimeoutError::Disconnected) => {
                Err(io::Error::other("the backend channel is gone"))
            }
        }
    }
}

impl ShmemChannel for BackendChannel {
    fn map(
        &self,
        window_offset: u64,
        len: u64,
        fd: BorrowedFd<'_>,
        fd_offset: u64,
        writable: bool,
    ) -> io::Result<()> {
        let flags = if writable {
            VhostUserMMapFlags::WRITABLE
        } else {
            VhostUserMMapFlags::empty()
        };
        let msg = VhostUserMMap {
            shmid: 0,
            padding: [0; 7],
            fd_offset,
            shm_offset: window_offset,
            len,
            flags: flags.bits(),
        };
        self.call(msg, Some(fd.try_clone_to_owned()?))
    }

    fn unmap(&self, window_offset: u64, len: u64) -> io::Result<()> {
        let msg = VhostUserMMap {
            shmid: 0,
            padding: [0; 7],
            fd_offset: 0,
            shm_offset: window_offset,
            len,
            flags: 0,
        };
        self.call(msg, None)
    }
}
