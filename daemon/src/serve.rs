//! `zerodax serve`: the vhost-user virtio-fs backend, in the foreground, for one frontend
//! connection. Exits 0 when the frontend disconnects or on SIGTERM/SIGINT/SIGHUP.
//!
//! Flags follow virtiofsd where they overlap; see docs/serve.md.

use std::fmt;
use std::io;
use std::os::fd::{FromRawFd, RawFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rustix::thread::CapabilitySet;
use vhost::vhost_user::Listener;
use vhost_user_backend::{ShutdownHandle, VhostUserDaemon};
use vm_memory::{GuestMemoryAtomic, GuestMemoryMmap};

use crate::cli::{AclArg, CacheArg, DaxHolesArg, DaxInodesArg, InodeFileHandles, LogLevel};
use crate::confine::{self, ConfineError, NsIdMap, SeccompAction};
use crate::dax::{DaxConfig, DEFAULT_ACK_TIMEOUT, DEFAULT_SLOTS};
use crate::fs::{FileHandles, FileSystem, FsError, XattrMap};
use crate::idmap::{IdMap, IdRule};
use crate::process::{block_termination_signals, init_logging, init_syslog, raise_nofile};
use crate::server::{CachePolicy, Server, ServerOptions};
use crate::size::{parse_size, SizeError};
use crate::vhost_user::{DeviceOptions, FsBackend, MAX_REQUEST_QUEUES, TAG_LEN};

/// `--sandbox`: how the daemon confines itself after opening the shared directory.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Sandbox {
    /// No process-level confinement (the core still resolves every name beneath the share).
    None,
    /// chroot(2) into the shared directory once it and /proc/self/fd are open.
    Chroot,
    /// Private mount, network and IPC namespaces, the mount namespace's root being the
    /// shared directory (pivot_root), so no other mount of the host is reachable even by
    /// `..` from the root, and no network either.
    Namespace,
}

/// The flags of `zerodax serve` (virtiofsd's spelling where they overlap).
#[derive(Debug, clap::Args)]
pub struct ServeArgs {
    /// vhost-user socket to create and listen on (an existing file is replaced). Also
    /// spelled `--socket`, as virtiofsd's deprecated flag.
    #[arg(long, value_name = "PATH", alias = "socket",
          required_unless_present_any = ["fd", "print_capabilities"])]
    pub socket_path: Option<PathBuf>,
    /// Group of the socket --socket-path creates; it is then made group read-write.
    #[arg(long, value_name = "GROUP", requires = "socket_path")]
    pub socket_group: Option<String>,
    /// Use this already-listening socket descriptor instead of --socket-path.
    #[arg(long, value_name = "N", conflicts_with = "socket_path")]
    pub fd: Option<RawFd>,
    /// Directory to share with the guest (or `-o source=DIR`).
    #[arg(
        long,
        value_name = "DIR",
        required_unless_present_any = ["print_capabilities", "compat_options"]
    )]
    pub shared_dir: Option<PathBuf>,
    /// Guest caching: entry/attribute timeouts and per-open cache flags, as virtiofsd.
    #[arg(long, value_enum, default_value_t = CacheArg::Auto)]
    pub cache: CacheArg,
    /// Threads serving requests; 0 serves them on each queue's own thread.
    #[arg(long, value_name = "N", default_value_t = 0)]
    pub thread_pool_size: usize,
    /// Request queues offered to the frontend (one worker thread each).
    #[arg(long, value_name = "N", default_value_t = 1,
          value_parser = clap::value_parser!(u16).range(1..=i64::from(MAX_REQUEST_QUEUES)))]
    pub request_queues: u16,
    /// Most verbose level logged to stderr.
    #[arg(long, value_enum, default_value_t = LogLevel::Info)]
    pub log_level: LogLevel,
    /// `--log-level debug` (virtiofsd's deprecated spelling).
    #[arg(short = 'd')]
    pub debug: bool,
    /// Accepted: zerodax always runs in the foreground (virtiofsd's deprecated flag).
    #[arg(short = 'f')]
    pub foreground: bool,
    /// Process confinement after start (default `namespace`, as virtiofsd).
    #[arg(long, value_enum, default_value_t = Sandbox::Namespace)]
    pub sandbox: Sandbox,
    /// Print the vhost-user backend capabilities (JSON) and exit.
    #[arg(long)]
    pub print_capabilities: bool,
    /// Refuse every modification with EROFS. Also spelled `--readonly`, as virtiofsd.
    #[arg(long, alias = "readonly")]
    pub read_only: bool,
    /// Open-file limit to set RLIMIT_NOFILE to at start (default: the hard limit); 0 leaves
    /// it unchanged, as virtiofsd.
    #[arg(long, value_name = "N")]
    pub rlimit_nofile: Option<u64>,
    /// Offer no READDIRPLUS: the guest lists directories with READDIR and looks entries up.
    #[arg(long)]
    pub no_readdirplus: bool,
    /// With --cache never|metadata (direct I/O), let the guest mmap files all the same
    /// (FUSE_DIRECT_IO_ALLOW_MMAP). Off by default, as virtiofsd: only safe when the guest
    /// has the shared directory to itself.
    #[arg(long)]
    pub allow_mmap: bool,
    /// Mark directories on other mounts inside the share as submounts (FUSE_ATTR_SUBMOUNT),
    /// so the guest mounts each as a filesystem of its own (own st_dev), as virtiofsd.
    #[arg(long, overrides_with = "no_announce_submounts")]
    pub announce_submounts: bool,
    /// Do not announce submounts (the default).
    #[arg(long, overrides_with = "announce_submounts")]
    pub no_announce_submounts: bool,
    /// Negotiate FUSE_HANDLE_KILLPRIV_V2 (as virtiofsd): the guest kernel then leaves
    /// clearing set-user-id and set-group-id bits on write, truncate and open with O_TRUNC to
    /// the daemon, which clears them by the host's rules.
    #[arg(long, overrides_with = "no_killpriv_v2")]
    pub killpriv_v2: bool,
    /// Do not negotiate KILLPRIV_V2 (the default, as virtiofsd): the guest kernel clears
    /// set-id bits itself.
    #[arg(long, overrides_with = "killpriv_v2")]
    pub no_killpriv_v2: bool,
    /// virtiofsd's flags that zerodax parses only to refuse with a reason.
    #[command(flatten)]
    pub refused: RefusedFlags,
    /// virtio-fs tag reported in the device config space (for frontends that ask the
    /// backend; QEMU takes the tag from its own command line).
    #[arg(long, value_name = "TAG")]
    pub tag: Option<String>,
    /// Size of the DAX window (virtio-fs shared memory region 0), e.g. `1G`, `512M`; a
    /// multiple of 2 MiB. 0 (the default, as virtiofsd) turns DAX off.
    #[arg(long, value_name = "SIZE", default_value = "0", value_parser = parse_cache_size)]
    pub cache_size: u64,
    /// What SETUPMAPPING maps of a file's holes: `map` (whole ranges, any SHMEM_MAP VMM) or
    /// `zero` (data extents only; holes read as the VMM's zero page).
    #[arg(long, value_enum, default_value_t = DaxHolesArg::Map)]
    pub dax_holes: DaxHolesArg,
    /// Which inodes carry FUSE_ATTR_DAX (guests mounted without `-o dax=always`).
    #[arg(long, value_enum, default_value_t = DaxInodesArg::All)]
    pub dax_inodes: DaxInodesArg,
    /// The most SHMEM_MAP regions live at once. A VMM may hold each as a memory slot
    /// (QEMU 11.1: 512 for guest RAM and every vhost-user device together, and it aborts
    /// past them): the window offered is cut so that it can never need more.
    #[arg(long, value_name = "N", default_value_t = DEFAULT_SLOTS,
          value_parser = clap::value_parser!(u32).range(4..))]
    pub dax_slots: u32,
    /// Seconds a SHMEM_MAP/SHMEM_UNMAP may wait for the VMM's ack. A VMM that misses it is
    /// taken as hung: that request and every later SETUPMAPPING fail with EIO, so no guest
    /// request waits on it again.
    #[arg(long, value_name = "SECS", default_value_t = DEFAULT_ACK_TIMEOUT.as_secs(),
          value_parser = clap::value_parser!(u64).range(1..=3600))]
    pub dax_ack_timeout: u64,
    /// What the kernel does to a system call outside the serving process's allowlist
    /// (docs/serve.md, *Confinement*).
    #[arg(long, value_enum, default_value_t = SeccompAction::Kill)]
    pub seccomp: SeccompAction,
    /// Capabilities to keep beyond (`+name`) or drop from (`-name`) the default set, joined
    /// by `:`, as virtiofsd: e.g. `+sys_admin:-mknod`. Only when started as root.
    #[arg(long, value_name = "CAPS")]
    pub modcaps: Option<String>,
    /// Serve extended attributes. Off by default, as in virtiofsd: a guest could otherwise
    /// set `trusted.*` or `security.capability` on host files. Without it (or --xattrmap)
    /// every xattr request gets ENOSYS.
    #[arg(long)]
    pub xattr: bool,
    /// Rename xattrs between guest and host, in virtiofsd's syntax: rules
    /// `:type:scope:key:prepend:` (type prefix|ok|bad|unsupported, scope client|server|all;
    /// the first character is the separator) or `:map:key:prepend:` last, e.g.
    /// `:map::user.virtiofs.:` keeps every guest xattr under `user.virtiofs.` on the host.
    /// A name no rule matches is refused (hidden from lists). Implies --xattr, as in
    /// virtiofsd. See docs/serve.md.
    #[arg(long, value_name = "RULES")]
    pub xattrmap: Option<XattrMap>,
    /// Offer the guest a writeback cache (FUSE_WRITEBACK_CACHE): writes are cached in the
    /// guest and written back later, as virtiofsd's flag.
    #[arg(long)]
    pub writeback: bool,
    /// Translate user ids between guest and host, virtiofsd's syntax (repeatable):
    /// `map:GUEST:HOST:COUNT`, `guest:…`, `host:…`, `squash-guest:…`, `squash-host:…`,
    /// `forbid-guest:GUEST:COUNT`. See docs/serve.md.
    #[arg(long, value_name = "RULE")]
    pub translate_uid: Vec<IdRule>,
    /// Translate group ids, as --translate-uid.
    #[arg(long, value_name = "RULE")]
    pub translate_gid: Vec<IdRule>,
    /// Started unprivileged (with --sandbox namespace): map host uids into the daemon's user
    /// namespace, `:INSIDE:OUTSIDE:COUNT:` (repeatable), as virtiofsd, e.g. `:0:1000:1:`
    /// then `:1:100000:65536:`. Ids other than the caller's own are mapped by newuidmap,
    /// within /etc/subuid. Without it only the caller's uid is mapped, as root. Unlike
    /// --translate-uid, the kernel does the mapping.
    #[arg(long, value_name = "MAP")]
    pub uid_map: Vec<NsIdMap>,
    /// As --uid-map, for gids (newgidmap, /etc/subgid).
    #[arg(long, value_name = "MAP")]
    pub gid_map: Vec<NsIdMap>,
    /// Log to the local syslog (/dev/log) instead of stderr.
    #[arg(long)]
    pub syslog: bool,
    /// Label nodes the guest creates with the security contexts its kernel sends
    /// (FUSE_SECURITY_CTX, e.g. SELinux's `security.selinux`): `never` (default), `auto`,
    /// `always` (INIT fails otherwise); `--security-label` alone is `always`, as virtiofsd.
    #[arg(long, value_enum, value_name = "WHEN", require_equals = true, num_args = 0..=1,
          default_value_t = AclArg::Never, default_missing_value = "always")]
    pub security_label: AclArg,
    /// Keep the guest's O_NOATIME when opening files; by default it is dropped, as
    /// virtiofsd does.
    #[arg(long)]
    pub preserve_noatime: bool,
    /// Honour the guest's O_DIRECT: files it opens with it are opened O_DIRECT on the host
    /// (bypassing the host page cache; unaligned requests then fail with EINVAL). By
    /// default it is dropped, as virtiofsd does.
    #[arg(long)]
    pub allow_direct_io: bool,
    /// POSIX ACLs: `never` (default), `auto` (when the guest can), `always` (INIT fails
    /// otherwise); `--posix-acl` alone is `always`, as virtiofsd. Implies --xattr.
    #[arg(long, value_enum, value_name = "WHEN", require_equals = true, num_args = 0..=1,
          default_value_t = AclArg::Never, default_missing_value = "always")]
    pub posix_acl: AclArg,
    /// How inodes are referenced: `never` (default) keeps an O_PATH descriptor per inode the
    /// guest knows; `mandatory` keeps a file handle instead and reopens it per operation
    /// (needs CAP_DAC_READ_SEARCH, kept then, and file handle support in every filesystem the
    /// guest reaches: the start fails without them on the share's); `prefer` keeps a file
    /// handle where it can and a descriptor elsewhere (and runs as `never`, with a warning,
    /// when handles are unusable for the share: no capability, no support).
    #[arg(long, value_enum, value_name = "WHEN", require_equals = true,
          default_value_t = InodeFileHandles::Never)]
    pub inode_file_handles: InodeFileHandles,
    /// virtiofsd's legacy options, comma separated (`-o source=DIR,cache=always,xattr`),
    /// as virtiofsd 1.14 takes them: each sets the long flag of the same meaning.
    #[arg(short = 'o', value_name = "OPTS")]
    pub compat_options: Vec<String>,
}

impl ServeArgs {
    /// Folds `-o` options into the long flags, as virtiofsd 1.14's parse_compat does: the
    /// same names, the same values, the same refusals (`flock`, `posix_lock` and unknown
    /// names are errors there too).
    pub fn apply_compat_options(&mut self) -> Result<(), String> {
        for option in std::mem::take(&mut self.compat_options)
            .iter()
            .flat_map(|line| line.split(','))
        {
            let bad = || format!("-o {option}: not a virtiofsd option");
            match option.split_once('=') {
                Some(("source", dir)) => self.shared_dir = Some(PathBuf::from(dir)),
                Some(("cache", v)) => {
                    self.cache = match v {
                        "auto" => CacheArg::Auto,
                        "always" => CacheArg::Always,
                        "none" => CacheArg::Never,
                        "metadata" => CacheArg::Metadata,
                        _ => return Err(bad()),
                    }
                }
                Some(("loglevel", v)) => {
                    self.log_level = match v {
                        "debug" => LogLevel::Debug,
                        "info" => LogLevel::Info,
                        "warn" => LogLevel::Warn,
                        "err" => LogLevel::Error,
                        _ => return Err(bad()),
                    }
                }
                Some(("sandbox", v)) => {
                    self.sandbox = match v {
                        "namespace" => Sandbox::Namespace,
                        "chroot" => Sandbox::Chroot,
                        _ => return Err(bad()),
                    }
                }
                Some(("modcaps", v)) => self.modcaps = Some(v.to_owned()),
                Some(("xattrmap", v)) => {
                    self.xattrmap = Some(v.parse().map_err(|e| format!("-o xattrmap: {e}"))?)
                }
                Some(_) => return Err(bad()),
                None => match option {
                    "xattr" => self.xattr = true,
                    "no_xattr" => self.xattr = false,
                    "readdirplus" => self.no_readdirplus = false,
                    "no_readdirplus" => self.no_readdirplus = true,
                    "writeback" => self.writeback = true,
                    "no_writeback" => self.writeback = false,
                    "allow_direct_io" => self.allow_direct_io = true,
                    "no_allow_direct_io" => self.allow_direct_io = false,
                    "announce_submounts" => self.announce_submounts = true,
                    "killpriv_v2" => self.killpriv_v2 = true,
                    "no_killpriv_v2" => self.killpriv_v2 = false,
                    "posix_acl" => self.posix_acl = AclArg::Always,
                    "no_posix_acl" => self.posix_acl = AclArg::Never,
                    "security_label" => self.security_label = AclArg::Always,
                    "no_security_label" => self.security_label = AclArg::Never,
                    // Locks are not served; virtiofsd takes these as no-ops too.
                    "no_posix_lock" | "no_flock" => {}
                    _ => return Err(bad()),
                },
            }
        }
        Ok(())
    }
}

/// virtiofsd flags zerodax does not implement. Each is parsed, so a command line written for
/// virtiofsd fails with a reason naming what zerodax does instead, never silently.
#[derive(Debug, Default, clap::Args)]
pub struct RefusedFlags {
    /// Refused: no migration of the device state.
    #[arg(long, value_name = "MODE", hide = true)]
    pub migration_mode: Option<String>,
    /// Refused, as --migration-mode.
    #[arg(long, value_name = "ACTION", hide = true)]
    pub migration_on_error: Option<String>,
    /// Refused, as --migration-mode.
    #[arg(long, hide = true)]
    pub migration_verify_handles: bool,
    /// Refused, as --migration-mode.
    #[arg(long, hide = true)]
    pub migration_confirm_paths: bool,
}

impl RefusedFlags {
    /// The first flag given that zerodax refuses, with the reason.
    pub fn check(&self) -> Result<(), String> {
        // One refused flag per line (given, name, reason): a table, kept as one.
        #[rustfmt::skip]
        let refused = [
            (self.migration_mode.is_some(), "--migration-mode", "the device state is not migrated"),
            (self.migration_on_error.is_some(), "--migration-on-error", "the device state is not migrated"),
            (self.migration_verify_handles, "--migration-verify-handles", "the device state is not migrated"),
            (self.migration_confirm_paths, "--migration-confirm-paths", "the device state is not migrated"),
        ];
        match refused.iter().find(|(given, _, _)| *given) {
            Some((_, flag, why)) => Err(format!("{flag}: {why}")),
            None => Ok(()),
        }
    }
}

/// `--cache-size`: a size (crate::size: K, M, G or T suffix, powers of 1024) that is a
/// multiple of 2 MiB (the guest maps the window in 2 MiB ranges).
pub fn parse_cache_size(s: &str) -> Result<u64, String> {
    let s = s.trim();
    let bytes = parse_size(s).map_err(|e| match e {
        SizeError::Suffix(_) => format!("unknown size suffix in {s:?}"),
        SizeError::Number(_) => format!("not a size: {s:?}"),
        SizeError::TooLarge => format!("size too large: {s:?}"),
    })?;
    if bytes % (2 << 20) != 0 {
        return Err(format!("{s:?} is not a multiple of 2 MiB"));
    }
    Ok(bytes)
}

/// Why the backend could not start; each prints as one line.
#[derive(Debug)]
pub enum ServeError {
    /// The flags contradict each other or name something zerodax refuses.
    Usage(String),
    /// RLIMIT_NOFILE could not be raised to the limit asked.
    Rlimit(u64, io::Error),
    /// The filesystem core could not be set up on the shared directory.
    Fs(FsError),
    /// The vhost-user socket could not be created at that path.
    Listen(String, vhost::vhost_user::Error),
    /// The `--fd` descriptor is not a listening socket.
    Fd(RawFd, io::Error),
    /// Sandbox, capabilities or seccomp could not be applied.
    Confine(ConfineError),
    /// The vhost-user device could not be made or could not accept the frontend.
    Device(String),
    /// The termination signals could not be blocked or waited for.
    Signals(io::Error),
}

impl fmt::Display for ServeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ServeError::Usage(m) => write!(f, "{m}"),
            ServeError::Rlimit(n, e) => write!(f, "cannot raise RLIMIT_NOFILE to {n}: {e}"),
            ServeError::Fs(e) => write!(f, "{e}"),
            ServeError::Listen(p, e) => write!(f, "cannot listen on {p}: {e}"),
            ServeError::Fd(fd, e) => write!(f, "--fd {fd} is not a listening socket: {e}"),
            ServeError::Confine(e) => write!(f, "{e}"),
            ServeError::Device(m) => write!(f, "vhost-user device: {m}"),
            ServeError::Signals(e) => write!(f, "cannot set up signal handling: {e}"),
        }
    }
}

impl std::error::Error for ServeError {}

/// The backend description QEMU/libvirt read (docs/interop/vhost-user.json): a virtio-fs
/// backend that takes its options as separate arguments.
pub fn capabilities() -> serde_json::Value {
    serde_json::json!({
        "type": "fs",
        "features": ["separate-options"],
    })
}

#[cfg(test)]
mod tests {
    use super::parse_cache_size;

    #[test]
    fn cache_sizes_parse() {
        assert_eq!(parse_cache_size("0"), Ok(0));
        assert_eq!(parse_cache_size("2M"), Ok(2 << 20));
        assert_eq!(parse_cache_size("1g"), Ok(1 << 30));
        assert_eq!(parse_cache_size("4194304"), Ok(4 << 20));
        assert_eq!(
            parse_cache_size("1M"),
            Err("\"1M\" is not a multiple of 2 MiB".into())
        );
        assert!(parse_cache_size("3K").is_err());
        assert_eq!(
            parse_cache_size("x"),
            Err("unknown size suffix in \"x\"".into())
        );
        assert_eq!(
            parse_cache_size("2Q"),
            Err("unknown size suffix in \"2Q\"".into())
        );
        assert_eq!(
            parse_cache_size("99999999999T"),
            Err("size too large: \"99999999999T\"".into()),
            "overflow"
        );
        assert_eq!(parse_cache_size(""), Err("not a size: \"\"".into()));
        assert_eq!(parse_cache_size("-2M"), Err("not a size: \"-2M\"".into()));
    }
}

/// The sandbox, then the capabilities, then the seccomp filter (crate::confine): before any
/// thread exists, so that every serving thread inherits all three.
fn confine(args: &ServeArgs, keep: CapabilitySet) -> Result<(), ServeError> {
    let shared_dir = args.shared_dir.as_deref().unwrap_or(Path::new("."));
    match args.sandbox {
        Sandbox::None => {}
        Sandbox::Chroot => confine::chroot_into(shared_dir).map_err(ServeError::Confine)?,
        Sandbox::Namespace => confine::pivot_into(shared_dir).map_err(ServeError::Confine)?,
    }
    confine::drop_capabilities(keep).map_err(ServeError::Confine)?;
    confine::install_seccomp(args.seccomp).map_err(ServeError::Confine)?;
    tracing::info!(
        "confined: sandbox {:?}, capabilities {}, seccomp {:?}",
        args.sandbox,
        confine::cap_names(keep),
        args.seccomp
    );
    Ok(())
}

/// The socket file `--socket-path` made, removable after the sandbox hid its path.
struct SocketFile {
    dir: std::os::fd::OwnedFd,
    name: std::ffi::CString,
}

impl SocketFile {
    fn new(path: &Path) -> Result<Self, String> {
        let dir = path
            .parent()
            .filter(|p| !p.as_os_str().is_empty())
            .unwrap_or(Path::new("."));
        let name = path
            .file_name()
            .and_then(|n| std::ffi::CString::new(n.as_bytes()).ok())
            .ok_or_else(|| format!("--socket-path {}: no file name", path.display()))?;
        let dir = std::fs::File::open(dir)
            .map_err(|e| format!("--socket-path {}: {e}", path.display()))?
            .into();
        Ok(SocketFile { dir, name })
    }

    fn remove(&self) {
        // SAFETY: a directory descriptor we own and a NUL-terminated name.
        unsafe {
            libc::unlinkat(
                std::os::fd::AsRawFd::as_raw_fd(&self.dir),
                self.name.as_ptr(),
                0,
            )
        };
    }
}

/// `--socket-group`: the socket's group becomes `group`, and the group may connect.
fn socket_to_group(path: &Path, group: &str) -> Result<(), String> {
    let name = std::ffi::CString::new(group).map_err(|_| format!("--socket-group {group:?}"))?;
    // SAFETY: a NUL-terminated name; getgrnam's result is read at once, before any other
    // call that could reuse its static storage (the serve thread is the only one yet).
    let grp = unsafe { libc::getgrnam(name.as_ptr()) };
    if grp.is_null() {
        return Err(format!("--socket-group {group}: no such group"));
    }
    // SAFETY: non-null, as checked.
    let gid = unsafe { (*grp).gr_gid };
    std::os::unix::fs::chown(path, None, Some(gid))
        .and_then(|()| {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(path)?.permissions().mode();
            std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode | 0o060))
        })
        .map_err(|e| format!("--socket-group {group}: {}: {e}", path.display()))
}

/// Listens on a new socket at `path` (replacing a file there), of `group` if given. The
/// socket is made under a temporary name and renamed into place once its group and mode
/// are set, so a VMM waiting for the path never finds it half set up. Not `Listener::new`:
/// its Drop removes the path, which after the sandbox resolves inside the share and could
/// remove a guest's file; `SocketFile` removes ours through its directory instead.
fn listen_at(path: &Path, group: Option<&str>) -> Result<Listener, ServeError> {
    let listen_err = |e| {
        ServeError::Listen(
            path.display().to_string(),
            vhost::vhost_user::Error::SocketError(e),
        )
    };
    let mut temp = path.as_os_str().to_owned();
    temp.push(format!(".{}.tmp", std::process::id()));
    let temp = PathBuf::from(temp);
    let _ = std::fs::remove_file(&temp);
    let l = std::os::unix::net::UnixListener::bind(&temp).map_err(listen_err)?;
    let placed = match group {
        Some(group) => socket_to_group(&temp, group).map_err(ServeError::Usage),
        None => Ok(()),
    }
    .and_then(|()| std::fs::rename(&temp, path).map_err(listen_err));
    if let Err(e) = placed {
        let _ = std::fs::remove_file(&temp);
        return Err(e);
    }
    // SAFETY: a listening socket this function just created and owns alone.
    Ok(unsafe { Listener::from_raw_fd(std::os::fd::IntoRawFd::into_raw_fd(l)) })
}

/// Takes ownership of `--fd N` after checking that it is a socket.
fn listener_from_fd(fd: RawFd) -> Result<Listener, ServeError> {
    // SAFETY: fstat writes into a local stat buffer; an invalid fd is reported as EBADF.
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    // SAFETY: `st` is a valid out-pointer for the call.
    if unsafe { libc::fstat(fd, &mut st) } != 0 {
        return Err(ServeError::Fd(fd, io::Error::last_os_error()));
    }
    if st.st_mode & libc::S_IFMT != libc::S_IFSOCK {
        return Err(ServeError::Fd(
            fd,
            io::Error::from_raw_os_error(libc::ENOTSOCK),
        ));
    }
    // SAFETY: the operator hands this descriptor to zerodax with --fd; it is open (fstat
    // succeeded), a socket, and nothing else in the process owns it.
    Ok(unsafe { Listener::from_raw_fd(fd) })
}

/// `zerodax serve`: sets up, confines itself, and serves the frontend until it disconnects
/// or SIGTERM; prints the error and fails if any step does.
pub fn run(mut args: ServeArgs) -> ExitCode {
    if let Err(e) = args.apply_compat_options() {
        eprintln!("zerodax serve: {e}");
        return ExitCode::FAILURE;
    }
    if args.print_capabilities {
        println!("{:#}", capabilities());
        return ExitCode::SUCCESS;
    }
    let level = if args.debug {
        LogLevel::Debug
    } else {
        args.log_level
    };
    if args.syslog {
        if let Err(e) = init_syslog(level) {
            eprintln!("zerodax serve: --syslog: /dev/log: {e}");
            return ExitCode::FAILURE;
        }
    } else {
        init_logging(level);
    }
    match serve(&args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("zerodax serve: {e}");
            ExitCode::FAILURE
        }
    }
}

/// What the signal thread needs: the live connection, once there is one.
#[derive(Default)]
struct Shutdown {
    connection: Option<ShutdownHandle>,
    requested: bool,
}

fn serve(args: &ServeArgs) -> Result<(), ServeError> {
    args.refused.check().map_err(ServeError::Usage)?;
    if args.posix_acl != AclArg::Never
        && !(args.translate_uid.is_empty() && args.translate_gid.is_empty())
    {
        // ACLs name ids inside xattr values, which translation does not touch (virtiofsd
        // refuses the pair too).
        return Err(ServeError::Usage(
            "--translate-uid/--translate-gid cannot go with --posix-acl: ACLs hold ids".into(),
        ));
    }
    if !(args.uid_map.is_empty() && args.gid_map.is_empty())
        && (args.sandbox != Sandbox::Namespace || rustix::process::geteuid().is_root())
    {
        // As virtiofsd: the maps are those of the user namespace only an unprivileged
        // daemon makes.
        return Err(ServeError::Usage(
            "--uid-map/--gid-map: only for a daemon started unprivileged with --sandbox namespace (it then makes a user namespace with these maps)".into(),
        ));
    }
    let shared_dir = args
        .shared_dir
        .as_deref()
        .ok_or_else(|| ServeError::Usage("--shared-dir is required".into()))?;
    if let Some(tag) = &args.tag {
        if tag.is_empty() || tag.len() > TAG_LEN {
            return Err(ServeError::Usage(format!(
                "--tag must be 1 to {TAG_LEN} bytes"
            )));
        }
    }
    let mut base = confine::DEFAULT_CAPS;
    if args.cache_size > 0 {
        // Pinning what the DAX window maps (mlock) beyond RLIMIT_MEMLOCK.
        base |= CapabilitySet::IPC_LOCK;
    }
    let file_handles = FileHandles::from(args.inode_file_handles);
    // What `never` keeps, and so `prefer` once it found handles unusable.
    let keep_for_fds =
        confine::kept_caps(base, args.modcaps.as_deref()).map_err(ServeError::Confine)?;
    if file_handles != FileHandles::Never {
        // open_by_handle_at.
        base |= CapabilitySet::DAC_READ_SEARCH;
    }
    let keep = confine::kept_caps(base, args.modcaps.as_deref()).map_err(ServeError::Confine)?;
    // `prefer` without it (dropped by --modcaps) falls back to descriptors once confined.
    if file_handles == FileHandles::Mandatory
        && rustix::process::geteuid().is_root()
        && !keep.contains(CapabilitySet::DAC_READ_SEARCH)
    {
        return Err(ServeError::Usage(
            "--inode-file-handles=mandatory needs CAP_DAC_READ_SEARCH, which --modcaps drops"
                .into(),
        ));
    }
    // Before any thread starts: only the signal thread's sigwait takes them.
    let signals = block_termination_signals().map_err(ServeError::Signals)?;
    raise_nofile(args.rlimit_nofile).map_err(|(n, e)| ServeError::Rlimit(n, e))?;
    if args.sandbox == Sandbox::Namespace {
        if !rustix::process::geteuid().is_root() {
            confine::enter_user_namespace(&args.uid_map, &args.gid_map)
                .map_err(ServeError::Confine)?;
        }
        // From here on this is the serving child (the parent only supervises it).
        confine::enter_pid_namespace(&signals, args.seccomp).map_err(ServeError::Confine)?;
    }
    let mut cfg = CachePolicy::from(args.cache).fs_config(
        args.read_only,
        args.xattr || args.posix_acl != AclArg::Never,
    );
    if let Some(map) = &args.xattrmap {
        // A map only makes sense with xattrs served (virtiofsd: --xattrmap implies --xattr).
        cfg.xattr = true;
        cfg.xattrmap = Some(map.clone());
        for rule in map.rules() {
            tracing::debug!("xattr map rule: {rule}");
        }
    }
    cfg.preserve_noatime = args.preserve_noatime;
    cfg.allow_direct_io = args.allow_direct_io;
    cfg.file_handles = file_handles;
    let mut fs = FileSystem::new(shared_dir, cfg).map_err(ServeError::Fs)?;
    // `prefer` that found file handles unusable at start runs as `never`, capabilities too.
    let keep = if fs.uses_file_handles() {
        keep
    } else {
        keep_for_fds
    };
    let mut listener = match (args.fd, &args.socket_path) {
        (Some(fd), _) => listener_from_fd(fd)?,
        (None, Some(path)) => listen_at(path, args.socket_group.as_deref())?,
        (None, None) => {
            return Err(ServeError::Usage(
                "--socket-path or --fd is required".into(),
            ))
        }
    };
    // Before any thread exists: unshare(CLONE_NEWNS) refuses a multi-threaded process.
    // Only a socket we created is ours to remove: when a frontend connects (one per daemon,
    // as virtiofsd), or when a signal ends us before one came. Through a descriptor of its
    // directory, opened before the sandbox hides the path.
    let socket = match (args.fd, &args.socket_path) {
        (None, Some(path)) => Some(SocketFile::new(path).map_err(ServeError::Usage)?),
        _ => None,
    };
    confine(args, keep)?;
    // Once more, confined: the capabilities kept and the seccomp filter must still let a
    // file handle be opened (`prefer` falls back to descriptors here when they do not).
    fs.check_file_handles().map_err(ServeError::Fs)?;
    let server = Arc::new(Server::new(
        Arc::new(fs),
        ServerOptions {
            cache: args.cache.into(),
            readdirplus: !args.no_readdirplus,
            allow_mmap: args.allow_mmap,
            posix_acl: args.posix_acl.into(),
            announce_submounts: args.announce_submounts,
            writeback: args.writeback,
            uid_map: IdMap::new(args.translate_uid.clone()),
            gid_map: IdMap::new(args.translate_gid.clone()),
            security_label: args.security_label.into(),
            // Virtio-fs has no kernel passthrough: the guest kernel cannot reach host files.
            backing: None,
            // Linux guests read no virtio-fs notification queue.
            notifier: None,
            killpriv_v2: args.killpriv_v2,
            dax: (args.cache_size > 0).then_some(DaxConfig {
                window_len: args.cache_size,
                holes: args.dax_holes.into(),
                inodes: args.dax_inodes.into(),
                slots: args.dax_slots,
                ack_timeout: Duration::from_secs(args.dax_ack_timeout),
            }),
        },
    ));
    let backend = Arc::new(
        FsBackend::new(
            server.clone(),
            DeviceOptions {
                request_queues: args.request_queues,
                thread_pool_size: args.thread_pool_size,
                tag: args.tag.clone(),
            },
        )
        .map_err(|e| ServeError::Device(e.to_string()))?,
    );
    let mut daemon = VhostUserDaemon::new(
        "zerodax-vhost-user".into(),
        backend,
        GuestMemoryAtomic::new(GuestMemoryMmap::new()),
    )
    .map_err(|e| ServeError::Device(e.to_string()))?;

    let shutdown = Arc::new(Mutex::new(Shutdown::default()));
    let socket = socket.map(Arc::new);
    spawn_signal_thread(signals, shutdown.clone(), socket.clone())?;

    tracing::info!(
        "serving {} on {}",
        shared_dir.display(),
        args.socket_path.as_ref().map_or_else(
            || format!("fd {}", args.fd.unwrap_or(-1)),
            |p| p.display().to_string()
        )
    );
    daemon
        .start(&mut listener)
        .map_err(|e| ServeError::Device(e.to_string()))?;
    // One frontend per daemon, as virtiofsd: stop listening, and remove the socket file.
    drop(listener);
    if let Some(s) = &socket {
        s.remove();
    }
    {
        let mut s = shutdown.lock().unwrap_or_else(|e| e.into_inner());
        s.connection = daemon.shutdown_handle();
        if s.requested {
            if let Some(c) = &s.connection {
                c.shutdown();
            }
        }
    }
    tracing::info!("frontend connected");
    let result = daemon.wait();
    match &result {
        Ok(()) => tracing::info!("frontend disconnected"),
        Err(e) => tracing::info!("connection ended: {e}"),
    }
    if let Some(dax) = server.dax() {
        // What the guest stored into tail pages last (no DESTROY when a VMM just ends).
        dax.settle(server.fs(), None);
        tracing::info!("DAX window: {}", dax.stats());
    }
    // Stop every queue worker (exit_event), and make sure an unresponsive one cannot keep
    // the process alive.
    for handler in daemon.get_epoll_handlers() {
        handler.send_exit_event();
    }
    spawn_exit_watchdog();
    drop(daemon);
    Ok(())
}

/// Waits for SIGTERM/SIGINT/SIGHUP. With a frontend connected it shuts the connection
/// down, which ends `serve` cleanly; before one connects there is nothing to finish, so it
/// removes the socket and exits 0 at once.
fn spawn_signal_thread(
    signals: libc::sigset_t,
    shutdown: Arc<Mutex<Shutdown>>,
    socket: Option<Arc<SocketFile>>,
) -> Result<(), ServeError> {
    std::thread::Builder::new()
        .name("signals".into())
        .spawn(move || loop {
            let mut sig = 0;
            // SAFETY: `signals` is an initialised set and `sig` a valid out-pointer.
            if unsafe { libc::sigwait(&signals, &mut sig) } != 0 {
                continue;
            }
            tracing::info!("signal {sig}: shutting down");
            let mut s = shutdown.lock().unwrap_or_else(|e| e.into_inner());
            s.requested = true;
            match &s.connection {
                Some(c) => c.shutdown(),
                None => {
                    if let Some(s) = &socket {
                        s.remove();
                    }
                    std::process::exit(0);
                }
            }
        })
        .map(drop)
        .map_err(ServeError::Signals)
}

/// Ends the process if joining the workers takes longer than this after the connection
/// ended (a request stuck in a host syscall): shutdown never hangs.
const EXIT_GRACE: Duration = Duration::from_secs(5);

fn spawn_exit_watchdog() {
    let _ = std::thread::Builder::new()
        .name("exit-watchdog".into())
        .spawn(|| {
            std::thread::sleep(EXIT_GRACE);
            tracing::warn!("workers still busy {EXIT_GRACE:?} after disconnect; exiting");
            std::process::exit(0);
        });
}
