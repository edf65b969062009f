//! `zerodax bench`: one sparse file read every way zerodax competes with, in one run. Local
//! paths (a read-only dax-window, plain mmap, read(2), and the limit: anonymous huge zero
//! pages) are timed in this process; virtio-fs paths (the DAX window with `--dax-holes zero`
//! and `map`, FUSE_READ against each peer backend) run `zerodax probe --via virtio` as a
//! child, so they take exactly the probe's code path. Each path cold (the file's page cache
//! dropped first) and warm. Plus the cost of one write upgrade. JSON fields are documented
//! in docs/benchmarks.md ("zerodax bench").

use std::ffi::c_void;
use std::fs::{File, OpenOptions};
use std::hint::black_box;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode};
use std::time::{Duration, Instant};

use dax_window::{procfs, Window, HUGE_SIZE, PAGE_SIZE};
use rustix::mm::{self, MapFlags, ProtFlags};

use zerodax::size::parse_size;

use crate::report::{extents, extents_json, Extents};

const GIB: f64 = (1u64 << 30) as f64;
const MIB: u64 = 1 << 20;
/// Size of each data extent of the file the bench makes.
const EXTENT: u64 = 256 << 10;
const C_VIRTIOFSD: &str = "/usr/lib/qemu/virtiofsd";
/// Isolated hole pages written through a writable window to time the write upgrade.
const UPGRADE_PAGES: usize = 256;

/// Read one sparse file through every path (window, mmap, read(2), virtio-fs peers), cold
/// and warm, with memory cost.
///
/// Without --dir, and run as root, the file goes on an ext4 image loop-mounted in a temp
/// dir made for the run (unmounted and removed afterwards, on error too), so allocation and
/// hole behaviour do not depend on where the bench runs. Not root: --dir is required.
#[derive(clap::Args, Debug)]
pub struct BenchArgs {
    /// Apparent size of the sparse file (K, M, G, T suffixes: powers of 1024), 2M to 1T.
    #[arg(long, default_value = "1G")]
    pub size: String,
    /// Percentage of the file that is data (0 to 100), in scattered 256 KiB extents of
    /// random bytes (rounded to whole extents).
    #[arg(long, value_name = "P", default_value = "1")]
    pub data_percent: String,
    /// Put the file in DIR (removed afterwards). Default, as root: a loop-mounted ext4
    /// image in a temp dir made for the run; without root, --dir is required.
    #[arg(long, value_name = "DIR")]
    pub dir: Option<PathBuf>,
    /// Print one JSON object instead of a table.
    #[arg(long)]
    pub json: bool,
    /// FUSE_READ backends to compare (comma separated): zerodax, virtiofsd, c-virtiofsd.
    /// Peers not found are listed as skipped. The DAX window rows always run (zerodax).
    #[arg(
        long,
        value_delimiter = ',',
        value_enum,
        default_value = "zerodax,virtiofsd,c-virtiofsd"
    )]
    pub peers: Vec<Peer>,
    /// The Rust virtiofsd (default: `virtiofsd` on PATH).
    #[arg(long, value_name = "PATH")]
    pub virtiofsd_bin: Option<PathBuf>,
    /// QEMU's C virtiofsd (default: /usr/lib/qemu/virtiofsd if present).
    #[arg(long, value_name = "PATH")]
    pub c_virtiofsd_bin: Option<PathBuf>,
    /// Runs of each path (1 to 100); the best (shortest) cold and warm times are reported.
    #[arg(long, value_name = "N", default_value = "1")]
    pub repeat: String,
}

/// A FUSE_READ backend.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Peer {
    Zerodax,
    Virtiofsd,
    CVirtiofsd,
}

/// `--size`: a size (zerodax::size) in whole 4 KiB pages, from 2 MiB to 1 TiB.
fn parse_bench_size(s: &str) -> Result<u64, String> {
    let n = parse_size(s).map_err(|e| format!("{s:?}: {e}"))?;
    if n < 2 * MIB || n % PAGE_SIZE as u64 != 0 {
        return Err(format!("{s:?}: need a multiple of 4 KiB, at least 2M"));
    }
    if n > 1 << 40 {
        return Err(format!("{s:?}: at most 1T"));
    }
    Ok(n)
}

fn parse_percent(s: &str) -> Result<f64, String> {
    let p: f64 = s.trim().parse().map_err(|e| format!("{s:?}: {e}"))?;
    if !(0.0..=100.0).contains(&p) {
        return Err(format!("{s:?}: a percentage from 0 to 100"));
    }
    Ok(p)
}

/// The arguments checked here rather than by clap, so a bad one is a one-line message.
struct Settings {
    size: u64,
    data_percent: f64,
    repeat: u32,
}

fn settings(args: &BenchArgs) -> Result<Settings, String> {
    let repeat = args
        .repeat
        .trim()
        .parse::<u32>()
        .ok()
        .filter(|n| (1..=100).contains(n))
        .ok_or_else(|| format!("--repeat {:?}: a count from 1 to 100", args.repeat))?;
    Ok(Settings {
        size: parse_bench_size(&args.size).map_err(|e| format!("--size {e}"))?,
        data_percent: parse_percent(&args.data_percent)
            .map_err(|e| format!("--data-percent {e}"))?,
        repeat,
    })
}

pub fn run(args: BenchArgs) -> ExitCode {
    match settings(&args).and_then(|s| bench(&args, &s)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("zerodax bench: {}", e.replace('\n', "; "));
            ExitCode::FAILURE
        }
    }
}

/// A file removed on drop.
struct Scratch(PathBuf);

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

/// xorshift64*: random bytes for the data extents without reading /dev/urandom per byte.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
}

/// Makes `path` (which must not exist): `size` bytes apparent, `percent`% of them in 256 KiB
/// extents of random bytes at distinct slots chosen at random; synced.
fn make_sparse(path: &Path, size: u64, percent: f64) -> Result<File, String> {
    let f = OpenOptions::new()
        .read(true)
        .write(true)
        .create_new(true)
        .open(path)
        .map_err(|e| format!("create {}: {e}", path.display()))?;
    let slots = size / EXTENT;
    let want = ((size as f64 * percent / 100.0 / EXTENT as f64).round() as u64).min(slots);
    let seed = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(1, |d| d.as_nanos() as u64)
        | 1;
    let mut rng = Rng(seed);
    // A partial Fisher-Yates shuffle of the slots: `want` distinct ones, scattered.
    let mut order: Vec<u64> = (0..slots).collect();
    let extents = (0..want as usize).map(|i| {
        let j = i + (rng.next() % (slots - i as u64)) as usize;
        order.swap(i, j);
        let mut buf = vec![0u8; EXTENT as usize];
        for c in buf.chunks_exact_mut(8) {
            c.copy_from_slice(&rng.next().to_ne_bytes());
        }
        (order[i] * EXTENT, buf)
    });
    scratch::fill_sparse(&f, size, extents).map_err(|e| e.to_string())?;
    Ok(f)
}

/// Drops the file's clean page cache (fsync first, so every page is clean).
fn drop_cache(f: &File) -> Result<(), String> {
    let len = f.metadata().map_err(|e| format!("stat: {e}"))?.len();
    prime_memory(len as usize)?;
    f.sync_all().map_err(|e| format!("fsync: {e}"))?;
    // Advice on our own open descriptor; it only drops clean page cache.
    rustix::fs::fadvise(f, 0, None, rustix::fs::Advice::DontNeed)
        .map_err(|e| format!("posix_fadvise: {}", std::io::Error::from(e)))
}

/// Touches and frees `len` bytes of anonymous memory, untimed, before a cold run: in a VM,
/// free memory the guest has not used lately may have been handed back to the host, and the
/// first path to fill `len` bytes of page cache would pay the host's faults, not its own.
fn prime_memory(len: usize) -> Result<(), String> {
    let p = mmap_anonymous(
        len,
        ProtFlags::READ | ProtFlags::WRITE,
        MapFlags::PRIVATE | MapFlags::POPULATE,
    )?;
    // SAFETY: our own mapping, unmapped once; nothing refers to it.
    let _ = unsafe { mm::munmap(p, len) };
    Ok(())
}

/// Reads every byte of `[p, p+len)` as u64 words, summed so nothing is optimised away.
fn read_region(p: *const u8, len: usize) -> u64 {
    // SAFETY: callers pass a mapped, readable, page-aligned range of `len` bytes that stays
    // mapped for the call.
    let words = unsafe { std::slice::from_raw_parts(p as *const u64, len / 8) };
    let mut acc = [0u64; 8];
    for c in words.chunks_exact(8) {
        for i in 0..8 {
            acc[i] = acc[i].wrapping_add(c[i]);
        }
    }
    black_box(acc.iter().fold(0, |a, &b| a.wrapping_add(b)))
}

fn rss() -> Result<u64, String> {
    procfs::status_kib("VmRSS")
        .map(|k| k * 1024)
        .map_err(|e| format!("VmRSS: {e}"))
}

fn cached_bytes(f: &File) -> Result<u64, String> {
    procfs::cached_pages(f)
        .map(|p| p * PAGE_SIZE as u64)
        .map_err(|e| format!("cachestat: {e}"))
}

/// One path's measurement: best times over the runs, memory of the first cold run.
#[derive(Default)]
struct Row {
    name: String,
    kind: &'static str,
    cold: Option<Duration>,
    warm: Option<Duration>,
    zero_pages: Option<u64>,
    page_cache_growth: i64,
    rss_growth: i64,
    backend_rss_growth: Option<i64>,
}

impl Row {
    fn add(&mut self, cold: Duration, warm: Duration) {
        self.cold = Some(self.cold.map_or(cold, |c| c.min(cold)));
        self.warm = Some(self.warm.map_or(warm, |w| w.min(warm)));
    }
}

/// What one local run measured around its cold read.
struct Local {
    cold: Duration,
    warm: Duration,
    zero_pages: Option<u64>,
    page_cache_growth: i64,
    rss_growth: i64,
}

fn growth(a: u64, b: u64) -> i64 {
    b as i64 - a as i64
}

/// Cold then warm read of a region `setup` maps; memory is measured with the mapping live.
fn local_run(
    f: &File,
    len: usize,
    setup: impl FnOnce() -> Result<Mapped, String>,
) -> Result<Local, String> {
    drop_cache(f)?;
    let (c0, r0) = (cached_bytes(f)?, rss()?);
    let t = Instant::now();
    let m = setup()?;
    read_region(m.ptr, len);
    let cold = t.elapsed();
    let (c1, r1) = (cached_bytes(f)?, rss()?);
    let t = Instant::now();
    read_region(m.ptr, len);
    let warm = t.elapsed();
    let zero_pages = match &m.window {
        Some(w) => Some(
            w.page_states(0, len)
                .map_err(|e| format!("page states: {e}"))?
                .zero_total(),
        ),
        None => None,
    };
    drop(m);
    Ok(Local {
        cold,
        warm,
        zero_pages,
        page_cache_growth: growth(c0, c1),
        rss_growth: growth(r0, r1),
    })
}

/// A readable region: a window, or a raw mapping unmapped on drop.
struct Mapped {
    ptr: *const u8,
    window: Option<Window>,
    raw: Option<(*mut c_void, usize)>,
}

impl Drop for Mapped {
    fn drop(&mut self) {
        if let Some((p, len)) = self.raw {
            // SAFETY: a mapping this process made and nothing else refers to.
            let _ = unsafe { mm::munmap(p, len) };
        }
    }
}

fn mmap_anonymous(len: usize, prot: ProtFlags, flags: MapFlags) -> Result<*mut c_void, String> {
    // SAFETY: a new mapping at an address the kernel picks; it replaces nothing.
    unsafe { mm::mmap_anonymous(std::ptr::null_mut(), len, prot, flags) }
        .map_err(|e| format!("mmap: {}", std::io::Error::from(e)))
}

fn mmap_file(
    len: usize,
    prot: ProtFlags,
    flags: MapFlags,
    f: &File,
) -> Result<*mut c_void, String> {
    // SAFETY: a new mapping at an address the kernel picks; it replaces nothing.
    unsafe { mm::mmap(std::ptr::null_mut(), len, prot, flags, f, 0) }
        .map_err(|e| format!("mmap: {}", std::io::Error::from(e)))
}

fn window_map(f: &File, len: usize) -> Result<Mapped, String> {
    let w = Window::new(len).map_err(|e| format!("window: {e}"))?;
    w.map_file(0, len, f, 0, false)
        .map_err(|e| format!("map: {e}"))?;
    Ok(Mapped {
        ptr: w.as_ptr(),
        window: Some(w),
        raw: None,
    })
}

fn plain_map(f: &File, len: usize) -> Result<Mapped, String> {
    let p = mmap_file(len, ProtFlags::READ, MapFlags::SHARED, f)?;
    Ok(Mapped {
        ptr: p.cast(),
        window: None,
        raw: Some((p, len)),
    })
}

/// The limit: an anonymous private region backed by the huge zero page when read.
fn anon_map(len: usize) -> Result<Mapped, String> {
    let total = len + HUGE_SIZE;
    let raw = mmap_anonymous(
        total,
        ProtFlags::READ,
        MapFlags::PRIVATE | MapFlags::NORESERVE,
    )?;
    let p = (raw as usize).next_multiple_of(HUGE_SIZE);
    // SAFETY: advice on our own mapping; it changes no contents.
    let _ = unsafe { mm::madvise(p as *mut c_void, len, mm::Advice::LinuxHugepage) };
    Ok(Mapped {
        ptr: p as *const u8,
        window: None,
        raw: Some((raw, total)),
    })
}

/// read(2) of the whole file with a 1 MiB buffer, cold then warm.
fn read_syscall(f: &File, len: usize) -> Result<Local, String> {
    drop_cache(f)?;
    let mut buf = vec![0u8; MIB as usize];
    let (c0, r0) = (cached_bytes(f)?, rss()?);
    let mut once = || -> Result<Duration, String> {
        let t = Instant::now();
        let mut off = 0;
        while off < len {
            let n = buf.len().min(len - off);
            f.read_exact_at(&mut buf[..n], off as u64)
                .map_err(|e| format!("read at {off}: {e}"))?;
            read_region(buf.as_ptr(), n);
            off += n;
        }
        Ok(t.elapsed())
    };
    let cold = once()?;
    let (c1, r1) = (cached_bytes(f)?, rss()?);
    let warm = once()?;
    Ok(Local {
        cold,
        warm,
        zero_pages: None,
        page_cache_growth: growth(c0, c1),
        rss_growth: growth(r0, r1),
    })
}

/// Average time of the first write to an isolated hole page through a writable window
/// (fault, allocate the granule, map the file page, wake), over `n` pages of a fresh file.
fn upgrade_cost(dir: &Path, n: usize) -> Result<(Duration, u64), String> {
    let path = Scratch(dir.join("zerodax-bench-upgrade"));
    let _ = std::fs::remove_file(&path.0);
    let stride = 16 * PAGE_SIZE;
    let len = n * stride;
    let f = make_sparse(&path.0, len as u64, 0.0)?;
    let w = Window::new(len).map_err(|e| format!("window: {e}"))?;
    w.map_file(0, len, &f, 0, true)
        .map_err(|e| format!("map: {e}"))?;
    let t = Instant::now();
    for i in 0..n {
        // SAFETY: a one-byte store inside the writable window mapped just above.
        unsafe { std::ptr::write_volatile(w.as_ptr().add(i * stride), 1u8) };
    }
    let d = t.elapsed();
    let upgrades = w.stats().upgrades;
    if upgrades != n as u64 {
        return Err(format!("{upgrades} write upgrades for {n} hole pages"));
    }
    Ok((d / n as u32, upgrades))
}

fn which(name: &str) -> Option<PathBuf> {
    std::env::var_os("PATH")?
        .to_str()?
        .split(':')
        .map(|d| Path::new(d).join(name))
        .find(|p| p.is_file())
}

/// `zerodax probe --via virtio --json ARGS FILE` from this binary, as a child.
fn probe_virtio(exe: &Path, file: &Path, extra: &[String]) -> Result<serde_json::Value, String> {
    let out = Command::new(exe)
        .args(["probe", "--via", "virtio", "--json"])
        .args(extra)
        .arg(file)
        .output()
        .map_err(|e| format!("zerodax probe: {e}"))?;
    if !out.status.success() {
        return Err(format!(
            "zerodax probe --via virtio {}: {}",
            extra.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        ));
    }
    serde_json::from_slice(&out.stdout).map_err(|e| format!("probe JSON: {e}"))
}

fn virtio_row(
    name: String,
    exe: &Path,
    path: &Path,
    f: &File,
    extra: &[String],
    repeat: u32,
) -> Result<Row, String> {
    let mut row = Row {
        name,
        kind: "virtio",
        ..Row::default()
    };
    let secs = |v: &serde_json::Value| -> Result<Duration, String> {
        v["time"]["read_s"]
            .as_f64()
            .map(Duration::from_secs_f64)
            .ok_or_else(|| "probe JSON without time.read_s".to_string())
    };
    for run in 0..repeat {
        drop_cache(f)?;
        let cold = probe_virtio(exe, path, extra)?;
        let warm = probe_virtio(exe, path, extra)?;
        row.add(secs(&cold)?, secs(&warm)?);
        if run == 0 {
            let m = &cold["memory"];
            row.page_cache_growth = m["file_page_cache_growth"].as_i64().unwrap_or(0);
            row.rss_growth = m["rss_growth"].as_i64().unwrap_or(0);
            row.backend_rss_growth = m["backend_rss_growth"].as_i64();
            row.zero_pages = cold["pages_after_read"]["zero"].as_u64();
        }
    }
    Ok(row)
}

fn bench(args: &BenchArgs, set: &Settings) -> Result<(), String> {
    let size = set.size;
    let len = usize::try_from(size).map_err(|_| "--size too large for this address space")?;
    let data_target = (size as f64 * set.data_percent / 100.0) as u64;
    let root = rustix::process::geteuid().is_root();
    let ext4;
    let dir = match &args.dir {
        Some(d) => d.clone(),
        None if root => {
            let image = (data_target * 2 + 64 * MIB).max(256 * MIB);
            ext4 = scratch::Ext4::builder("zerodax-bench", image)
                // Inode tables and journal initialised now, not by ext4lazyinit writing
                // behind the first cold reads.
                .mkfs_args(&["-E", "lazy_itable_init=0,lazy_journal_init=0"])
                .create()
                .map_err(|e| e.to_string())?;
            ext4.mnt.clone()
        }
        None => return Err("without root, give --dir DIR (no loop-mounted ext4)".into()),
    };
    let dir = std::fs::canonicalize(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    let file_guard = Scratch(dir.join(format!("zerodax-bench-{}.img", std::process::id())));
    let path = file_guard.0.clone();
    let f = make_sparse(&path, size, set.data_percent)?;
    // One untimed read first, so every path starts from the same state: the file's
    // metadata cached, its pages not (the first reader of a new file pays more than a cold
    // page cache; the first measured path would carry it alone).
    read_syscall(&f, len)?;
    let ext: Extents = extents(&f, size)?;
    let data_bytes: u64 = ext.data.iter().map(|e| e.len()).sum();
    let exe = std::env::current_exe().map_err(|e| format!("own executable: {e}"))?;

    let mut rows: Vec<Row> = Vec::new();
    let mut local = |name: &str, m: &mut dyn FnMut() -> Result<Local, String>| {
        let mut row = Row {
            name: name.into(),
            kind: "local",
            ..Row::default()
        };
        for run in 0..set.repeat {
            let l = m()?;
            row.add(l.cold, l.warm);
            if run == 0 {
                row.zero_pages = l.zero_pages;
                row.page_cache_growth = l.page_cache_growth;
                row.rss_growth = l.rss_growth;
            }
        }
        rows.push(row);
        Ok::<(), String>(())
    };
    local("limit: anon huge zero", &mut || {
        local_run(&f, len, || anon_map(len))
    })?;
    local("plain mmap", &mut || {
        local_run(&f, len, || plain_map(&f, len))
    })?;
    local("read(2) 1 MiB", &mut || read_syscall(&f, len))?;
    local("window read-only", &mut || {
        local_run(&f, len, || window_map(&f, len))
    })?;

    for holes in ["zero", "map"] {
        let extra = vec!["--dax-holes".to_string(), holes.to_string()];
        rows.push(virtio_row(
            format!("virtio window {holes}"),
            &exe,
            &path,
            &f,
            &extra,
            set.repeat,
        )?);
    }
    let mut skipped = Vec::new();
    for peer in &args.peers {
        let (name, kind, bin) = match peer {
            Peer::Zerodax => ("zerodax", "zerodax", None),
            Peer::Virtiofsd => (
                "virtiofsd",
                "virtiofsd",
                args.virtiofsd_bin.clone().or_else(|| which("virtiofsd")),
            ),
            Peer::CVirtiofsd => (
                "C virtiofsd",
                "c-virtiofsd",
                args.c_virtiofsd_bin
                    .clone()
                    .or_else(|| Some(PathBuf::from(C_VIRTIOFSD)).filter(|p| p.is_file())),
            ),
        };
        let mut extra = vec![
            "--read".to_string(),
            "fuse".to_string(),
            "--backend".to_string(),
            kind.to_string(),
        ];
        if *peer != Peer::Zerodax {
            match bin {
                Some(b) => extra.extend(["--backend-bin".to_string(), b.display().to_string()]),
                None => {
                    skipped.push(serde_json::json!({"peer": kind, "reason": "not found"}));
                    continue;
                }
            }
        }
        rows.push(virtio_row(
            format!("FUSE_READ {name}"),
            &exe,
            &path,
            &f,
            &extra,
            set.repeat,
        )?);
    }
    let (upgrade, upgrades) = upgrade_cost(&dir, UPGRADE_PAGES)?;
    report(
        args, set, &path, &ext, data_bytes, &rows, &skipped, upgrade, upgrades,
    )
}

#[allow(clippy::too_many_arguments)]
fn report(
    args: &BenchArgs,
    set: &Settings,
    path: &Path,
    ext: &Extents,
    data_bytes: u64,
    rows: &[Row],
    skipped: &[serde_json::Value],
    upgrade: Duration,
    upgrades: u64,
) -> Result<(), String> {
    let size = set.size;
    let gibs =
        |d: Option<Duration>| d.map_or(0.0, |d| size as f64 / GIB / d.as_secs_f64().max(1e-9));
    let find = |name: &str| rows.iter().find(|r| r.name == name);
    let mmap = find("plain mmap").ok_or("no plain mmap row")?;
    let limit = find("limit: anon huge zero").ok_or("no limit row")?;
    let ratio = |r: &Row, base: &Row, warm: bool| {
        let (a, b) = if warm {
            (r.warm, base.warm)
        } else {
            (r.cold, base.cold)
        };
        match (a, b) {
            (Some(a), Some(b)) => b.as_secs_f64() / a.as_secs_f64().max(1e-9),
            _ => 0.0,
        }
    };
    let hole_pages = (size - data_bytes) / PAGE_SIZE as u64;
    if args.json {
        let paths: Vec<serde_json::Value> = rows
            .iter()
            .map(|r| {
                serde_json::json!({
                    "name": r.name,
                    "kind": r.kind,
                    "cold_gib_per_s": gibs(r.cold),
                    "warm_gib_per_s": gibs(r.warm),
                    "cold_vs_mmap": ratio(r, mmap, false),
                    "warm_vs_mmap": ratio(r, mmap, true),
                    "cold_vs_limit": ratio(r, limit, false),
                    "warm_vs_limit": ratio(r, limit, true),
                    "zero_pages": r.zero_pages,
                    "page_cache_growth": r.page_cache_growth,
                    "rss_growth": r.rss_growth,
                    "backend_rss_growth": r.backend_rss_growth,
                })
            })
            .collect();
        let v = serde_json::json!({
            "file": {
                "dir": path.parent().map(|p| p.display().to_string()),
                "loop_ext4": args.dir.is_none(),
                "size": size,
                "data_percent": set.data_percent,
                "pages": size / PAGE_SIZE as u64,
                "hole_pages": hole_pages,
                "extents": extents_json(ext),
            },
            "repeat": set.repeat,
            "paths": paths,
            "skipped": skipped,
            "write_upgrade": {
                "pages": upgrades,
                "us_per_page": upgrade.as_secs_f64() * 1e6,
            },
        });
        println!("{v}");
        return Ok(());
    }
    let mib = |b: i64| b as f64 / MIB as f64;
    println!(
        "file: {} MiB apparent, {:.2} MiB data in {} extents, {hole_pages} hole pages, in {}{}; best of {}",
        size / MIB,
        mib(data_bytes as i64),
        ext.data.len(),
        path.parent().map_or(String::new(), |p| p.display().to_string()),
        if args.dir.is_none() { " (loop-mounted ext4)" } else { "" },
        set.repeat
    );
    println!(
        "{:<24} {:>7} {:>7} {:>7} {:>7} {:>7} {:>7} {:>9} {:>9} {:>9} {:>9}",
        "path",
        "cold",
        "warm",
        "c/mmap",
        "w/mmap",
        "c/limit",
        "w/limit",
        "zero pg",
        "cache MiB",
        "RSS MiB",
        "back MiB"
    );
    for r in rows {
        println!(
            "{:<24} {:>7.2} {:>7.2} {:>7.2} {:>7.2} {:>7.2} {:>7.2} {:>9} {:>9.1} {:>9.1} {:>9}",
            r.name,
            gibs(r.cold),
            gibs(r.warm),
            ratio(r, mmap, false),
            ratio(r, mmap, true),
            ratio(r, limit, false),
            ratio(r, limit, true),
            r.zero_pages.map_or("-".into(), |z| z.to_string()),
            mib(r.page_cache_growth),
            mib(r.rss_growth),
            r.backend_rss_growth
                .map_or("-".into(), |b| format!("{:.1}", mib(b))),
        );
    }
    println!("(cold and warm in GiB/s; memory is the growth over the cold read)");
    for s in skipped {
        println!("skipped: {} ({})", s["peer"], s["reason"]);
    }
    println!(
        "write upgrade: {:.1} us per isolated hole page through a writable window ({upgrades} pages)",
        upgrade.as_secs_f64() * 1e6
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_and_percentages_parse() {
        assert_eq!(parse_bench_size("64M"), Ok(64 << 20));
        assert_eq!(parse_bench_size("1G"), Ok(1 << 30));
        assert_eq!(parse_bench_size("1T"), Ok(1 << 40));
        assert_eq!(
            parse_bench_size("1M"),
            Err("\"1M\": need a multiple of 4 KiB, at least 2M".into())
        );
        assert!(parse_bench_size("3000001").is_err());
        assert_eq!(
            parse_bench_size("x"),
            Err("\"x\": unknown size suffix 'x'".into())
        );
        assert_eq!(
            parse_bench_size("2x4M"),
            Err("\"2x4M\": invalid digit found in string".into())
        );
        assert_eq!(
            parse_bench_size("1025G"),
            Err("\"1025G\": at most 1T".into())
        );
        assert_eq!(
            parse_bench_size("99999999999G"),
            Err("\"99999999999G\": too large".into())
        );
        assert_eq!(parse_percent("1"), Ok(1.0));
        assert_eq!(parse_percent("0.5"), Ok(0.5));
        assert!(parse_percent("150").is_err());
        assert!(parse_percent("-1").is_err());
        assert!(parse_percent("NaN").is_err());
    }
}
