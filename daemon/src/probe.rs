//! `zerodax probe FILE [--write OFFSET:LEN]... [--json]`: map FILE through a dax-window in
//! this process, read every page, optionally write through the window, and report how the
//! pages are backed, the file's extents before and after, the memory it cost and the time.
//! JSON fields are documented in docs/probe-json.md.

use std::fs::{File, OpenOptions};
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Instant;

use dax_window::{procfs, Extent, PageStates, Window, HUGE_SIZE, PAGE_SIZE};
use zerodax::dax::DaxHoles;
use zerodax::size::parse_size;

/// Map a file through a DAX window and report page states and memory cost.
#[derive(clap::Args, Debug)]
pub struct ProbeArgs {
    /// The file to map.
    pub file: PathBuf,
    /// Write LEN bytes of 0xA5 at OFFSET through the window (repeatable). Numbers take an
    /// optional K, M, G or T suffix (powers of 1024) or a 0x prefix.
    #[arg(long = "write", value_name = "OFFSET:LEN", value_parser = parse_write)]
    pub writes: Vec<(u64, u64)>,
    /// Print one JSON object instead of text.
    #[arg(long)]
    pub json: bool,
    /// `local`: a dax-window in this process maps the file. `virtio`: a `zerodax serve`
    /// child serves the file's directory with a DAX window and the built-in frontend maps
    /// the file through it (FUSE_SETUPMAPPING, SHMEM_MAP), as a guest would.
    #[arg(long, value_enum, default_value_t = Via::Local)]
    pub via: Via,
    /// With `--via virtio`: the server's `--dax-holes`.
    #[arg(long, value_enum, default_value_t = DaxHoles::Zero)]
    pub dax_holes: DaxHoles,
    /// With `--via virtio`: read through the DAX window, or with FUSE_READ requests (the
    /// comparison; no window, no writes).
    #[arg(long, value_enum, default_value_t = ReadPath::Window)]
    pub read: ReadPath,
    /// With `--via virtio --read fuse`: the backend to start. `zerodax` is this binary's
    /// `serve`; the others need `--backend-bin`.
    #[arg(long, value_enum, default_value_t = BackendKind::Zerodax)]
    pub backend: BackendKind,
    /// The backend program for `--backend virtiofsd|c-virtiofsd`.
    #[arg(long, value_name = "PATH")]
    pub backend_bin: Option<PathBuf>,
}

/// `--read`: how `--via virtio` reads the file.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum ReadPath {
    Window,
    Fuse,
}

/// `--backend`: which vhost-user-fs backend `--via virtio` starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum BackendKind {
    Zerodax,
    /// The Rust virtiofsd (1.x).
    Virtiofsd,
    /// QEMU's C virtiofsd.
    CVirtiofsd,
}

/// `--via`: which path maps the file.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Via {
    Local,
    Virtio,
}

/// An offset or length of `--write`: a size (zerodax::size), or hexadecimal after `0x`.
fn parse_num(s: &str) -> Result<u64, String> {
    let s = s.trim();
    if let Some(hex) = s.strip_prefix("0x").or_else(|| s.strip_prefix("0X")) {
        return u64::from_str_radix(hex, 16).map_err(|e| format!("{s:?}: {e}"));
    }
    parse_size(s).map_err(|e| format!("{s:?}: {e}"))
}

fn parse_write(s: &str) -> Result<(u64, u64), String> {
    let (off, len) = s
        .split_once(':')
        .ok_or_else(|| format!("{s:?}: expected OFFSET:LEN"))?;
    let (off, len) = (parse_num(off)?, parse_num(len)?);
    if len == 0 {
        return Err(format!("{s:?}: empty write"));
    }
    off.checked_add(len)
        .ok_or_else(|| format!("{s:?}: offset + length overflows"))?;
    Ok((off, len))
}

struct Memory {
    rss: u64,
    vmpte: u64,
    cached: u64,
}

fn memory() -> Result<Memory, String> {
    let kib = |r: std::io::Result<u64>, what: &str| {
        r.map(|k| k * 1024)
            .map_err(|e| format!("reading {what}: {e}"))
    };
    Ok(Memory {
        rss: kib(procfs::status_kib("VmRSS"), "VmRSS")?,
        vmpte: kib(procfs::status_kib("VmPTE"), "VmPTE")?,
        cached: kib(procfs::meminfo_kib("Cached"), "Cached")?,
    })
}

pub(crate) struct Extents {
    pub(crate) data: Vec<Extent>,
    pub(crate) holes: Vec<Extent>,
}

pub(crate) fn extents(file: &File, size: u64) -> Result<Extents, String> {
    let e = |r: std::io::Result<Vec<Extent>>| r.map_err(|e| format!("SEEK_DATA/SEEK_HOLE: {e}"));
    Ok(Extents {
        data: e(dax_window::data_extents(file, 0, size))?,
        holes: e(dax_window::hole_extents(file, 0, size))?,
    })
}

pub(crate) fn extents_json(e: &Extents) -> serde_json::Value {
    let list = |v: &[Extent]| -> Vec<[u64; 2]> { v.iter().map(|x| [x.start, x.end]).collect() };
    let sum = |v: &[Extent]| -> u64 { v.iter().map(Extent::len).sum() };
    serde_json::json!({
        "data": list(&e.data),
        "holes": list(&e.holes),
        "data_bytes": sum(&e.data),
        "hole_bytes": sum(&e.holes),
    })
}

pub(crate) fn pages_json(p: &PageStates) -> serde_json::Value {
    serde_json::json!({
        "total": p.total(),
        "zero": p.zero_total(),
        "huge_zero": p.huge_zero,
        "file": p.file,
        "not_populated": p.not_populated,
        "marker": p.marker,
        "private_anon": p.private_anon,
    })
}

/// The size of `file` to map: a non-empty regular file that every `--write` fits in.
pub(crate) fn mappable_size(file: &File, writes: &[(u64, u64)]) -> Result<u64, String> {
    let meta = file.metadata().map_err(|e| format!("stat: {e}"))?;
    if !meta.is_file() {
        return Err("not a regular file".into());
    }
    let size = meta.len();
    if size == 0 {
        return Err("empty file: nothing to map".into());
    }
    for &(off, len) in writes {
        if off + len > size {
            return Err(format!(
                "--write {off}:{len} reaches past EOF ({size}); writes through a window never extend a file"
            ));
        }
    }
    Ok(size)
}

fn growth(before: u64, after: u64) -> i64 {
    after as i64 - before as i64
}

pub fn run(args: ProbeArgs) -> ExitCode {
    let result = match args.via {
        Via::Local => probe(&args),
        Via::Virtio => crate::probe_virtio::probe(&args),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("zerodax probe: {}: {e}", args.file.display());
            ExitCode::FAILURE
        }
    }
}

fn probe(args: &ProbeArgs) -> Result<(), String> {
    let writable = !args.writes.is_empty();
    let file = OpenOptions::new()
        .read(true)
        .write(writable)
        .open(&args.file)
        .map_err(|e| format!("open: {e}"))?;
    let size = mappable_size(&file, &args.writes)?;
    let map_len = usize::try_from(size.div_ceil(PAGE_SIZE as u64) * PAGE_SIZE as u64)
        .map_err(|_| "file too large for this address space".to_string())?;
    let before_extents = extents(&file, size)?;
    let mem0 = memory()?;
    let t0 = Instant::now();

    let window = Window::new(map_len).map_err(|e| format!("window: {e}"))?;
    let mapping = window
        .map_file(0, map_len, &file, 0, writable)
        .map_err(|e| format!("map: {e}"))?;
    let t_map = t0.elapsed();

    let t1 = Instant::now();
    let mut buf = vec![0u8; HUGE_SIZE];
    let mut pos = 0;
    while pos < mapping.len {
        let n = buf.len().min(mapping.len - pos);
        window
            .read_at(pos, &mut buf[..n])
            .map_err(|e| format!("read: {e}"))?;
        pos += n;
    }
    let t_read = t1.elapsed();
    let pages_after_read = window
        .page_states(0, mapping.len)
        .map_err(|e| format!("page states: {e}"))?;

    let t2 = Instant::now();
    for &(off, len) in &args.writes {
        let data = vec![0xA5u8; len as usize];
        window
            .write_at(off as usize, &data)
            .map_err(|e| format!("write: {e}"))?;
    }
    let t_write = t2.elapsed();
    if writable {
        file.sync_all().map_err(|e| format!("fsync: {e}"))?;
    }
    let total = t0.elapsed();
    let mem1 = memory()?;
    let pages = window
        .page_states(0, mapping.len)
        .map_err(|e| format!("page states: {e}"))?;
    let (vmas_process, vmas_window) = window.vma_counts().map_err(|e| e.to_string())?;
    let max_map_count = procfs::max_map_count().unwrap_or(0);
    let after_extents = extents(&file, size)?;
    let stats = window.stats();
    let secs = |d: std::time::Duration| d.as_secs_f64();
    let read_gib_s = mapping.len as f64 / (1u64 << 30) as f64 / secs(t_read).max(1e-9);

    if args.json {
        let v = serde_json::json!({
            "file": args.file.display().to_string(),
            "size": size,
            "mapped_len": mapping.len,
            "window_len": window.len(),
            "writable": writable,
            "kernel_faults": window.kernel_faults(),
            "writes": args.writes.iter().map(|&(o, l)| serde_json::json!({"offset": o, "len": l})).collect::<Vec<_>>(),
            "pages_after_read": pages_json(&pages_after_read),
            "pages": pages_json(&pages),
            "upgrades": stats.upgrades,
            "failed_upgrades": stats.failed,
            "extents_before": extents_json(&before_extents),
            "extents_after": extents_json(&after_extents),
            "memory": {
                "rss_before": mem0.rss,
                "rss_after": mem1.rss,
                "rss_growth": growth(mem0.rss, mem1.rss),
                "vmpte_before": mem0.vmpte,
                "vmpte_after": mem1.vmpte,
                "vmpte_growth": growth(mem0.vmpte, mem1.vmpte),
                "page_cache_before": mem0.cached,
                "page_cache_after": mem1.cached,
                "page_cache_growth": growth(mem0.cached, mem1.cached),
            },
            "vmas": {
                "window": vmas_window,
                "process": vmas_process,
                "max_map_count": max_map_count,
            },
            "time": {
                "map_s": secs(t_map),
                "read_s": secs(t_read),
                "write_s": secs(t_write),
                "total_s": secs(total),
            },
            "read_gib_per_s": read_gib_s,
        });
        println!("{v}");
        return Ok(());
    }

    let mib = |b: u64| b as f64 / (1u64 << 20) as f64;
    let smib = |b: i64| b as f64 / (1u64 << 20) as f64;
    println!("file        {} ({size} bytes)", args.file.display());
    println!(
        "mapped      {} bytes, {}, kernel-mode faults {}",
        mapping.len,
        if writable { "writable" } else { "read-only" },
        if window.kernel_faults() {
            "handled"
        } else {
            "get EFAULT"
        }
    );
    let show = |label: &str, p: &PageStates| {
        println!(
            "{label:<11} {} pages: zero {} (huge {}), file {}, not populated {}, marker {}, private {}",
            p.total(),
            p.zero_total(),
            p.huge_zero,
            p.file,
            p.not_populated,
            p.marker,
            p.private_anon
        );
    };
    show("after read", &pages_after_read);
    if writable {
        show("after write", &pages);
        println!("upgrades    {} ({} failed)", stats.upgrades, stats.failed);
    }
    let ext = |label: &str, e: &Extents| {
        println!(
            "{label:<11} {} data extents ({:.1} MiB), {} holes ({:.1} MiB)",
            e.data.len(),
            mib(e.data.iter().map(Extent::len).sum()),
            e.holes.len(),
            mib(e.holes.iter().map(Extent::len).sum())
        );
    };
    ext("before", &before_extents);
    if writable {
        ext("after", &after_extents);
    }
    println!(
        "memory      RSS {:+.2} MiB, VmPTE {:+.2} MiB, page cache {:+.2} MiB",
        smib(growth(mem0.rss, mem1.rss)),
        smib(growth(mem0.vmpte, mem1.vmpte)),
        smib(growth(mem0.cached, mem1.cached))
    );
    println!("vmas        window {vmas_window}, process {vmas_process}, max {max_map_count}");
    println!(
        "time        map {:.3} s, read {:.3} s ({read_gib_s:.1} GiB/s), write {:.3} s, total {:.3} s",
        secs(t_map),
        secs(t_read),
        secs(t_write),
        secs(total)
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn write_specs_parse() {
        assert_eq!(parse_write("4096:10"), Ok((4096, 10)));
        assert_eq!(parse_write("1M:4K"), Ok((1 << 20, 4096)));
        assert_eq!(parse_write("0x1000:0x10"), Ok((4096, 16)));
        assert_eq!(parse_write("1T:1k"), Ok((1 << 40, 1024)));
        assert!(parse_write("10").is_err());
        assert!(parse_write("10:0").is_err());
        assert!(parse_write("x:1").is_err());
        assert!(parse_write("18446744073709551615:2").is_err());
        assert!(parse_write("99999999999G:1").is_err());
        assert!(parse_write("0x10K:1").is_err());
        assert!(parse_write("1Q:1").is_err());
    }
}
