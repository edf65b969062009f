//! Test harness: a loop-mounted ext4 scratch filesystem (so holes are real), a backend child
//! serving it, and a FUSE client connected to the backend's socket. Guards unmount and reap
//! on every exit path, panics included.
//!
//! Backends: `ZERODAX_FRONTEND_BACKENDS=c-virtiofsd,virtiofsd,zerodax` picks them (each one
//! named must be found, else the test fails); unset, every backend found is used, and at
//! least one must be. Program paths: `C_VIRTIOFSD_BIN` (default /usr/lib/qemu/virtiofsd),
//! `VIRTIOFSD_BIN` (default: `virtiofsd` on PATH or in ~/.cargo/bin), `ZERODAX_BIN`
//! (default: the workspace's target dir, when that binary has a `serve` subcommand).

#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use frontend::backend::{BackendChild, BackendSpec};
use frontend::driver::DriverConfig;
use frontend::fuse::{FuseClient, FuseError, DEFAULT_INIT_FLAGS};
use protocol::abi::FuseEntryOut;
use protocol::Opcode;

/// Deadline for every wait on a backend.
pub const TIMEOUT: Duration = Duration::from_secs(10);

fn find_in_path(name: &str) -> Option<PathBuf> {
    let mut dirs: Vec<PathBuf> = std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).collect())
        .unwrap_or_default();
    if let Some(home) = std::env::var_os("HOME") {
        dirs.push(Path::new(&home).join(".cargo/bin"));
    }
    dirs.into_iter().map(|d| d.join(name)).find(|p| p.is_file())
}

/// Newest modification time of the sources the zerodax binary is built from.
fn newest_source() -> std::time::SystemTime {
    fn walk(dir: &Path, newest: &mut std::time::SystemTime) {
        for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
            let p = e.path();
            if p.is_dir() {
                walk(&p, newest);
            } else if let Ok(t) = e.metadata().and_then(|m| m.modified()) {
                *newest = (*newest).max(t);
            }
        }
    }
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let mut newest = std::time::UNIX_EPOCH;
    for crate_dir in ["daemon", "protocol", "dax-window", "frontend", "scratch"] {
        walk(&root.join(crate_dir).join("src"), &mut newest);
    }
    newest
}

/// Fails the run when `bin` is older than the sources: a stale zerodax would be tested in
/// place of the code under test.
fn require_fresh(bin: &Path) {
    let built = std::fs::metadata(bin)
        .and_then(|m| m.modified())
        .unwrap_or_else(|e| panic!("zerodax binary {}: {e}", bin.display()));
    assert!(
        built >= newest_source(),
        "{} is older than the sources: build it again (cargo build --release -p zerodax)",
        bin.display()
    );
}

/// The zerodax binary (ZERODAX_BIN, or next to the test binary), checked to be newer than
/// the sources.
pub fn zerodax_bin() -> Option<PathBuf> {
    if let Some(p) = std::env::var_os("ZERODAX_BIN") {
        let p = PathBuf::from(p);
        require_fresh(&p);
        return Some(p);
    }
    // target/<profile>/deps/<test> -> target/<profile>/zerodax
    let exe = std::env::current_exe().ok()?;
    let p = exe.parent()?.parent()?.join("zerodax");
    let serves = Command::new(&p)
        .args(["serve", "--help"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if serves {
        require_fresh(&p);
    }
    serves.then_some(p)
}

fn find_backend(name: &str) -> Option<BackendSpec> {
    match name {
        "c-virtiofsd" => {
            let p = std::env::var_os("C_VIRTIOFSD_BIN")
                .map(PathBuf::from)
                .unwrap_or_else(|| "/usr/lib/qemu/virtiofsd".into());
            p.is_file().then(|| BackendSpec::c_virtiofsd(p))
        }
        "virtiofsd" => std::env::var_os("VIRTIOFSD_BIN")
            .map(PathBuf::from)
            .or_else(|| find_in_path("virtiofsd"))
            .map(BackendSpec::rust_virtiofsd),
        "zerodax" => zerodax_bin().map(BackendSpec::zerodax),
        other => panic!("unknown backend {other:?} in ZERODAX_FRONTEND_BACKENDS"),
    }
}

/// The backends this run tests against.
pub fn backends() -> Vec<BackendSpec> {
    match std::env::var("ZERODAX_FRONTEND_BACKENDS") {
        Ok(list) => list
            .split(',')
            .filter(|s| !s.is_empty())
            .map(|n| find_backend(n).unwrap_or_else(|| panic!("backend {n} not found")))
            .collect(),
        Err(_) => {
            // zerodax is what these tests are for: without it the run fails, rather than
            // passing against the virtiofsds alone.
            assert!(
                find_backend("zerodax").is_some(),
                "no zerodax binary next to the tests: build it (cargo build -p zerodax) or set \
                 ZERODAX_BIN"
            );
            ["c-virtiofsd", "virtiofsd", "zerodax"]
                .into_iter()
                .filter_map(find_backend)
                .collect()
        }
    }
}

/// The ring setups every case runs under: plain descriptor chains without event indices,
/// and what Linux negotiates (indirect tables and event indices, where offered).
pub fn ring_setups() -> [(&'static str, DriverConfig); 2] {
    let base = DriverConfig {
        timeout: TIMEOUT,
        ..Default::default()
    };
    let linux = DriverConfig {
        timeout: TIMEOUT,
        ..DriverConfig::linux_like()
    };
    [("chains", base), ("indirect+event-idx", linux)]
}

/// Runs `case` against every backend and ring setup, each on a fresh filesystem; reports
/// every failure.
pub fn for_each_backend(test: &str, case: impl Fn(&mut Harness)) {
    let mut failures = Vec::new();
    for spec in backends() {
        for (setup, config) in ring_setups() {
            let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                let mut h = Harness::start_with(test, &spec, &config);
                case(&mut h);
            }));
            match result {
                Ok(()) => eprintln!("{test}: {} ({setup}) ok", spec.name),
                Err(e) => {
                    let msg = e
                        .downcast_ref::<String>()
                        .cloned()
                        .or_else(|| e.downcast_ref::<&str>().map(|s| s.to_string()))
                        .unwrap_or_default();
                    failures.push(format!("{} ({setup}): {msg}", spec.name));
                }
            }
        }
    }
    assert!(failures.is_empty(), "{test} failed on: {failures:#?}");
}

/// A scratch directory `root` holding the shared directory `mnt`: a loop-mounted ext4
/// image (scratch::Ext4) or a plain directory; unmounted and removed on drop.
pub struct Scratch {
    pub root: PathBuf,
    pub mnt: PathBuf,
    _space: Space,
}

enum Space {
    Ext4(scratch::Ext4),
    Plain(scratch::TempDir),
}

impl Scratch {
    /// A loop-mounted ext4 filesystem (real holes, real st_blocks).
    pub fn new(test: &str) -> Self {
        // mkfs, mount and umount under `timeout`, so a wedged mount cannot hang the suite.
        let fs = scratch::Ext4::builder(&format!("zdfe-{test}"), 256 << 20)
            .timeout(Duration::from_secs(60))
            .create()
            .unwrap_or_else(|e| panic!("{e}"));
        Scratch {
            root: fs.root.clone(),
            mnt: fs.mnt.clone(),
            _space: Space::Ext4(fs),
        }
    }

    /// A plain directory in the temp dir, for tests that need no particular filesystem.
    pub fn plain(test: &str) -> Self {
        let dir = scratch::TempDir::new(&format!("zdfe-{test}")).unwrap();
        let mnt = dir.0.join("mnt");
        std::fs::create_dir(&mnt).unwrap();
        Scratch {
            root: dir.0.clone(),
            mnt,
            _space: Space::Plain(dir),
        }
    }
}

/// A backend serving a scratch directory and a client connected to it. Field order is
/// drop order: client (disconnect), backend (kill, reap), scratch (unmount).
pub struct Harness {
    pub fs: FuseClient,
    pub backend: BackendChild,
    /// The shared directory as the host sees it.
    pub dir: PathBuf,
    pub socket: PathBuf,
    pub name: String,
    pub spec: BackendSpec,
    scratch: Scratch,
}

impl Harness {
    /// Starts `spec` on a fresh filesystem, connects with `config` and INITs.
    pub fn start_with(test: &str, spec: &BackendSpec, config: &DriverConfig) -> Self {
        let mut h = Self::start_on(Scratch::new(test), spec, config);
        h.fs.init(DEFAULT_INIT_FLAGS)
            .unwrap_or_else(|e| panic!("INIT: {e}\n{}", h.backend.log_tail(2000)));
        h
    }

    /// Starts `spec` serving `scratch` and connects with `config`, without INIT.
    pub fn start_on(scratch: Scratch, spec: &BackendSpec, config: &DriverConfig) -> Self {
        let dir = scratch.mnt.clone();
        let socket = scratch.root.join("vfs.sock");
        let backend = spec
            .spawn(&socket, &dir, &scratch.root.join("backend.log"), TIMEOUT)
            .unwrap_or_else(|e| panic!("{e}"));
        let fs = FuseClient::connect(&socket, config)
            .unwrap_or_else(|e| panic!("connect: {e}\n{}", backend.log_tail(2000)));
        Harness {
            fs,
            backend,
            dir,
            socket,
            name: spec.name.clone(),
            spec: spec.clone(),
            scratch,
        }
    }

    /// Host path of `name` in the shared directory.
    pub fn host(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }

    /// Unwraps `r`, except that ENOSYS passes for an opcode listed in the backend's
    /// known gaps. Returns whether the operation was really performed.
    pub fn ok_or_gap<T>(&self, op: Opcode, r: Result<T, FuseError>) -> bool {
        match r {
            Ok(_) => true,
            Err(e) if e.errno() == Some(libc::ENOSYS) && self.spec.tolerates_gap(op) => {
                eprintln!("{}: {op} not implemented (known gap)", self.name);
                false
            }
            Err(e) => panic!("{}: {op}: {e}", self.name),
        }
    }

    /// Asserts the backend still answers a plain request.
    pub fn assert_serving(&mut self, after: &str) {
        let attr = self.fs.getattr(1, None).unwrap_or_else(|e| {
            panic!(
                "{}: backend stopped serving after {after}: {e}\n{}",
                self.name,
                self.backend.log_tail(2000)
            )
        });
        assert_eq!(attr.attr.mode & libc::S_IFMT, libc::S_IFDIR);
    }
}

/// Creates the empty regular file `name` (0644) in `parent` and releases it; its entry.
pub fn create_empty(fs: &mut FuseClient, parent: u64, name: &str) -> FuseEntryOut {
    let (e, o) = fs
        .create(parent, name, libc::O_RDWR as u32, libc::S_IFREG | 0o644, 0)
        .unwrap();
    fs.release(e.nodeid, o.fh, 0).unwrap();
    e
}
