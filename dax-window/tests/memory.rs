//! Memory cost of holes: 4 GiB of holes read through a window cost (almost) nothing.
//! The page cache is measured for the file itself (cachestat), so that other activity on the
//! machine cannot disturb it; the system-wide `Cached` figure is printed beside it.

mod common;

use common::*;
use dax_window::{procfs, Window, PAGE_SIZE};

const GIB: usize = 1 << 30;

fn snapshot(f: &std::fs::File) -> (u64, u64, u64, u64) {
    (
        procfs::status_kib("VmRSS").unwrap() * 1024,
        procfs::status_kib("VmPTE").unwrap() * 1024,
        procfs::cached_pages(f).unwrap() * PAGE_SIZE as u64,
        procfs::meminfo_kib("Cached").unwrap() * 1024,
    )
}

#[test]
fn reading_4gib_of_holes_costs_under_one_percent() {
    let _wd = Watchdog::new("memory_4gib", 300);
    let fs = Ext4::new(256);
    let path = fs.path("sparse");
    let size = 4 * GIB;
    let f = sparse_file(&path, size as u64, &[]);
    let limit = (size / 100) as u64;
    for writable in [false, true] {
        let before = snapshot(&f);
        let w = Window::new(size).unwrap();
        w.map_file(0, size, &f, 0, writable).unwrap();
        assert!(read_all_zero(&w, 0, size), "holes must read as zeros");
        let after = snapshot(&f);
        let s = w.page_states(0, size).unwrap();
        assert_eq!(
            s.zero_total(),
            (size / PAGE_SIZE) as u64,
            "writable={writable}: every hole page is the zero page: {:?}",
            &s.runs[..s.runs.len().min(8)]
        );
        assert_eq!(s.private_anon, 0);
        let grew = |a: u64, b: u64| b.saturating_sub(a);
        let (rss, pte, cached, system) = (
            grew(before.0, after.0),
            grew(before.1, after.1),
            grew(before.2, after.2),
            grew(before.3, after.3),
        );
        eprintln!(
            "writable={writable}: RSS +{rss} B, VmPTE +{pte} B, file page cache +{cached} B \
             (system Cached +{system} B) (limit {limit} B)"
        );
        assert!(rss < limit, "RSS grew {rss}");
        assert!(pte < limit, "VmPTE grew {pte}");
        assert!(cached < limit, "page cache grew {cached}");
        // Cross-check a few pages with kpageflags (root only).
        for off in [0, GIB + 12345 * PAGE_SIZE, size - PAGE_SIZE] {
            assert_eq!(kpage_zero(w.as_ptr() as usize + off), (true, true));
        }
    }
}
