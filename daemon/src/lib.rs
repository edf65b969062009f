//! zerodax: the filesystem core and its transports, as a library so that every transport
//! (and the integration tests) use one core.

#![warn(missing_docs)]

pub mod chain;
pub mod cli;
pub mod confine;
pub mod dax;
pub mod fs;
pub mod fuse_dev;
pub mod idmap;
pub mod mount;
pub mod process;
pub mod serve;
pub mod server;
pub mod size;
pub mod syslog;
pub mod vhost_user;
