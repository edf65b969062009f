//! Process, file and system figures a window's budget and reports need.

use std::fs::File;
use std::io::{self, Read};
use std::os::fd::AsRawFd;

/// cachestat(2): 451 on every architecture (Linux 6.5+); libc has no constant for it yet.
const SYS_CACHESTAT: libc::c_long = 451;

fn read_to_string(path: &str) -> io::Result<String> {
    std::fs::read_to_string(path)
}

/// `vm.max_map_count`.
pub fn max_map_count() -> io::Result<usize> {
    read_to_string("/proc/sys/vm/max_map_count")?
        .trim()
        .parse()
        .map_err(|_| io::Error::other("unparsable /proc/sys/vm/max_map_count"))
}

/// VMAs of this process, and how many of them intersect `[start, end)`.
///
/// Streams /proc/self/maps through a small buffer: near `vm.max_map_count` a large
/// allocation (which malloc would serve with mmap) fails, and this must still answer.
pub fn vma_counts(start: usize, end: usize) -> io::Result<(usize, usize)> {
    let mut f = std::fs::File::open("/proc/self/maps")?;
    let mut buf = [0u8; 16384];
    let mut line = Vec::with_capacity(512);
    let mut total = 0;
    let mut inside = 0;
    let mut count = |line: &[u8]| {
        total += 1;
        let range = line.split(|&b| b == b' ').next().unwrap_or(b"");
        let mut it = range.split(|&b| b == b'-');
        let parse = |x: Option<&[u8]>| {
            std::str::from_utf8(x?)
                .ok()
                .and_then(|t| usize::from_str_radix(t, 16).ok())
        };
        if let (Some(a), Some(b)) = (parse(it.next()), parse(it.next())) {
            if a < end && b > start {
                inside += 1;
            }
        }
    };
    loop {
        let n = match f.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        for &b in &buf[..n] {
            if b == b'\n' {
                count(&line);
                line.clear();
            } else if line.len() < 64 {
                // Only the address range at the start of a line matters.
                line.push(b);
            }
        }
    }
    if !line.is_empty() {
        count(&line);
    }
    Ok((total, inside))
}

/// Page-cache pages of `file` (cachestat(2)); exact for this file, unlike /proc/meminfo.
pub fn cached_pages(file: &File) -> io::Result<u64> {
    #[repr(C)]
    struct Range {
        off: u64,
        len: u64,
    }
    #[repr(C)]
    #[derive(Default)]
    struct Stat {
        nr_cache: u64,
        nr_dirty: u64,
        nr_writeback: u64,
        nr_evicted: u64,
        nr_recently_evicted: u64,
    }
    // len 0: the whole file.
    let range = Range { off: 0, len: 0 };
    let mut st = Stat::default();
    // SAFETY: cachestat reads `range` and writes `st`, live locals laid out as the kernel's
    // struct cachestat_range and struct cachestat.
    let rc = unsafe {
        libc::syscall(
            SYS_CACHESTAT,
            file.as_raw_fd(),
            &range as *const Range,
            &mut st as *mut Stat,
            0,
        )
    };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(st.nr_cache)
}

/// A field of /proc/self/status in KiB (`VmRSS`, `VmPTE`, ...).
pub fn status_kib(field: &str) -> io::Result<u64> {
    kib_field(&read_to_string("/proc/self/status")?, field)
}

/// A field of /proc/meminfo in KiB (`Cached`, `MemFree`, ...).
pub fn meminfo_kib(field: &str) -> io::Result<u64> {
    kib_field(&read_to_string("/proc/meminfo")?, field)
}

fn kib_field(text: &str, field: &str) -> io::Result<u64> {
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix(field) {
            if let Some(rest) = rest.strip_prefix(':') {
                let num = rest.trim().trim_end_matches("kB").trim();
                return num
                    .parse()
                    .map_err(|_| io::Error::other(format!("unparsable {field}: {rest}")));
            }
        }
    }
    Err(io::Error::new(
        io::ErrorKind::NotFound,
        format!("no field {field}"),
    ))
}
