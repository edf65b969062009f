//! FUSE dispatch for the virtio-fs transport: request bytes in, one call into the filesystem
//! core, reply bytes out.
//!
//! It knows nothing of virtqueues. A transport hands it a [`Chain`]: the request's readable
//! bytes and the room for the reply, plus two data-moving hooks so that WRITE payloads go
//! from the request buffers straight into `pwritev` and READ data straight from `preadv`
//! into the reply buffers (no copy in the daemon). Everything else is copied out of the
//! request once and parsed by the protocol crate. Tests drive it with [`BufChain`], plain
//! byte buffers.
//!
//! Every byte string gets an answer: a reply (possibly an error reply) when the chain has room
//! for one, nothing for the opcodes that take no reply (FORGET, BATCH_FORGET, INTERRUPT,
//! NOTIFY_REPLY). Nothing the guest sends can make this module panic.

use std::io;
use std::os::fd::BorrowedFd;
use std::sync::atomic::{AtomicBool, AtomicU16, Ordering};
use std::sync::Arc;
use std::time::Duration;

use protocol::abi::*;
use protocol::reply::{self, DirentBuf, ReplySink};
use protocol::request::parse_write_prefix;
use protocol::{parse_header, Opcode, Operation, ParseError, ParseOptions, ReplyError, Request};

use crate::dax::{Dax, DaxConfig, DaxInodes, MAP_ALIGNMENT_LOG2};
use crate::fs::{self, Context, FileSystem, SetAttr, SetTime, Timespec, Xattr};
use crate::idmap::IdMap;

/// `--cache`: how long the guest may trust what it was told, as virtiofsd's modes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum CachePolicy {
    /// No caching: entry/attr timeouts 0, every open is DIRECT_IO.
    Never,
    /// Metadata cached for a day, file data never (DIRECT_IO).
    Metadata,
    /// Timeouts of 1 s, page cache dropped on open (close-to-open consistency).
    #[default]
    Auto,
    /// Timeouts of a day, page cache kept across opens (KEEP_CACHE, CACHE_DIR).
    Always,
}

impl CachePolicy {
    /// Entry and attribute timeout.
    pub fn timeout(self) -> Duration {
        match self {
            CachePolicy::Never => Duration::ZERO,
            CachePolicy::Auto => Duration::from_secs(1),
            CachePolicy::Metadata | CachePolicy::Always => Duration::from_secs(86400),
        }
    }

    /// The core's configuration for this policy.
    pub fn fs_config(self, read_only: bool, xattr: bool) -> fs::Config {
        fs::Config {
            read_only,
            xattr,
            xattrmap: None,
            entry_timeout: self.timeout(),
            attr_timeout: self.timeout(),
            preserve_noatime: true,
            file_handles: false,
        }
    }

    fn open_flags(self) -> u32 {
        match self {
            CachePolicy::Never | CachePolicy::Metadata => FOPEN_DIRECT_IO,
            CachePolicy::Auto => 0,
            CachePolicy::Always => FOPEN_KEEP_CACHE,
        }
    }

    fn opendir_flags(self) -> u32 {
        match self {
            CachePolicy::Always => FOPEN_KEEP_CACHE | FOPEN_CACHE_DIR,
            _ => 0,
        }
    }
}

/// The guest page size the INIT sizes are counted in (x86_64 and aarch64-4k guests).
const PAGE_SIZE: u32 = 4096;
/// The kernel's own limit on `max_pages` (FUSE_MAX_MAX_PAGES).
pub const MAX_PAGES: u16 = 256;
/// Descriptors a virtio-fs request needs besides its data pages: the kernel reserves 4
/// (in header, in args, out header, out args) and caps `max_pages` at queue size minus this.
const HEADER_DESCRIPTORS: u16 = 4;
/// Largest request copied out of the chain before parsing. WRITE payloads are not copied
/// (they go straight to the file), so this covers names, xattr values (64 KiB) and
/// extensions; anything longer is refused with EINVAL.
pub const MAX_COPIED_REQUEST: usize = 128 * 1024;
/// Largest READDIR/READDIRPLUS buffer built in the daemon.
const MAX_DIR_BUF: usize = 1 << 20;

/// INIT flags zerodax accepts on virtio-fs (when the guest offers them). See docs/serve.md for
/// each flag accepted or refused and why.
pub const INIT_FLAGS: u64 = FUSE_ASYNC_READ
    | FUSE_BIG_WRITES
    | FUSE_PARALLEL_DIROPS
    | FUSE_DO_READDIRPLUS
    | FUSE_READDIRPLUS_AUTO
    | FUSE_MAX_PAGES
    | FUSE_CACHE_SYMLINKS
    | FUSE_NO_EXPORT_SUPPORT;

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
    /// returns bytes written (short only if the file refused more).
    fn write_request_to_file(
        &self,
        off: usize,
        fd: BorrowedFd<'_>,
        file_off: u64,
    ) -> io::Result<usize>;
    /// Bytes the reply may take (all writable buffers).
    fn reply_room(&self) -> usize;
    /// Writes `data` into the reply area at `at`.
    fn write_reply(&mut self, at: usize, data: &[u8]) -> io::Result<()>;
    /// Reads up to `len` bytes of `fd` at `file_off` into the reply area at `at` (preadv,
    /// looping until `len` or end of file); returns bytes read.
    fn read_file_to_reply(
        &mut self,
        at: usize,
        len: usize,
        fd: BorrowedFd<'_>,
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
pub(crate) fn transfer(
    len: usize,
    mut step: impl FnMut(usize) -> io::Result<usize>,
) -> io::Result<usize> {
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
pub(crate) fn syscall_len(n: isize) -> io::Result<usize> {
    usize::try_from(n).map_err(|_| io::Error::last_os_error())
}

fn range(off: usize, len: usize, limit: usize) -> io::Result<std::ops::Range<usize>> {
    match off.checked_add(len) {
        Some(end) if end <= limit => Ok(off..end),
        _ => Err(efault()),
    }
}

impl Chain for BufChain {
    fn request_len(&self) -> usize {
        self.request.len()
    }

    fn read_request(&self, off: usize, buf: &mut [u8]) -> io::Result<()> {
        let r = range(off, buf.len(), self.request.len())?;
        buf.copy_from_slice(&self.request[r]);
        Ok(())
    }

    fn write_request_to_file(
        &self,
        off: usize,
        fd: BorrowedFd<'_>,
        file_off: u64,
    ) -> io::Result<usize> {
        let data = self.request.get(off..).ok_or_else(efault)?;
        transfer(data.len(), |done| {
            // An offset past i64::MAX reaches the kernel as the negative loff_t it always did
            // (EINVAL).
            let pos = file_off.saturating_add(done as u64);
            Ok(rustix::io::pwrite(fd, &data[done..], pos)?)
        })
    }

    fn reply_room(&self) -> usize {
        self.reply.len()
    }

    fn write_reply(&mut self, at: usize, data: &[u8]) -> io::Result<()> {
        let r = range(at, data.len(), self.reply.len())?;
        self.reply[r].copy_from_slice(data);
        Ok(())
    }

    fn read_file_to_reply(
        &mut self,
        at: usize,
        len: usize,
        fd: BorrowedFd<'_>,
        file_off: u64,
    ) -> io::Result<usize> {
        let r = range(at, len, self.reply.len())?;
        let buf = &mut self.reply[r];
        transfer(buf.len(), |done| {
            let pos = file_off.saturating_add(done as u64);
            Ok(rustix::io::pread(fd, &mut buf[done..], pos)?)
        })
    }
}

/// A [`ReplySink`] writing one reply at the start of a chain's reply area.
struct ChainSink<'c> {
    chain: &'c mut dyn Chain,
    pos: usize,
}

impl ReplySink for ChainSink<'_> {
    fn write_parts(&mut self, total: usize, parts: &[&[u8]]) -> Result<(), ReplyError> {
        let have = self.chain.reply_room().saturating_sub(self.pos);
        if total > have {
            return Err(ReplyError::NoSpace { need: total, have });
        }
        for p in parts {
            self.chain
                .write_reply(self.pos, p)
                .map_err(|_| ReplyError::NoSpace { need: total, have })?;
            self.pos += p.len();
        }
        Ok(())
    }
}

fn sink(chain: &mut dyn Chain) -> ChainSink<'_> {
    ChainSink { chain, pos: 0 }
}

/// What a request produced.
enum Answer {
    /// A reply of this many bytes was written.
    Sent(usize),
    /// The opcode takes no reply.
    NoReply,
}

/// A request's outcome before the reply: an answer, or an errno to reply with.
type Outcome = Result<Answer, i32>;

fn errno(e: io::Error) -> i32 {
    match e.raw_os_error() {
        Some(n) if (1..=511).contains(&n) => n,
        _ => libc::EIO,
    }
}

fn sent(r: Result<usize, ReplyError>) -> Outcome {
    match r {
        Ok(n) => Ok(Answer::Sent(n)),
        Err(e) => {
            tracing::debug!("reply does not fit the guest's buffer: {e}");
            Err(libc::EIO)
        }
    }
}

fn parse_errno(e: &ParseError) -> i32 {
    match e {
        ParseError::UnknownOpcode(_) => libc::ENOSYS,
        ParseError::ForeignByteOrder => libc::EPROTO,
        _ => libc::EINVAL,
    }
}

/// The attributes as the guest sees them: host ids made guest ids (`--translate-uid/gid`).
fn fuse_attr(a: &fs::Attr, dax: bool, ids: &(IdMap, IdMap)) -> FuseAttr {
    FuseAttr {
        ino: a.ino,
        size: a.size,
        blocks: a.blocks,
        atime: a.atime.sec as u64,
        mtime: a.mtime.sec as u64,
        ctime: a.ctime.sec as u64,
        atimensec: a.atime.nsec,
        mtimensec: a.mtime.nsec,
        ctimensec: a.ctime.nsec,
        mode: a.mode,
        nlink: a.nlink,
        uid: ids.0.to_guest(a.uid),
        gid: ids.1.to_guest(a.gid),
        rdev: a.rdev,
        blksize: a.blksize,
        flags: if dax && a.mode & libc::S_IFMT == libc::S_IFREG {
            FUSE_ATTR_DAX
        } else {
            0
        },
    }
}

/// `submounts`: the session announces submounts (`--announce-submounts`, FUSE_SUBMOUNTS).
fn entry_out(e: &fs::Entry, dax: bool, submounts: bool, ids: &(IdMap, IdMap)) -> FuseEntryOut {
    let mut attr = fuse_attr(&e.attr, dax, ids);
    if submounts && e.submount {
        attr.flags |= FUSE_ATTR_SUBMOUNT;
    }
    FuseEntryOut {
        nodeid: e.node,
        generation: e.generation,
        entry_valid: e.entry_timeout.as_secs(),
        attr_valid: e.attr_timeout.as_secs(),
        entry_valid_nsec: e.entry_timeout.subsec_nanos(),
        attr_valid_nsec: e.attr_timeout.subsec_nanos(),
        attr,
    }
}

fn set_time(valid: u32, now: u32, at: u32, sec: u64, nsec: u32) -> Option<SetTime> {
    if valid & now != 0 {
        Some(SetTime::Now)
    } else if valid & at != 0 {
        Some(SetTime::At(Timespec {
            sec: sec as i64,
            nsec,
        }))
    } else {
        None
    }
}

fn set_attr(s: &FuseSetattrIn) -> SetAttr {
    let v = s.valid;
    let has = |bit: u32| v & bit != 0;
    SetAttr {
        mode: has(FATTR_MODE).then_some(s.mode),
        uid: has(FATTR_UID).then_some(s.uid),
        gid: has(FATTR_GID).then_some(s.gid),
        size: has(FATTR_SIZE).then_some(s.size),
        atime: set_time(v, FATTR_ATIME_NOW, FATTR_ATIME, s.atime, s.atimensec),
        mtime: set_time(v, FATTR_MTIME_NOW, FATTR_MTIME, s.mtime, s.mtimensec),
        fh: has(FATTR_FH).then_some(s.fh),
    }
}

/// How the server is set up.
#[derive(Debug, Clone)]
pub struct ServerOptions {
    /// `--cache`.
    pub cache: CachePolicy,
    /// Offer READDIRPLUS (`--no-readdirplus` clears it).
    pub readdirplus: bool,
    /// Offer DIRECT_IO_ALLOW_MMAP (`--allow-mmap`).
    pub allow_mmap: bool,
    /// The DAX window (`--cache-size` > 0), served once the frontend sets up the backend
    /// channel.
    pub dax: Option<DaxConfig>,
    /// `--posix-acl`.
    pub posix_acl: AclMode,
    /// `--announce-submounts`: directories on other mounts carry FUSE_ATTR_SUBMOUNT.
    pub announce_submounts: bool,
    /// `--writeback`: offer the guest a writeback cache (FUSE_WRITEBACK_CACHE).
    pub writeback: bool,
    /// `--translate-uid`: guest and host user ids.
    pub uid_map: IdMap,
    /// `--translate-gid`: guest and host group ids.
    pub gid_map: IdMap,
    /// `--security-label`: label new nodes with the guest's LSM contexts.
    pub security_label: AclMode,
}

/// The INIT flags `needed` to ask for under `mode` when the guest `offered` these: all of
/// them or none; `always` with a guest that lacks one fails INIT (EPROTO).
fn optional_feature(mode: AclMode, offered: u64, needed: u64, flag: &str) -> Result<u64, i32> {
    match mode {
        AclMode::Never => Ok(0),
        _ if offered & needed == needed => Ok(needed),
        AclMode::Auto => {
            tracing::warn!("{flag}=auto: the guest cannot do it; serving without");
            Ok(0)
        }
        AclMode::Always => {
            tracing::error!("{flag}=always: the guest cannot do it");
            Err(libc::EPROTO)
        }
    }
}

/// `--posix-acl` and `--security-label`: whether to negotiate the feature with the guest
/// (virtiofsd's values).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum AclMode {
    /// Never (for ACLs: `system.posix_acl_*` xattrs are refused, EOPNOTSUPP).
    #[default]
    Never,
    /// When the guest offers the flags (ACLs: POSIX_ACL, DONT_MASK and SETXATTR_EXT;
    /// labels: SECURITY_CTX).
    Auto,
    /// Required: INIT fails (EPROTO) with a guest that cannot.
    Always,
}

impl Default for ServerOptions {
    fn default() -> Self {
        ServerOptions {
            cache: CachePolicy::default(),
            readdirplus: true,
            allow_mmap: false,
            dax: None,
            posix_acl: AclMode::Never,
            announce_submounts: false,
            writeback: false,
            uid_map: IdMap::default(),
            gid_map: IdMap::default(),
            security_label: AclMode::Never,
        }
    }
}

/// The FUSE server of one virtio-fs device: the core plus the session state INIT set.
pub struct Server {
    fs: Arc<FileSystem>,
    opts: ServerOptions,
    /// INIT was answered (and DESTROY has not come since).
    initialized: AtomicBool,
    /// Size of the request queues as the transport saw them (0: unknown); caps max_pages.
    queue_size: AtomicU16,
    dax: Option<Arc<Dax>>,
    /// INIT accepted HAS_INODE_DAX: regular files carry FUSE_ATTR_DAX per `--dax-inodes`.
    inode_dax: AtomicBool,
    /// INIT accepted SETXATTR_EXT: SETXATTR carries the 16-byte argument.
    setxattr_ext: AtomicBool,
    /// INIT accepted SUBMOUNTS (`--announce-submounts`).
    submounts: AtomicBool,
    /// INIT accepted WRITEBACK_CACHE (`--writeback`).
    writeback: AtomicBool,
    /// `--translate-uid` and `--translate-gid`, in that order.
    ids: (IdMap, IdMap),
    /// INIT accepted SECURITY_CTX (`--security-label`).
    security_ctx: AtomicBool,
}

impl std::fmt::Debug for Server {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Server")
            .field("opts", &self.opts)
            .field("initialized", &self.initialized)
            .finish_non_exhaustive()
    }
}

impl Server {
    /// A dispatcher for `fs`, with a DAX window when `opts.dax` asks for one.
    pub fn new(fs: Arc<FileSystem>, opts: ServerOptions) -> Self {
        let dax = opts
            .dax
            .map(|cfg| Arc::new(Dax::new(cfg, fs.config().read_only)));
        let ids = (opts.uid_map.clone(), opts.gid_map.clone());
        Self {
            fs,
            opts,
            initialized: AtomicBool::new(false),
            queue_size: AtomicU16::new(0),
            dax,
            inode_dax: AtomicBool::new(false),
            setxattr_ext: AtomicBool::new(false),
            submounts: AtomicBool::new(false),
            writeback: AtomicBool::new(false),
            ids,
            security_ctx: AtomicBool::new(false),
        }
    }

    /// The DAX window, when `--cache-size` asked for one.
    pub fn dax(&self) -> Option<&Arc<Dax>> {
        self.dax.as_ref()
    }

    /// Coherence of the DAX window after zerodax changed the data or size of the node
    /// `node` names (looked up only when there is a window).
    fn file_changed(&self, node: impl FnOnce() -> Option<u64>) {
        if let Some(dax) = &self.dax {
            if let Some(node) = node() {
                dax.file_changed(&self.fs, node);
            }
        }
    }

    /// The guest's FUSE session ends (DESTROY) or starts anew (INIT): the DAX window is
    /// emptied (a guest unmounting sends no REMOVEMAPPING; docs/dax.md, *Session
    /// lifecycle*), and every node and handle of the old session forgotten.
    fn end_session(&self) {
        if let Some(dax) = &self.dax {
            dax.end_session();
        }
        self.fs.reset_session();
    }

    /// Coherence of the DAX window before zerodax makes the node shorter than `new_size`.
    fn will_shrink(&self, node: u64, new_size: u64) {
        if let Some(dax) = &self.dax {
            dax.will_shrink(&self.fs, node, new_size);
        }
    }

    /// The filesystem core behind this server.
    pub fn fs(&self) -> &Arc<FileSystem> {
        &self.fs
    }

    /// Tells the server how many descriptors a request queue holds, so INIT can keep
    /// `max_pages` within what one chain can carry. The smallest size seen wins.
    pub fn set_queue_size(&self, size: u16) {
        let _ = self
            .queue_size
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |cur| {
                (cur == 0 || size < cur).then_some(size)
            });
    }

    /// `max_pages` for INIT: the kernel's limit, and at most what a chain of the queue's
    /// size can hold besides the header descriptors.
    pub fn max_pages(&self) -> u16 {
        match self.queue_size.load(Ordering::Relaxed) {
            0 => MAX_PAGES,
            q => q.saturating_sub(HEADER_DESCRIPTORS).clamp(1, MAX_PAGES),
        }
    }

    /// Whether INIT has been answered.
    pub fn initialized(&self) -> bool {
        self.initialized.load(Ordering::Acquire)
    }

    /// Serves one request. `broken` says the transport found the chain itself malformed
    /// (a buffer outside guest memory, a readable buffer after a writable one): then the
    /// answer is an EIO reply if there is room for one. Returns the bytes written to the
    /// reply area (0: no reply).
    pub fn handle(&self, chain: &mut dyn Chain, broken: bool) -> u32 {
        let len = chain.request_len();
        let mut raw = [0u8; FuseInHeader::SIZE];
        let have = len.min(raw.len());
        if chain.read_request(0, &mut raw[..have]).is_err() {
            return 0;
        }
        // The reply must carry the request's unique: without one (fewer than 16 readable
        // bytes) no reply can be addressed, and the chain goes back with nothing written.
        let unique = match raw.get(8..16) {
            Some(b) if have >= 16 => u64::from_ne_bytes(b.try_into().unwrap_or_default()),
            _ => {
                tracing::debug!("request of {len} bytes has no readable unique; no reply");
                return 0;
            }
        };
        let header = FuseInHeader::decode(&raw[..have]);
        let no_reply = header
            .and_then(|h| Opcode::try_from(h.opcode).ok())
            .is_some_and(|op| !op.expects_reply());
        let outcome = match header {
            _ if broken => {
                tracing::debug!(unique, "malformed descriptor chain");
                Err(libc::EIO)
            }
            None => {
                tracing::debug!(unique, "request of {len} bytes is shorter than its header");
                Err(libc::EINVAL)
            }
            Some(h) => self.request(chain, h),
        };
        tracing::trace!(
            unique,
            opcode = header.map(|h| h.opcode),
            nodeid = header.map(|h| h.nodeid),
            errno = outcome.as_ref().err(),
            "request"
        );
        let n = match outcome {
            Ok(Answer::Sent(n)) => n,
            Ok(Answer::NoReply) => 0,
            Err(_) if no_reply => 0,
            Err(e) => reply::reply_error(&mut sink(chain), unique, e).unwrap_or(0),
        };
        u32::try_from(n).unwrap_or(0)
    }

    fn request(&self, chain: &mut dyn Chain, header: FuseInHeader) -> Outcome {
        let len = chain.request_len();
        if let Err(e) = parse_header(&header.to_vec()) {
            tracing::debug!("bad request header: {e}");
            return Err(parse_errno(&e));
        }
        if header.opcode == Opcode::Write as u32 && self.initialized() {
            let mut arg = [0u8; FuseWriteIn::SIZE];
            if chain.read_request(FuseInHeader::SIZE, &mut arg).is_ok() {
                if let Ok(w) = parse_write_prefix(&header, &arg) {
                    if header.len as usize != len {
                        tracing::debug!("WRITE: header len {} but {len} bytes", header.len);
                        return Err(libc::EINVAL);
                    }
                    return self.write_direct(chain, &header, &w);
                }
            }
        }
        if len > MAX_COPIED_REQUEST {
            tracing::debug!(
                "request of {len} bytes (opcode {}) exceeds {MAX_COPIED_REQUEST}",
                header.opcode
            );
            return Err(libc::EINVAL);
        }
        let mut bytes = vec![0u8; len];
        chain.read_request(0, &mut bytes).map_err(errno)?;
        let body = &bytes[FuseInHeader::SIZE..];
        let opts = ParseOptions {
            setxattr_ext: self.setxattr_ext.load(Ordering::Relaxed),
        };
        let req = match Request::parse_parts(header, body, opts) {
            Ok(r) => r,
            Err(e) => {
                tracing::debug!(unique = header.unique, "malformed request: {e}");
                return Err(parse_errno(&e));
            }
        };
        if !self.initialized() && !matches!(req.op, Operation::Init(_)) {
            tracing::debug!("{} before INIT", req.opcode());
            return Err(libc::EIO);
        }
        self.dispatch(chain, &req)
    }

    fn write_direct(&self, chain: &mut dyn Chain, h: &FuseInHeader, w: &FuseWriteIn) -> Outcome {
        if self.fs.config().read_only {
            return Err(libc::EROFS);
        }
        let handle = self.fs.handle(w.fh).map_err(errno)?;
        let off = FuseInHeader::SIZE + FuseWriteIn::SIZE;
        let n = chain
            .write_request_to_file(off, handle.fd(), w.offset)
            .map_err(errno)?;
        self.file_changed(|| Some(handle.node));
        sent(reply::reply_write(
            &mut sink(chain),
            h.unique,
            u32::try_from(n).unwrap_or(u32::MAX),
        ))
    }

    fn read(&self, chain: &mut dyn Chain, unique: u64, r: &FuseReadIn) -> Outcome {
        let handle = self.fs.handle(r.fh).map_err(errno)?;
        let room = chain.reply_room();
        if room < FuseOutHeader::SIZE {
            return Err(libc::EIO);
        }
        let want = (r.size as usize)
            .min(room - FuseOutHeader::SIZE)
            .min(fs::MAX_IO as usize);
        let n = chain
            .read_file_to_reply(FuseOutHeader::SIZE, want, handle.fd(), r.offset)
            .map_err(errno)?;
        let header = reply::out_header(unique, n).map_err(|_| libc::EIO)?;
        chain.write_reply(0, &header).map_err(errno)?;
        Ok(Answer::Sent(FuseOutHeader::SIZE + n))
    }

    fn dir_buf(chain: &dyn Chain, size: u32) -> Vec<u8> {
        let room = chain.reply_room().saturating_sub(FuseOutHeader::SIZE);
        vec![0u8; (size as usize).min(room).min(MAX_DIR_BUF)]
    }

    fn readdir(&self, chain: &mut dyn Chain, unique: u64, r: &FuseReadIn) -> Outcome {
        let mut buf = Self::dir_buf(chain, r.size);
        let mut d = DirentBuf::new(&mut buf);
        let res = self.fs.readdir(r.fh, r.offset, |e| {
            d.push(e.ino, e.offset, e.file_type >> 12, e.name.to_bytes())
                .unwrap_or(true)
        });
        if let Err(e) = res {
            if d.is_empty() {
                return Err(errno(e));
            }
        }
        sent(reply::reply_data(&mut sink(chain), unique, d.as_bytes()))
    }

    fn readdirplus(
        &self,
        chain: &mut dyn Chain,
        ctx: &Context,
        unique: u64,
        r: &FuseReadIn,
    ) -> Outcome {
        let mut buf = Self::dir_buf(chain, r.size);
        let mut d = DirentBuf::new(&mut buf);
        let res = self.fs.readdirplus(ctx, r.fh, r.offset, |e, entry| {
            let out = match entry {
                Some(en) => entry_out(
                    en,
                    self.inode_dax.load(Ordering::Relaxed),
                    self.submounts.load(Ordering::Relaxed),
                    &self.ids,
                ),
                None => FuseEntryOut {
                    attr: FuseAttr {
                        ino: e.ino,
                        mode: e.file_type,
                        ..Default::default()
                    },
                    ..Default::default()
                },
            };
            match d.push_plus(&out, e.offset, e.file_type >> 12, e.name.to_bytes()) {
                Ok(fits) => fits,
                Err(_) => {
                    // A name the guest kernel would refuse: skip it, and drop the lookup
                    // reference it will never FORGET.
                    if let Some(en) = entry {
                        self.fs.forget(en.node, 1);
                    }
                    true
                }
            }
        });
        if let Err(e) = res {
            if d.is_empty() {
                return Err(errno(e));
            }
        }
        sent(reply::reply_data(&mut sink(chain), unique, d.as_bytes()))
    }

    fn init(&self, chain: &mut dyn Chain, unique: u64, k: &FuseInitIn) -> Outcome {
        let dax = self.dax.as_ref().filter(|d| d.active());
        let mut wanted = match dax {
            Some(_) => INIT_FLAGS | FUSE_MAP_ALIGNMENT | FUSE_HAS_INODE_DAX,
            None => INIT_FLAGS,
        };
        if !self.opts.readdirplus {
            wanted &= !(FUSE_DO_READDIRPLUS | FUSE_READDIRPLUS_AUTO);
        }
        if self.opts.allow_mmap {
            wanted |= FUSE_DIRECT_IO_ALLOW_MMAP;
        }
        if self.opts.announce_submounts {
            wanted |= FUSE_SUBMOUNTS;
        }
        if self.opts.writeback {
            wanted |= FUSE_WRITEBACK_CACHE;
        }
        // POSIX ACLs need all three: the client enforcing ACLs, sending modes without its
        // umask (the host applies a default ACL or the umask: fs::umask_in), and saying when
        // setting an access ACL must clear set-group-id.
        let offered = k.flags64();
        wanted |= optional_feature(
            self.opts.posix_acl,
            offered,
            FUSE_POSIX_ACL | FUSE_DONT_MASK | FUSE_SETXATTR_EXT,
            "--posix-acl",
        )?;
        wanted |= optional_feature(
            self.opts.security_label,
            offered,
            FUSE_SECURITY_CTX,
            "--security-label",
        )?;
        let mut out = match FuseInitOut::negotiate(k, wanted) {
            Ok(out) => out,
            Err(_) => {
                tracing::error!(
                    "guest speaks FUSE {}.{}, zerodax needs 7.{FUSE_MIN_MINOR_VERSION} or later",
                    k.major,
                    k.minor
                );
                return Err(libc::EPROTO);
            }
        };
        if k.major == FUSE_KERNEL_VERSION {
            // A second INIT on one connection is a guest that reset its device (a reboot):
            // nothing of the old session may leak into the new one.
            self.end_session();
            let max_pages = self.max_pages();
            out.max_pages = max_pages;
            out.max_write = u32::from(max_pages) * PAGE_SIZE;
            out.time_gran = 1;
            if out.flags64() & FUSE_MAP_ALIGNMENT != 0 {
                out.map_alignment = MAP_ALIGNMENT_LOG2;
            }
            let accepted = out.flags64();
            self.fs.set_posix_acl(accepted & FUSE_POSIX_ACL != 0);
            self.setxattr_ext
                .store(accepted & FUSE_SETXATTR_EXT != 0, Ordering::Relaxed);
            self.submounts
                .store(accepted & FUSE_SUBMOUNTS != 0, Ordering::Relaxed);
            self.writeback
                .store(accepted & FUSE_WRITEBACK_CACHE != 0, Ordering::Relaxed);
            self.security_ctx
                .store(accepted & FUSE_SECURITY_CTX != 0, Ordering::Relaxed);
            let inode_dax = out.flags64() & FUSE_HAS_INODE_DAX != 0
                && dax.is_some_and(|d| d.config().inodes == DaxInodes::All);
            self.inode_dax.store(inode_dax, Ordering::Relaxed);
            tracing::info!(
                "INIT: FUSE {}.{}, flags {:#x}, max_pages {max_pages}",
                out.major,
                out.minor,
                out.flags64()
            );
        }
        let r = sent(reply::reply_init(&mut sink(chain), unique, &out));
        if r.is_ok() && k.major == FUSE_KERNEL_VERSION {
            self.initialized.store(true, Ordering::Release);
        }
        r
    }

    /// A client's open flags as the host open needs them. With a writeback cache the client
    /// kernel reads pages around partial writes through any open file, so write-only opens
    /// become read-write, and it computes append offsets itself, so O_APPEND goes (the host
    /// would otherwise move every cached write to the end).
    fn open_flags(&self, flags: u32) -> i32 {
        let mut flags = flags as i32;
        if self.writeback.load(Ordering::Relaxed) {
            if flags & libc::O_ACCMODE == libc::O_WRONLY {
                flags = (flags & !libc::O_ACCMODE) | libc::O_RDWR;
            }
            flags &= !libc::O_APPEND;
        }
        flags
    }

    fn dispatch(&self, chain: &mut dyn Chain, req: &Request<'_>) -> Outcome {
        use Operation as O;
        let h = &req.header;
        let (unique, node) = (h.unique, h.nodeid);
        // The caller as the host knows it. A forbidden guest id becomes -1, which no
        // credential switch accepts: whatever would act as the caller fails with EPERM.
        let ctx = Context {
            uid: self.ids.0.to_host(h.uid).unwrap_or(u32::MAX),
            gid: self.ids.1.to_host(h.gid).unwrap_or(u32::MAX),
            pid: h.pid,
            umask: 0,
        };
        let with_umask = |umask: u32| Context { umask, ..ctx };
        let fs = &*self.fs;
        let dax = self.inode_dax.load(Ordering::Relaxed);
        let submounts = self.submounts.load(Ordering::Relaxed);
        let empty = |chain: &mut dyn Chain, r: io::Result<()>| -> Outcome {
            r.map_err(errno)?;
            sent(reply::reply_empty(&mut sink(chain), unique))
        };
        // The LSM labels the guest kernel sent with a create (SECURITY_CTX): checked before
        // the node is made, set on it right after (not atomic: a failure leaves it unlabelled
        // and fails the request).
        let contexts = || {
            req.extensions
                .security_contexts()
                .filter(|_| self.security_ctx.load(Ordering::Relaxed))
        };
        let creating = matches!(
            req.op,
            O::Create { .. }
                | O::Mkdir { .. }
                | O::Mknod { .. }
                | O::Symlink { .. }
                | O::Tmpfile { .. }
        );
        if creating && contexts().any(|(name, _)| !name.to_bytes().starts_with(b"security.")) {
            return Err(libc::EPERM);
        }
        let label = |e: &fs::Entry| -> Result<(), i32> {
            for (name, value) in contexts() {
                if let Err(error) = fs.set_security_context(e.node, name, value) {
                    fs.forget(e.node, 1);
                    return Err(errno(error));
                }
            }
            Ok(())
        };
        let entry = |chain: &mut dyn Chain, r: io::Result<fs::Entry>| -> Outcome {
            let e = r.map_err(errno)?;
            if creating {
                label(&e)?;
            }
            sent(reply::reply_entry(
                &mut sink(chain),
                unique,
                &entry_out(&e, dax, submounts, &self.ids),
            ))
        };
        let attr = |chain: &mut dyn Chain, r: io::Result<fs::Attr>| -> Outcome {
            let a = r.map_err(errno)?;
            let out = FuseAttrOut {
                attr_valid: fs.config().attr_timeout.as_secs(),
                attr_valid_nsec: fs.config().attr_timeout.subsec_nanos(),
                dummy: 0,
                attr: fuse_attr(&a, dax, &self.ids),
            };
            sent(reply::reply_attr(&mut sink(chain), unique, &out))
        };
        let xattr = |chain: &mut dyn Chain, r: io::Result<Xattr>| -> Outcome {
            match r.map_err(errno)? {
                Xattr::Size(n) => sent(reply::reply_xattr_size(&mut sink(chain), unique, n)),
                Xattr::Data(v) => sent(reply::reply_data(&mut sink(chain), unique, &v)),
            }
        };
        let open_out = |fh: u64, open_flags: u32| FuseOpenOut {
            fh,
            open_flags,
            backing_id: 0,
        };
        // CREATE and TMPFILE: the new node's entry and its open handle.
        let created = |chain: &mut dyn Chain, e: &fs::Entry, fh: u64| -> Outcome {
            if let Err(error) = label(e) {
                let _ = fs.release(fh);
                return Err(error);
            }
            let out = open_out(fh, self.opts.cache.open_flags());
            sent(reply::reply_create(
                &mut sink(chain),
                unique,
                &entry_out(e, dax, submounts, &self.ids),
                &out,
            ))
        };
        if let Some(d) = &self.dax {
            // The guest's stores into a tail page of the window reach the file before
            // zerodax reads or changes it.
            match req.op {
                O::Read(_)
                | O::Write { .. }
                | O::Setattr(_)
                | O::Getattr(_)
                | O::Open(_)
                | O::Flush(_)
                | O::Fsync(_)
                | O::Release(_)
                | O::Lseek(_)
                | O::Fallocate(_) => d.settle(fs, Some(node)),
                O::CopyFileRange(c) | O::CopyFileRange64(c) => {
                    d.settle(fs, Some(node));
                    d.settle(fs, Some(c.nodeid_out));
                }
                O::Destroy | O::Syncfs(_) => d.settle(fs, None),
                _ => {}
            }
        }
        match req.op {
            O::Init(ref k) => self.init(chain, unique, k),
            O::Destroy => {
                self.end_session();
                self.initialized.store(false, Ordering::Release);
                sent(reply::reply_empty(&mut sink(chain), unique))
            }
            O::Lookup { name } => entry(chain, fs.lookup(&ctx, node, name)),
            O::Forget(f) => {
                fs.forget(node, f.nlookup);
                Ok(Answer::NoReply)
            }
            O::BatchForget(list) => {
                let nodes: Vec<(u64, u64)> = list.iter().map(|f| (f.nodeid, f.nlookup)).collect();
                fs.batch_forget(&nodes);
                Ok(Answer::NoReply)
            }
            O::Interrupt(_) | O::NotifyReply { .. } => Ok(Answer::NoReply),
            O::Getattr(g) => {
                let fh = (g.getattr_flags & FUSE_GETATTR_FH != 0).then_some(g.fh);
                attr(chain, fs.getattr(&ctx, node, fh))
            }
            O::Setattr(ref s) => {
                if s.valid & FATTR_SIZE != 0 {
                    self.will_shrink(node, s.size);
                }
                let mut set = set_attr(s);
                // A new owner named in guest ids; a forbidden one is refused.
                if let Some(uid) = set.uid {
                    set.uid = Some(self.ids.0.to_host(uid).ok_or(libc::EPERM)?);
                }
                if let Some(gid) = set.gid {
                    set.gid = Some(self.ids.1.to_host(gid).ok_or(libc::EPERM)?);
                }
                let r = fs.setattr(&ctx, node, &set);
                if r.is_ok() && s.valid & FATTR_SIZE != 0 {
                    self.file_changed(|| Some(node));
                }
                attr(chain, r)
            }
            O::Readlink => {
                let target = fs.readlink(&ctx, node).map_err(errno)?;
                sent(reply::reply_data(&mut sink(chain), unique, &target))
            }
            O::Symlink { name, target } => entry(chain, fs.symlink(&ctx, node, name, target)),
            O::Mknod { arg, name } => entry(
                chain,
                fs.mknod(
                    &with_umask(arg.umask),
                    node,
                    name,
                    arg.mode,
                    u64::from(arg.rdev),
                ),
            ),
            O::Mkdir { arg, name } => entry(
                chain,
                fs.mkdir(&with_umask(arg.umask), node, name, arg.mode),
            ),
            O::Unlink { name } => empty(chain, fs.unlink(&ctx, node, name)),
            O::Rmdir { name } => empty(chain, fs.rmdir(&ctx, node, name)),
            O::Rename { arg, name, newname } => {
                empty(chain, fs.rename(&ctx, node, name, arg.newdir, newname, 0))
            }
            O::Rename2 { arg, name, newname } => empty(
                chain,
                fs.rename(&ctx, node, name, arg.newdir, newname, arg.flags),
            ),
            O::Link { arg, name } => entry(chain, fs.link(&ctx, arg.oldnodeid, node, name)),
            O::Open(o) => {
                let trunc = o.flags as i32 & libc::O_TRUNC != 0;
                if trunc {
                    self.will_shrink(node, 0);
                }
                let open = fs.open(&ctx, node, self.open_flags(o.flags));
                if trunc {
                    self.file_changed(|| Some(node));
                }
                let open = open.map_err(errno)?;
                let out = open_out(open.fh, self.opts.cache.open_flags());
                sent(reply::reply_open(&mut sink(chain), unique, &out))
            }
            O::Create { arg, name } => {
                let (e, open) = fs
                    .create(
                        &with_umask(arg.umask),
                        node,
                        name,
                        arg.mode,
                        self.open_flags(arg.flags),
                    )
                    .map_err(errno)?;
                // CREATE of an existing file with O_TRUNC (Linux sends it so): ranges of it
                // that are live are cut to the new size before the reply (not before the
                // truncate: the node is only known now).
                if arg.flags as i32 & libc::O_TRUNC != 0 {
                    self.file_changed(|| Some(e.node));
                }
                created(chain, &e, open.fh)
            }
            // An unnamed file (O_TMPFILE): answered as CREATE is; LINK names it later.
            O::Tmpfile { arg, .. } => {
                let (e, open) = fs
                    .tmpfile(&with_umask(arg.umask), node, arg.mode, arg.flags as i32)
                    .map_err(errno)?;
                created(chain, &e, open.fh)
            }
            O::Read(ref r) => self.read(chain, unique, r),
            O::Write { arg, data } => {
                let n = fs.write(&ctx, arg.fh, arg.offset, data).map_err(errno)?;
                self.file_changed(|| fs.handle_node(arg.fh));
                sent(reply::reply_write(
                    &mut sink(chain),
                    unique,
                    u32::try_from(n).unwrap_or(u32::MAX),
                ))
            }
            O::Statfs => {
                let s = fs.statfs(&ctx, node).map_err(errno)?;
                let st = FuseKstatfs {
                    blocks: s.blocks,
                    bfree: s.bfree,
                    bavail: s.bavail,
                    files: s.files,
                    ffree: s.ffree,
                    bsize: s.bsize,
                    namelen: s.namelen,
                    frsize: s.frsize,
                    ..Default::default()
                };
                sent(reply::reply_statfs(&mut sink(chain), unique, &st))
            }
            O::Release(r) => empty(chain, fs.release(r.fh)),
            O::Releasedir(r) => empty(chain, fs.releasedir(r.fh)),
            O::Flush(f) => empty(chain, fs.flush(f.fh)),
            O::Fsync(f) => empty(
                chain,
                fs.fsync(f.fh, f.fsync_flags & FUSE_FSYNC_FDATASYNC != 0),
            ),
            O::Fsyncdir(f) => empty(
                chain,
                fs.fsyncdir(f.fh, f.fsync_flags & FUSE_FSYNC_FDATASYNC != 0),
            ),
            O::Setxattr { arg, name, value } => empty(
                chain,
                fs.setxattr(
                    &ctx,
                    node,
                    name,
                    value,
                    arg.flags as i32,
                    arg.setxattr_flags,
                ),
            ),
            O::Getxattr { arg, name } => xattr(chain, fs.getxattr(&ctx, node, name, arg.size)),
            O::Listxattr(arg) => xattr(chain, fs.listxattr(&ctx, node, arg.size)),
            O::Removexattr { name } => empty(chain, fs.removexattr(&ctx, node, name)),
            O::Opendir(_) => {
                let fh = fs.opendir(&ctx, node).map_err(errno)?;
                let out = open_out(fh, self.opts.cache.opendir_flags());
                sent(reply::reply_open(&mut sink(chain), unique, &out))
            }
            O::Readdir(ref r) => self.readdir(chain, unique, r),
            O::Readdirplus(ref r) => self.readdirplus(chain, &ctx, unique, r),
            O::Access(a) => empty(chain, fs.access(&ctx, node, a.mask as i32)),
            O::Fallocate(f) => {
                let r = fs.fallocate(f.fh, f.mode as i32, f.offset, f.length);
                if r.is_ok() {
                    self.file_changed(|| fs.handle_node(f.fh));
                }
                empty(chain, r)
            }
            O::Lseek(l) => {
                let offset = i64::try_from(l.offset).map_err(|_| libc::EINVAL)?;
                let pos = fs.lseek(l.fh, offset, l.whence as i32).map_err(errno)?;
                sent(reply::reply_lseek(&mut sink(chain), unique, pos))
            }
            O::CopyFileRange(c) | O::CopyFileRange64(c) => {
                let flags = u32::try_from(c.flags).map_err(|_| libc::EINVAL)?;
                let n = fs
                    .copy_file_range(c.fh_in, c.off_in, c.fh_out, c.off_out, c.len, flags)
                    .map_err(errno)?;
                self.file_changed(|| fs.handle_node(c.fh_out));
                if req.opcode() == Opcode::CopyFileRange {
                    sent(reply::reply_write(
                        &mut sink(chain),
                        unique,
                        u32::try_from(n).unwrap_or(u32::MAX),
                    ))
                } else {
                    sent(reply::reply_copy_file_range_64(
                        &mut sink(chain),
                        unique,
                        n as u64,
                    ))
                }
            }
            O::Syncfs(_) => empty(chain, fs.syncfs(node)),
            // Without a window (no --cache-size, or SHMEM/BACKEND_REQ not negotiated): ENOSYS,
            // as virtiofsd answers.
            O::SetupMapping(s) => {
                let dax = self.dax.as_ref().ok_or(libc::ENOSYS)?;
                dax.setup(fs, node, &s)?;
                sent(reply::reply_empty(&mut sink(chain), unique))
            }
            O::RemoveMapping(list) => {
                let dax = self.dax.as_ref().ok_or(libc::ENOSYS)?;
                let ranges: Vec<(u64, u64)> = list.iter().map(|r| (r.moffset, r.len)).collect();
                dax.remove(&ranges)?;
                sent(reply::reply_empty(&mut sink(chain), unique))
            }
            // Locks are the guest kernel's (POSIX_LOCKS/FLOCK_LOCKS not negotiated); the rest
            // have no meaning for a passthrough share (BMAP: block devices, IOCTL/POLL: not
            // offered, CUSE_INIT: a CUSE device) or are optional (STATX: the guest falls
            // back to GETATTR on ENOSYS).
            O::Getlk(_)
            | O::Setlk(_)
            | O::Setlkw(_)
            | O::Bmap(_)
            | O::Ioctl { .. }
            | O::Poll(_)
            | O::Statx(_)
            | O::CuseInit(_) => Err(libc::ENOSYS),
        }
    }
}
