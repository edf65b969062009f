//! zerodax's built-in vhost-user-fs frontend. It plays the VMM (vhost-user setup through the
//! vhost crate, guest RAM in a shared memfd, split virtqueues) and the guest (a small
//! virtio-fs driver and a FUSE client), and it talks to the backend only through the
//! backend's socket, as a VMM would. That makes it usable against any vhost-user-fs backend:
//! `zerodax serve`, the Rust virtiofsd, QEMU's C virtiofsd.
//!
//! Layers, bottom up:
//! - [`memory`]: guest RAM (memfd, `MAP_SHARED`), bounds-checked volatile access.
//! - [`virtqueue`]: the driver side of a split virtqueue in that RAM.
//! - [`vmm`]: the vhost-user conversation (features, memory table, vrings).
//! - [`shmem`]: the VMM's DAX window: SHMEM_MAP/UNMAP served into a zero-page window, on
//!   the backend-request channel.
//! - [`driver`]: descriptor chains in and out, waits with deadlines, raw/malformed chains;
//!   owns the vhost-user connection and the [`shmem`] window.
//! - [`fuse`]: FUSE requests encoded with the protocol crate, replies checked and decoded.
//! - [`dax`]: the guest's use of that window (fs/fuse/dax.c): ranges set up, upgraded and
//!   reclaimed with FUSE requests.
//! - [`backend`]: starting a backend process on a socket and directory, and reaping it.
//!
//! ```no_run
//! use frontend::driver::DriverConfig;
//! use frontend::fuse::{FuseClient, DEFAULT_INIT_FLAGS};
//!
//! let mut fs = FuseClient::connect("/tmp/vfs.sock".as_ref(), &DriverConfig::default())?;
//! fs.init(DEFAULT_INIT_FLAGS)?;
//! let attr = fs.getattr(1, None)?;
//! assert_eq!(attr.attr.mode & libc::S_IFMT, libc::S_IFDIR);
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

#![warn(missing_docs)]

pub mod backend;
pub mod dax;
pub mod driver;
pub mod fuse;
pub mod memory;
pub mod shmem;
pub mod virtqueue;
pub mod vmm;
