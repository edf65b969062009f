//! `zerodax mount`: serve a directory through /dev/fuse in the foreground until SIGINT or
//! SIGTERM, then unmount and exit 0.

use std::io;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::mpsc;
use std::sync::Arc;
use std::time::Duration;

use std::os::fd::{AsFd, AsRawFd, BorrowedFd};

use rustix::mount::{MountFlags, UnmountFlags};

use crate::cli::{LogLevel, PassthroughArg};
use crate::fs::{self, FileSystem, XattrMap};
use crate::fuse_dev::{self, DeviceBacking};
use crate::process::{block_termination_signals, init_logging, raise_nofile};
use crate::server::{Server, ServerOptions};

/// The flags of `zerodax mount`.
#[derive(Debug, clap::Args)]
pub struct MountArgs {
    /// Directory to serve.
    pub shared_dir: PathBuf,
    /// Where to mount it (an existing directory).
    pub mountpoint: PathBuf,
    /// Kernel FUSE passthrough of reads, writes and mmap to the backing files.
    #[arg(long, value_enum, default_value_t = PassthroughArg::Auto)]
    pub passthrough: PassthroughArg,
    /// Refuse every modification (EROFS) and mount read-only.
    #[arg(long)]
    pub read_only: bool,
    /// Let users other than root use the mount (needed for multi-user test suites).
    #[arg(long)]
    pub allow_other: bool,
    /// Most verbose level logged to stderr.
    #[arg(long, value_enum, default_value_t = LogLevel::Info)]
    pub log_level: LogLevel,
    /// Open-file limit to raise RLIMIT_NOFILE to at start (default: the hard limit). Every
    /// node the client holds costs one descriptor.
    #[arg(long, value_name = "N")]
    pub rlimit_nofile: Option<u64>,
    /// Worker threads reading /dev/fuse (default: 2 per CPU, at most 16).
    #[arg(long, value_name = "N")]
    pub threads: Option<usize>,
    /// Mount options, comma separated (repeatable): nosuid|suid, nodev|dev, exec|noexec,
    /// atime|noatime|relatime|strictatime, diratime|nodiratime, lazytime|nolazytime,
    /// sync|async, dirsync, ro|rw, allow_other,
    /// default_permissions, fsname=NAME (the mount's source; default zerodax),
    /// subtype=NAME (type fuse.NAME; default fuse.zerodax; empty: fuse). Default: nosuid,nodev. Never more than the shared directory's
    /// own mount allows: on a nosuid/nodev/noexec/ro filesystem those are forced (asking
    /// for more is an error).
    #[arg(short = 'o', value_name = "OPTS", action = clap::ArgAction::Append)]
    pub options: Vec<String>,
    /// Rename xattrs between the mount and the shared directory, in virtiofsd's
    /// `--xattrmap` syntax (docs/serve.md, *xattr mapping*), e.g. `:map::user.virtiofs.:`.
    #[arg(long, value_name = "RULES")]
    pub xattrmap: Option<XattrMap>,
}

/// What the mount grants, from `-o` and the flags, limited by the shared directory's mount.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MountRights {
    /// Set-id bits take effect (`suid`).
    pub suid: bool,
    /// Device nodes can be opened (`dev`).
    pub dev: bool,
    /// Files can be executed (`exec`).
    pub exec: bool,
    /// Mounted read-only, every modification refused (`ro`, `--read-only`).
    pub read_only: bool,
    /// Users other than the mounter may use the mount (`allow_other`).
    pub allow_other: bool,
    /// `noatime` or `atime`/`strictatime`; `None` is the kernel's default, relatime.
    pub atime: Option<MountAtime>,
    /// Synchronous writes (`sync`).
    pub sync: bool,
    /// Synchronous directory changes (`dirsync`).
    pub dirsync: bool,
    /// Directory access times are not updated (`nodiratime`).
    pub nodiratime: bool,
    /// Timestamps are kept in memory and written lazily (`lazytime`).
    pub lazytime: bool,
}

/// An explicit atime policy of the mount.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MountAtime {
    /// Access times are never updated (`noatime`).
    NoAtime,
    /// Access times are updated on every access (`atime`, `strictatime`).
    Atime,
}

impl MountRights {
    /// `-o` words over the defaults (nosuid, nodev, exec), then `--read-only` and
    /// `--allow-other`; then the shared directory's own mount flags (`backing`, statvfs
    /// f_flag): what it forbids is forced, and an explicit request for it is an error.
    pub fn resolve(args: &MountArgs, backing: u64) -> Result<Self, String> {
        let mut r = MountRights {
            suid: false,
            dev: false,
            exec: true,
            read_only: args.read_only,
            allow_other: args.allow_other,
            atime: None,
            sync: false,
            dirsync: false,
            nodiratime: false,
            lazytime: false,
        };
        let mut asked = Vec::new();
        for word in args.options.iter().flat_map(|o| o.split(',')) {
            match word.trim() {
                "" | "default_permissions" => {}
                w if w.starts_with("fsname=") || w.starts_with("subtype=") => {}
                "suid" => r.suid = true,
                "nosuid" => r.suid = false,
                "dev" => r.dev = true,
                "nodev" => r.dev = false,
                "exec" => r.exec = true,
                "noexec" => r.exec = false,
                "ro" => r.read_only = true,
                "rw" => r.read_only = args.read_only,
                "allow_other" => r.allow_other = true,
                "noatime" => r.atime = Some(MountAtime::NoAtime),
                // The kernel's default is relatime; strictatime/atime ask for every update.
                "relatime" => r.atime = None,
                "atime" | "strictatime" => r.atime = Some(MountAtime::Atime),
                "sync" => r.sync = true,
                "async" => r.sync = false,
                "dirsync" => r.dirsync = true,
                "nodiratime" => r.nodiratime = true,
                "diratime" => r.nodiratime = false,
                "lazytime" => r.lazytime = true,
                "nolazytime" => r.lazytime = false,
                other => return Err(format!("-o {other}: unknown mount option")),
            }
            asked.push(word.trim());
        }
        let limits = [
            ("suid", libc::ST_NOSUID, &mut r.suid),
            ("dev", libc::ST_NODEV, &mut r.dev),
            ("exec", libc::ST_NOEXEC, &mut r.exec),
        ];
        for (name, flag, granted) in limits {
            if backing & flag != 0 && *granted {
                if asked.contains(&name) {
                    return Err(format!(
                        "-o {name}: the shared directory's own mount does not allow it"
                    ));
                }
                *granted = false;
            }
        }
        if backing & libc::ST_RDONLY != 0 {
            r.read_only = true;
        }
        Ok(r)
    }

    /// What the daemon's own reads may do to host access times: the client kernel never
    /// updates them on a FUSE mount, the host does as the daemon reads.
    fn host_atime(&self) -> fs::Atime {
        match (self.atime, self.nodiratime) {
            (Some(MountAtime::NoAtime), _) => fs::Atime::Never,
            (_, true) => fs::Atime::NotDirs,
            _ => fs::Atime::Host,
        }
    }

    /// The mount(2) flags these rights ask for.
    fn mount_flags(&self) -> MountFlags {
        let mut flags = MountFlags::empty();
        for (granted, flag) in [
            (self.suid, MountFlags::NOSUID),
            (self.dev, MountFlags::NODEV),
            (self.exec, MountFlags::NOEXEC),
        ] {
            if !granted {
                flags |= flag;
            }
        }
        for (asked, flag) in [
            (self.read_only, MountFlags::RDONLY),
            (self.sync, MountFlags::SYNCHRONOUS),
            (self.dirsync, MountFlags::DIRSYNC),
            (self.nodiratime, MountFlags::NODIRATIME),
            (self.lazytime, MountFlags::LAZYTIME),
        ] {
            if asked {
                flags |= flag;
            }
        }
        match self.atime {
            Some(MountAtime::NoAtime) => flags |= MountFlags::NOATIME,
            Some(MountAtime::Atime) => flags |= MountFlags::STRICTATIME,
            None => {}
        }
        flags
    }
}

/// The mount's source and type names: `-o fsname=NAME` (default `zerodax`), shown as the
/// mount's source, and `-o subtype=NAME` (default `zerodax`), making its type `fuse.NAME`
/// (`subtype=` alone: plain `fuse`, as fstests' FSTYP=fuse expects).
pub fn mount_names(args: &MountArgs) -> Result<(String, String), String> {
    let (mut fsname, mut subtype) = ("zerodax".to_owned(), "zerodax".to_owned());
    for word in args.options.iter().flat_map(|o| o.split(',')) {
        let word = word.trim();
        let (slot, value, empty_ok) = if let Some(v) = word.strip_prefix("fsname=") {
            (&mut fsname, v, false)
        } else if let Some(v) = word.strip_prefix("subtype=") {
            (&mut subtype, v, true)
        } else {
            continue;
        };
        // /proc/mounts separates fields with spaces and escapes only a few characters:
        // keep names printable and free of separators. An empty subtype is none at all.
        if (value.is_empty() && !empty_ok)
            || !value.bytes().all(|b| b.is_ascii_graphic() && b != b',')
        {
            return Err(format!(
                "-o {word}: a name must be printable, without spaces or commas"
            ));
        }
        *slot = value.to_owned();
    }
    Ok((fsname, subtype))
}

/// Mounts the FUSE connection `dev` at `mountpoint`: `default_permissions` always (the
/// kernel checks modes; the core then acts as the caller), `allow_other` when granted, the
/// rights as mount flags.
fn mount_device(
    dev: BorrowedFd<'_>,
    mountpoint: &Path,
    rights: &MountRights,
    (fsname, subtype): &(String, String),
) -> io::Result<()> {
    let mut data = format!(
        "fd={},rootmode=40000,user_id={},group_id={},default_permissions",
        dev.as_raw_fd(),
        rustix::process::getuid().as_raw(),
        rustix::process::getgid().as_raw(),
    );
    if rights.allow_other {
        data.push_str(",allow_other");
    }
    let data =
        std::ffi::CString::new(data).map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?;
    rustix::mount::mount(
        fsname.as_str(),
        mountpoint,
        match subtype.as_str() {
            "" => "fuse".to_owned(),
            s => format!("fuse.{s}"),
        }
        .as_str(),
        rights.mount_flags(),
        data.as_c_str(),
    )?;
    Ok(())
}

/// The mount flags (statvfs f_flag) of the filesystem `path` is on.
fn mount_flags_of(path: &Path) -> io::Result<u64> {
    // A path with a NUL in it is EINVAL, as before.
    Ok(rustix::fs::statvfs(path)?.f_flag.bits())
}

/// Why a mount could not be made or kept; each prints as one line.
#[derive(Debug)]
pub enum MountError {
    /// The mount point does not exist.
    MountpointMissing(PathBuf),
    /// The mount point is not a directory.
    MountpointNotDir(PathBuf),
    /// The mount point could not be examined.
    Mountpoint(PathBuf, io::Error),
    /// There is no /dev/fuse (the fuse module is not loaded).
    DevFuseAbsent,
    /// The process lacks a privilege the mount needs (what it was doing).
    NotPermitted(String),
    /// RLIMIT_NOFILE could not be raised to the limit asked.
    Rlimit(u64, io::Error),
    /// The filesystem core could not be set up on the shared directory.
    Fs(fs::FsError),
    /// The mount itself failed.
    Mount(PathBuf, io::Error),
    /// The termination signals could not be blocked or waited for.
    Signals(io::Error),
    /// A `-o` option is unknown or asks for more than the shared directory's mount allows.
    Options(String),
    /// The shared directory could not be examined.
    SharedDir(PathBuf, io::Error),
}

impl std::fmt::Display for MountError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            MountError::MountpointMissing(p) => {
                write!(f, "mountpoint {} does not exist", p.display())
            }
            MountError::MountpointNotDir(p) => {
                write!(f, "mountpoint {} is not a directory", p.display())
            }
            MountError::Mountpoint(p, e) => write!(f, "mountpoint {}: {e}", p.display()),
            MountError::DevFuseAbsent => {
                write!(f, "/dev/fuse is absent (is the fuse module loaded?)")
            }
            MountError::NotPermitted(what) => write!(f, "not permitted: {what}"),
            MountError::Options(what) => write!(f, "{what}"),
            MountError::SharedDir(p, e) => {
                write!(f, "cannot open shared directory {}: {e}", p.display())
            }
            MountError::Rlimit(n, e) => write!(f, "cannot raise RLIMIT_NOFILE to {n}: {e}"),
            MountError::Fs(e) => write!(f, "{e}"),
            MountError::Mount(p, e) => write!(f, "cannot mount on {}: {e}", p.display()),
            MountError::Signals(e) => write!(f, "cannot set up signal handling: {e}"),
        }
    }
}

impl std::error::Error for MountError {}

fn preflight(mountpoint: &Path) -> Result<(), MountError> {
    match std::fs::metadata(mountpoint) {
        Ok(m) if m.is_dir() => {}
        Ok(_) => return Err(MountError::MountpointNotDir(mountpoint.to_owned())),
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            return Err(MountError::MountpointMissing(mountpoint.to_owned()))
        }
        Err(e) => return Err(MountError::Mountpoint(mountpoint.to_owned(), e)),
    }
    match std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/fuse")
    {
        Ok(_) => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Err(MountError::DevFuseAbsent),
        Err(e) if e.kind() == io::ErrorKind::PermissionDenied => Err(MountError::NotPermitted(
            format!("cannot open /dev/fuse: {e}"),
        )),
        Err(e) => Err(MountError::Mount(mountpoint.to_owned(), e)),
    }
}

/// Is `mountpoint` (canonical) still a mount point of ours?
/// The id of the topmost mount at `mountpoint` (/proc/self/mountinfo lists mounts in the
/// order they were made; paths there escape space, tab, newline and backslash in octal).
fn top_mount_id(mountpoint: &Path) -> Option<u64> {
    let info = std::fs::read_to_string("/proc/self/mountinfo").ok()?;
    let mut want = String::new();
    for c in mountpoint.to_string_lossy().chars() {
        match c {
            ' ' | '\t' | '\n' | '\\' => want.push_str(&format!("\\{:03o}", c as u32)),
            c => want.push(c),
        }
    }
    info.lines().rev().find_map(|l| {
        let f: Vec<&str> = l.split(' ').collect();
        (f.len() > 4 && f[4] == want).then(|| f[0].parse().ok())?
    })
}

/// `zerodax mount`: mounts, serves until a signal or an external unmount, unmounts;
/// prints the error and fails if any step does.
pub fn run(args: MountArgs) -> ExitCode {
    init_logging(args.log_level);
    match serve(&args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("zerodax mount: {e}");
            ExitCode::FAILURE
        }
    }
}

fn serve(args: &MountArgs) -> Result<(), MountError> {
    preflight(&args.mountpoint)?;
    let nofile = raise_nofile(args.rlimit_nofile).map_err(|(n, e)| MountError::Rlimit(n, e))?;
    let mountpoint = args
        .mountpoint
        .canonicalize()
        .map_err(|e| MountError::Mountpoint(args.mountpoint.clone(), e))?;
    let backing_flags = mount_flags_of(&args.shared_dir)
        .map_err(|e| MountError::SharedDir(args.shared_dir.clone(), e))?;
    let rights = MountRights::resolve(args, backing_flags).map_err(MountError::Options)?;
    let fs = FileSystem::new(
        &args.shared_dir,
        fs::Config {
            read_only: rights.read_only,
            xattrmap: args.xattrmap.clone(),
            atime: rights.host_atime(),
            ..fs::Config::default()
        },
    )
    .map_err(MountError::Fs)?;

    // Before any thread exists: only the main thread takes them (sigtimedwait below).
    let signals = block_termination_signals().map_err(MountError::Signals)?;

    let names = mount_names(args).map_err(MountError::Options)?;
    let threads = args.threads.unwrap_or_else(|| {
        std::thread::available_parallelism()
            .map(|n| n.get() * 2)
            .unwrap_or(2)
            .min(16)
    });
    let dev = fuse_dev::open_device().map_err(|e| match e.kind() {
        io::ErrorKind::NotFound => MountError::DevFuseAbsent,
        _ => MountError::Mount(mountpoint.clone(), e),
    })?;
    mount_device(dev.as_fd(), &mountpoint, &rights, &names).map_err(|e| {
        match e.raw_os_error() {
            Some(libc::EPERM) | Some(libc::EACCES) => {
                MountError::NotPermitted(format!("mounting on {}: {e}", mountpoint.display()))
            }
            _ => MountError::Mount(mountpoint.clone(), e),
        }
    })?;
    // Which mount is ours, by mount id: the mount point may be mounted over again later
    // (a test harness remounting it), and only ours may ever be unmounted.
    let ours = top_mount_id(&mountpoint);
    let unmount_ours = || match (ours, top_mount_id(&mountpoint)) {
        (Some(ours), Some(top)) if ours == top => {
            if let Err(e) = rustix::mount::unmount(mountpoint.as_path(), UnmountFlags::DETACH) {
                tracing::warn!("unmount: {}", io::Error::from(e));
            }
        }
        _ => tracing::info!("the mount point no longer holds this mount; nothing to unmount"),
    };
    let fail = |e: io::Error| {
        unmount_ours();
        MountError::Mount(mountpoint.clone(), e)
    };

    let backing = Arc::new(DeviceBacking::new(
        fuse_dev::dup(dev.as_fd()).map_err(fail)?,
        args.passthrough.into(),
    ));
    let server = Arc::new(Server::new(
        Arc::new(fs),
        ServerOptions {
            backing: Some(backing.clone()),
            // Without it the kernel clears set-id bits before a write or truncate with a
            // SETATTR of the mode sent as the writer, and by the old rule (set-group-id only
            // with group execute); with it the daemon clears them by the host's rule.
            killpriv_v2: true,
            // ... and tells the kernel, whose cached mode would otherwise outlive them.
            notifier: Some(Arc::new(fuse_dev::DeviceNotifier::new(
                fuse_dev::dup(dev.as_fd()).map_err(fail)?,
            ))),
            ..ServerOptions::default()
        },
    ));
    // The kernel sends INIT as soon as it mounts: answer it here, so that a mount that
    // cannot be served (`--passthrough on` without kernel support) fails now, not later.
    fuse_dev::serve_init(dev.as_fd(), &server).map_err(fail)?;
    if backing.refused() {
        unmount_ours();
        return Err(MountError::Mount(
            mountpoint,
            io::Error::new(
                io::ErrorKind::Unsupported,
                "--passthrough on: the kernel does not offer FUSE passthrough",
            ),
        ));
    }
    tracing::info!(
        shared_dir = %args.shared_dir.display(),
        mountpoint = %mountpoint.display(),
        threads,
        rlimit_nofile = nofile,
        "mounted"
    );

    let (done_tx, done_rx) = mpsc::channel();
    for i in 0..threads.max(1) {
        let fd = match i {
            0 => fuse_dev::dup(dev.as_fd()),
            _ => fuse_dev::clone_device(dev.as_fd()),
        }
        .map_err(fail)?;
        let (server, done_tx) = (server.clone(), done_tx.clone());
        std::thread::Builder::new()
            .name(format!("fuse-{i}"))
            .spawn(move || {
                // A panic is a bug, never a guest's doing: it ends the mount (exit 1) rather
                // than leaving it served by fewer threads.
                let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                    fuse_dev::serve_device(fd.as_fd(), &server)
                }))
                .unwrap_or_else(|_| Err(io::Error::other("a worker thread panicked")));
                let _ = done_tx.send(r);
            })
            .map_err(fail)?;
    }
    drop(done_tx);

    let timeout = libc::timespec {
        tv_sec: 0,
        tv_nsec: 200_000_000,
    };
    loop {
        match done_rx.try_recv() {
            Ok(r) => {
                // Unmounted from outside (umount, fusermount -u): the connection ended.
                return match r {
                    Ok(()) => {
                        tracing::info!("unmounted externally; exiting");
                        Ok(())
                    }
                    Err(e) => {
                        unmount_ours();
                        Err(MountError::Mount(mountpoint, e))
                    }
                };
            }
            Err(mpsc::TryRecvError::Disconnected) => return Ok(()),
            Err(mpsc::TryRecvError::Empty) => {}
        }
        // SAFETY: `signals` is initialised; a null siginfo pointer is allowed.
        let sig = unsafe { libc::sigtimedwait(&signals, std::ptr::null_mut(), &timeout) };
        if sig > 0 {
            tracing::info!(signal = sig, "unmounting");
            break;
        }
    }

    unmount_ours();
    // A lazily detached mount with files still open keeps the connection until they close.
    // Give in-flight requests a moment, then exit: closing /dev/fuse aborts the connection.
    match done_rx.recv_timeout(Duration::from_secs(1)) {
        Ok(Err(e)) => tracing::debug!("session ended: {e}"),
        Ok(Ok(())) => {}
        Err(_) => tracing::info!("files still open on the detached mount; aborting the connection"),
    }
    Ok(())
}
