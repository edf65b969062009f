//! `zerodax probe` on a real sparse file on a loop-mounted ext4 image (run as root): the
//! JSON report's page states must agree with the file's own extents, and a write through
//! the window must land in the file and nowhere else.

mod common;
use common::*;

use std::fs::File;
use std::os::fd::AsRawFd;
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::process::Command;

const PAGE: u64 = 4096;

fn probe(args: &[&str]) -> (bool, serde_json::Value, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_zerodax"))
        .arg("probe")
        .args(args)
        .output()
        .expect("run zerodax probe");
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    let json = serde_json::from_str(&stdout).unwrap_or(serde_json::Value::Null);
    (out.status.success(), json, stderr)
}

/// Bytes of data in [0, size) per SEEK_DATA/SEEK_HOLE, counted independently of the probe.
fn data_bytes(path: &Path) -> u64 {
    let f = File::open(path).expect("open");
    let size = f.metadata().expect("stat").len() as i64;
    let mut total = 0;
    let mut off = 0i64;
    while off < size {
        // SAFETY: lseek on a descriptor we own.
        let data = unsafe { libc::lseek(f.as_raw_fd(), off, libc::SEEK_DATA) };
        if data < 0 {
            break;
        }
        // SAFETY: as above.
        let hole = unsafe { libc::lseek(f.as_raw_fd(), data, libc::SEEK_HOLE) };
        total += (hole - data) as u64;
        off = hole;
    }
    total
}

/// Creates the sparse file `path` of `size` with each `(offset, bytes)` written; synced,
/// its page cache dropped.
fn make_sparse(path: &Path, size: u64, data: impl IntoIterator<Item = (u64, Vec<u8>)>) {
    let f = scratch::sparse_file(path, size, data).expect("sparse file");
    scratch::drop_cache(&f).expect("drop cache");
}

fn n(v: &serde_json::Value, path: &[&str]) -> u64 {
    let mut v = v;
    for k in path {
        v = &v[*k];
    }
    v.as_u64()
        .unwrap_or_else(|| panic!("{path:?} missing in {v}"))
}

#[test]
fn probe_reports_holes_as_zero_pages_and_writes_reach_the_file() {
    let ext4 = Ext4::new();
    let path = ext4.mnt.join("sparse");
    let size = 256 * MIB;
    make_sparse(
        &path,
        size,
        (0..8u64).map(|i| (i * 29 * MIB + 8192, vec![0x11 + i as u8; 64 * 1024])),
    );
    let data_before = data_bytes(&path);
    assert_eq!(
        data_before,
        8 * 64 * 1024,
        "ext4 allocates what was written"
    );
    let p = path.to_str().expect("utf-8 path");

    let (ok, report, stderr) = probe(&[p, "--json", "--write", "100M:4K"]);
    assert!(ok, "probe failed: {stderr}");
    let total = size / PAGE;
    let data_pages = data_before / PAGE;
    assert_eq!(n(&report, &["pages_after_read", "total"]), total);
    assert_eq!(
        n(&report, &["pages_after_read", "zero"]),
        total - data_pages,
        "every hole page reads as the zero page: {report}"
    );
    assert_eq!(n(&report, &["pages_after_read", "file"]), data_pages);
    assert_eq!(n(&report, &["pages_after_read", "private_anon"]), 0);
    assert_eq!(n(&report, &["pages", "zero"]), total - data_pages - 1);
    assert_eq!(n(&report, &["pages", "file"]), data_pages + 1);
    assert_eq!(n(&report, &["pages", "private_anon"]), 0);
    assert_eq!(n(&report, &["upgrades"]), 1);
    assert_eq!(n(&report, &["extents_before", "data_bytes"]), data_before);
    assert_eq!(
        n(&report, &["extents_after", "data_bytes"]),
        data_before + PAGE
    );

    // The write is in the file, and only that page left the hole.
    assert_eq!(data_bytes(&path), data_before + PAGE);
    let f = File::open(&path).expect("open");
    let mut page = vec![0u8; PAGE as usize];
    f.read_exact_at(&mut page, 100 * MIB).expect("read");
    assert!(
        page.iter().all(|&b| b == 0xA5),
        "written bytes reach the file"
    );
    f.read_exact_at(&mut page, 100 * MIB + PAGE).expect("read");
    assert!(
        page.iter().all(|&b| b == 0),
        "the rest of the hole is zeros"
    );
}

#[test]
fn probe_errors_are_one_line_and_nonzero() {
    let tmp = TempDir::new("zerodax-test").expect("tempdir");
    let missing = tmp.0.join("missing");
    let (ok, _, stderr) = probe(&[missing.to_str().expect("utf-8")]);
    assert!(!ok);
    assert_eq!(stderr.trim().lines().count(), 1, "one line: {stderr}");

    let small = tmp.0.join("small");
    std::fs::write(&small, [1u8; 100]).expect("write");
    let (ok, _, stderr) = probe(&[small.to_str().expect("utf-8"), "--write", "1M:4K"]);
    assert!(!ok, "a write past EOF is refused");
    assert!(!stderr.is_empty());
    assert_eq!(std::fs::read(&small).expect("read"), vec![1u8; 100]);
}

/// `probe --via virtio`: the same sparse file read through `zerodax serve`'s DAX window by
/// the built-in frontend (SETUPMAPPING, SHMEM_MAP): holes are zero pages, data pages are
/// file pages, the file's page cache grows by the data only, and a write lands in the file.
#[test]
fn probe_via_virtio_maps_holes_as_zero_pages() {
    let ext4 = Ext4::new();
    let path = ext4.mnt.join("sparse");
    let size = 128 * MIB;
    make_sparse(
        &path,
        size,
        (0..6u64).map(|i| (i * 21 * MIB + 12288, vec![0x21 + i as u8; 128 * 1024])),
    );
    let data = data_bytes(&path);
    assert_eq!(data, 6 * 128 * 1024);
    let p = path.to_str().expect("utf-8 path");
    let (ok, report, stderr) = probe(&[p, "--via", "virtio", "--json", "--write", "100M:4K"]);
    assert!(ok, "probe failed: {stderr}");
    let total = size / PAGE;
    let data_pages = data / PAGE;
    assert_eq!(report["via"], "virtio");
    assert_eq!(n(&report, &["pages_after_read", "total"]), total);
    assert_eq!(
        n(&report, &["pages_after_read", "zero"]),
        total - data_pages,
        "every hole page reads as the zero page: {report}"
    );
    assert_eq!(n(&report, &["pages_after_read", "file"]), data_pages);
    assert_eq!(n(&report, &["pages", "private_anon"]), 0);
    assert_eq!(n(&report, &["shmem", "refused"]), 0);
    // Page cache: the data read, plus the range written into: a WRITE range is preloaded
    // whole (clean pages; docs/dax.md, *Preload*), the write happens after the read.
    let grown = report["memory"]["file_page_cache_growth"]
        .as_i64()
        .expect("growth");
    assert!(
        grown >= data as i64 && grown <= (data + 2 * MIB + 16 * PAGE) as i64,
        "page cache grew by {grown} for {data} bytes of data"
    );
    assert_eq!(
        n(&report, &["extents_after", "data_bytes"]),
        data + PAGE,
        "only the written page left the hole"
    );
    let f = File::open(&path).expect("open");
    let mut page = vec![0u8; PAGE as usize];
    f.read_exact_at(&mut page, 100 * MIB).expect("read");
    assert!(
        page.iter().all(|&b| b == 0xA5),
        "the write reached the file"
    );
}

/// `probe --via virtio --read fuse`: the comparison path reads the whole file with
/// FUSE_READ (no window); a window is only offered by zerodax.
#[test]
fn probe_via_virtio_fuse_read_reads_the_file() {
    let ext4 = Ext4::new();
    let path = ext4.mnt.join("sparse");
    make_sparse(&path, 16 * MIB, [(5 * MIB, vec![7u8; 65536])]);
    let p = path.to_str().expect("utf-8 path");
    let (ok, report, stderr) = probe(&[p, "--via", "virtio", "--read", "fuse", "--json"]);
    assert!(ok, "probe failed: {stderr}");
    assert_eq!(report["read"], "fuse");
    assert_eq!(report["backend"], "zerodax");
    assert_eq!(n(&report, &["size"]), 16 * MIB);
    // FUSE_READ goes through the host page cache, holes included.
    let grown = report["memory"]["file_page_cache_growth"]
        .as_i64()
        .expect("growth");
    assert!(grown >= (16 * MIB) as i64, "page cache grew by {grown}");

    let (ok, _, stderr) = probe(&[p, "--via", "virtio", "--backend", "virtiofsd"]);
    assert!(!ok && stderr.contains("DAX window"), "{stderr}");
    let (ok, _, stderr) = probe(&[p, "--via", "virtio", "--read", "fuse", "--write", "0:4K"]);
    assert!(!ok, "{stderr}");
}
