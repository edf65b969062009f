//! FUSE dispatch for the virtio-fs transport: request bytes in, one call into the filesystem
//! core, reply bytes out.
//!
//! It knows nothing of virtqueues. A transport hands it a [`Chain`] (`crate::chain`): the
//! request's readable bytes and the room for the reply, plus two data-moving hooks so that
//! WRITE payloads go from the request buffers straight into `pwritev` and READ data straight
//! from `preadv` into the reply buffers (no copy in the daemon). Everything else is copied
//! out of the request once and parsed by the protocol crate. Tests drive it with
//! [`BufChain`](crate::chain::BufChain), plain byte buffers.
//!
//! Every byte string gets an answer: a reply (possibly an error reply) when the chain has room
//! for one, nothing for the opcodes that take no reply (FORGET, BATCH_FORGET, INTERRUPT,
//! NOTIFY_REPLY). Nothing the guest sends can make this module panic.
//!
//! This file holds the [`Server`], [`Server::handle`] (header, parse, dispatch) and the
//! dispatch itself, one line per operation; the operations are in one file per family:
//! `init` (INIT, DESTROY), `node` (lookup, attributes, names, links, statfs; the security
//! labels of new nodes), `file` (open, create, read, write and the other file-handle
//! operations), `dir` (directory handles and READDIR/READDIRPLUS), `xattr`, `mapping` (the
//! DAX window's requests and coherence hooks). `answer` writes replies into the chain;
//! `options` is the set-up ([`ServerOptions`]).

mod answer;
mod dir;
mod file;
mod init;
mod mapping;
mod node;
mod options;
mod xattr;

use std::sync::atomic::{AtomicBool, AtomicU16, Ordering};
use std::sync::Arc;

use protocol::abi::*;
use protocol::reply;
use protocol::request::parse_write_prefix;
use protocol::{check_header, Opcode, Operation, ParseOptions, Request};

use self::answer::{empty, errno, parse_errno, sink, Answer, Outcome};
pub use self::options::{AclMode, BackingFiles, CachePolicy, Notifier, ServerOptions};
use crate::chain::Chain;
use crate::dax::Dax;
use crate::fs::{Context, FileSystem};
use crate::idmap::IdMap;

/// The kernel's own limit on `max_pages` (FUSE_MAX_MAX_PAGES).
pub const MAX_PAGES: u16 = 256;
/// Descriptors a virtio-fs request needs besides its data pages: the kernel reserves 4
/// (in header, in args, out header, out args) and caps `max_pages` at queue size minus this.
const HEADER_DESCRIPTORS: u16 = 4;
/// Largest request copied out of the chain before parsing. WRITE payloads are not copied
/// (they go straight to the file), so this covers names, xattr values (64 KiB) and
/// extensions; anything longer is refused with EINVAL.
pub const MAX_COPIED_REQUEST: usize = 128 * 1024;

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
    /// INIT accepted PASSTHROUGH ([`ServerOptions::backing`]).
    passthrough: AtomicBool,
    /// INIT accepted HANDLE_KILLPRIV_V2 ([`ServerOptions::killpriv_v2`]).
    killpriv_v2: AtomicBool,
}

impl std::fmt::Debug for Server {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Server")
            .field("opts", &self.opts)
            .field("initialized", &self.initialized)
            .finish_non_exhaustive()
    }
}

/// One parsed request as its handler sees it, with what dispatch fixed when it started.
struct Call<'r> {
    /// The request.
    req: &'r Request<'r>,
    /// The id the reply carries.
    unique: u64,
    /// The node the request is about.
    node: u64,
    /// The caller as the host knows it: a forbidden guest id becomes -1, which no credential
    /// switch accepts, so whatever would act as the caller fails with EPERM.
    ctx: Context,
    /// Regular files carry FUSE_ATTR_DAX (INIT accepted HAS_INODE_DAX, `--dax-inodes all`).
    dax: bool,
    /// Directories on other mounts carry FUSE_ATTR_SUBMOUNT.
    submounts: bool,
}

impl Call<'_> {
    /// The caller, with the umask a creating request carries.
    fn with_umask(&self, umask: u32) -> Context {
        Context { umask, ..self.ctx }
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
            passthrough: AtomicBool::new(false),
            killpriv_v2: AtomicBool::new(false),
        }
    }

    /// The DAX window, when `--cache-size` asked for one.
    pub fn dax(&self) -> Option<&Arc<Dax>> {
        self.dax.as_ref()
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

    /// Serves a request whose header `handle` decoded: checks the header, then either hands
    /// a WRITE's data from the chain straight to the file, or copies the body out of the
    /// chain once, parses it with the header as decoded, and dispatches the parsed request.
    fn request(&self, chain: &mut dyn Chain, header: FuseInHeader) -> Outcome {
        let len = chain.request_len();
        if let Err(e) = check_header(&header) {
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
        // The header was read already; only the body is copied.
        let mut body = vec![0u8; len.saturating_sub(FuseInHeader::SIZE)];
        chain
            .read_request(FuseInHeader::SIZE, &mut body)
            .map_err(errno)?;
        let opts = ParseOptions {
            setxattr_ext: self.setxattr_ext.load(Ordering::Relaxed),
        };
        let req = match Request::parse_parts(header, &body, opts) {
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

    /// The caller of a request as the host knows it: a forbidden guest id becomes -1, which
    /// no credential switch accepts, so whatever would act as the caller fails with EPERM.
    fn caller(&self, h: &FuseInHeader) -> Context {
        Context {
            uid: self.ids.0.to_host(h.uid).unwrap_or(u32::MAX),
            gid: self.ids.1.to_host(h.gid).unwrap_or(u32::MAX),
            pid: h.pid,
            umask: 0,
        }
    }

    /// Serves one parsed request: the caller and the session's flags fixed once ([`Call`]),
    /// the labels a create carries checked (`node.rs`), the DAX window settled for the
    /// files it reads or changes (`mapping.rs`), then one handler per operation.
    fn dispatch(&self, chain: &mut dyn Chain, req: &Request<'_>) -> Outcome {
        use Operation as O;
        let h = &req.header;
        let call = Call {
            req,
            unique: h.unique,
            node: h.nodeid,
            ctx: self.caller(h),
            dax: self.inode_dax.load(Ordering::Relaxed),
            submounts: self.submounts.load(Ordering::Relaxed),
        };
        let (c, unique, fs) = (&call, call.unique, &*self.fs);
        self.check_contexts(req)?;
        self.settle(req);
        match req.op {
            // Session (init.rs).
            O::Init(ref k) => self.init(chain, unique, k),
            O::Destroy => self.destroy(chain, unique),
            O::Interrupt(_) | O::NotifyReply { .. } => Ok(Answer::NoReply),
            // Nodes (node.rs).
            O::Lookup { name } => self.lookup(chain, c, name),
            O::Forget(f) => self.forget(c, &f),
            O::BatchForget(list) => self.batch_forget(list),
            O::Getattr(g) => self.getattr(chain, c, &g),
            O::Setattr(ref s) => self.setattr(chain, c, s),
            O::Readlink => self.readlink(chain, c),
            O::Symlink { name, target } => self.symlink(chain, c, name, target),
            O::Mknod { arg, name } => self.mknod(chain, c, &arg, name),
            O::Mkdir { arg, name } => self.mkdir(chain, c, &arg, name),
            O::Unlink { name } => empty(chain, unique, fs.unlink(&c.ctx, c.node, name)),
            O::Rmdir { name } => empty(chain, unique, fs.rmdir(&c.ctx, c.node, name)),
            O::Rename { arg, name, newname } => self.rename(chain, c, name, arg.newdir, newname, 0),
            O::Rename2 { arg, name, newname } => {
                self.rename(chain, c, name, arg.newdir, newname, arg.flags)
            }
            O::Link { arg, name } => self.link(chain, c, arg.oldnodeid, name),
            O::Access(a) => empty(chain, unique, fs.access(&c.ctx, c.node, a.mask as i32)),
            O::Statfs => self.statfs(chain, c),
            O::Syncfs(_) => empty(chain, unique, fs.syncfs(c.node)),
            // Files (file.rs).
            O::Open(o) => self.open(chain, c, &o),
            O::Create { arg, name } => self.create(chain, c, &arg, name),
            O::Tmpfile { arg, .. } => self.tmpfile(chain, c, &arg),
            O::Read(ref r) => self.read(chain, unique, r),
            O::Write { arg, data } => self.write(chain, c, &arg, data),
            O::Release(r) => {
                if let Some(backing) = &self.opts.backing {
                    backing.release(r.fh);
                }
                empty(chain, unique, fs.release(r.fh))
            }
            O::Flush(f) => empty(chain, unique, fs.flush(f.fh)),
            O::Fsync(f) => empty(
                chain,
                unique,
                fs.fsync(f.fh, f.fsync_flags & FUSE_FSYNC_FDATASYNC != 0),
            ),
            O::Fallocate(f) => self.fallocate(chain, c, &f),
            O::Lseek(l) => self.lseek(chain, c, &l),
            O::CopyFileRange(r) | O::CopyFileRange64(r) => self.copy_file_range(chain, c, &r),
            // Directories (dir.rs).
            O::Opendir(_) => self.opendir(chain, c),
            O::Readdir(ref r) => self.readdir(chain, unique, r),
            O::Readdirplus(ref r) => self.readdirplus(chain, &c.ctx, unique, r),
            O::Releasedir(r) => empty(chain, unique, fs.releasedir(r.fh)),
            O::Fsyncdir(f) => empty(
                chain,
                unique,
                fs.fsyncdir(f.fh, f.fsync_flags & FUSE_FSYNC_FDATASYNC != 0),
            ),
            // Extended attributes (xattr.rs).
            O::Setxattr { arg, name, value } => self.setxattr(chain, c, &arg, name, value),
            O::Getxattr { arg, name } => self.getxattr(chain, c, &arg, name),
            O::Listxattr(arg) => self.listxattr(chain, c, &arg),
            O::Removexattr { name } => empty(chain, unique, fs.removexattr(&c.ctx, c.node, name)),
            // The DAX window (mapping.rs).
            O::SetupMapping(s) => self.setup_mapping(chain, c, &s),
            O::RemoveMapping(list) => self.remove_mapping(chain, c, list),
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
