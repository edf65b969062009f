//! seekmap: the sparse-file probe of the guest suite, built by prepare.sh as one static binary
//! that runs both in the busybox guest (which has no SEEK_DATA/SEEK_HOLE tool) and on the host,
//! so that both sides describe a file in the same words.
//!
//! Standalone on purpose (std only, no crates): `rustc -O -C target-feature=+crt-static seekmap.rs`.
//!
//!   seekmap map FILE                  print `size=N alloc=N data=S:E,S:E,...` (SEEK_DATA/SEEK_HOLE)
//!   seekmap holes-zero FILE           read every hole and fail unless it is all zeros
//!   seekmap fill FILE OFF LEN SEED    pwrite a pattern derived from SEED at OFF
//!   seekmap mmap-fill FILE OFF LEN SEED   the same pattern written through a shared mapping
//!   seekmap check FILE OFF LEN SEED   fail unless [OFF, OFF+LEN) holds that pattern
//!   seekmap punch FILE OFF LEN        fallocate(PUNCH_HOLE | KEEP_SIZE)
//!   seekmap make FILE SIZE LIST       a file of SIZE whose data is LIST's ranges (lines
//!                                     `OFF LEN SEED`, each the pattern of SEED), holes elsewhere
//!   seekmap verify FILE LIST read|mmap   every byte of FILE, read with pread or through one
//!                                     shared mapping: LIST's patterns, zeros elsewhere
//!   seekmap cachestat FILE            the file's pages in the page cache (cachestat(2))
//!   seekmap resident FILE             which of its pages are in the page cache (mincore)
//!
//! Exit status: 0 on success, 1 when a check fails, 2 on usage or I/O errors.

use std::env;
use std::ffi::c_void;
use std::fs::{File, OpenOptions};
use std::io;
use std::os::unix::fs::{FileExt, MetadataExt};
use std::os::unix::io::AsRawFd;
use std::process::ExitCode;

const SEEK_DATA: i32 = 3;
const SEEK_HOLE: i32 = 4;
const ENXIO: i32 = 6;
const FALLOC_FL_KEEP_SIZE: i32 = 1;
const FALLOC_FL_PUNCH_HOLE: i32 = 2;
const PROT_READ: i32 = 1;
const PROT_WRITE: i32 = 2;
const MAP_SHARED: i32 = 1;
const MS_SYNC: i32 = 4;
const PAGE: u64 = 4096;

extern "C" {
    fn lseek(fd: i32, offset: i64, whence: i32) -> i64;
    fn fallocate(fd: i32, mode: i32, offset: i64, len: i64) -> i32;
    fn mmap(addr: *mut c_void, len: usize, prot: i32, flags: i32, fd: i32, off: i64)
        -> *mut c_void;
    fn msync(addr: *mut c_void, len: usize, flags: i32) -> i32;
    fn munmap(addr: *mut c_void, len: usize) -> i32;
    fn syscall(n: i64, ...) -> i64;
    fn mincore(addr: *mut c_void, len: usize, vec: *mut u8) -> i32;
}

const SYS_CACHESTAT: i64 = 451;

enum Failure {
    Usage(String),
    Io(String, io::Error),
    Check(String),
}

type Result<T> = std::result::Result<T, Failure>;

fn io_err(what: &str) -> impl FnOnce(io::Error) -> Failure + '_ {
    move |e| Failure::Io(what.to_string(), e)
}

/// Next offset >= `from` found by lseek(whence), or None at ENXIO (no more data / past EOF).
fn seek(file: &File, from: u64, whence: i32) -> Result<Option<u64>> {
    // SAFETY: lseek on a file descriptor we own has no memory effects.
    let r = unsafe { lseek(file.as_raw_fd(), from as i64, whence) };
    if r >= 0 {
        return Ok(Some(r as u64));
    }
    let e = io::Error::last_os_error();
    if e.raw_os_error() == Some(ENXIO) {
        Ok(None)
    } else {
        Err(Failure::Io(format!("lseek({from}, {whence})"), e))
    }
}

/// The data ranges of the file as SEEK_DATA/SEEK_HOLE report them, [start, end) each.
fn data_ranges(file: &File, size: u64) -> Result<Vec<(u64, u64)>> {
    let mut ranges = Vec::new();
    let mut pos = 0;
    while pos < size {
        let Some(start) = seek(file, pos, SEEK_DATA)? else {
            break;
        };
        let end = seek(file, start, SEEK_HOLE)?.unwrap_or(size).min(size);
        if end <= start {
            return Err(Failure::Check(format!("SEEK_HOLE({start}) returned {end}")));
        }
        ranges.push((start, end));
        pos = end;
    }
    Ok(ranges)
}

fn holes(size: u64, data: &[(u64, u64)]) -> Vec<(u64, u64)> {
    let mut out = Vec::new();
    let mut pos = 0;
    for &(s, e) in data {
        if s > pos {
            out.push((pos, s));
        }
        pos = e;
    }
    if pos < size {
        out.push((pos, size));
    }
    out
}

/// Byte `i` of the pattern for `seed`: never zero, so a pattern can't pass for a hole.
fn pattern_byte(seed: u64, offset: u64) -> u8 {
    let x = (offset / 8)
        .wrapping_add(seed.wrapping_mul(0x9e37_79b9_7f4a_7c15))
        .wrapping_mul(0xbf58_476d_1ce4_e5b9);
    let b = (x >> ((offset % 8) * 8)) as u8;
    if b == 0 {
        0x5a
    } else {
        b
    }
}

fn pattern(seed: u64, off: u64, len: u64) -> Vec<u8> {
    (off..off + len).map(|o| pattern_byte(seed, o)).collect()
}

fn num(s: &str) -> Result<u64> {
    let (digits, mult) = match s.as_bytes().last() {
        Some(b'K') => (&s[..s.len() - 1], 1 << 10),
        Some(b'M') => (&s[..s.len() - 1], 1 << 20),
        Some(b'G') => (&s[..s.len() - 1], 1 << 30),
        _ => (s, 1),
    };
    digits
        .parse::<u64>()
        .ok()
        .and_then(|n| n.checked_mul(mult))
        .ok_or_else(|| Failure::Usage(format!("not a size: {s}")))
}

fn open(path: &str, write: bool) -> Result<File> {
    OpenOptions::new()
        .read(true)
        .write(write)
        .create(write)
        .truncate(false)
        .open(path)
        .map_err(io_err(path))
}

fn cmd_map(path: &str) -> Result<()> {
    let file = open(path, false)?;
    let meta = file.metadata().map_err(io_err(path))?;
    let data = data_ranges(&file, meta.len())?;
    let list: Vec<String> = data.iter().map(|(s, e)| format!("{s}:{e}")).collect();
    println!(
        "size={} alloc={} data={}",
        meta.len(),
        meta.blocks() * 512,
        if list.is_empty() {
            "-".to_string()
        } else {
            list.join(",")
        }
    );
    Ok(())
}

fn cmd_holes_zero(path: &str) -> Result<()> {
    let file = open(path, false)?;
    let size = file.metadata().map_err(io_err(path))?.len();
    let data = data_ranges(&file, size)?;
    let mut buf = vec![0u8; 1 << 20];
    let mut total = 0u64;
    for (start, end) in holes(size, &data) {
        let mut pos = start;
        while pos < end {
            let n = ((end - pos) as usize).min(buf.len());
            file.read_exact_at(&mut buf[..n], pos)
                .map_err(io_err(path))?;
            if let Some(i) = buf[..n].iter().position(|&b| b != 0) {
                return Err(Failure::Check(format!(
                    "hole [{start}, {end}) has byte {:#04x} at offset {}",
                    buf[i],
                    pos + i as u64
                )));
            }
            pos += n as u64;
            total += n as u64;
        }
    }
    println!("holes-zero ok bytes={total}");
    Ok(())
}

fn cmd_fill(path: &str, off: u64, len: u64, seed: u64) -> Result<()> {
    let file = open(path, true)?;
    file.write_all_at(&pattern(seed, off, len), off)
        .map_err(io_err(path))?;
    file.sync_all().map_err(io_err(path))?;
    println!("fill ok off={off} len={len} seed={seed}");
    Ok(())
}

fn cmd_mmap_fill(path: &str, off: u64, len: u64, seed: u64) -> Result<()> {
    let file = open(path, true)?;
    let size = file.metadata().map_err(io_err(path))?.len();
    if off + len > size {
        return Err(Failure::Usage(format!("mmap-fill past EOF ({size})")));
    }
    let map_off = off & !(PAGE - 1);
    let map_len = (off + len - map_off) as usize;
    // SAFETY: a fresh shared mapping of our own descriptor; checked for MAP_FAILED below and
    // only touched inside [0, map_len).
    let addr = unsafe {
        mmap(
            std::ptr::null_mut(),
            map_len,
            PROT_READ | PROT_WRITE,
            MAP_SHARED,
            file.as_raw_fd(),
            map_off as i64,
        )
    };
    if addr as isize == -1 {
        return Err(Failure::Io("mmap".into(), io::Error::last_os_error()));
    }
    let data = pattern(seed, off, len);
    // SAFETY: the destination lies inside the mapping made above (off - map_off + len == map_len)
    // and the source is a separate Vec.
    unsafe {
        std::ptr::copy_nonoverlapping(
            data.as_ptr(),
            (addr as *mut u8).add((off - map_off) as usize),
            data.len(),
        );
    }
    // SAFETY: addr/map_len are exactly the mapping made above; it is unmapped once, here.
    let synced = unsafe { msync(addr, map_len, MS_SYNC) };
    let sync_err = io::Error::last_os_error();
    // SAFETY: as above.
    unsafe { munmap(addr, map_len) };
    if synced != 0 {
        return Err(Failure::Io("msync".into(), sync_err));
    }
    println!("mmap-fill ok off={off} len={len} seed={seed}");
    Ok(())
}

fn cmd_check(path: &str, off: u64, len: u64, seed: u64) -> Result<()> {
    let file = open(path, false)?;
    let mut buf = vec![0u8; len as usize];
    file.read_exact_at(&mut buf, off).map_err(io_err(path))?;
    let want = pattern(seed, off, len);
    if let Some(i) = buf.iter().zip(&want).position(|(a, b)| a != b) {
        return Err(Failure::Check(format!(
            "pattern {seed} differs at offset {}: {:#04x} instead of {:#04x}",
            off + i as u64,
            buf[i],
            want[i]
        )));
    }
    println!("check ok off={off} len={len} seed={seed}");
    Ok(())
}

fn cmd_punch(path: &str, off: u64, len: u64) -> Result<()> {
    let file = open(path, true)?;
    // SAFETY: fallocate on a descriptor we own has no memory effects.
    let r = unsafe {
        fallocate(
            file.as_raw_fd(),
            FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE,
            off as i64,
            len as i64,
        )
    };
    if r != 0 {
        return Err(Failure::Io(
            "fallocate(PUNCH_HOLE)".into(),
            io::Error::last_os_error(),
        ));
    }
    println!("punch ok off={off} len={len}");
    Ok(())
}

/// LIST: one `OFF LEN SEED` a line (blank lines and `#` comments skipped), sorted by OFF.
fn read_list(path: &str) -> Result<Vec<(u64, u64, u64)>> {
    let text = std::fs::read_to_string(path).map_err(io_err(path))?;
    let mut v = Vec::new();
    for line in text.lines().map(str::trim) {
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let w: Vec<&str> = line.split_whitespace().collect();
        let [o, l, s] = w.as_slice() else {
            return Err(Failure::Usage(format!("{path}: not OFF LEN SEED: {line}")));
        };
        v.push((num(o)?, num(l)?, num(s)?));
    }
    v.sort_unstable();
    Ok(v)
}

fn cmd_make(path: &str, size: u64, list: &str) -> Result<()> {
    let ranges = read_list(list)?;
    let file = OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .open(path)
        .map_err(io_err(path))?;
    for &(off, len, seed) in &ranges {
        file.write_all_at(&pattern(seed, off, len), off)
            .map_err(io_err(path))?;
    }
    file.set_len(size).map_err(io_err(path))?;
    file.sync_all().map_err(io_err(path))?;
    println!("make ok size={size} ranges={}", ranges.len());
    Ok(())
}

/// Fills `out` with what a file made from `ranges` holds at `base..`.
fn expected_into(ranges: &[(u64, u64, u64)], base: u64, out: &mut [u8]) {
    out.fill(0);
    let end = base + out.len() as u64;
    let first = ranges.partition_point(|r| r.0 + r.1 <= base);
    for &(o, l, seed) in ranges[first..].iter().take_while(|r| r.0 < end) {
        for off in o.max(base)..(o + l).min(end) {
            out[(off - base) as usize] = pattern_byte(seed, off);
        }
    }
}

fn cmd_verify(path: &str, list: &str, via: &str) -> Result<()> {
    let ranges = read_list(list)?;
    let file = open(path, false)?;
    let size = file.metadata().map_err(io_err(path))?.len();
    let mut bad = None;
    let mut want = vec![0u8; 1 << 20];
    let mut check = |base: u64, buf: &[u8]| {
        if bad.is_none() {
            let want = &mut want[..buf.len()];
            expected_into(&ranges, base, want);
            if let Some(i) = buf.iter().zip(want.iter()).position(|(a, b)| a != b) {
                bad = Some((base + i as u64, buf[i], want[i]));
            }
        }
    };
    match via {
        "read" => {
            let mut buf = vec![0u8; 1 << 20];
            let mut off = 0;
            while off < size {
                let n = (size - off).min(buf.len() as u64) as usize;
                file.read_exact_at(&mut buf[..n], off).map_err(io_err(path))?;
                check(off, &buf[..n]);
                off += n as u64;
            }
        }
        "mmap" if size > 0 => {
            // SAFETY: a fresh read-only shared mapping of our own descriptor, checked for
            // MAP_FAILED, read only inside [0, size), unmapped below.
            let addr = unsafe {
                mmap(std::ptr::null_mut(), size as usize, PROT_READ, MAP_SHARED, file.as_raw_fd(), 0)
            };
            if addr as isize == -1 {
                return Err(Failure::Io("mmap".into(), io::Error::last_os_error()));
            }
            // SAFETY: the mapping above is `size` bytes long and stays mapped until munmap.
            let bytes = unsafe { std::slice::from_raw_parts(addr as *const u8, size as usize) };
            for (i, chunk) in bytes.chunks(1 << 20).enumerate() {
                check((i as u64) << 20, chunk);
            }
            // SAFETY: exactly the mapping made above, unmapped once.
            unsafe { munmap(addr, size as usize) };
        }
        "mmap" => {}
        _ => return Err(Failure::Usage(format!("verify: read or mmap, not {via}"))),
    }
    if let Some((off, got, want)) = bad {
        return Err(Failure::Check(format!(
            "{path} ({via}) differs at {off}: {got:#04x} instead of {want:#04x}"
        )));
    }
    println!("verify ok {path} size={size} ranges={} via={via}", ranges.len());
    Ok(())
}

fn cmd_cachestat(path: &str) -> Result<()> {
    let file = open(path, false)?;
    let range = [0u64, 0u64]; // offset 0, length 0: the whole file
    let mut cs = [0u64; 5]; // cache, dirty, writeback, evicted, recently_evicted
    // SAFETY: cachestat(fd, &range, &cs, 0) reads 16 bytes and writes 40, both arrays above.
    let r = unsafe { syscall(SYS_CACHESTAT, file.as_raw_fd(), range.as_ptr(), cs.as_mut_ptr(), 0) };
    if r != 0 {
        return Err(Failure::Io("cachestat".into(), io::Error::last_os_error()));
    }
    println!("cache={} dirty={} writeback={}", cs[0], cs[1], cs[2]);
    Ok(())
}

/// The page ranges of FILE in the page cache, as `START-END` page numbers.
fn cmd_resident(path: &str) -> Result<()> {
    let file = open(path, false)?;
    let size = file.metadata().map_err(io_err(path))?.len();
    if size == 0 {
        println!("resident none");
        return Ok(());
    }
    let pages = size.div_ceil(PAGE) as usize;
    // SAFETY: a fresh read-only shared mapping of our own descriptor, never touched (mincore
    // only reports residency), checked for MAP_FAILED and unmapped below.
    let addr = unsafe {
        mmap(std::ptr::null_mut(), size as usize, PROT_READ, MAP_SHARED, file.as_raw_fd(), 0)
    };
    if addr as isize == -1 {
        return Err(Failure::Io("mmap".into(), io::Error::last_os_error()));
    }
    let mut vec = vec![0u8; pages];
    // SAFETY: `vec` has one byte per page of the mapping made above.
    let r = unsafe { mincore(addr, size as usize, vec.as_mut_ptr()) };
    let e = io::Error::last_os_error();
    // SAFETY: exactly the mapping made above, unmapped once.
    unsafe { munmap(addr, size as usize) };
    if r != 0 {
        return Err(Failure::Io("mincore".into(), e));
    }
    let mut out = Vec::new();
    let mut i = 0;
    while i < pages {
        if vec[i] & 1 == 0 {
            i += 1;
            continue;
        }
        let start = i;
        while i < pages && vec[i] & 1 != 0 {
            i += 1;
        }
        out.push(format!("{start}-{i}"));
    }
    println!("resident {}", if out.is_empty() { "none".into() } else { out.join(",") });
    Ok(())
}

fn run(args: &[String]) -> Result<()> {
    let a: Vec<&str> = args.iter().map(String::as_str).collect();
    match a.as_slice() {
        ["map", f] => cmd_map(f),
        ["holes-zero", f] => cmd_holes_zero(f),
        ["fill", f, o, l, s] => cmd_fill(f, num(o)?, num(l)?, num(s)?),
        ["mmap-fill", f, o, l, s] => cmd_mmap_fill(f, num(o)?, num(l)?, num(s)?),
        ["check", f, o, l, s] => cmd_check(f, num(o)?, num(l)?, num(s)?),
        ["punch", f, o, l] => cmd_punch(f, num(o)?, num(l)?),
        ["make", f, size, list] => cmd_make(f, num(size)?, list),
        ["verify", f, list, via] => cmd_verify(f, list, via),
        ["cachestat", f] => cmd_cachestat(f),
        ["resident", f] => cmd_resident(f),
        _ => Err(Failure::Usage(
            "usage: seekmap map|holes-zero|cachestat|resident FILE | fill|mmap-fill|check FILE OFF LEN SEED \
             | punch FILE OFF LEN | make FILE SIZE LIST | verify FILE LIST read|mmap"
                .into(),
        )),
    }
}

fn main() -> ExitCode {
    let args: Vec<String> = env::args().skip(1).collect();
    match run(&args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(Failure::Check(msg)) => {
            println!("seekmap: check failed: {msg}");
            ExitCode::from(1)
        }
        Err(Failure::Usage(msg)) => {
            eprintln!("seekmap: {msg}");
            ExitCode::from(2)
        }
        Err(Failure::Io(what, e)) => {
            println!("seekmap: {what}: {e}");
            ExitCode::from(2)
        }
    }
}
