//! The command line's side of the value flags: each enum here is what a flag accepts, as clap
//! parses and documents it (`--help` shows these variants' doc comments), converted with
//! `From` into the core's or a transport's own type. So `server`, `dax` and `fuse_dev` know
//! nothing of clap, and a flag's spelling can change without touching them. [`LogLevel`] has
//! no core counterpart: `process` turns it into the log filter.
//!
//! Used by the argument structs of `serve` and `mount`, and by the binary's `probe`.

use crate::dax::{DaxHoles, DaxInodes};
use crate::fs::FileHandles;
use crate::fuse_dev::Passthrough;
use crate::server::{AclMode, CachePolicy};

/// `--log-level` of `mount` and `serve`: the most verbose level logged to stderr.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum LogLevel {
    /// No log at all.
    Off,
    /// Errors only.
    Error,
    /// Errors and warnings.
    Warn,
    /// Also start and stop, connections, passthrough, the DAX counters.
    Info,
    /// Also each DAX mapping and other detail.
    Debug,
    /// Everything.
    Trace,
}

/// `serve --cache`: how long the guest may trust what it was told, as virtiofsd's modes
/// ([`CachePolicy`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum CacheArg {
    /// No caching: entry/attr timeouts 0, every open is DIRECT_IO.
    Never,
    /// Metadata cached for a day, file data never (DIRECT_IO).
    Metadata,
    /// Timeouts of 1 s, page cache dropped on open (close-to-open consistency).
    Auto,
    /// Timeouts of a day, page cache kept across opens (KEEP_CACHE, CACHE_DIR).
    Always,
}

impl From<CacheArg> for CachePolicy {
    fn from(a: CacheArg) -> Self {
        match a {
            CacheArg::Never => CachePolicy::Never,
            CacheArg::Metadata => CachePolicy::Metadata,
            CacheArg::Auto => CachePolicy::Auto,
            CacheArg::Always => CachePolicy::Always,
        }
    }
}

/// `serve --posix-acl` and `--security-label`: whether to negotiate the feature with the
/// guest, virtiofsd's values ([`AclMode`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum AclArg {
    /// Never (for ACLs: `system.posix_acl_*` xattrs are refused, EOPNOTSUPP).
    Never,
    /// When the guest offers the flags (ACLs: POSIX_ACL, DONT_MASK and SETXATTR_EXT;
    /// labels: SECURITY_CTX).
    Auto,
    /// Required: INIT fails (EPROTO) with a guest that cannot.
    Always,
}

impl From<AclArg> for AclMode {
    fn from(a: AclArg) -> Self {
        match a {
            AclArg::Never => AclMode::Never,
            AclArg::Auto => AclMode::Auto,
            AclArg::Always => AclMode::Always,
        }
    }
}

/// `serve --dax-holes` and `probe --dax-holes`: what a SETUPMAPPING maps of a file's holes
/// ([`DaxHoles`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum DaxHolesArg {
    /// The whole range from the file (up to EOF), holes included, as virtiofsd's DAX did.
    /// Safe with any VMM that speaks SHMEM_MAP.
    Map,
    /// Only the data extents; holes stay unmapped, so a VMM whose unmapped window is
    /// anonymous private PROT_READ memory shows them as the zero page.
    Zero,
}

impl From<DaxHolesArg> for DaxHoles {
    fn from(a: DaxHolesArg) -> Self {
        match a {
            DaxHolesArg::Map => DaxHoles::Map,
            DaxHolesArg::Zero => DaxHoles::Zero,
        }
    }
}

/// `serve --dax-inodes`: which inodes carry FUSE_ATTR_DAX (used by guests mounted without
/// `-o dax=always`) ([`DaxInodes`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum DaxInodesArg {
    /// Every regular file.
    All,
    /// None (a guest then uses DAX only with `-o dax=always`).
    None,
}

impl From<DaxInodesArg> for DaxInodes {
    fn from(a: DaxInodesArg) -> Self {
        match a {
            DaxInodesArg::All => DaxInodes::All,
            DaxInodesArg::None => DaxInodes::None,
        }
    }
}

/// `mount --passthrough`: kernel FUSE passthrough of reads, writes and mmap to the backing
/// file (`fuse_dev::Passthrough`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum PassthroughArg {
    /// Use it when the kernel offers it, otherwise serve I/O in the daemon.
    Auto,
    /// Require it: the mount fails if the kernel refuses.
    On,
    /// Never use it.
    Off,
}

impl From<PassthroughArg> for Passthrough {
    fn from(a: PassthroughArg) -> Self {
        match a {
            PassthroughArg::Auto => Passthrough::Auto,
            PassthroughArg::On => Passthrough::On,
            PassthroughArg::Off => Passthrough::Off,
        }
    }
}

/// `--inode-file-handles`: how the daemon references the host inodes the guest knows
/// (virtiofsd's values).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum InodeFileHandles {
    /// An O_PATH descriptor per inode.
    #[default]
    Never,
    /// A file handle per inode where one can be made and opened, an O_PATH descriptor where
    /// not (a filesystem without file handles). CAP_DAC_READ_SEARCH is kept; without it
    /// (unprivileged, or dropped by --modcaps), or when the shared directory's filesystem has
    /// no file handles, a warning at start and then as `never`. Also spelled `fallback`.
    #[value(alias = "fallback")]
    Prefer,
    /// A file handle per inode, reopened for each operation: no descriptor per inode. Needs
    /// CAP_DAC_READ_SEARCH (kept); a lookup on a filesystem without file handles fails, and
    /// so does the start when the shared directory's has none.
    Mandatory,
}

impl From<InodeFileHandles> for FileHandles {
    fn from(a: InodeFileHandles) -> Self {
        match a {
            InodeFileHandles::Never => FileHandles::Never,
            InodeFileHandles::Prefer => FileHandles::Prefer,
            InodeFileHandles::Mandatory => FileHandles::Mandatory,
        }
    }
}

#[cfg(test)]
mod tests {
    use clap::ValueEnum;

    use super::*;

    /// Each flag value names the core value of the same name (a variant added on one side
    /// only breaks the build in the `From` impls; this catches a crossed mapping).
    #[test]
    fn values_convert_to_the_same_names() {
        for a in CacheArg::value_variants() {
            let name = a.to_possible_value().unwrap().get_name().to_owned();
            assert!(format!("{:?}", CachePolicy::from(*a)).eq_ignore_ascii_case(&name));
        }
        for a in AclArg::value_variants() {
            let name = a.to_possible_value().unwrap().get_name().to_owned();
            assert!(format!("{:?}", AclMode::from(*a)).eq_ignore_ascii_case(&name));
        }
        for a in DaxHolesArg::value_variants() {
            let name = a.to_possible_value().unwrap().get_name().to_owned();
            assert!(format!("{:?}", DaxHoles::from(*a)).eq_ignore_ascii_case(&name));
        }
        for a in DaxInodesArg::value_variants() {
            let name = a.to_possible_value().unwrap().get_name().to_owned();
            assert!(format!("{:?}", DaxInodes::from(*a)).eq_ignore_ascii_case(&name));
        }
        for a in PassthroughArg::value_variants() {
            let name = a.to_possible_value().unwrap().get_name().to_owned();
            assert!(format!("{:?}", Passthrough::from(*a)).eq_ignore_ascii_case(&name));
        }
        for a in InodeFileHandles::value_variants() {
            let name = a.to_possible_value().unwrap().get_name().to_owned();
            assert!(format!("{:?}", FileHandles::from(*a)).eq_ignore_ascii_case(&name));
        }
    }
}
