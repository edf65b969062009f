//! zerodax: the filesystem core and its transports, as a library so that every transport
//! (and the integration tests) use one core.
//!
//! The public modules are what the `zerodax` binary and the integration tests use
//! (docs/architecture.md, *Public surface*):
//!
//! - the commands' flags and entry points: [`serve`], [`mount`], [`cli`] (value flags, also
//!   `probe --dax-holes`), [`size`] (size flags, also `bench` and `probe`);
//! - the virtio-fs dispatch, which the tests drive without a VMM: [`server`], over a
//!   [`chain::BufChain`]; with what [`server::ServerOptions`] names: [`fs`] (the core),
//!   [`dax`] (the window's configuration), [`idmap`] (id translation);
//! - [`confine`]: the seccomp filter and capability set the confinement tests check.
//!
//! The vhost-user device (`vhost_user`), the /dev/fuse transport (`fuse_dev`) and the process
//! set-up (`process`, `syslog`) are reached only through `serve` and `mount`.

#![warn(missing_docs)]

pub mod chain;
pub mod cli;
pub mod confine;
pub mod dax;
pub mod fs;
mod fuse_dev;
pub mod idmap;
pub mod mount;
mod process;
pub mod serve;
pub mod server;
pub mod size;
mod syslog;
mod vhost_user;
