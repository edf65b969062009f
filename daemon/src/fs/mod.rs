//! The filesystem core: a passthrough filesystem over one shared directory.
//!
//! It knows no transport. Its API takes plain values (node ids, `&CStr` names, offsets,
//! flags, a caller [`Context`]) and returns `io::Result` of its own small types; the
//! dispatch both transports share (`server`) converts those to the FUSE wire format. Every
//! answer (errno included) is decided here.
//!
//! This file holds the types, the set-up and what every operation shares (resolving a node
//! to a descriptor, credentials, handles); the operations are in one file per family, as
//! the dispatch's are: `node` (names and attributes), `file` (open files), `dir`
//! (listings), `xattr`.
//!
//! Confinement: every name is resolved relative to its parent's O_PATH descriptor with
//! openat2(RESOLVE_BENEATH | RESOLVE_NO_MAGICLINKS | RESOLVE_NO_SYMLINKS), names are single
//! components, and the daemon never follows a symlink (O_NOFOLLOW, AT_SYMLINK_NOFOLLOW,
//! `/proc/self/fd` reopening only for regular files and directories).

pub mod aligned;
mod creds;
mod dir;
mod file;
mod handle;
mod inode;
mod node;
pub(crate) mod sys;
mod xattr;
pub mod xattrmap;

use std::borrow::Cow;
use std::collections::{HashMap, HashSet};
use std::ffi::{CStr, CString};
use std::fmt;
use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use creds::Credentials;
use handle::{HandleRef, InodeFd, MountFds};
use inode::{Fit, HostRef, InodeTable};
pub use inode::{Inode, InodeKey, ROOT_NODE};
use xattrmap::Refusal;
pub use xattrmap::XattrMap;

/// Who asks: the client's credentials for this request.
#[derive(Debug, Clone, Copy, Default)]
pub struct Context {
    /// The caller's fsuid: owner of what it creates.
    pub uid: u32,
    /// The caller's fsgid: group of what it creates (unless the directory is setgid).
    pub gid: u32,
    /// The calling process, as the client kernel reports it (the core does not use it).
    pub pid: u32,
    /// Applied to the mode of every node this request creates.
    pub umask: u32,
}

/// A timestamp: seconds and nanoseconds since the epoch.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Timespec {
    /// Seconds since 1970-01-01 00:00 UTC (negative before).
    pub sec: i64,
    /// Nanoseconds, below 1,000,000,000.
    pub nsec: u32,
}

/// Attributes of a host inode, as statx reported them, but for `ino`: the node id, which is
/// the inode number clients see (docs/mount.md, *Inode numbers*).
#[derive(Debug, Clone, Copy, Default)]
pub struct Attr {
    /// The node id (not the host's `st_ino`).
    pub ino: u64,
    /// Size in bytes.
    pub size: u64,
    /// Allocated 512-byte blocks: what holes save shows here.
    pub blocks: u64,
    /// Last access.
    pub atime: Timespec,
    /// Last data change.
    pub mtime: Timespec,
    /// Last status change.
    pub ctime: Timespec,
    /// Full `st_mode`: file type and permission bits.
    pub mode: u32,
    /// Hard links.
    pub nlink: u32,
    /// Owner.
    pub uid: u32,
    /// Group.
    pub gid: u32,
    /// Device number of a device node (`makedev` encoding), 0 otherwise.
    pub rdev: u32,
    /// Preferred I/O size of the host filesystem.
    pub blksize: u32,
}

impl Attr {
    fn from_statx(s: &rustix::fs::Statx, node: u64) -> Self {
        let ts = |t: &rustix::fs::StatxTimestamp| Timespec {
            sec: t.tv_sec,
            nsec: t.tv_nsec,
        };
        Attr {
            ino: node,
            size: s.stx_size,
            blocks: s.stx_blocks,
            atime: ts(&s.stx_atime),
            mtime: ts(&s.stx_mtime),
            ctime: ts(&s.stx_ctime),
            mode: u32::from(s.stx_mode),
            nlink: s.stx_nlink,
            uid: s.stx_uid,
            gid: s.stx_gid,
            rdev: rustix::fs::makedev(s.stx_rdev_major, s.stx_rdev_minor) as u32,
            blksize: s.stx_blksize,
        }
    }

    /// The `S_IF*` file type bits of `mode`.
    pub fn file_type(&self) -> u32 {
        self.mode & libc::S_IFMT
    }
}

/// A node the client now holds one more lookup reference on.
#[derive(Debug, Clone, Copy)]
pub struct Entry {
    /// The node id.
    pub node: u64,
    /// Always 0: node ids are never reused, so they need no generation to tell them apart.
    pub generation: u64,
    /// The node's attributes.
    pub attr: Attr,
    /// How long the client may cache the name → node lookup.
    pub entry_timeout: Duration,
    /// How long the client may cache `attr`.
    pub attr_timeout: Duration,
    /// A directory on another mount than the directory it was looked up in: the root of a
    /// submount (announced to the client with `--announce-submounts`).
    pub submount: bool,
}

/// An open file or directory.
#[derive(Debug)]
pub struct Handle {
    /// The node it was opened from.
    pub node: u64,
    file: OwnedFd,
    /// Opened O_DIRECT: the core's own buffers go through an aligned copy ([`aligned`]).
    direct: bool,
    /// Serialises seek+getdents on directory handles.
    dir_lock: Mutex<()>,
}

impl Handle {
    /// The host descriptor, e.g. for kernel passthrough registration.
    pub fn fd(&self) -> BorrowedFd<'_> {
        self.file.as_fd()
    }

    /// Opened O_DIRECT: a transport moving its data through buffers of its own aligns them.
    pub fn direct(&self) -> bool {
        self.direct
    }
}

/// Result of open/create.
#[derive(Debug, Clone)]
pub struct Open {
    /// The handle id the client passes back in later requests.
    pub fh: u64,
    /// The open handle; a transport that can hand the host file to its kernel (FUSE
    /// passthrough) uses `handle.fd()`. Only set for regular files.
    pub backing: Option<Arc<Handle>>,
}

/// One directory entry from readdir or readdirplus.
#[derive(Debug, Clone)]
pub struct DirEntry {
    /// The entry's inode number as clients see it ([`Attr::ino`]): the node id it has or
    /// will have.
    pub ino: u64,
    /// Opaque cookie: pass it back as `offset` to continue after this entry.
    pub offset: u64,
    /// `S_IF*` file type bits (from d_type).
    pub file_type: u32,
    /// The entry's name, a single component.
    pub name: CString,
}

/// The shared directory's filesystem, as statvfs(3) reports it.
#[derive(Debug, Clone, Copy, Default)]
pub struct StatFs {
    /// Size in `frsize` units.
    pub blocks: u64,
    /// Free blocks.
    pub bfree: u64,
    /// Free blocks for unprivileged users.
    pub bavail: u64,
    /// Inodes.
    pub files: u64,
    /// Free inodes.
    pub ffree: u64,
    /// Preferred block size.
    pub bsize: u32,
    /// Longest file name.
    pub namelen: u32,
    /// Fragment size, the unit of the block counts.
    pub frsize: u32,
}

/// A timestamp to set.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SetTime {
    /// The host's current time (`UTIME_NOW`), so the caller needs only write access.
    Now,
    /// This time.
    At(Timespec),
}

/// Which attributes setattr changes; `None` leaves one alone.
#[derive(Debug, Clone, Copy, Default)]
pub struct SetAttr {
    /// New permission bits (chmod).
    pub mode: Option<u32>,
    /// New owner (chown).
    pub uid: Option<u32>,
    /// New group (chown).
    pub gid: Option<u32>,
    /// New size (truncate).
    pub size: Option<u64>,
    /// New access time.
    pub atime: Option<SetTime>,
    /// New modification time.
    pub mtime: Option<SetTime>,
    /// Open handle to use for size changes (ftruncate) when the client has one.
    pub fh: Option<u64>,
}

/// getxattr/listxattr answer: with a zero-size request only the size is asked for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Xattr {
    /// The size the value or list needs.
    Size(u32),
    /// The value, or the NUL-terminated names of a list.
    Data(Vec<u8>),
}

/// How the core serves the shared directory, fixed at start.
#[derive(Debug, Clone)]
pub struct Config {
    /// Every modification answers EROFS (`--read-only`).
    pub read_only: bool,
    /// Extended attributes served (`--xattr`); without, every xattr request is ENOSYS, which
    /// a Linux client remembers and stops asking.
    pub xattr: bool,
    /// `--xattrmap`: how xattr names are renamed between client and host (with `xattr`).
    pub xattrmap: Option<XattrMap>,
    /// [`Entry::entry_timeout`] of every answer.
    pub entry_timeout: Duration,
    /// [`Entry::attr_timeout`] and the attribute timeout of GETATTR/SETATTR answers.
    pub attr_timeout: Duration,
    /// Keep a client's O_NOATIME when opening (`serve --preserve-noatime`); without it the
    /// flag is dropped and reads update atime on the host, as virtiofsd does by default.
    pub preserve_noatime: bool,
    /// Keep a client's O_DIRECT when opening (`serve --allow-direct-io`); without it the
    /// flag is dropped and the host page cache serves the file, as virtiofsd does by
    /// default.
    pub allow_direct_io: bool,
    /// How nodes other than the root reference their host inodes (`serve
    /// --inode-file-handles`): see [`FileHandles`].
    pub file_handles: FileHandles,
    /// Whether the daemon's own reads update access times on the host (`mount -o
    /// noatime`, `nodiratime`): see [`Atime`].
    pub atime: Atime,
}

/// Access-time updates by the daemon's reads. A FUSE client never updates atime itself (its
/// inodes are S_NOATIME): the host does, as the daemon reads, by the rules of the shared
/// directory's own mount. A client mount that asks for fewer updates gets them by the
/// daemon opening with O_NOATIME (which it may: it is root, or keeps CAP_FOWNER).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Atime {
    /// The host's rules for every read.
    #[default]
    Host,
    /// Directories are opened O_NOATIME (`nodiratime`); files follow the host's rules.
    NotDirs,
    /// Files and directories are opened O_NOATIME (`noatime`).
    Never,
}

/// How the core references the host inode of each node but the root.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum FileHandles {
    /// An O_PATH descriptor per node.
    #[default]
    Never,
    /// A file handle per node where one can be made and opened, an O_PATH descriptor
    /// otherwise (a filesystem without file handles, a mount they do not open on). When
    /// handles are unusable for the share itself (its filesystem has none, or
    /// open_by_handle_at is refused: no CAP_DAC_READ_SEARCH), [`FileSystem::new`] and
    /// [`FileSystem::check_file_handles`] warn once and the core runs as [`FileHandles::Never`].
    Prefer,
    /// A file handle per node: the daemon holds no descriptor per node the client knows, a
    /// lookup on a filesystem without file handles fails, and [`FileSystem::new`] fails when
    /// the shared directory's filesystem has none or open_by_handle_at is not permitted (it
    /// needs CAP_DAC_READ_SEARCH).
    Mandatory,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            read_only: false,
            xattr: true,
            xattrmap: None,
            preserve_noatime: true,
            allow_direct_io: false,
            file_handles: FileHandles::Never,
            atime: Atime::Host,
            entry_timeout: Duration::from_secs(1),
            attr_timeout: Duration::from_secs(1),
        }
    }
}

/// Errors setting the core up (operations return `io::Error` with the host errno).
#[derive(Debug)]
pub enum FsError {
    /// The shared directory could not be opened.
    SharedDir {
        /// The directory.
        path: PathBuf,
        /// Why.
        source: io::Error,
    },
    /// The shared directory is not a directory.
    NotADirectory(PathBuf),
    /// /proc/self/fd could not be opened (the core reopens nodes through it).
    ProcFs(io::Error),
    /// [`FileHandles::Mandatory`], but the shared directory's filesystem makes no file handles.
    NoFileHandles {
        /// The directory.
        path: PathBuf,
        /// name_to_handle_at's error.
        source: io::Error,
    },
    /// [`FileHandles::Mandatory`], but a file handle cannot be opened (open_by_handle_at needs
    /// CAP_DAC_READ_SEARCH).
    FileHandlesRefused(io::Error),
}

impl fmt::Display for FsError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            FsError::SharedDir { path, source } => {
                write!(
                    f,
                    "cannot open shared directory {}: {source}",
                    path.display()
                )
            }
            FsError::NotADirectory(path) => {
                write!(f, "shared directory {} is not a directory", path.display())
            }
            FsError::ProcFs(e) => write!(f, "cannot open /proc/self/fd (is /proc mounted?): {e}"),
            FsError::NoFileHandles { .. } | FsError::FileHandlesRefused(_) => {
                write!(
                    f,
                    "--inode-file-handles=mandatory: {}",
                    self.handles_unusable()
                )
            }
        }
    }
}

impl FsError {
    /// Why file handles are unusable, for [`FsError::NoFileHandles`] and
    /// [`FsError::FileHandlesRefused`] (what `prefer` warns and `mandatory` fails with).
    fn handles_unusable(&self) -> String {
        match self {
            FsError::NoFileHandles { path, source } => format!(
                "the filesystem of shared directory {} makes no file handles (name_to_handle_at: {source})",
                path.display()
            ),
            FsError::FileHandlesRefused(e) => format!(
                "a file handle cannot be opened ({e}): open_by_handle_at needs CAP_DAC_READ_SEARCH"
            ),
            e => e.to_string(),
        }
    }
}

impl std::error::Error for FsError {}

/// `--inode-file-handles=prefer` found file handles unusable for the share itself: said once,
/// at start; the core then runs as `never`.
fn warn_prefer_as_never(why: &str) {
    tracing::warn!(
        "--inode-file-handles=prefer: {why}; every inode gets an O_PATH descriptor instead, as with never"
    );
}

/// An error that says nothing about file handles on a mount (the inode went away, a
/// descriptor or memory ran short, a signal): under `prefer` the lookup falls back to a
/// descriptor but the mount is tried again next time.
fn transient(e: &io::Error) -> bool {
    matches!(
        e.raw_os_error(),
        Some(
            libc::ENOENT
                | libc::ESTALE
                | libc::EMFILE
                | libc::ENFILE
                | libc::ENOMEM
                | libc::EINTR
                | libc::EAGAIN
        )
    )
}

fn err(errno: i32) -> io::Error {
    io::Error::from_raw_os_error(errno)
}

const POSIX_ACL_ACCESS: &[u8] = b"system.posix_acl_access";
const POSIX_ACL_DEFAULT: &[u8] = b"system.posix_acl_default";

/// Linux limits on one xattr value and on a list of names (include/uapi/linux/limits.h).
const XATTR_SIZE_MAX: u32 = 65536;
const XATTR_LIST_MAX: u32 = 65536;

/// Largest single read the core serves in one call.
pub const MAX_IO: u32 = 1 << 20;

/// The filesystem core: a passthrough of the shared directory, serving every FUSE
/// operation as a method on `&self`, confined to the directory; transports call it.
pub struct FileSystem {
    inodes: InodeTable,
    handles: RwLock<HashMap<u64, Arc<Handle>>>,
    next_fh: AtomicU64,
    proc_self_fd: OwnedFd,
    /// The shared directory as the operator named it (for messages).
    shared_dir: PathBuf,
    /// While nodes are referenced by file handle ([`FileHandles::Prefer`] or
    /// [`FileHandles::Mandatory`], and handles work for the share): the descriptor
    /// open_by_handle_at needs per mount.
    mounts: Option<MountFds>,
    /// Mounts (id, st_dev) met without usable file handles, logged once each; under
    /// [`FileHandles::Prefer`] their nodes get descriptors without trying handles again.
    handleless_mounts: Mutex<HashSet<(u64, u64)>>,
    cfg: Config,
    switch_creds: bool,
    fd_budget_logged: AtomicBool,
    /// The session negotiated POSIX ACLs (`--posix-acl`, FUSE_POSIX_ACL | FUSE_DONT_MASK).
    posix_acl: AtomicBool,
}

impl fmt::Debug for FileSystem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("FileSystem")
            .field("nodes", &self.inodes.len())
            .field("cfg", &self.cfg)
            .finish()
    }
}

/// A single path component the client may name: not empty, no '/', at most NAME_MAX.
fn check_name(name: &CStr) -> io::Result<()> {
    let b = name.to_bytes();
    if b.is_empty() || b.contains(&b'/') {
        return Err(err(libc::EINVAL));
    }
    if b.len() > 255 {
        return Err(err(libc::ENAMETOOLONG));
    }
    Ok(())
}

/// A name to create, remove or rename: additionally never `.` or `..`.
fn check_new_name(name: &CStr) -> io::Result<()> {
    check_name(name)?;
    match name.to_bytes() {
        b"." | b".." => Err(err(libc::EINVAL)),
        _ => Ok(()),
    }
}

/// Flags the core passes to open(2): never create (create() does that), never make the
/// opened descriptor our controlling tty, never follow (reopen is through a magic link,
/// which O_NOFOLLOW would refuse). A client's O_DIRECT is dropped before, unless allowed
/// ([`FileSystem::client_flags`]).
fn open_flags(flags: i32) -> i32 {
    (flags & !(libc::O_CREAT | libc::O_EXCL | libc::O_NOCTTY | libc::O_NOFOLLOW)) | libc::O_CLOEXEC
}

fn writes(flags: i32) -> bool {
    flags & libc::O_ACCMODE != libc::O_RDONLY || flags & libc::O_TRUNC != 0
}

fn timespec(t: Option<SetTime>) -> rustix::fs::Timespec {
    match t {
        None => rustix::fs::Timespec {
            tv_sec: 0,
            tv_nsec: rustix::fs::UTIME_OMIT,
        },
        Some(SetTime::Now) => rustix::fs::Timespec {
            tv_sec: 0,
            tv_nsec: rustix::fs::UTIME_NOW,
        },
        Some(SetTime::At(t)) => rustix::fs::Timespec {
            tv_sec: t.sec,
            tv_nsec: i64::from(t.nsec.min(999_999_999)),
        },
    }
}

/// A directory entry's type as `st_mode` file type bits; 0 when the filesystem did not say
/// (DT_UNKNOWN).
fn dtype_to_mode(file_type: rustix::fs::FileType) -> u32 {
    match file_type {
        rustix::fs::FileType::Unknown => 0,
        t => t.as_raw_mode(),
    }
}

impl FileSystem {
    /// Open the shared directory and set the process up for serving it (umask 0: the core
    /// applies each caller's umask itself).
    pub fn new(shared_dir: &Path, cfg: Config) -> Result<Self, FsError> {
        // The operator names the share, so a symlink here is followed (once, at start).
        let root_fd: OwnedFd = std::fs::OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_PATH | libc::O_DIRECTORY)
            .open(shared_dir)
            .map_err(|e| {
                if e.raw_os_error() == Some(libc::ENOTDIR) {
                    FsError::NotADirectory(shared_dir.to_owned())
                } else {
                    FsError::SharedDir {
                        path: shared_dir.to_owned(),
                        source: e,
                    }
                }
            })?
            .into();
        let stx = sys::statx_fd(root_fd.as_fd()).map_err(|e| FsError::SharedDir {
            path: shared_dir.to_owned(),
            source: e,
        })?;
        let proc_self_fd = std::fs::File::open("/proc/self/fd")
            .map(OwnedFd::from)
            .map_err(FsError::ProcFs)?;
        let root_key = InodeKey::from_statx(&stx);
        let mounts = if cfg.file_handles == FileHandles::Never {
            None
        } else {
            // The share's own mount: open_by_handle_at's anchor for every node on it, opened
            // now, while the path is still reachable (before any sandbox).
            match sys::openat(
                proc_self_fd.as_fd(),
                &Self::proc_name(root_fd.as_fd()),
                libc::O_RDONLY | libc::O_DIRECTORY,
            ) {
                Ok(dir) => Some(MountFds::new(root_key.mnt_id, root_key.dev, dir)),
                Err(e) if cfg.file_handles == FileHandles::Prefer => {
                    warn_prefer_as_never(&format!(
                        "the shared directory cannot be opened for open_by_handle_at ({e})"
                    ));
                    None
                }
                Err(e) => {
                    return Err(FsError::SharedDir {
                        path: shared_dir.to_owned(),
                        source: e,
                    })
                }
            }
        };
        rustix::process::umask(rustix::fs::Mode::empty());
        let switch_creds = rustix::process::geteuid().is_root();
        let mut fs = FileSystem {
            inodes: InodeTable::new(root_fd, root_key),
            handles: RwLock::new(HashMap::new()),
            next_fh: AtomicU64::new(1),
            proc_self_fd,
            shared_dir: shared_dir.to_owned(),
            mounts,
            handleless_mounts: Mutex::new(HashSet::new()),
            cfg,
            switch_creds,
            fd_budget_logged: AtomicBool::new(false),
            posix_acl: AtomicBool::new(false),
        };
        fs.check_file_handles()?;
        Ok(fs)
    }

    /// While nodes are referenced by file handle: proves that the shared directory gets a
    /// file handle and that the handle opens again (the capability open_by_handle_at needs is
    /// there). Run at start, and again once the process is confined (capabilities dropped,
    /// seccomp on), before any node but the root exists. Under [`FileHandles::Prefer`] a
    /// failure is a warning (once) and the core goes on as [`FileHandles::Never`]; under
    /// [`FileHandles::Mandatory`] it is the error.
    pub fn check_file_handles(&mut self) -> Result<(), FsError> {
        match self.probe_file_handles() {
            Err(e) if self.cfg.file_handles == FileHandles::Prefer => {
                warn_prefer_as_never(&e.handles_unusable());
                self.mounts = None;
                Ok(())
            }
            r => r,
        }
    }

    fn probe_file_handles(&self) -> Result<(), FsError> {
        let Some(mounts) = &self.mounts else {
            return Ok(());
        };
        let root = self.inode(ROOT_NODE).map_err(FsError::FileHandlesRefused)?;
        let fd = root.fd().map_err(FsError::FileHandlesRefused)?;
        let (handle, _) = sys::name_to_handle(fd.as_fd()).map_err(|e| FsError::NoFileHandles {
            path: self.shared_dir.clone(),
            source: e,
        })?;
        let mount = mounts
            .get(root.key.mnt_id, root.key.dev)
            .ok_or_else(|| FsError::FileHandlesRefused(err(libc::EBADF)))?;
        HandleRef::new(handle, mount)
            .open(libc::O_PATH)
            .map(drop)
            .map_err(FsError::FileHandlesRefused)
    }

    /// Nodes are referenced by file handle where they can be ([`FileHandles::Prefer`] or
    /// [`FileHandles::Mandatory`], and handles work for the share).
    pub fn uses_file_handles(&self) -> bool {
        self.mounts.is_some()
    }

    /// A FUSE session ended or a new one began (DESTROY, INIT): every node but the root and
    /// every open handle of the old session are forgotten, as the client forgot them.
    pub fn reset_session(&self) {
        self.inodes.reset();
        self.handles
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .clear();
    }

    /// INIT negotiated POSIX ACLs (or a new session did not): the client then sends modes
    /// without its umask applied (DONT_MASK), and the `system.posix_acl_*` xattrs are served.
    pub fn set_posix_acl(&self, on: bool) {
        self.posix_acl.store(on, Ordering::Relaxed);
    }

    /// The umask a new node in `parent` gets: the caller's, unless ACLs are on and `parent`
    /// has a default ACL, which then decides the permissions instead (as POSIX has it; the
    /// host kernel applies the default ACL, masked by the mode given).
    fn umask_in(&self, parent: &Inode, ctx: &Context) -> u32 {
        let umask = ctx.umask & 0o7777;
        if umask == 0 || !self.posix_acl.load(Ordering::Relaxed) {
            return umask;
        }
        let has_default = self
            .reopen(
                parent,
                libc::O_RDONLY | libc::O_DIRECTORY | libc::O_NONBLOCK,
            )
            .and_then(|fd| sys::getxattr(fd.as_fd(), c"system.posix_acl_default", &mut []))
            .is_ok_and(|n| n > 0);
        if has_default {
            0
        } else {
            umask
        }
    }

    /// Labels a node the client just created with the security context its kernel sent
    /// (FUSE_SECURITY_CTX, `serve --security-label`): the xattr `name` set to `value`, as root.
    /// Only `security.*` names: a context is an LSM label, and any other namespace here would
    /// let a guest set `trusted.*` without `--xattr`.
    pub fn set_security_context(&self, node: u64, name: &CStr, value: &[u8]) -> io::Result<()> {
        if !name.to_bytes().starts_with(b"security.") {
            return Err(err(libc::EPERM));
        }
        let inode = self.inode(node)?;
        self.xattr_call(
            &inode,
            |fd, at| match at {
                None => sys::setxattr(fd, name, value, 0),
                Some(path) => sys::setxattr_at(fd, path, name, value, 0),
            },
            || Err(err(libc::EOPNOTSUPP)),
        )
    }

    /// A client's open flags, less O_NOATIME unless `preserve_noatime` and less O_DIRECT
    /// unless `allow_direct_io`.
    fn client_flags(&self, mut flags: i32) -> i32 {
        if !self.cfg.preserve_noatime {
            flags &= !libc::O_NOATIME;
        }
        if !self.cfg.allow_direct_io {
            flags &= !libc::O_DIRECT;
        }
        if self.cfg.atime == Atime::Never {
            flags |= libc::O_NOATIME;
        }
        flags
    }

    /// The configuration the core was made with.
    pub fn config(&self) -> &Config {
        &self.cfg
    }

    /// Number of live nodes (root included).
    pub fn node_count(&self) -> usize {
        self.inodes.len()
    }

    fn inode(&self, node: u64) -> io::Result<Arc<Inode>> {
        self.inodes.get(node).ok_or_else(|| err(libc::ESTALE))
    }

    fn dir_inode(&self, node: u64) -> io::Result<Arc<Inode>> {
        let inode = self.inode(node)?;
        if !inode.is_dir() {
            return Err(err(libc::ENOTDIR));
        }
        Ok(inode)
    }

    /// The open handle `fh`, for transports that move data themselves (e.g. straight
    /// between the host file and guest memory).
    pub fn handle(&self, fh: u64) -> io::Result<Arc<Handle>> {
        self.handles
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .get(&fh)
            .cloned()
            .ok_or_else(|| err(libc::EBADF))
    }

    fn writable(&self) -> io::Result<()> {
        if self.cfg.read_only {
            Err(err(libc::EROFS))
        } else {
            Ok(())
        }
    }

    /// Acts as the caller (fsuid/fsgid) until the guard drops. Take every descriptor the
    /// operation needs before: a node held by file handle is opened with open_by_handle_at,
    /// which wants CAP_DAC_READ_SEARCH, and setfsuid to a non-zero id drops that capability
    /// (and every other filesystem one) from the thread's effective set.
    fn creds(&self, ctx: &Context) -> io::Result<Option<Credentials>> {
        if self.switch_creds {
            Credentials::switch(ctx.uid, ctx.gid).map(Some)
        } else {
            Ok(None)
        }
    }

    /// Descriptor exhaustion is an operator problem (the budget), not the client's: say so
    /// once, loudly, and pass the errno on.
    fn fd_error(&self, e: io::Error) -> io::Error {
        if matches!(e.raw_os_error(), Some(libc::EMFILE) | Some(libc::ENFILE))
            && !self.fd_budget_logged.swap(true, Ordering::Relaxed)
        {
            let lim = rustix::process::getrlimit(rustix::process::Resource::Nofile);
            tracing::error!(
                nodes = self.inodes.len(),
                limit = lim.current.unwrap_or(libc::RLIM_INFINITY),
                "open-file budget exhausted ({e}); clients get EMFILE until nodes are forgotten; raise --rlimit-nofile"
            );
        }
        e
    }

    fn proc_name(fd: BorrowedFd<'_>) -> CString {
        // A decimal number never contains NUL.
        CString::new(fd.as_raw_fd().to_string()).unwrap_or_default()
    }

    /// Open the inode behind an O_PATH descriptor for I/O. Only regular files and
    /// directories: the magic link is never used on a symlink or special file.
    fn reopen(&self, inode: &Inode, flags: i32) -> io::Result<OwnedFd> {
        if !(inode.is_reg() || inode.is_dir()) {
            return Err(err(if inode.is_symlink() {
                libc::ELOOP
            } else {
                libc::ENXIO
            }));
        }
        match inode.handle() {
            Some(h) => h.open(open_flags(flags)),
            None => sys::openat(
                self.proc_self_fd.as_fd(),
                &Self::proc_name(inode.fd()?.as_fd()),
                open_flags(flags),
            ),
        }
        .map_err(|e| self.fd_error(e))
    }

    /// An O_PATH descriptor of `inode` to keep: a duplicate of its own, or the one opened
    /// from its file handle.
    fn owned_fd(&self, inode: &Inode) -> io::Result<OwnedFd> {
        match inode.fd().map_err(|e| self.fd_error(e))? {
            InodeFd::Kept(fd) => fd.try_clone_to_owned().map_err(|e| self.fd_error(e)),
            InodeFd::Opened(fd) => Ok(fd),
        }
    }

    /// Mount (id, st_dev) of `key` is one without usable file handles: its first such error
    /// is logged (a warning under `mandatory`, whose lookups there fail; a debug line under
    /// `prefer`, whose nodes there get descriptors), and `prefer` stops trying handles there.
    fn handleless_mount(&self, key: InodeKey, e: &io::Error) {
        let first = self
            .handleless_mounts
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert((key.mnt_id, key.dev));
        if !first {
            return;
        }
        if self.cfg.file_handles == FileHandles::Prefer {
            tracing::debug!(
                mount_id = key.mnt_id,
                "no usable file handle for an inode on this mount ({e}); its inodes get O_PATH descriptors (--inode-file-handles=prefer)"
            );
        } else {
            tracing::warn!(
                mount_id = key.mnt_id,
                "no file handle for an inode on this mount ({e}); with --inode-file-handles=mandatory its lookups fail"
            );
        }
    }

    /// The file handle of the inode `fd` (O_PATH) names, and its mount id. A filesystem
    /// without file handles answers EOPNOTSUPP (the mount then is [`Self::handleless_mount`]).
    fn file_handle(&self, fd: BorrowedFd<'_>, key: InodeKey) -> io::Result<(sys::FileHandle, u64)> {
        sys::name_to_handle(fd).inspect_err(|e| {
            if self.cfg.file_handles == FileHandles::Mandatory || !transient(e) {
                self.handleless_mount(key, e);
            }
        })
    }

    /// The descriptor of mount `mnt_id` for open_by_handle_at, and whether it was just made:
    /// made from `fd` (O_PATH, of an inode of `file_type`) if no node holds one.
    fn mount_fd(
        &self,
        mounts: &MountFds,
        fd: BorrowedFd<'_>,
        mnt_id: u64,
        key: InodeKey,
        file_type: u32,
    ) -> io::Result<(Arc<handle::MountFd>, bool)> {
        if let Some(mount) = mounts.get(mnt_id, key.dev) {
            return Ok((mount, false));
        }
        // No node on this mount: a lookup enters a mount only at its root, which is this
        // node, on the mount, and reachable here whatever the sandbox. open_by_handle_at
        // wants a real descriptor: reopen it for reading, which is harmless for a directory
        // or regular file only.
        let flags = match file_type {
            libc::S_IFDIR => libc::O_RDONLY | libc::O_DIRECTORY,
            libc::S_IFREG => libc::O_RDONLY | libc::O_NONBLOCK | libc::O_NOCTTY,
            _ => return Err(err(libc::EOPNOTSUPP)),
        };
        let mount_fd = sys::openat(self.proc_self_fd.as_fd(), &Self::proc_name(fd), flags)
            .map_err(|e| self.fd_error(e))?;
        Ok((mounts.insert(mnt_id, key.dev, mount_fd), true))
    }

    /// The node of the inode `fd` (O_PATH) names, one more lookup reference on it, when
    /// nodes are referenced by file handle. The handle is made for every lookup: nothing pins
    /// a node's inode, so the inode number of a node the client holds can name a new inode
    /// by now (the old one deleted); a node whose handle is not this one's then takes this
    /// one (`InodeTable::acquire_current`). A node that has a descriptor (`prefer`'s
    /// fallback) pins its inode, so it is this one. On error no reference was taken.
    fn acquire_by_handle(
        &self,
        mounts: &MountFds,
        fd: BorrowedFd<'_>,
        key: InodeKey,
        file_type: u32,
    ) -> io::Result<Arc<Inode>> {
        let (handle, mnt_id) = self.file_handle(fd, key)?;
        let current = |inode: &Inode| inode.handle().is_none_or(|h| h.is(&handle));
        if let Some(inode) = self.inodes.acquire_existing_if(key, current) {
            return Ok(inode);
        }
        // Made outside the table's lock (`acquire_current` settles a race with another
        // lookup of the same inode).
        let (mount, fresh) = self.mount_fd(mounts, fd, mnt_id, key, file_type)?;
        let host = HandleRef::new(handle.clone(), mount);
        if fresh && self.cfg.file_handles == FileHandles::Prefer {
            // The first node on this mount: that its handles open (the filesystem decodes
            // them, the capability covers this mount) is proved once, while a descriptor to
            // fall back to is at hand.
            host.open(libc::O_PATH).inspect_err(|e| {
                if !transient(e) {
                    self.handleless_mount(key, e);
                }
            })?;
        }
        // A node by descriptor pins its inode: it is this one. One by another handle names a
        // deleted inode.
        let fit = |inode: &Inode| match current(inode) {
            true => Fit::Current,
            false => Fit::OtherInode,
        };
        Ok(self
            .inodes
            .acquire_current(key, file_type, HostRef::Handle(host), fit))
    }

    /// `prefer`: the node of `key` for a lookup that made no usable file handle, by the
    /// descriptor `fd`, which pins the inode. An existing node of `key` by descriptor is this
    /// inode; one by file handle is this inode if its handle still opens (it then takes `fd`,
    /// keeping its node id and lookup count), else a deleted one whose number this inode
    /// reused (this inode then gets a node id of its own).
    fn acquire_by_fd(&self, fd: OwnedFd, key: InodeKey, file_type: u32) -> Arc<Inode> {
        // A handle that still opens names a live inode, and a live inode with this one's
        // number is this one. Asked before the table's lock: it is a system call.
        let live = self
            .inodes
            .peek(key)
            .filter(|i| i.handle().is_some_and(|h| h.open(libc::O_PATH).is_ok()));
        self.inodes
            .acquire_current(key, file_type, HostRef::Fd(fd), |inode| {
                match inode.handle() {
                    None => Fit::Current,
                    Some(_) if live.as_deref().is_some_and(|l| std::ptr::eq(l, inode)) => {
                        Fit::SameInode
                    }
                    Some(_) => Fit::OtherInode,
                }
            })
    }

    fn entry(&self, fd: OwnedFd) -> io::Result<Entry> {
        let stx = sys::statx_fd(fd.as_fd())?;
        let key = InodeKey::from_statx(&stx);
        let file_type = u32::from(stx.stx_mode) & libc::S_IFMT;
        let inode = match &self.mounts {
            None => self.inodes.acquire(key, file_type, HostRef::Fd(fd)),
            Some(mounts) if self.cfg.file_handles == FileHandles::Mandatory => {
                self.acquire_by_handle(mounts, fd.as_fd(), key, file_type)?
            }
            Some(mounts) => {
                let handleless = self
                    .handleless_mounts
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .contains(&(key.mnt_id, key.dev));
                if handleless {
                    self.acquire_by_fd(fd, key, file_type)
                } else {
                    match self.acquire_by_handle(mounts, fd.as_fd(), key, file_type) {
                        Ok(inode) => inode,
                        // Whatever kept the handle from being made or opened, the descriptor
                        // serves.
                        Err(_) => self.acquire_by_fd(fd, key, file_type),
                    }
                }
            }
        };
        Ok(Entry {
            node: inode.node,
            generation: 0,
            attr: Attr::from_statx(&stx, inode.node),
            entry_timeout: self.cfg.entry_timeout,
            attr_timeout: self.cfg.attr_timeout,
            submount: false,
        })
    }

    fn lookup_in(&self, parent: &Inode, name: &CStr) -> io::Result<Entry> {
        match name.to_bytes() {
            b"." => {
                let fd = self.owned_fd(parent)?;
                return self.entry(fd);
            }
            b".." => {
                // `..` of the shared directory is the shared directory.
                if parent.node == ROOT_NODE {
                    let fd = self.owned_fd(parent)?;
                    return self.entry(fd);
                }
                // Elsewhere `..` must be a node the client already holds: the client reached
                // `parent` through it. A directory a host process moved out of the share has
                // a `..` outside it, which is not in the table and is refused.
                let fd = sys::openat(
                    parent.fd()?.as_fd(),
                    c"..",
                    libc::O_PATH | libc::O_NOFOLLOW | libc::O_DIRECTORY,
                )
                .map_err(|e| self.fd_error(e))?;
                let stx = sys::statx_fd(fd.as_fd())?;
                let inode = self
                    .inodes
                    .acquire_existing(InodeKey::from_statx(&stx))
                    .ok_or_else(|| err(libc::ENOENT))?;
                return Ok(Entry {
                    node: inode.node,
                    generation: 0,
                    attr: Attr::from_statx(&stx, inode.node),
                    entry_timeout: self.cfg.entry_timeout,
                    attr_timeout: self.cfg.attr_timeout,
                    submount: false,
                });
            }
            _ => {}
        }
        check_name(name)?;
        let fd = sys::openat2(
            parent.fd()?.as_fd(),
            name,
            libc::O_PATH | libc::O_NOFOLLOW,
            0,
            sys::RESOLVE_CONFINED,
        )
        .map_err(|e| self.fd_error(e))?;
        let mut entry = self.entry(fd)?;
        entry.submount = entry.attr.mode & libc::S_IFMT == libc::S_IFDIR
            && self
                .inodes
                .get(entry.node)
                .is_some_and(|i| i.key.mnt_id != parent.key.mnt_id);
        Ok(entry)
    }

    fn insert_handle(&self, node: u64, file: OwnedFd) -> (u64, Arc<Handle>) {
        let fh = self.next_fh.fetch_add(1, Ordering::Relaxed);
        // Only a client's open can carry O_DIRECT, and only when allowed.
        let direct = self.cfg.allow_direct_io && aligned::is_direct(file.as_fd());
        let handle = Arc::new(Handle {
            node,
            file,
            direct,
            dir_lock: Mutex::new(()),
        });
        self.handles
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .insert(fh, handle.clone());
        (fh, handle)
    }

    fn remove_handle(&self, fh: u64) -> io::Result<Arc<Handle>> {
        self.handles
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&fh)
            .ok_or_else(|| err(libc::EBADF))
    }
}

#[cfg(test)]
mod tests;
