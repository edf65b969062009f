//! `zerodax bench` end to end (run as root: it loop-mounts its own ext4): its JSON must agree
//! with the file it made (zero pages through a window = the file's hole pages), the window
//! must leave the page cache alone where plain mmap fills it, and every path must be there.
//! Speeds are reported, never asserted.

use std::process::Command;

const PAGE: u64 = 4096;
const SIZE: u64 = 64 << 20;
const EXTENT: u64 = 256 << 10;

fn bench(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_zerodax"))
        .arg("bench")
        .args(args)
        .output()
        .expect("run zerodax bench")
}

fn path<'a>(v: &'a serde_json::Value, name: &str) -> &'a serde_json::Value {
    v["paths"]
        .as_array()
        .expect("paths")
        .iter()
        .find(|p| p["name"] == name)
        .unwrap_or_else(|| panic!("no path {name:?} in {v}"))
}

#[test]
fn bench_json_agrees_with_the_file_it_made() {
    // SAFETY: geteuid has no preconditions.
    assert_eq!(
        unsafe { libc::geteuid() },
        0,
        "the bench test needs root (it loop-mounts an ext4 image)"
    );
    let out = bench(&["--size", "64M", "--json", "--peers", "zerodax"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "zerodax bench failed: {stderr}");
    let v: serde_json::Value =
        serde_json::from_slice(&out.stdout).unwrap_or_else(|e| panic!("bench JSON: {e}: {stderr}"));

    let file = &v["file"];
    assert_eq!(file["size"], SIZE);
    assert_eq!(file["loop_ext4"], true);
    // 1% of 64 MiB in whole 256 KiB extents: 3 extents, as the file's own SEEK_DATA says.
    let data_bytes = file["extents"]["data_bytes"].as_u64().expect("data_bytes");
    let want_data = (SIZE as f64 * 0.01 / EXTENT as f64).round() as u64 * EXTENT;
    assert_eq!(data_bytes, want_data, "{file}");
    let listed: u64 = file["extents"]["data"]
        .as_array()
        .expect("data extents")
        .iter()
        .map(|e| e[1].as_u64().unwrap() - e[0].as_u64().unwrap())
        .sum();
    assert_eq!(listed, data_bytes);
    let hole_pages = (SIZE - data_bytes) / PAGE;
    assert_eq!(file["hole_pages"], hole_pages);

    for name in [
        "limit: anon huge zero",
        "plain mmap",
        "read(2) 1 MiB",
        "window read-only",
        "virtio window zero",
        "virtio window map",
        "FUSE_READ zerodax",
    ] {
        let p = path(&v, name);
        for field in [
            "cold_gib_per_s",
            "warm_gib_per_s",
            "cold_vs_mmap",
            "cold_vs_limit",
        ] {
            let x = p[field].as_f64().unwrap_or(0.0);
            assert!(x > 0.0 && x.is_finite(), "{name}: {field} = {x}");
        }
    }

    // Every hole page read through the local window is the zero page, and nothing else is.
    assert_eq!(path(&v, "window read-only")["zero_pages"], hole_pages);
    // Through `serve`, a 2 MiB range's data is mapped as one region, first data page to last
    // (docs/dax.md, the slot budget): the holes outside those spans are the zero page. (The
    // extents' slots are random: two in one range put the hole between them in the span.)
    const RANGE: u64 = 2 << 20;
    let mut spans: std::collections::BTreeMap<u64, (u64, u64)> = Default::default();
    for e in file["extents"]["data"].as_array().expect("data extents") {
        let (mut s, end) = (e[0].as_u64().unwrap(), e[1].as_u64().unwrap());
        while s < end {
            let r = s / RANGE;
            let t = end.min((r + 1) * RANGE);
            let span = spans.entry(r).or_insert((s, t));
            *span = (span.0.min(s), span.1.max(t));
            s = t;
        }
    }
    let span_pages: u64 = spans.values().map(|(s, t)| (t - s) / PAGE).sum();
    assert_eq!(
        path(&v, "virtio window zero")["zero_pages"],
        SIZE / PAGE - span_pages,
        "virtio window zero"
    );
    // `--dax-holes map` maps the holes as file pages: no zero page at all.
    assert_eq!(path(&v, "virtio window map")["zero_pages"], 0);
    assert!(path(&v, "plain mmap")["zero_pages"].is_null());

    let cache = |name: &str| path(&v, name)["page_cache_growth"].as_i64().unwrap();
    let mmap = cache("plain mmap");
    assert!(mmap >= (SIZE / 2) as i64, "plain mmap page cache +{mmap}");
    for name in ["window read-only", "virtio window zero"] {
        let w = cache(name);
        assert!(
            w < mmap / 8,
            "{name}: page cache +{w} against plain mmap +{mmap}"
        );
    }
    assert!(path(&v, "FUSE_READ zerodax")["backend_rss_growth"].is_i64());

    assert_eq!(v["write_upgrade"]["pages"], 256);
    assert!(v["write_upgrade"]["us_per_page"].as_f64().unwrap() > 0.0);
}

#[test]
fn bench_rejects_a_bad_argument_in_one_line() {
    for args in [
        &["--data-percent", "150"][..],
        &["--size", "1M"],
        &["--repeat", "0"],
    ] {
        let out = bench(args);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{args:?} succeeded");
        assert_eq!(stderr.trim().lines().count(), 1, "{args:?}: {stderr}");
        assert!(stderr.contains(args[0]), "{args:?}: {stderr}");
        assert!(out.stdout.is_empty(), "{args:?} printed a result");
    }
}
