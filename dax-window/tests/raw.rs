//! `Window::map_fd_raw`: the VMM-side primitive behind vhost-user SHMEM_MAP. It maps exactly
//! what it is told and enforces the vhost-user rules (no map over a live mapping, unmaps
//! cover whole mappings).

mod common;

use std::os::fd::AsFd;

use common::*;
use dax_window::{Error, PageState, Window, PAGE_SIZE};

#[test]
fn raw_map_is_exact_and_enforces_vhost_user_rules() {
    let fs = Ext4::new(64);
    let path = fs.path("f");
    let data = vec![0x5au8; 8 * PAGE_SIZE];
    let file = sparse_file(&path, (4 * MIB) as u64, &[(0, &data)]);
    let w = Window::new(4 * MIB).unwrap();

    let info = w
        .map_fd_raw(MIB, 8 * PAGE_SIZE, file.as_fd(), 0, false)
        .unwrap();
    assert_eq!(info.len, 8 * PAGE_SIZE);
    let mut buf = vec![0u8; 8 * PAGE_SIZE];
    w.read_at(MIB, &mut buf).unwrap();
    assert_eq!(buf, data);
    assert_eq!(state_at(&w, MIB), PageState::File);
    // Next to the mapping the window still reads the zero page.
    assert!(read_all_zero(&w, MIB + 8 * PAGE_SIZE, PAGE_SIZE));

    // A map over (or into) a live mapping fails and leaves it alone.
    for off in [MIB, MIB + 4 * PAGE_SIZE, MIB - PAGE_SIZE] {
        let e = w
            .map_fd_raw(off, 2 * PAGE_SIZE, file.as_fd(), 0, false)
            .unwrap_err();
        assert!(matches!(e, Error::Overlap), "{off}: {e}");
    }
    w.read_at(MIB, &mut buf).unwrap();
    assert_eq!(buf, data);

    // Unaligned, outside, overflowing.
    assert!(matches!(
        w.map_fd_raw(1, PAGE_SIZE, file.as_fd(), 0, false),
        Err(Error::Unaligned)
    ));
    assert!(matches!(
        w.map_fd_raw(4 * MIB, PAGE_SIZE, file.as_fd(), 0, false),
        Err(Error::InvalidRange(_))
    ));
    assert!(matches!(
        w.map_fd_raw(0, PAGE_SIZE, file.as_fd(), u64::MAX - 4095, false),
        Err(Error::InvalidRange(_))
    ));

    // An unmap that cuts through the mapping fails; a covering one returns zeros.
    assert!(matches!(
        w.unmap(MIB, 4 * PAGE_SIZE),
        Err(Error::PartialUnmap)
    ));
    w.unmap(MIB, 8 * PAGE_SIZE).unwrap();
    assert!(read_all_zero(&w, MIB, 8 * PAGE_SIZE));
    assert!(w.mappings().is_empty());

    // Writable: a store goes to the file.
    let rw = open_rw(&path);
    w.map_fd_raw(0, 2 * PAGE_SIZE, rw.as_fd(), 0, true).unwrap();
    w.write_at(10, b"hello").unwrap();
    w.unmap(0, 2 * PAGE_SIZE).unwrap();
    assert_eq!(read_file(&path, 10, 5), b"hello");
    assert_no_private(&w);
}
