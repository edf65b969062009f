//! Confinement of the serving process, applied in this order once the shared directory, the
//! listening socket and /proc/self/fd are open and before any thread starts: the sandbox
//! (`--sandbox`: namespaces and pivot_root, or chroot), the capabilities (`--modcaps`), then
//! the seccomp filter (`--seccomp`). Threads started later inherit all three.

use std::fmt;
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use rustix::thread::{CapabilitySet, CapabilitySets};

/// Why confinement could not be set up; each prints as one line.
#[derive(Debug)]
pub enum ConfineError {
    /// A sandbox step failed: the directory (or namespace) it was for, and the error.
    Sandbox(PathBuf, io::Error),
    /// `--modcaps` names an unknown capability or is malformed.
    Modcaps(String),
    /// Dropping the capabilities failed.
    Capabilities(io::Error),
    /// Building or installing the seccomp filter failed.
    Seccomp(String),
}

impl fmt::Display for ConfineError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ConfineError::Sandbox(p, e) => write!(f, "cannot confine to {}: {e}", p.display()),
            ConfineError::Modcaps(m) => write!(f, "--modcaps: {m}"),
            ConfineError::Capabilities(e) => write!(f, "cannot drop capabilities: {e}"),
            ConfineError::Seccomp(m) => write!(f, "cannot install the seccomp filter: {m}"),
        }
    }
}

impl std::error::Error for ConfineError {}

/// chroot(2) into `dir` (`--sandbox chroot`).
pub fn chroot_into(dir: &Path) -> Result<(), ConfineError> {
    let err = |e| ConfineError::Sandbox(dir.to_owned(), e);
    let path = std::ffi::CString::new(dir.as_os_str().as_bytes())
        .map_err(|_| err(io::Error::from_raw_os_error(libc::EINVAL)))?;
    // SAFETY: `path` is NUL-terminated and outlives the call.
    if unsafe { libc::chroot(path.as_ptr()) } != 0 {
        return Err(err(io::Error::last_os_error()));
    }
    // SAFETY: a static NUL-terminated string.
    if unsafe { libc::chdir(c"/".as_ptr()) } != 0 {
        return Err(err(io::Error::last_os_error()));
    }
    Ok(())
}

fn check_rc(rc: libc::c_int, dir: &Path) -> Result<(), ConfineError> {
    if rc == 0 {
        Ok(())
    } else {
        Err(ConfineError::Sandbox(
            dir.to_owned(),
            io::Error::last_os_error(),
        ))
    }
}

/// `--sandbox namespace`: a new mount namespace (propagation from the host kept one-way),
/// the share bind-mounted onto itself and made the root with pivot_root; the old root is
/// detached. The share's descriptors and /proc/self/fd were opened before and stay valid.
/// Must run before any thread exists: unshare(CLONE_NEWNS) refuses a multi-threaded process.
pub fn pivot_into(dir: &Path) -> Result<(), ConfineError> {
    let path = std::ffi::CString::new(dir.as_os_str().as_bytes())
        .map_err(|_| ConfineError::Sandbox(dir.to_owned(), io::ErrorKind::InvalidInput.into()))?;
    let dot = c".";
    // SAFETY: unshare has no memory arguments.
    check_rc(
        unsafe { libc::unshare(libc::CLONE_NEWNS | libc::CLONE_NEWNET | libc::CLONE_NEWIPC) },
        dir,
    )?;
    // SAFETY: NUL-terminated static strings and null pointers where mount(2) allows them.
    check_rc(
        unsafe {
            libc::mount(
                std::ptr::null(),
                c"/".as_ptr(),
                std::ptr::null(),
                libc::MS_SLAVE | libc::MS_REC,
                std::ptr::null(),
            )
        },
        dir,
    )?;
    // SAFETY: `path` is NUL-terminated and outlives the call; other pointers may be null.
    check_rc(
        unsafe {
            libc::mount(
                path.as_ptr(),
                path.as_ptr(),
                std::ptr::null(),
                libc::MS_BIND | libc::MS_REC,
                std::ptr::null(),
            )
        },
        dir,
    )?;
    // SAFETY: `path` is NUL-terminated and outlives the call.
    check_rc(unsafe { libc::chdir(path.as_ptr()) }, dir)?;
    // pivot_root(".", "."): the old root ends up mounted on top of the new one, and the
    // detach below removes it (pivot_root(2), NOTES).
    // SAFETY: two NUL-terminated static strings.
    let rc = unsafe { libc::syscall(libc::SYS_pivot_root, dot.as_ptr(), dot.as_ptr()) };
    check_rc(rc as libc::c_int, dir)?;
    // SAFETY: a NUL-terminated static string.
    check_rc(
        unsafe { libc::umount2(dot.as_ptr(), libc::MNT_DETACH) },
        dir,
    )?;
    // SAFETY: a NUL-terminated static string.
    check_rc(unsafe { libc::chdir(c"/".as_ptr()) }, dir)
}

/// One `--uid-map`/`--gid-map` range, virtiofsd's syntax: `:INSIDE:OUTSIDE:COUNT:`, the
/// first and last character being the same separator (any non-alphanumeric character).
/// `COUNT` ids from `OUTSIDE` on the host appear as `INSIDE..` in the daemon's user
/// namespace.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NsIdMap {
    /// First id inside the namespace.
    pub inside: u32,
    /// First id on the host.
    pub outside: u32,
    /// Ids in the range (at least 1).
    pub count: u32,
}

impl std::str::FromStr for NsIdMap {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        let bad = |why: &str| format!("{s:?}: {why} (expected :INSIDE:OUTSIDE:COUNT:)");
        let sep = s.chars().last().ok_or_else(|| bad("empty"))?;
        if sep.is_alphanumeric() {
            return Err(bad("the separator must not be a letter or digit"));
        }
        let inner = s
            .strip_prefix(sep)
            .and_then(|r| r.strip_suffix(sep))
            .ok_or_else(|| bad("must start and end with the same separator"))?;
        let fields: Vec<&str> = inner.split(sep).collect();
        let [inside, outside, count] = fields[..] else {
            return Err(bad("three numbers needed"));
        };
        let num = |f: &str| {
            f.parse::<u32>()
                .map_err(|_| bad(&format!("{f:?} is not an id")))
        };
        let m = NsIdMap {
            inside: num(inside)?,
            outside: num(outside)?,
            count: num(count)?,
        };
        if m.count == 0 {
            return Err(bad("the count must be at least 1"));
        }
        // The kernel takes ranges within the 32-bit id space, -1 (no id) excluded.
        for start in [m.inside, m.outside] {
            if u64::from(start) + u64::from(m.count) > u64::from(u32::MAX) {
                return Err(bad("the range runs past the last id"));
            }
        }
        Ok(m)
    }
}

impl fmt::Display for NsIdMap {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, ":{}:{}:{}:", self.inside, self.outside, self.count)
    }
}

/// The maps of a user namespace's uids or gids, as `--uid-map`/`--gid-map` give them.
struct NsMaps<'a> {
    /// `uid` or `gid`.
    kind: &'static str,
    /// The ranges given; empty: zerodax's own map, the caller's id as 0 inside.
    given: &'a [NsIdMap],
    /// The caller's effective id (outside).
    own: u32,
}

impl NsMaps<'_> {
    /// The ranges to write.
    fn ranges(&self) -> Vec<NsIdMap> {
        if self.given.is_empty() {
            vec![NsIdMap {
                inside: 0,
                outside: self.own,
                count: 1,
            }]
        } else {
            self.given.to_vec()
        }
    }

    /// Writes the map of process `pid`'s user namespace, as an unprivileged process (the
    /// only caller: as root no user namespace is made): itself when the map is its own id
    /// alone (for gids once setgroups is denied), as the kernel lets it, or else through the
    /// setuid helper newuidmap/newgidmap, which checks the ranges against /etc/subuid or
    /// /etc/subgid.
    fn write(&self, pid: libc::pid_t) -> Result<(), String> {
        let ranges = self.ranges();
        if matches!(ranges[..], [r] if r.count == 1 && r.outside == self.own) {
            if self.kind == "gid" {
                std::fs::write(format!("/proc/{pid}/setgroups"), "deny")
                    .map_err(|e| format!("/proc/{pid}/setgroups: {e}"))?;
            }
            let text: String = ranges
                .iter()
                .map(|r| format!("{} {} {}\n", r.inside, r.outside, r.count))
                .collect();
            let file = format!("/proc/{pid}/{}_map", self.kind);
            return std::fs::write(&file, text).map_err(|e| format!("{file}: {e}"));
        }
        let helper = format!("new{}map", self.kind);
        let mut cmd = std::process::Command::new(&helper);
        cmd.arg(pid.to_string());
        for r in &ranges {
            cmd.args([r.inside, r.outside, r.count].map(|n| n.to_string()));
        }
        let out = cmd.output().map_err(|e| match e.kind() {
            io::ErrorKind::NotFound => {
                format!("{helper} not found (the uidmap package): needed to map ids other than the caller's own")
            }
            _ => format!("cannot run {helper}: {e}"),
        })?;
        if out.status.success() {
            return Ok(());
        }
        let why = String::from_utf8_lossy(&out.stderr);
        let why = why
            .lines()
            .map(str::trim)
            .filter(|l| !l.is_empty())
            .collect::<Vec<_>>();
        Err(format!(
            "{helper} failed ({}): {}",
            out.status,
            why.join("; ")
        ))
    }
}

/// `--sandbox namespace` started unprivileged: a user namespace first, in which this
/// process is root, so that the namespaces, the bind mount and pivot_root below may be made
/// at all, and the capability drop after them applies inside it.
///
/// Without `uid_map`/`gid_map` the caller's uid and gid are root's inside, the only ids
/// mapped: host files are then reached only with the caller's own rights, guest requests as
/// root act as the caller, those of any other guest uid or gid fail (EPERM: unmapped). With
/// them (virtiofsd's `--uid-map`/`--gid-map`), the namespace maps those ranges instead, and
/// the process takes uid and gid 0 inside (as virtiofsd; a warning if 0 is not mapped). An
/// unprivileged process may map only its own id itself, so a helper forked before the
/// unshare, outside the namespace, writes the maps (through newuidmap/newgidmap when they
/// name other ids) while this process waits. Must run single-threaded.
pub fn enter_user_namespace(uid_map: &[NsIdMap], gid_map: &[NsIdMap]) -> Result<(), ConfineError> {
    let err = |e| ConfineError::Sandbox(PathBuf::from("a user namespace"), e);
    let maps = [
        NsMaps {
            kind: "uid",
            given: uid_map,
            own: rustix::process::geteuid().as_raw(),
        },
        NsMaps {
            kind: "gid",
            given: gid_map,
            own: rustix::process::getegid().as_raw(),
        },
    ];
    if uid_map.is_empty() && gid_map.is_empty() {
        // SAFETY: unshare has no memory arguments.
        if unsafe { libc::unshare(libc::CLONE_NEWUSER) } != 0 {
            return Err(err(io::Error::last_os_error()));
        }
        // This process may map its own ids itself.
        let me = rustix::process::getpid().as_raw_nonzero().get();
        for m in &maps {
            m.write(me).map_err(|e| err(io::Error::other(e)))?;
        }
        return Ok(());
    }
    let me = rustix::process::getpid().as_raw_nonzero().get();
    // `go`: this process tells the helper its namespace exists (or, closing it unwritten,
    // that it does not). `done`: the helper answers, empty for success or the error.
    let (go_r, go_w) = pipe().map_err(err)?;
    let (done_r, done_w) = pipe().map_err(err)?;
    // SAFETY: single-threaded here (the caller's contract), so the child may run anything.
    match unsafe { libc::fork() } {
        -1 => Err(err(io::Error::last_os_error())),
        0 => {
            drop((go_w, done_r));
            let mut go = std::fs::File::from(go_r);
            let mut byte = [0u8; 1];
            let answer = match io::Read::read(&mut go, &mut byte) {
                Ok(1) => maps
                    .iter()
                    .try_for_each(|m| m.write(me))
                    .err()
                    .unwrap_or_default(),
                // The unshare failed: nothing to map.
                _ => String::new(),
            };
            let _ = io::Write::write_all(&mut std::fs::File::from(done_w), answer.as_bytes());
            // SAFETY: ending the helper without running the parent's exit handlers.
            unsafe { libc::_exit(0) }
        }
        helper => {
            drop((go_r, done_w));
            // SAFETY: unshare has no memory arguments.
            let unshared = unsafe { libc::unshare(libc::CLONE_NEWUSER) };
            let unshare_err = io::Error::last_os_error();
            let mut go = std::fs::File::from(go_w);
            if unshared == 0 {
                let _ = io::Write::write_all(&mut go, b"1");
            }
            drop(go);
            let mut answer = String::new();
            let read = io::Read::read_to_string(&mut std::fs::File::from(done_r), &mut answer);
            let mut status = 0;
            // SAFETY: waiting for our own child with a valid out-pointer.
            unsafe { libc::waitpid(helper, &mut status, 0) };
            if unshared != 0 {
                return Err(err(unshare_err));
            }
            read.map_err(err)?;
            if !answer.is_empty() {
                return Err(err(io::Error::other(format!(
                    "--uid-map/--gid-map: {answer}"
                ))));
            }
            if !(libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0) {
                return Err(err(io::Error::other("the id-mapping helper died")));
            }
            // Root inside, as virtiofsd: the group first, while CAP_SETGID is certain.
            // SAFETY: setresgid/setresuid take integer arguments only.
            if unsafe { libc::setresgid(0, 0, 0) } != 0 {
                tracing::warn!(
                    "gid 0 is not mapped in the user namespace: serving as gid {}",
                    rustix::process::getegid().as_raw()
                );
            }
            // SAFETY: as above.
            if unsafe { libc::setresuid(0, 0, 0) } != 0 {
                tracing::warn!(
                    "uid 0 is not mapped in the user namespace: serving as uid {}",
                    rustix::process::geteuid().as_raw()
                );
            }
            Ok(())
        }
    }
}

/// A close-on-exec pipe: (read end, write end).
fn pipe() -> io::Result<(std::os::fd::OwnedFd, std::os::fd::OwnedFd)> {
    use std::os::fd::FromRawFd;
    let mut fds = [0; 2];
    // SAFETY: `fds` has room for the two descriptors.
    if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: pipe2 just opened both descriptors, owned by nothing else.
    Ok(unsafe {
        (
            std::os::fd::OwnedFd::from_raw_fd(fds[0]),
            std::os::fd::OwnedFd::from_raw_fd(fds[1]),
        )
    })
}

/// `--sandbox namespace`, first step: a PID namespace of its own. unshare(CLONE_NEWPID) puts
/// the *children* in it, so the process forks: the child goes on to serve as PID 1 of the
/// new namespace, where no host process is visible; this function returns only there. The
/// parent stays outside, holding no capabilities and under a filter that allows only
/// waiting and signalling: it passes SIGINT/SIGTERM/SIGHUP (`signals`, already blocked) on
/// to the child and ends as the child ended, so a supervisor sees one process. Called while
/// single-threaded, before the share or /proc/self/fd are opened (they must be the child's).
pub fn enter_pid_namespace(
    signals: &libc::sigset_t,
    seccomp: SeccompAction,
) -> Result<(), ConfineError> {
    let err = |e| ConfineError::Sandbox(PathBuf::from("a PID namespace"), e);
    // SAFETY: unshare has no memory arguments.
    if unsafe { libc::unshare(libc::CLONE_NEWPID) } != 0 {
        return Err(err(io::Error::last_os_error()));
    }
    // The child learns of the parent's death from this pipe's write end closing.
    let mut pipe = [0; 2];
    // SAFETY: `pipe` has room for the two descriptors.
    if unsafe { libc::pipe2(pipe.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
        return Err(err(io::Error::last_os_error()));
    }
    // SAFETY: single-threaded here (the caller's contract), so the child may run anything.
    match unsafe { libc::fork() } {
        -1 => Err(err(io::Error::last_os_error())),
        0 => {
            // SAFETY: closing our copy of the write end; prctl with integer arguments.
            unsafe {
                libc::close(pipe[1]);
                libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL, 0, 0, 0);
            }
            // A parent that died before the prctl would never send it: check once now.
            let mut pfd = libc::pollfd {
                fd: pipe[0],
                events: 0,
                revents: 0,
            };
            // SAFETY: one valid pollfd, no timeout.
            if unsafe { libc::poll(&mut pfd, 1, 0) } != 0 {
                std::process::exit(1);
            }
            // SAFETY: our read end, no longer needed.
            unsafe { libc::close(pipe[0]) };
            Ok(())
        }
        child => {
            // SAFETY: closing the read end, which only the child uses.
            unsafe { libc::close(pipe[0]) };
            supervise(child, signals, seccomp)
        }
    }
}

/// The parent's part of `enter_pid_namespace`: never returns.
fn supervise(child: libc::pid_t, signals: &libc::sigset_t, seccomp: SeccompAction) -> ! {
    let mut waited = *signals;
    // SAFETY: sigaddset and pthread_sigmask on a local, initialised set. SIGCHLD is blocked
    // so that sigwait takes it along with the termination signals.
    unsafe {
        libc::sigaddset(&mut waited, libc::SIGCHLD);
        libc::pthread_sigmask(libc::SIG_BLOCK, &waited, std::ptr::null_mut());
    }
    // Nothing is left to the parent but this loop: no capabilities, a filter of its own.
    let _ = drop_capabilities(CapabilitySet::empty());
    if let Err(e) = install_filter(seccomp, supervisor_syscalls()) {
        tracing::warn!("supervisor: {e}");
    }
    // A child that ended before SIGCHLD was blocked sent it to no one (it was discarded):
    // look for it once before the first wait.
    let mut look = true;
    loop {
        let mut sig = libc::SIGCHLD;
        // SAFETY: an initialised set and a valid out-pointer.
        if !std::mem::take(&mut look) && unsafe { libc::sigwait(&waited, &mut sig) } != 0 {
            continue;
        }
        if sig != libc::SIGCHLD {
            // SAFETY: kill with integer arguments.
            unsafe { libc::kill(child, sig) };
            continue;
        }
        let mut status = 0;
        // SAFETY: a valid out-pointer; WNOHANG never blocks.
        match unsafe { libc::waitpid(child, &mut status, libc::WNOHANG) } {
            0 => continue,
            -1 => std::process::exit(1),
            _ => {}
        }
        if libc::WIFEXITED(status) {
            std::process::exit(libc::WEXITSTATUS(status));
        }
        // Killed: die of the same signal, so a supervisor sees what the server saw.
        let sig = libc::WTERMSIG(status);
        // SAFETY: resetting a disposition, unblocking and raising: integer arguments and a
        // local set.
        unsafe {
            libc::signal(sig, libc::SIG_DFL);
            let mut one: libc::sigset_t = std::mem::zeroed();
            libc::sigemptyset(&mut one);
            libc::sigaddset(&mut one, sig);
            libc::pthread_sigmask(libc::SIG_UNBLOCK, &one, std::ptr::null_mut());
            libc::raise(sig);
        }
        std::process::exit(128 + sig);
    }
}

/// What a passthrough server needs as root, as virtiofsd's default: chown and set-id bits
/// on behalf of the guest, access beyond the file modes (the guest kernel has checked
/// them), per-thread fsuid/fsgid, device nodes, file capabilities.
pub const DEFAULT_CAPS: CapabilitySet = CapabilitySet::CHOWN
    .union(CapabilitySet::DAC_OVERRIDE)
    .union(CapabilitySet::FOWNER)
    .union(CapabilitySet::FSETID)
    .union(CapabilitySet::SETGID)
    .union(CapabilitySet::SETUID)
    .union(CapabilitySet::MKNOD)
    .union(CapabilitySet::SETFCAP);

/// `--modcaps`, virtiofsd's syntax: `+NAME` or `-NAME`, joined by `:`, names as in
/// capabilities(7) without `CAP_`, in either case (`+sys_admin:-mknod`). Later entries win.
/// Returns (added, removed).
pub fn parse_modcaps(spec: &str) -> Result<(CapabilitySet, CapabilitySet), ConfineError> {
    let mut add = CapabilitySet::empty();
    let mut remove = CapabilitySet::empty();
    for item in spec.split(':') {
        let (sign, name) = match item.split_at_checked(1) {
            Some((s @ ("+" | "-"), name)) if !name.is_empty() => (s, name),
            _ => {
                return Err(ConfineError::Modcaps(format!(
                    "{item:?}: expected +NAME or -NAME, joined by ':'"
                )))
            }
        };
        let upper = name.to_ascii_uppercase();
        let upper = upper.strip_prefix("CAP_").unwrap_or(&upper);
        let cap = CapabilitySet::from_name(upper)
            .ok_or_else(|| ConfineError::Modcaps(format!("{name:?}: no such capability")))?;
        if sign == "+" {
            add |= cap;
            remove -= cap;
        } else {
            remove |= cap;
            add -= cap;
        }
    }
    Ok((add, remove))
}

/// The capabilities the serving process keeps: `base` with `--modcaps` applied.
pub fn kept_caps(
    base: CapabilitySet,
    modcaps: Option<&str>,
) -> Result<CapabilitySet, ConfineError> {
    let Some(spec) = modcaps else {
        return Ok(base);
    };
    let (add, remove) = parse_modcaps(spec)?;
    Ok((base | add) - remove)
}

/// Reduces the process to `keep`: effective and permitted become `keep` (as far as it was
/// permitted), inheritable and ambient empty, and every other capability leaves the
/// bounding set, so nothing later (an exec included) can regain it. Only for root, as
/// virtiofsd: an unprivileged daemon has nothing to drop. Before any thread starts, since
/// capabilities belong to a thread and are inherited by those it creates.
pub fn drop_capabilities(keep: CapabilitySet) -> Result<(), ConfineError> {
    if !rustix::process::geteuid().is_root() {
        return Ok(());
    }
    let err = |e: rustix::io::Errno| ConfineError::Capabilities(e.into());
    let now = rustix::thread::capabilities(None).map_err(err)?;
    let keep = keep & now.permitted;
    for bit in 0..u64::BITS {
        let cap = CapabilitySet::from_bits_retain(1 << bit);
        if keep.contains(cap) {
            continue;
        }
        match rustix::thread::remove_capability_from_bounding_set(cap) {
            // Past the kernel's last capability.
            Err(rustix::io::Errno::INVAL) => break,
            r => r.map_err(err)?,
        }
    }
    // SAFETY: prctl with integer arguments only.
    if unsafe {
        libc::prctl(
            libc::PR_CAP_AMBIENT,
            libc::PR_CAP_AMBIENT_CLEAR_ALL,
            0,
            0,
            0,
        )
    } != 0
    {
        return Err(ConfineError::Capabilities(io::Error::last_os_error()));
    }
    rustix::thread::set_capabilities(
        None,
        CapabilitySets {
            effective: keep,
            permitted: keep,
            inheritable: CapabilitySet::empty(),
        },
    )
    .map_err(err)
}

/// Names of a capability set, lower case as `--modcaps` takes them, for the log.
pub fn cap_names(set: CapabilitySet) -> String {
    set.iter_names()
        .map(|(name, _)| name.to_ascii_lowercase())
        .collect::<Vec<_>>()
        .join(",")
}

/// `--seccomp`: what the kernel does when the serving process makes a system call outside
/// its allowlist (virtiofsd's values).
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum SeccompAction {
    /// No filter.
    None,
    /// Kill the process (SIGSYS); the kernel logs the call (`audit: type=1326 ... syscall=N`).
    Kill,
    /// Allow the call and have the kernel log it: for finding what a new path needs.
    Log,
    /// Send SIGSYS: zerodax logs the call's number, then dies of the signal (a core dump).
    Trap,
}

/// The system calls the serving process makes once confined, by what needs them. Each was
/// seen under strace (frontend and real-guest suites) or is the sibling a path takes on
/// another kernel or libc (the *xattrat calls, the v2 read/write calls). Nothing here
/// creates sockets, executes, mounts, traces or changes namespaces.
fn allowed_syscalls() -> Vec<(i64, Vec<seccompiler::SeccompRule>)> {
    use seccompiler::{SeccompCmpArgLen, SeccompCmpOp, SeccompCondition, SeccompRule};
    let any = |nr: libc::c_long| (nr, Vec::new());
    // The call `nr` only when its argument `arg` is one of `values`.
    let arg_in = |nr: libc::c_long, arg: u8, values: &[u64]| {
        let rules = values
            .iter()
            .filter_map(|&v| {
                let cond = SeccompCondition::new(arg, SeccompCmpArgLen::Dword, SeccompCmpOp::Eq, v)
                    .ok()?;
                SeccompRule::new(vec![cond]).ok()
            })
            .collect();
        (nr, rules)
    };
    let mut calls = vec![
        // Memory: the allocator, thread stacks, DAX pins (mmap + mlock of mapped regions).
        any(libc::SYS_brk),
        any(libc::SYS_mmap),
        any(libc::SYS_munmap),
        any(libc::SYS_mremap),
        any(libc::SYS_mprotect),
        any(libc::SYS_madvise),
        any(libc::SYS_mlock),
        any(libc::SYS_munlock),
        // Threads, locks, signals, time.
        any(libc::SYS_clone),
        any(libc::SYS_clone3),
        any(libc::SYS_futex),
        any(libc::SYS_set_robust_list),
        any(libc::SYS_rseq),
        any(libc::SYS_sched_getaffinity),
        any(libc::SYS_sched_yield),
        any(libc::SYS_gettid),
        any(libc::SYS_getpid),
        any(libc::SYS_tgkill),
        any(libc::SYS_exit),
        any(libc::SYS_exit_group),
        any(libc::SYS_rt_sigprocmask),
        any(libc::SYS_rt_sigaction),
        any(libc::SYS_rt_sigreturn),
        any(libc::SYS_rt_sigtimedwait),
        any(libc::SYS_sigaltstack),
        any(libc::SYS_restart_syscall),
        any(libc::SYS_clock_gettime),
        any(libc::SYS_clock_nanosleep),
        any(libc::SYS_nanosleep),
        any(libc::SYS_getrandom),
        // Thread names only.
        arg_in(
            libc::SYS_prctl,
            0,
            &[libc::PR_SET_NAME as u64, libc::PR_GET_NAME as u64],
        ),
        // Events and the vhost-user sockets (the connection is accepted after the filter).
        any(libc::SYS_epoll_create1),
        any(libc::SYS_epoll_ctl),
        any(libc::SYS_epoll_pwait),
        any(libc::SYS_eventfd2),
        any(libc::SYS_ppoll),
        any(libc::SYS_accept4),
        any(libc::SYS_recvmsg),
        any(libc::SYS_sendmsg),
        any(libc::SYS_recvfrom),
        any(libc::SYS_sendto),
        any(libc::SYS_getsockopt),
        any(libc::SYS_shutdown),
        // A terminal check of the log's stderr, non-blocking mode.
        arg_in(libc::SYS_ioctl, 1, &[libc::TCGETS, libc::FIONBIO]),
        // Descriptors.
        any(libc::SYS_close),
        any(libc::SYS_fcntl),
        any(libc::SYS_dup),
        any(libc::SYS_dup3),
        // The filesystem core: every FUSE operation on the share.
        any(libc::SYS_openat),
        any(libc::SYS_openat2),
        // --inode-file-handles=mandatory.
        any(libc::SYS_name_to_handle_at),
        any(libc::SYS_open_by_handle_at),
        any(libc::SYS_newfstatat),
        any(libc::SYS_fstat),
        any(libc::SYS_statx),
        any(libc::SYS_fstatfs),
        any(libc::SYS_lseek),
        any(libc::SYS_read),
        any(libc::SYS_readv),
        any(libc::SYS_pread64),
        any(libc::SYS_preadv),
        any(libc::SYS_preadv2),
        any(libc::SYS_write),
        any(libc::SYS_writev),
        any(libc::SYS_pwrite64),
        any(libc::SYS_pwritev),
        any(libc::SYS_pwritev2),
        any(libc::SYS_getdents64),
        any(libc::SYS_fsync),
        any(libc::SYS_fdatasync),
        any(libc::SYS_syncfs),
        any(libc::SYS_fallocate),
        any(libc::SYS_ftruncate),
        any(libc::SYS_copy_file_range),
        any(libc::SYS_fadvise64),
        any(libc::SYS_mkdirat),
        any(libc::SYS_mknodat),
        any(libc::SYS_symlinkat),
        any(libc::SYS_linkat),
        any(libc::SYS_unlinkat),
        any(libc::SYS_renameat2),
        any(libc::SYS_readlinkat),
        any(libc::SYS_fchmod),
        any(libc::SYS_fchmodat),
        any(libc::SYS_fchown),
        any(libc::SYS_fchownat),
        any(libc::SYS_utimensat),
        any(libc::SYS_faccessat),
        any(libc::SYS_faccessat2),
        any(libc::SYS_fgetxattr),
        any(libc::SYS_fsetxattr),
        any(libc::SYS_flistxattr),
        any(libc::SYS_fremovexattr),
        any(crate::fs::sys::SYS_SETXATTRAT),
        any(crate::fs::sys::SYS_GETXATTRAT),
        any(crate::fs::sys::SYS_LISTXATTRAT),
        any(crate::fs::sys::SYS_REMOVEXATTRAT),
        any(libc::SYS_umask),
        any(libc::SYS_setfsuid),
        any(libc::SYS_setfsgid),
        any(libc::SYS_getuid),
        any(libc::SYS_geteuid),
        any(libc::SYS_getgid),
        any(libc::SYS_getegid),
        any(libc::SYS_prlimit64),
        // DAX tail pages.
        any(libc::SYS_memfd_create),
    ];
    // Older spellings glibc and std still use on x86_64.
    #[cfg(target_arch = "x86_64")]
    calls.extend([
        any(libc::SYS_epoll_wait),
        any(libc::SYS_poll),
        any(libc::SYS_renameat),
        any(libc::SYS_arch_prctl),
    ]);
    calls
}

/// What the supervising parent of `enter_pid_namespace` calls: waiting, signalling, exit,
/// and what the allocator and a log line may need.
fn supervisor_syscalls() -> Vec<(i64, Vec<seccompiler::SeccompRule>)> {
    let mut calls: Vec<_> = [
        libc::SYS_rt_sigtimedwait,
        libc::SYS_rt_sigprocmask,
        libc::SYS_rt_sigaction,
        libc::SYS_rt_sigreturn,
        libc::SYS_wait4,
        libc::SYS_waitid,
        libc::SYS_kill,
        libc::SYS_tgkill,
        libc::SYS_getpid,
        libc::SYS_gettid,
        libc::SYS_exit,
        libc::SYS_exit_group,
        libc::SYS_write,
        libc::SYS_writev,
        libc::SYS_futex,
        libc::SYS_brk,
        libc::SYS_mmap,
        libc::SYS_munmap,
        libc::SYS_mremap,
        libc::SYS_madvise,
        libc::SYS_sigaltstack,
        libc::SYS_clock_gettime,
        libc::SYS_restart_syscall,
    ]
    .into_iter()
    .map(|nr| (nr, Vec::new()))
    .collect();
    #[cfg(target_arch = "x86_64")]
    calls.push((libc::SYS_arch_prctl, Vec::new()));
    calls
}

/// Installs the serving allowlist for every thread started from now on (and this one).
pub fn install_seccomp(action: SeccompAction) -> Result<(), ConfineError> {
    install_filter(action, allowed_syscalls())
}

fn install_filter(
    action: SeccompAction,
    calls: Vec<(i64, Vec<seccompiler::SeccompRule>)>,
) -> Result<(), ConfineError> {
    let mismatch = match action {
        SeccompAction::None => return Ok(()),
        SeccompAction::Kill => seccompiler::SeccompAction::KillProcess,
        SeccompAction::Log => seccompiler::SeccompAction::Log,
        SeccompAction::Trap => {
            install_sigsys_logger()?;
            seccompiler::SeccompAction::Trap
        }
    };
    let arch = std::env::consts::ARCH
        .try_into()
        .map_err(|e| ConfineError::Seccomp(format!("{e}")))?;
    let filter = seccompiler::SeccompFilter::new(
        calls.into_iter().collect(),
        mismatch,
        seccompiler::SeccompAction::Allow,
        arch,
    )
    .map_err(|e| ConfineError::Seccomp(e.to_string()))?;
    let program: seccompiler::BpfProgram = filter
        .try_into()
        .map_err(|e: seccompiler::BackendError| ConfineError::Seccomp(e.to_string()))?;
    // Sets no_new_privs first, which a filter needs without CAP_SYS_ADMIN.
    seccompiler::apply_filter(&program).map_err(|e| ConfineError::Seccomp(e.to_string()))
}

/// `--seccomp trap`: SIGSYS writes which call was refused to stderr, then the default
/// action (a core dump) ends the process when the handler returns.
fn install_sigsys_logger() -> Result<(), ConfineError> {
    extern "C" fn on_sigsys(_: libc::c_int, info: *mut libc::siginfo_t, _: *mut libc::c_void) {
        // The SIGSYS fields of siginfo_t (`_sigsys`: the call's address, then its number),
        // which the libc crate does not name: the union starts after three ints and padding.
        #[repr(C)]
        struct SigsysInfo {
            _head: [libc::c_int; 4],
            _call_addr: *mut libc::c_void,
            syscall: libc::c_int,
        }
        // SAFETY: the kernel passes a valid siginfo_t for SIGSYS from a seccomp trap, whose
        // layout begins as SigsysInfo (include/uapi/asm-generic/siginfo.h).
        let nr = unsafe { (*(info as *const SigsysInfo)).syscall };
        // Async-signal-safe formatting of `nr`.
        let mut digits = [0u8; 10];
        let mut n = nr.unsigned_abs();
        let mut i = digits.len();
        loop {
            i -= 1;
            digits[i] = b'0' + (n % 10) as u8;
            n /= 10;
            if n == 0 || i == 0 {
                break;
            }
        }
        let parts: [&[u8]; 3] = [
            b"zerodax serve: seccomp: refused system call ",
            &digits[i..],
            b" (--seccomp trap)\n",
        ];
        // SAFETY: write(2) and sigaction(2) are async-signal-safe; the buffers are local.
        unsafe {
            for part in parts {
                libc::write(2, part.as_ptr().cast(), part.len());
            }
            libc::signal(libc::SIGSYS, libc::SIG_DFL);
            // Delivered when this handler returns, with the default action.
            libc::raise(libc::SIGSYS);
        }
    }
    // SAFETY: a zeroed sigaction is a valid empty one; the handler has the SA_SIGINFO
    // signature and only makes async-signal-safe calls.
    unsafe {
        let mut sa: libc::sigaction = std::mem::zeroed();
        sa.sa_sigaction = on_sigsys as *const () as usize;
        sa.sa_flags = libc::SA_SIGINFO;
        if libc::sigaction(libc::SIGSYS, &sa, std::ptr::null_mut()) != 0 {
            return Err(ConfineError::Seccomp(format!(
                "SIGSYS handler: {}",
                io::Error::last_os_error()
            )));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ns_id_maps_parse_as_virtiofsd() {
        let m = |inside, outside, count| NsIdMap {
            inside,
            outside,
            count,
        };
        assert_eq!(":0:100000:65536:".parse(), Ok(m(0, 100000, 65536)));
        assert_eq!("/1/1000/1/".parse(), Ok(m(1, 1000, 1)));
        assert_eq!(m(0, 1000, 1).to_string(), ":0:1000:1:");
        for bad in [
            "",
            ":",
            "::",
            "0:1000:1",
            ":0:1000:1",
            "0:1000:1:",
            ":0:1000:",
            ":0:1000:1:2:",
            "x0x1000x1x",
            ":0/1000/1:",
            ":a:1000:1:",
            ":-1:1000:1:",
            ":0:1000:0:",
            ":0:4294967295:1:",
            ":4294967000:0:1000:",
        ] {
            let r = bad.parse::<NsIdMap>();
            let e = r.expect_err(bad);
            assert!(
                e.contains(":INSIDE:OUTSIDE:COUNT:") && !e.contains('\n'),
                "{e}"
            );
        }
    }

    #[test]
    fn modcaps_parse_as_virtiofsd() {
        let (add, remove) = parse_modcaps("+sys_admin:-MKNOD:+cap_ipc_lock").unwrap();
        assert_eq!(add, CapabilitySet::SYS_ADMIN | CapabilitySet::IPC_LOCK);
        assert_eq!(remove, CapabilitySet::MKNOD);
        let (add, remove) = parse_modcaps("+chown:-chown").unwrap();
        assert!(add.is_empty(), "the later entry wins");
        assert_eq!(remove, CapabilitySet::CHOWN);
        for bad in [
            "",
            "sys_admin",
            "+",
            "+nope",
            "+sys_admin:",
            "*chown",
            "+sys_admin::-x",
        ] {
            assert!(parse_modcaps(bad).is_err(), "{bad:?} must be refused");
        }
    }

    #[test]
    fn kept_caps_apply_modcaps_to_the_base() {
        let kept = kept_caps(DEFAULT_CAPS, Some("-mknod:+sys_admin")).unwrap();
        assert!(!kept.contains(CapabilitySet::MKNOD));
        assert!(kept.contains(CapabilitySet::SYS_ADMIN | CapabilitySet::CHOWN));
        assert_eq!(kept_caps(DEFAULT_CAPS, None).unwrap(), DEFAULT_CAPS);
        assert_eq!(
            cap_names(CapabilitySet::CHOWN | CapabilitySet::MKNOD),
            "chown,mknod"
        );
    }
}
