//! `zerodax probe FILE --via virtio`: the file read through the virtio-fs DAX path. A
//! `zerodax serve` child serves the file's directory with a DAX window; the built-in frontend
//! (VMM and guest in this process) maps the file through that window with FUSE_SETUPMAPPING,
//! reads every byte, performs the writes, and reports page states and memory of both
//! processes. The frontend reaches the child only through its vhost-user socket.

use std::fs::File;
use std::path::Path;
use std::time::{Duration, Instant};

use dax_window::{procfs, Extent, PageStates, HUGE_SIZE, PAGE_SIZE};
use frontend::backend::BackendSpec;
use frontend::dax::{DaxGuest, RANGE_SIZE};
use frontend::driver::DriverConfig;
use frontend::fuse::{FuseClient, DEFAULT_INIT_FLAGS};
use protocol::abi::{FUSE_HAS_INODE_DAX, FUSE_MAP_ALIGNMENT, FUSE_ROOT_ID};
use vhost::vhost_user::VhostUserProtocolFeatures as P;

use zerodax::cli::DaxHolesArg;

use crate::probe_args::{mappable_size, BackendKind, ProbeArgs, ReadPath};
use crate::report::{extents, extents_json, pages_json};

const TIMEOUT: Duration = Duration::from_secs(30);

/// Page-cache pages of `file`, as the probe reports errors.
fn cached_pages(file: &File) -> Result<u64, String> {
    procfs::cached_pages(file).map_err(|e| format!("cachestat: {e}"))
}

fn rss_of(pid: u32) -> Result<u64, String> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .map_err(|e| format!("/proc/{pid}/status: {e}"))?;
    text.lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .map(|k| k * 1024)
        .ok_or_else(|| format!("no VmRSS in /proc/{pid}/status"))
}

pub fn probe(args: &ProbeArgs) -> Result<(), String> {
    let writable = !args.writes.is_empty();
    let path = std::fs::canonicalize(&args.file).map_err(|e| format!("open: {e}"))?;
    let file = File::open(&path).map_err(|e| format!("open: {e}"))?;
    let size = mappable_size(&file, &args.writes)?;
    let dir = path.parent().unwrap_or(Path::new("/"));
    let name = path
        .file_name()
        .and_then(|n| n.to_str())
        .ok_or("file name is not UTF-8")?;
    // The window holds the whole file (a power of two, as a VMM's BAR must be).
    let window_len = (size.div_ceil(RANGE_SIZE) * RANGE_SIZE)
        .max(RANGE_SIZE)
        .next_power_of_two();
    let holes = match args.dax_holes {
        DaxHolesArg::Map => "map",
        DaxHolesArg::Zero => "zero",
    };

    let fuse_read = args.read == ReadPath::Fuse;
    if fuse_read && writable {
        return Err("--read fuse only reads; drop --write".into());
    }
    if !fuse_read && args.backend != BackendKind::Zerodax {
        return Err("only zerodax has a DAX window: use --read fuse with --backend".into());
    }
    // The backend: this binary's `serve`, the file's directory, a window holding the file.
    let exe = std::env::current_exe().map_err(|e| format!("own executable: {e}"))?;
    let scratch = scratch::TempDir::new("zerodax-probe").map_err(|e| e.to_string())?;
    let bin = || {
        args.backend_bin
            .clone()
            .ok_or_else(|| "--backend virtiofsd|c-virtiofsd needs --backend-bin".to_string())
    };
    let spec = match args.backend {
        BackendKind::Zerodax => {
            let mut spec = BackendSpec::zerodax(exe);
            let size_arg = window_len.to_string();
            // The built-in frontend has no memory-slot limit: enough slots for every range.
            let slots_arg = (window_len / RANGE_SIZE * 4).to_string();
            let mut extra = vec![
                "--cache-size",
                &size_arg,
                "--dax-holes",
                holes,
                "--dax-slots",
                &slots_arg,
            ];
            if !writable {
                extra.push("--read-only");
            }
            spec.args.extend(extra.into_iter().map(String::from));
            spec
        }
        BackendKind::Virtiofsd => BackendSpec::rust_virtiofsd(bin()?),
        BackendKind::CVirtiofsd => BackendSpec::c_virtiofsd(bin()?),
    };
    let socket = scratch.0.join("vfs.sock");
    let backend = spec
        .spawn(&socket, dir, &scratch.0.join("serve.log"), TIMEOUT)
        .map_err(|e| format!("zerodax serve: {e}"))?;
    let backend_pid = backend.pid().ok_or("zerodax serve exited")?;
    let log = || backend.log_tail(2000);

    let config = DriverConfig {
        timeout: TIMEOUT,
        protocol_features: if fuse_read {
            P::MQ | P::REPLY_ACK
        } else {
            P::MQ | P::REPLY_ACK | P::SHMEM | P::BACKEND_REQ | P::BACKEND_SEND_FD
        },
        ..DriverConfig::linux_like()
    };
    let mut fs =
        FuseClient::connect(&socket, &config).map_err(|e| format!("connect: {e}\n{}", log()))?;
    fs.init(DEFAULT_INIT_FLAGS | FUSE_MAP_ALIGNMENT | FUSE_HAS_INODE_DAX)
        .map_err(|e| format!("INIT: {e}"))?;
    let node = fs
        .lookup(FUSE_ROOT_ID, name)
        .map_err(|e| format!("LOOKUP {name}: {e}"))?
        .nodeid;
    let fh = if writable {
        Some(
            fs.open(node, libc::O_RDWR as u32)
                .map_err(|e| format!("OPEN: {e}"))?
                .fh,
        )
    } else {
        None
    };
    let before_extents = extents(&file, size)?;
    let cache0 = cached_pages(&file)?;
    let rss0 = rss_of(std::process::id())?;
    let brss0 = rss_of(backend_pid)?;
    if fuse_read {
        return fuse_read_report(
            args,
            &mut fs,
            node,
            FuseReadStart {
                size,
                file: &file,
                cache0,
                rss0,
                brss0,
                backend_pid,
                backend: &spec.name,
            },
        );
    }
    let t0 = Instant::now();
    let mut guest = DaxGuest::new(&mut fs).map_err(|e| format!("DAX window: {e}"))?;
    let mut buf = vec![0u8; HUGE_SIZE];
    let mut pos = 0;
    while pos < size {
        let n = (size - pos).min(buf.len() as u64) as usize;
        guest
            .read(&mut fs, node, pos, &mut buf[..n])
            .map_err(|e| format!("read at {pos}: {e}\n{}", log()))?;
        pos += n as u64;
    }
    let t_read = t0.elapsed();
    let mapped_len = size.div_ceil(PAGE_SIZE as u64) * PAGE_SIZE as u64;
    let states = |g: &DaxGuest| -> Result<PageStates, String> {
        g.window()
            .page_states(0, mapped_len as usize)
            .map_err(|e| format!("page states: {e}"))
    };
    let pages_after_read = states(&guest)?;
    let t1 = Instant::now();
    for &(off, len) in &args.writes {
        let data = vec![0xA5u8; len as usize];
        guest
            .write(&mut fs, node, fh.unwrap_or(u64::MAX), off, &data)
            .map_err(|e| format!("write: {e}\n{}", log()))?;
    }
    if let Some(fh) = fh {
        fs.fsync(node, fh, false)
            .map_err(|e| format!("fsync: {e}"))?;
    }
    let t_write = t1.elapsed();
    let cache1 = cached_pages(&file)?;
    let rss1 = rss_of(std::process::id())?;
    let brss1 = rss_of(backend_pid)?;
    let pages = states(&guest)?;
    let after_extents = extents(&file, size)?;
    let shmem = guest.shmem().stats();
    let page = PAGE_SIZE as i64;
    let growth = |a: u64, b: u64| b as i64 - a as i64;
    let secs = |d: Duration| d.as_secs_f64();
    let read_gib_s = mapped_len as f64 / (1u64 << 30) as f64 / secs(t_read).max(1e-9);
    // Page states are of window [0, mapped_len): the guest set ranges up in order of first
    // touch, which for this sequential read (window >= file, no reclaim) is file order, so
    // window page i is file page i.

    if args.json {
        let v = serde_json::json!({
            "file": args.file.display().to_string(),
            "via": "virtio",
            "dax_holes": holes,
            "size": size,
            "mapped_len": mapped_len,
            "window_len": window_len,
            "writable": writable,
            "writes": args.writes.iter().map(|&(o, l)| serde_json::json!({"offset": o, "len": l})).collect::<Vec<_>>(),
            "pages_after_read": pages_json(&pages_after_read),
            "pages": pages_json(&pages),
            "extents_before": extents_json(&before_extents),
            "extents_after": extents_json(&after_extents),
            "shmem": {
                "maps": shmem.maps,
                "unmaps": shmem.unmaps,
                "refused": shmem.refused,
                "setups": guest.setups,
                "reclaims": guest.reclaims,
            },
            "memory": {
                "rss_growth": growth(rss0, rss1),
                "backend_rss_growth": growth(brss0, brss1),
                "file_page_cache_before": cache0 as i64 * page,
                "file_page_cache_after": cache1 as i64 * page,
                "file_page_cache_growth": growth(cache0, cache1) * page,
            },
            "time": {
                "read_s": secs(t_read),
                "write_s": secs(t_write),
            },
            "read_gib_per_s": read_gib_s,
            "vmas_max_map_count": procfs::max_map_count().unwrap_or(0),
        });
        println!("{v}");
        return Ok(());
    }
    let mib = |b: i64| b as f64 / (1u64 << 20) as f64;
    println!("file        {} ({size} bytes)", args.file.display());
    println!(
        "via         virtio: zerodax serve --dax-holes {holes}, window {window_len} bytes, {} SHMEM_MAP, {} SHMEM_UNMAP",
        shmem.maps, shmem.unmaps
    );
    let show = |label: &str, p: &PageStates| {
        println!(
            "{label:<11} {} pages: zero {} (huge {}), file {}, not populated {}, private {}",
            p.total(),
            p.zero_total(),
            p.huge_zero,
            p.file,
            p.not_populated,
            p.private_anon
        );
    };
    show("after read", &pages_after_read);
    if writable {
        show("after write", &pages);
    }
    let data: u64 = before_extents.data.iter().map(Extent::len).sum();
    println!(
        "extents     {} data ({:.1} MiB), {} holes",
        before_extents.data.len(),
        mib(data as i64),
        before_extents.holes.len()
    );
    println!(
        "memory      file page cache {:+.2} MiB, RSS probe {:+.2} MiB, RSS serve {:+.2} MiB",
        mib(growth(cache0, cache1) * page),
        mib(growth(rss0, rss1)),
        mib(growth(brss0, brss1))
    );
    println!(
        "time        read {:.3} s ({read_gib_s:.2} GiB/s), write {:.3} s",
        secs(t_read),
        secs(t_write)
    );
    Ok(())
}

/// What `--read fuse` measured before reading.
struct FuseReadStart<'a> {
    size: u64,
    file: &'a File,
    cache0: u64,
    rss0: u64,
    brss0: u64,
    backend_pid: u32,
    backend: &'a str,
}

/// `--read fuse`: the file read with FUSE_READ requests of the largest size INIT allowed,
/// through the frontend's virtqueues (the comparison for the window).
fn fuse_read_report(
    args: &ProbeArgs,
    fs: &mut FuseClient,
    node: u64,
    st: FuseReadStart<'_>,
) -> Result<(), String> {
    let max_pages = fs
        .init_out()
        .map_or(32, |o| u32::from(o.max_pages).max(1))
        .min(u32::from(fs.driver().queue_size()).saturating_sub(4).max(1));
    let chunk = max_pages * PAGE_SIZE as u32;
    let fh = fs
        .open(node, libc::O_RDONLY as u32)
        .map_err(|e| format!("OPEN: {e}"))?
        .fh;
    let t0 = Instant::now();
    let mut pos = 0u64;
    // One reply buffer for the whole loop, so the time is the transport's, not page faults
    // of a fresh buffer per READ.
    let mut data = Vec::with_capacity(chunk as usize);
    while pos < st.size {
        let want = (st.size - pos).min(u64::from(chunk)) as u32;
        let n = fs
            .read_into(node, fh, pos, want, &mut data)
            .map_err(|e| format!("READ at {pos}: {e}"))?;
        if n == 0 {
            return Err(format!("READ at {pos}: end of file before {}", st.size));
        }
        pos += n as u64;
    }
    let t_read = t0.elapsed();
    let cache1 = cached_pages(st.file)?;
    let rss1 = rss_of(std::process::id())?;
    let brss1 = rss_of(st.backend_pid)?;
    let page = PAGE_SIZE as i64;
    let growth = |a: u64, b: u64| b as i64 - a as i64;
    let gib_s = st.size as f64 / (1u64 << 30) as f64 / t_read.as_secs_f64().max(1e-9);
    if args.json {
        let v = serde_json::json!({
            "file": args.file.display().to_string(),
            "via": "virtio",
            "read": "fuse",
            "backend": st.backend,
            "size": st.size,
            "read_size": chunk,
            "memory": {
                "rss_growth": growth(st.rss0, rss1),
                "backend_rss_growth": growth(st.brss0, brss1),
                "file_page_cache_before": st.cache0 as i64 * page,
                "file_page_cache_after": cache1 as i64 * page,
                "file_page_cache_growth": growth(st.cache0, cache1) * page,
            },
            "time": { "read_s": t_read.as_secs_f64() },
            "read_gib_per_s": gib_s,
        });
        println!("{v}");
        return Ok(());
    }
    let mib = |b: i64| b as f64 / (1u64 << 20) as f64;
    println!("file        {} ({} bytes)", args.file.display(), st.size);
    println!(
        "via         virtio: {} , FUSE_READ of {chunk} bytes",
        st.backend
    );
    println!(
        "memory      file page cache {:+.2} MiB, RSS probe {:+.2} MiB, RSS backend {:+.2} MiB",
        mib(growth(st.cache0, cache1) * page),
        mib(growth(st.rss0, rss1)),
        mib(growth(st.brss0, brss1))
    );
    println!(
        "time        read {:.3} s ({gib_s:.2} GiB/s)",
        t_read.as_secs_f64()
    );
    Ok(())
}
