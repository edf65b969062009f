//! The /dev/fuse transport: fuser 0.18's `Filesystem` implemented by calling the core.
//!
//! Each method converts fuser's arguments to core values, calls the core once and converts
//! the answer back; no filesystem decision is made here. The only state of its own is the
//! kernel passthrough bookkeeping (backing ids are a /dev/fuse concept).

use std::collections::HashMap;
use std::ffi::{CString, OsStr};
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use fuser::{
    AccessFlags, BackingId, CopyFileRangeFlags, Errno, FileAttr, FileHandle, FileType, Filesystem,
    FopenFlags, Generation, INodeNo, InitFlags, IoctlFlags, KernelConfig, LockOwner, OpenFlags,
    PollEvents, PollFlags, PollNotifier, RenameFlags, ReplyAttr, ReplyBmap, ReplyCreate, ReplyData,
    ReplyDirectory, ReplyDirectoryPlus, ReplyEmpty, ReplyEntry, ReplyIoctl, ReplyLock, ReplyLseek,
    ReplyOpen, ReplyPoll, ReplyStatfs, ReplyWrite, ReplyXattr, Request, TimeOrNow, WriteFlags,
};

use crate::fs::{self, Attr, Context, FileSystem, SetAttr, SetTime, Timespec, Xattr};

/// `--passthrough`: kernel FUSE passthrough of reads, writes and mmap to the backing file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Passthrough {
    /// Use it when the kernel offers it, otherwise serve I/O in the daemon.
    Auto,
    /// Require it: the mount fails if the kernel refuses.
    On,
    /// Never use it.
    Off,
}

/// Largest write the kernel may send in one request (and max_pages = 256 with 4 KiB pages).
pub const MAX_WRITE: u32 = 1 << 20;

struct Backing {
    id: Arc<BackingId>,
    opens: usize,
}

/// Passthrough state: one backing id per node (the kernel refuses two different backing
/// files for one inode), shared by all of the node's open handles.
#[derive(Default)]
struct PassthroughTable {
    by_node: HashMap<u64, Backing>,
    fh_node: HashMap<u64, u64>,
}

/// The /dev/fuse transport: a `fuser::Filesystem` that answers each request through the
/// core and keeps the kernel's passthrough backing ids.
pub struct FuseFs {
    fs: Arc<FileSystem>,
    mode: Passthrough,
    /// Set by INIT when the kernel agreed to passthrough; cleared in `auto` if registering a
    /// backing file ever fails.
    passthrough: AtomicBool,
    backing: Mutex<PassthroughTable>,
    /// Run when the session ends, before fuser would unmount the mount point by path.
    on_session_end: Option<Box<dyn FnOnce() + Send + Sync>>,
}

fn errno(e: io::Error) -> Errno {
    Errno::from_i32(e.raw_os_error().unwrap_or(libc::EIO))
}

fn ctx(req: &Request) -> Context {
    Context {
        uid: req.uid(),
        gid: req.gid(),
        pid: req.pid(),
        umask: 0,
    }
}

fn ctx_umask(req: &Request, umask: u32) -> Context {
    Context { umask, ..ctx(req) }
}

fn cname(name: &OsStr) -> Result<CString, Errno> {
    CString::new(name.as_bytes()).map_err(|_| Errno::EINVAL)
}

fn file_type(mode: u32) -> FileType {
    match mode & libc::S_IFMT {
        libc::S_IFDIR => FileType::Directory,
        libc::S_IFLNK => FileType::Symlink,
        libc::S_IFIFO => FileType::NamedPipe,
        libc::S_IFSOCK => FileType::Socket,
        libc::S_IFCHR => FileType::CharDevice,
        libc::S_IFBLK => FileType::BlockDevice,
        _ => FileType::RegularFile,
    }
}

fn system_time(t: Timespec) -> SystemTime {
    let nsec = Duration::from_nanos(u64::from(t.nsec.min(999_999_999)));
    let base = if t.sec >= 0 {
        UNIX_EPOCH.checked_add(Duration::from_secs(t.sec as u64))
    } else {
        UNIX_EPOCH.checked_sub(Duration::from_secs(t.sec.unsigned_abs()))
    };
    base.and_then(|b| b.checked_add(nsec)).unwrap_or(UNIX_EPOCH)
}

fn timespec(t: SystemTime) -> Timespec {
    match t.duration_since(UNIX_EPOCH) {
        Ok(d) => Timespec {
            sec: i64::try_from(d.as_secs()).unwrap_or(i64::MAX),
            nsec: d.subsec_nanos(),
        },
        Err(e) => {
            let d = e.duration();
            let mut sec = -i64::try_from(d.as_secs()).unwrap_or(i64::MAX);
            let mut nsec = d.subsec_nanos();
            if nsec > 0 {
                sec -= 1;
                nsec = 1_000_000_000 - nsec;
            }
            Timespec { sec, nsec }
        }
    }
}

fn set_time(t: Option<TimeOrNow>) -> Option<SetTime> {
    t.map(|t| match t {
        TimeOrNow::Now => SetTime::Now,
        TimeOrNow::SpecificTime(t) => SetTime::At(timespec(t)),
    })
}

/// The wire attributes: fuser takes the node id from `ino`, so the client sees node ids as
/// inode numbers (stable for the node's lifetime, unique across bind mounts).
fn file_attr(node: u64, a: &Attr) -> FileAttr {
    FileAttr {
        ino: INodeNo(node),
        size: a.size,
        blocks: a.blocks,
        atime: system_time(a.atime),
        mtime: system_time(a.mtime),
        ctime: system_time(a.ctime),
        crtime: UNIX_EPOCH,
        kind: file_type(a.mode),
        perm: (a.mode & 0o7777) as u16,
        nlink: a.nlink,
        uid: a.uid,
        gid: a.gid,
        rdev: a.rdev,
        blksize: a.blksize,
        flags: 0,
    }
}

fn reply_entry(reply: ReplyEntry, r: io::Result<fs::Entry>) {
    match r {
        Ok(e) => reply.entry_with_ttls(
            &e.attr_timeout,
            &e.entry_timeout,
            &file_attr(e.node, &e.attr),
            Generation(e.generation),
        ),
        Err(e) => reply.error(errno(e)),
    }
}

fn reply_empty(reply: ReplyEmpty, r: io::Result<()>) {
    match r {
        Ok(()) => reply.ok(),
        Err(e) => reply.error(errno(e)),
    }
}

fn reply_xattr(reply: ReplyXattr, r: io::Result<Xattr>) {
    match r {
        Ok(Xattr::Size(n)) => reply.size(n),
        Ok(Xattr::Data(d)) => reply.data(&d),
        Err(e) => reply.error(errno(e)),
    }
}

impl FuseFs {
    /// A transport over `fs`, asking the kernel for passthrough as `mode` says.
    pub fn new(fs: Arc<FileSystem>, mode: Passthrough) -> Self {
        FuseFs {
            fs,
            mode,
            passthrough: AtomicBool::new(false),
            backing: Mutex::new(PassthroughTable::default()),
            on_session_end: None,
        }
    }

    /// `f` runs when the session ends (fuser's `destroy`, called before it drops its mount,
    /// which unmounts the mount point by path: see mount.rs).
    pub fn on_session_end(mut self, f: impl FnOnce() + Send + Sync + 'static) -> Self {
        self.on_session_end = Some(Box::new(f));
        self
    }

    /// The backing id for `node`, registering `open.backing` with the kernel on first use.
    fn backing_id(
        &self,
        node: u64,
        fh: u64,
        handle: &fs::Handle,
        register: impl FnOnce(std::os::fd::BorrowedFd<'_>) -> io::Result<BackingId>,
    ) -> io::Result<Arc<BackingId>> {
        let mut t = self.backing.lock().unwrap_or_else(|e| e.into_inner());
        let id = match t.by_node.get_mut(&node) {
            Some(b) => {
                b.opens += 1;
                b.id.clone()
            }
            None => {
                let id = Arc::new(register(handle.fd())?);
                t.by_node.insert(
                    node,
                    Backing {
                        id: id.clone(),
                        opens: 1,
                    },
                );
                id
            }
        };
        t.fh_node.insert(fh, node);
        Ok(id)
    }

    fn release_backing(&self, fh: u64) {
        let mut t = self.backing.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(node) = t.fh_node.remove(&fh) {
            let last = match t.by_node.get_mut(&node) {
                Some(b) => {
                    b.opens -= 1;
                    b.opens == 0
                }
                None => false,
            };
            if last {
                // Dropping the last Arc closes the kernel's backing id.
                t.by_node.remove(&node);
            }
        }
    }

    /// Decide passthrough for a fresh open. Ok(Some(id)): reply with passthrough; Ok(None):
    /// serve I/O ourselves; Err: fail the open (`--passthrough on` and the kernel refused).
    fn passthrough_for(
        &self,
        node: u64,
        open: &fs::Open,
        register: impl FnOnce(std::os::fd::BorrowedFd<'_>) -> io::Result<BackingId>,
    ) -> io::Result<Option<Arc<BackingId>>> {
        let Some(handle) = open.backing.as_deref() else {
            return Ok(None);
        };
        if !self.passthrough.load(Ordering::Relaxed) {
            return Ok(None);
        }
        match self.backing_id(node, open.fh, handle, register) {
            Ok(id) => Ok(Some(id)),
            Err(e) if self.mode == Passthrough::On => {
                tracing::error!("kernel refused a passthrough backing file: {e}");
                Err(e)
            }
            Err(e) => {
                if self.passthrough.swap(false, Ordering::Relaxed) {
                    tracing::warn!(
                        "kernel refused a passthrough backing file ({e}); serving I/O in the daemon from now on"
                    );
                }
                Ok(None)
            }
        }
    }
}

impl Filesystem for FuseFs {
    fn destroy(&mut self) {
        if let Some(f) = self.on_session_end.take() {
            f();
        }
    }

    fn init(&mut self, _req: &Request, config: &mut KernelConfig) -> io::Result<()> {
        let caps = config.capabilities();
        tracing::debug!(kernel_abi = ?config.kernel_abi(), ?caps, "FUSE_INIT");
        // Why each flag: docs/architecture.md, "INIT negotiation".
        let wanted = InitFlags::FUSE_PARALLEL_DIROPS
            | InitFlags::FUSE_DO_READDIRPLUS
            | InitFlags::FUSE_READDIRPLUS_AUTO
            | InitFlags::FUSE_CACHE_SYMLINKS
            | InitFlags::FUSE_NO_EXPORT_SUPPORT;
        if let Err(missing) = config.add_capabilities(wanted & caps) {
            tracing::debug!(?missing, "kernel lacks optional INIT flags");
        }
        if config.set_max_write(MAX_WRITE).is_err() {
            tracing::debug!("max_write {MAX_WRITE} not accepted; keeping fuser's default");
        }
        if self.mode != Passthrough::Off {
            if caps.contains(InitFlags::FUSE_PASSTHROUGH)
                && config.add_capabilities(InitFlags::FUSE_PASSTHROUGH).is_ok()
            {
                // Depth 2 lets the shared directory sit on overlayfs; the mount itself
                // then cannot be stacked under another overlay.
                if config.set_max_stack_depth(2).is_ok() {
                    self.passthrough.store(true, Ordering::Relaxed);
                }
            }
            if self.passthrough.load(Ordering::Relaxed) {
                tracing::info!("kernel FUSE passthrough enabled");
            } else if self.mode == Passthrough::On {
                return Err(io::Error::new(
                    io::ErrorKind::Unsupported,
                    "--passthrough on: the kernel does not offer FUSE passthrough",
                ));
            } else {
                tracing::info!("kernel does not offer FUSE passthrough; the daemon serves I/O");
            }
        }
        Ok(())
    }

    fn lookup(&self, req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEntry) {
        match cname(name) {
            Ok(name) => reply_entry(reply, self.fs.lookup(&ctx(req), parent.0, &name)),
            Err(e) => reply.error(e),
        }
    }

    fn forget(&self, _req: &Request, ino: INodeNo, nlookup: u64) {
        self.fs.forget(ino.0, nlookup);
    }

    // batch_forget: fuser's default splits a BATCH_FORGET into forget() calls (its
    // ForgetOne type is not exported, so it cannot be overridden).

    fn getattr(&self, req: &Request, ino: INodeNo, fh: Option<FileHandle>, reply: ReplyAttr) {
        match self.fs.getattr(&ctx(req), ino.0, fh.map(|f| f.0)) {
            Ok(a) => reply.attr(&self.fs.config().attr_timeout, &file_attr(ino.0, &a)),
            Err(e) => reply.error(errno(e)),
        }
    }

    fn setattr(
        &self,
        req: &Request,
        ino: INodeNo,
        mode: Option<u32>,
        uid: Option<u32>,
        gid: Option<u32>,
        size: Option<u64>,
        atime: Option<TimeOrNow>,
        mtime: Option<TimeOrNow>,
        _ctime: Option<SystemTime>,
        fh: Option<FileHandle>,
        _crtime: Option<SystemTime>,
        _chgtime: Option<SystemTime>,
        _bkuptime: Option<SystemTime>,
        _flags: Option<fuser::BsdFileFlags>,
        reply: ReplyAttr,
    ) {
        let set = SetAttr {
            mode,
            uid,
            gid,
            size,
            atime: set_time(atime),
            mtime: set_time(mtime),
            fh: fh.map(|f| f.0),
        };
        match self.fs.setattr(&ctx(req), ino.0, &set) {
            Ok(a) => reply.attr(&self.fs.config().attr_timeout, &file_attr(ino.0, &a)),
            Err(e) => reply.error(errno(e)),
        }
    }

    fn readlink(&self, req: &Request, ino: INodeNo, reply: ReplyData) {
        match self.fs.readlink(&ctx(req), ino.0) {
            Ok(t) => reply.data(&t),
            Err(e) => reply.error(errno(e)),
        }
    }

    fn mknod(
        &self,
        req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        umask: u32,
        rdev: u32,
        reply: ReplyEntry,
    ) {
        match cname(name) {
            Ok(name) => reply_entry(
                reply,
                self.fs.mknod(
                    &ctx_umask(req, umask),
                    parent.0,
                    &name,
                    mode,
                    u64::from(rdev),
                ),
            ),
            Err(e) => reply.error(e),
        }
    }

    fn mkdir(
        &self,
        req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        umask: u32,
        reply: ReplyEntry,
    ) {
        match cname(name) {
            Ok(name) => reply_entry(
                reply,
                self.fs.mkdir(&ctx_umask(req, umask), parent.0, &name, mode),
            ),
            Err(e) => reply.error(e),
        }
    }

    fn unlink(&self, req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        match cname(name) {
            Ok(name) => reply_empty(reply, self.fs.unlink(&ctx(req), parent.0, &name)),
            Err(e) => reply.error(e),
        }
    }

    fn rmdir(&self, req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        match cname(name) {
            Ok(name) => reply_empty(reply, self.fs.rmdir(&ctx(req), parent.0, &name)),
            Err(e) => reply.error(e),
        }
    }

    fn symlink(
        &self,
        req: &Request,
        parent: INodeNo,
        link_name: &OsStr,
        target: &Path,
        reply: ReplyEntry,
    ) {
        match (cname(link_name), cname(target.as_os_str())) {
            (Ok(name), Ok(target)) => {
                reply_entry(reply, self.fs.symlink(&ctx(req), parent.0, &name, &target))
            }
            (Err(e), _) | (_, Err(e)) => reply.error(e),
        }
    }

    fn rename(
        &self,
        req: &Request,
        parent: INodeNo,
        name: &OsStr,
        newparent: INodeNo,
        newname: &OsStr,
        flags: RenameFlags,
        reply: ReplyEmpty,
    ) {
        match (cname(name), cname(newname)) {
            (Ok(name), Ok(newname)) => reply_empty(
                reply,
                self.fs.rename(
                    &ctx(req),
                    parent.0,
                    &name,
                    newparent.0,
                    &newname,
                    flags.bits(),
                ),
            ),
            (Err(e), _) | (_, Err(e)) => reply.error(e),
        }
    }

    fn link(
        &self,
        req: &Request,
        ino: INodeNo,
        newparent: INodeNo,
        newname: &OsStr,
        reply: ReplyEntry,
    ) {
        match cname(newname) {
            Ok(name) => reply_entry(reply, self.fs.link(&ctx(req), ino.0, newparent.0, &name)),
            Err(e) => reply.error(e),
        }
    }

    fn open(&self, req: &Request, ino: INodeNo, flags: OpenFlags, reply: ReplyOpen) {
        let open = match self.fs.open(&ctx(req), ino.0, flags.0) {
            Ok(o) => o,
            Err(e) => return reply.error(errno(e)),
        };
        match self.passthrough_for(ino.0, &open, |fd| reply.open_backing(fd)) {
            Ok(Some(id)) => reply.opened_passthrough(FileHandle(open.fh), FopenFlags::empty(), &id),
            Ok(None) => reply.opened(FileHandle(open.fh), FopenFlags::empty()),
            Err(e) => {
                let _ = self.fs.release(open.fh);
                reply.error(errno(e));
            }
        }
    }

    fn read(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        size: u32,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyData,
    ) {
        let mut buf = vec![0u8; size.min(fs::MAX_IO) as usize];
        match self.fs.read(fh.0, offset, &mut buf) {
            Ok(n) => reply.data(&buf[..n]),
            Err(e) => reply.error(errno(e)),
        }
    }

    fn write(
        &self,
        req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        data: &[u8],
        _write_flags: WriteFlags,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyWrite,
    ) {
        match self.fs.write(&ctx(req), fh.0, offset, data) {
            Ok(n) => reply.written(u32::try_from(n).unwrap_or(u32::MAX)),
            Err(e) => reply.error(errno(e)),
        }
    }

    fn flush(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        _lock_owner: LockOwner,
        reply: ReplyEmpty,
    ) {
        reply_empty(reply, self.fs.flush(fh.0));
    }

    fn release(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        _flush: bool,
        reply: ReplyEmpty,
    ) {
        self.release_backing(fh.0);
        reply_empty(reply, self.fs.release(fh.0));
    }

    fn fsync(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        datasync: bool,
        reply: ReplyEmpty,
    ) {
        reply_empty(reply, self.fs.fsync(fh.0, datasync));
    }

    fn opendir(&self, req: &Request, ino: INodeNo, _flags: OpenFlags, reply: ReplyOpen) {
        match self.fs.opendir(&ctx(req), ino.0) {
            Ok(fh) => reply.opened(FileHandle(fh), FopenFlags::empty()),
            Err(e) => reply.error(errno(e)),
        }
    }

    fn readdir(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        mut reply: ReplyDirectory,
    ) {
        let r = self.fs.readdir(fh.0, offset, |d| {
            !reply.add(
                INodeNo(d.ino),
                d.offset,
                file_type(d.file_type),
                OsStr::from_bytes(d.name.to_bytes()),
            )
        });
        match r {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(errno(e)),
        }
    }

    fn readdirplus(
        &self,
        req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        mut reply: ReplyDirectoryPlus,
    ) {
        let ttl = self.fs.config().entry_timeout;
        let r = self.fs.readdirplus(&ctx(req), fh.0, offset, |d, entry| {
            let name = OsStr::from_bytes(d.name.to_bytes());
            let full = match entry {
                Some(e) => reply.add(
                    INodeNo(e.node),
                    d.offset,
                    name,
                    &ttl,
                    &file_attr(e.node, &e.attr),
                    Generation(e.generation),
                ),
                // `.`/`..`: the kernel does not link these, so no lookup reference rides on
                // them; the node id shown is the directory's own.
                None => {
                    let attr = Attr {
                        mode: libc::S_IFDIR,
                        ..Attr::default()
                    };
                    reply.add(
                        ino,
                        d.offset,
                        name,
                        &Duration::ZERO,
                        &file_attr(ino.0, &attr),
                        Generation(0),
                    )
                }
            };
            !full
        });
        match r {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(errno(e)),
        }
    }

    fn releasedir(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        _flags: OpenFlags,
        reply: ReplyEmpty,
    ) {
        reply_empty(reply, self.fs.releasedir(fh.0));
    }

    fn fsyncdir(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        datasync: bool,
        reply: ReplyEmpty,
    ) {
        reply_empty(reply, self.fs.fsyncdir(fh.0, datasync));
    }

    fn statfs(&self, req: &Request, ino: INodeNo, reply: ReplyStatfs) {
        match self.fs.statfs(&ctx(req), ino.0) {
            Ok(s) => reply.statfs(
                s.blocks, s.bfree, s.bavail, s.files, s.ffree, s.bsize, s.namelen, s.frsize,
            ),
            Err(e) => reply.error(errno(e)),
        }
    }

    fn setxattr(
        &self,
        req: &Request,
        ino: INodeNo,
        name: &OsStr,
        value: &[u8],
        flags: i32,
        _position: u32,
        reply: ReplyEmpty,
    ) {
        match cname(name) {
            Ok(name) => reply_empty(
                reply,
                self.fs.setxattr(&ctx(req), ino.0, &name, value, flags, 0),
            ),
            Err(e) => reply.error(e),
        }
    }

    fn getxattr(&self, req: &Request, ino: INodeNo, name: &OsStr, size: u32, reply: ReplyXattr) {
        let name = match cname(name) {
            Ok(n) => n,
            Err(e) => return reply.error(e),
        };
        reply_xattr(reply, self.fs.getxattr(&ctx(req), ino.0, &name, size));
    }

    fn listxattr(&self, req: &Request, ino: INodeNo, size: u32, reply: ReplyXattr) {
        reply_xattr(reply, self.fs.listxattr(&ctx(req), ino.0, size));
    }

    fn removexattr(&self, req: &Request, ino: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        match cname(name) {
            Ok(name) => reply_empty(reply, self.fs.removexattr(&ctx(req), ino.0, &name)),
            Err(e) => reply.error(e),
        }
    }

    fn access(&self, req: &Request, ino: INodeNo, mask: AccessFlags, reply: ReplyEmpty) {
        reply_empty(reply, self.fs.access(&ctx(req), ino.0, mask.bits()));
    }

    fn create(
        &self,
        req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        umask: u32,
        flags: i32,
        reply: ReplyCreate,
    ) {
        let name = match cname(name) {
            Ok(n) => n,
            Err(e) => return reply.error(e),
        };
        let (entry, open) =
            match self
                .fs
                .create(&ctx_umask(req, umask), parent.0, &name, mode, flags)
            {
                Ok(r) => r,
                Err(e) => return reply.error(errno(e)),
            };
        let attr = file_attr(entry.node, &entry.attr);
        match self.passthrough_for(entry.node, &open, |fd| reply.open_backing(fd)) {
            Ok(Some(id)) => reply.created_passthrough(
                &entry.entry_timeout,
                &attr,
                Generation(entry.generation),
                FileHandle(open.fh),
                FopenFlags::empty(),
                &id,
            ),
            Ok(None) => reply.created(
                &entry.entry_timeout,
                &attr,
                Generation(entry.generation),
                FileHandle(open.fh),
                FopenFlags::empty(),
            ),
            Err(e) => {
                let _ = self.fs.release(open.fh);
                self.fs.forget(entry.node, 1);
                reply.error(errno(e));
            }
        }
    }

    /// POSIX locks are not negotiated (no FUSE_POSIX_LOCKS), so the kernel locks locally
    /// and never sends these; answer ENOSYS if one arrives anyway.
    fn getlk(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _fh: FileHandle,
        _lock_owner: LockOwner,
        _start: u64,
        _end: u64,
        _typ: i32,
        _pid: u32,
        reply: ReplyLock,
    ) {
        reply.error(Errno::ENOSYS);
    }

    fn setlk(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _fh: FileHandle,
        _lock_owner: LockOwner,
        _start: u64,
        _end: u64,
        _typ: i32,
        _pid: u32,
        _sleep: bool,
        reply: ReplyEmpty,
    ) {
        reply.error(Errno::ENOSYS);
    }

    fn fallocate(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        length: u64,
        mode: i32,
        reply: ReplyEmpty,
    ) {
        reply_empty(reply, self.fs.fallocate(fh.0, mode, offset, length));
    }

    fn lseek(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        offset: i64,
        whence: i32,
        reply: ReplyLseek,
    ) {
        match self.fs.lseek(fh.0, offset, whence) {
            Ok(o) => reply.offset(o as i64),
            Err(e) => reply.error(errno(e)),
        }
    }

    // Any user of the mount can send these as often as they like: answered quietly (fuser's
    // defaults log a warning each time, which let an unprivileged user flood the log).
    // ENOTTY is what an ioctl a file does not support returns.
    fn ioctl(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        _flags: IoctlFlags,
        cmd: u32,
        _in_data: &[u8],
        _out_size: u32,
        reply: ReplyIoctl,
    ) {
        tracing::debug!(node = ino.0, cmd, "unsupported ioctl");
        reply.error(Errno::ENOTTY);
    }

    fn bmap(&self, _req: &Request, ino: INodeNo, _bs: u32, _idx: u64, reply: ReplyBmap) {
        tracing::debug!(node = ino.0, "bmap: not a block device filesystem");
        reply.error(Errno::ENOSYS);
    }

    fn poll(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        _ph: PollNotifier,
        _events: PollEvents,
        _flags: PollFlags,
        reply: ReplyPoll,
    ) {
        tracing::debug!(node = ino.0, "poll: not supported");
        reply.error(Errno::ENOSYS);
    }

    fn copy_file_range(
        &self,
        _req: &Request,
        _ino_in: INodeNo,
        fh_in: FileHandle,
        offset_in: u64,
        _ino_out: INodeNo,
        fh_out: FileHandle,
        offset_out: u64,
        len: u64,
        flags: CopyFileRangeFlags,
        reply: ReplyWrite,
    ) {
        // The reply carries a u32 count; the client loops for the rest.
        let len = len.min(u64::from(u32::MAX) & !0xfff);
        match self.fs.copy_file_range(
            fh_in.0,
            offset_in,
            fh_out.0,
            offset_out,
            len,
            flags.bits() as u32,
        ) {
            Ok(n) => reply.written(u32::try_from(n).unwrap_or(u32::MAX)),
            Err(e) => reply.error(errno(e)),
        }
    }
}
