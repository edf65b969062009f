//! PAGEMAP_SCAN against the root-only pagemap + kpageflags, and the VMA budget.

mod common;

use common::*;
use dax_window::{page_states, Error, PageState, Window, WindowOptions, PAGE_SIZE};

#[test]
fn pagemap_scan_agrees_with_kpageflags() {
    let _wd = Watchdog::new("cross_check", 120);
    let fs = Ext4::new(256);
    let path = fs.path("f");
    let f = sparse_file(
        &path,
        6 * MIB as u64,
        &[(0, &[1u8; 8192]), (3 * MIB as u64, &[2u8; 4096])],
    );
    let w = Window::new(8 * MIB).unwrap();
    w.map_file(0, 6 * MIB, &f, 0, false).unwrap();
    // Touch a subset only: the first 4 MiB.
    let mut buf = vec![0u8; 4 * MIB];
    w.read_at(0, &mut buf).unwrap();
    let s = w.page_states(0, 8 * MIB).unwrap();
    assert_eq!(s.total() as usize, 8 * MIB / PAGE_SIZE);
    assert_eq!(s.file, 3);
    assert_eq!(s.private_anon, 0);
    // The untouched part of the file range and the unmapped tail are not populated.
    assert!(s.not_populated >= (2 * MIB / PAGE_SIZE) as u64, "{s:?}");
    let base = w.as_ptr() as usize;
    for run in &s.runs {
        for off in [run.offset, run.offset + run.len - PAGE_SIZE] {
            let (present, zero) = kpage_zero(base + off);
            match run.state {
                PageState::Zero | PageState::HugeZero => assert!(present && zero, "{off}"),
                PageState::File => assert!(present && !zero, "{off}"),
                PageState::NotPopulated => assert!(!present, "{off}"),
                other => panic!("unexpected {other:?} at {off}"),
            }
        }
    }
    // A private anonymous page is detected as such (outside any window).
    let mut v = vec![0u8; 3 * PAGE_SIZE];
    v[PAGE_SIZE] = 1;
    let start = (v.as_ptr() as usize).next_multiple_of(PAGE_SIZE);
    let s = page_states(start, PAGE_SIZE).unwrap();
    assert_eq!(s.private_anon, 1);
}

#[test]
fn vma_budget_gives_a_clear_error() {
    let _wd = Watchdog::new("budget", 120);
    let fs = Ext4::new(256);
    let path = fs.path("f");
    let extents: Vec<(u64, &[u8])> = (0..64)
        .map(|i| ((i * 2 * PAGE_SIZE) as u64, &[7u8; 16][..]))
        .collect();
    let f = sparse_file(&path, MIB as u64, &extents);
    let max = dax_window::procfs::max_map_count().unwrap();
    let w = Window::new(4 * MIB).unwrap();
    // Adjacent extents merge: 64 data pages separated by holes need ~128 VMAs.
    let m = w.map_file(0, MIB, &f, 0, false).unwrap();
    assert_eq!(m.file_backed.len(), 64);
    let (_, inside) = w.vma_counts().unwrap();
    assert!((128..=131).contains(&inside), "{inside}");
    w.unmap(0, MIB).unwrap();
    // With all but a few VMAs reserved as headroom, the same map fails with VmaBudget.
    let (in_use, _) = w.vma_counts().unwrap();
    let tight = Window::with_options(
        8 * MIB,
        WindowOptions {
            vma_headroom: Some(max - in_use - 20),
            ..Default::default()
        },
    )
    .unwrap();
    let err = tight.map_file(0, MIB, &f, 0, true).unwrap_err();
    assert!(matches!(err, Error::VmaBudget { .. }), "{err}");
    assert!(err.to_string().contains("max_map_count"));
    // Past half of the budget the granule widens to 2 MiB: one write maps a whole
    // 2 MiB-aligned granule of file pages, no zero page left in it.
    let wide = fs.path("wide");
    let fw = sparse_file(&wide, 8 * MIB as u64, &[]);
    tight.map_file(2 * MIB, 6 * MIB, &fw, 0, true).unwrap();
    tight
        .write_at(2 * MIB + 3 * MIB + 5 * PAGE_SIZE, b"w")
        .unwrap();
    let g = tight.page_states(4 * MIB, 2 * MIB).unwrap();
    assert_eq!(g.zero_total(), 0, "{g:?}");
    assert!(tight.mappings()[0]
        .file_backed
        .contains(&(4 * MIB, 6 * MIB)));
    assert_eq!(read_file(&wide, (3 * MIB + 5 * PAGE_SIZE) as u64, 1), b"w");
    tight.unmap(2 * MIB, 6 * MIB).unwrap();
    // The window is untouched and still usable for a small mapping.
    assert_eq!(tight.mappings().len(), 0);
    let small = fs.path("small");
    let fs2 = sparse_file(&small, 64 * 1024, &[]);
    tight.map_file(0, 64 * 1024, &fs2, 0, true).unwrap();
    tight.write_at(0, b"ok").unwrap();
    assert_eq!(read_file(&small, 0, 2), b"ok");
    assert_no_private(&tight);
}

#[test]
fn bad_arguments_are_errors() {
    let fs = Ext4::new(64);
    let path = fs.path("f");
    let f = sparse_file(&path, MIB as u64, &[]);
    let w = Window::new(2 * MIB).unwrap();
    assert!(matches!(
        w.map_file(1, 4096, &f, 0, false),
        Err(Error::Unaligned)
    ));
    assert!(matches!(
        w.map_file(0, 4096, &f, 1, false),
        Err(Error::Unaligned)
    ));
    assert!(matches!(
        w.map_file(0, 4 * MIB, &f, 0, false),
        Err(Error::InvalidRange(_))
    ));
    assert!(matches!(
        w.map_file(usize::MAX - 4095, 4096, &f, 0, false),
        Err(Error::InvalidRange(_))
    ));
    assert!(matches!(
        w.map_file(0, 4096, &f, 2 * MIB as u64, false),
        Err(Error::BeyondEof)
    ));
    let ro = std::fs::File::open(&path).unwrap();
    w.map_file(0, MIB, &ro, 0, false).unwrap();
    assert!(matches!(
        w.map_file(4096, 4096, &f, 0, false),
        Err(Error::Overlap)
    ));
    assert!(matches!(w.unmap(0, 4096), Err(Error::PartialUnmap)));
    w.unmap(0, 2 * MIB).unwrap();
    // A read-only descriptor is reopened through /proc/self/fd for writing where the
    // file's permissions allow it (root here): the mapping then writes to the file.
    w.map_file(0, MIB, &ro, 0, true).unwrap();
    w.write_at(8, b"rw").unwrap();
    assert_eq!(read_file(&path, 8, 2), b"rw");
}
