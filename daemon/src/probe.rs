//! `zerodax probe FILE [--write OFFSET:LEN]... [--json]`: map FILE through a dax-window in
//! this process, read every page, optionally write through the window, and report how the
//! pages are backed, the file's extents before and after, the memory it cost and the time.
//! JSON fields are documented in docs/probe-json.md.

use std::fs::OpenOptions;
use std::process::ExitCode;
use std::time::Instant;

use dax_window::{procfs, Extent, PageStates, Window, HUGE_SIZE, PAGE_SIZE};

use crate::probe_args::{mappable_size, ProbeArgs, Via};
use crate::report::{extents, extents_json, pages_json, Extents};

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
