//! FUSE opcodes (`enum fuse_opcode`).

use core::fmt;

macro_rules! opcodes {
    ($($(#[$meta:meta])* $name:ident = $value:expr, $kernel:literal;)*) => {
        /// A FUSE request opcode, one variant per entry of the kernel's `enum fuse_opcode`
        /// (up to 7.45), so `match`es over it are exhaustive and a new opcode breaks the build
        /// wherever it must be handled.
        #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
        #[repr(u32)]
        pub enum Opcode {
            $($(#[$meta])* $name = $value,)*
        }

        impl Opcode {
            /// Every opcode, in numeric order, so test suites can iterate all of them and
            /// fail when one gains no coverage.
            pub const ALL: &'static [Opcode] = &[$(Opcode::$name,)*];

            /// The kernel's name for the opcode (`FUSE_LOOKUP`, ...), for logs.
            pub const fn kernel_name(self) -> &'static str {
                match self {
                    $(Opcode::$name => $kernel,)*
                }
            }
        }

        impl TryFrom<u32> for Opcode {
            type Error = u32;

            /// Maps a wire value to an opcode; the unknown value comes back as the error.
            fn try_from(value: u32) -> Result<Self, u32> {
                match value {
                    $($value => Ok(Opcode::$name),)*
                    other => Err(other),
                }
            }
        }
    };
}

opcodes! {
    /// Look up a name in a directory.
    Lookup = 1, "FUSE_LOOKUP";
    /// Drop lookup references (no reply).
    Forget = 2, "FUSE_FORGET";
    /// Get attributes.
    Getattr = 3, "FUSE_GETATTR";
    /// Set attributes.
    Setattr = 4, "FUSE_SETATTR";
    /// Read a symlink.
    Readlink = 5, "FUSE_READLINK";
    /// Create a symlink.
    Symlink = 6, "FUSE_SYMLINK";
    /// Create a special or regular file.
    Mknod = 8, "FUSE_MKNOD";
    /// Create a directory.
    Mkdir = 9, "FUSE_MKDIR";
    /// Remove a file.
    Unlink = 10, "FUSE_UNLINK";
    /// Remove a directory.
    Rmdir = 11, "FUSE_RMDIR";
    /// Rename.
    Rename = 12, "FUSE_RENAME";
    /// Hard link.
    Link = 13, "FUSE_LINK";
    /// Open a file.
    Open = 14, "FUSE_OPEN";
    /// Read data.
    Read = 15, "FUSE_READ";
    /// Write data.
    Write = 16, "FUSE_WRITE";
    /// Filesystem statistics.
    Statfs = 17, "FUSE_STATFS";
    /// Close a file.
    Release = 18, "FUSE_RELEASE";
    /// Sync a file.
    Fsync = 20, "FUSE_FSYNC";
    /// Set an xattr.
    Setxattr = 21, "FUSE_SETXATTR";
    /// Get an xattr.
    Getxattr = 22, "FUSE_GETXATTR";
    /// List xattrs.
    Listxattr = 23, "FUSE_LISTXATTR";
    /// Remove an xattr.
    Removexattr = 24, "FUSE_REMOVEXATTR";
    /// close(2) on a file descriptor.
    Flush = 25, "FUSE_FLUSH";
    /// Session start and negotiation.
    Init = 26, "FUSE_INIT";
    /// Open a directory.
    Opendir = 27, "FUSE_OPENDIR";
    /// Read directory entries.
    Readdir = 28, "FUSE_READDIR";
    /// Close a directory.
    Releasedir = 29, "FUSE_RELEASEDIR";
    /// Sync a directory.
    Fsyncdir = 30, "FUSE_FSYNCDIR";
    /// Test a lock.
    Getlk = 31, "FUSE_GETLK";
    /// Set a lock.
    Setlk = 32, "FUSE_SETLK";
    /// Set a lock, waiting.
    Setlkw = 33, "FUSE_SETLKW";
    /// Check access.
    Access = 34, "FUSE_ACCESS";
    /// Create and open.
    Create = 35, "FUSE_CREATE";
    /// Interrupt a pending request.
    Interrupt = 36, "FUSE_INTERRUPT";
    /// Map a block (block-device filesystems only).
    Bmap = 37, "FUSE_BMAP";
    /// Session end.
    Destroy = 38, "FUSE_DESTROY";
    /// ioctl.
    Ioctl = 39, "FUSE_IOCTL";
    /// poll.
    Poll = 40, "FUSE_POLL";
    /// Reply to a retrieve notification (no reply).
    NotifyReply = 41, "FUSE_NOTIFY_REPLY";
    /// Drop many lookup references (no reply).
    BatchForget = 42, "FUSE_BATCH_FORGET";
    /// fallocate.
    Fallocate = 43, "FUSE_FALLOCATE";
    /// Read directory entries with attributes.
    Readdirplus = 44, "FUSE_READDIRPLUS";
    /// Rename with flags.
    Rename2 = 45, "FUSE_RENAME2";
    /// lseek, notably SEEK_DATA/SEEK_HOLE.
    Lseek = 46, "FUSE_LSEEK";
    /// copy_file_range (32-bit result).
    CopyFileRange = 47, "FUSE_COPY_FILE_RANGE";
    /// virtio-fs DAX: map a file range into the window.
    SetupMapping = 48, "FUSE_SETUPMAPPING";
    /// virtio-fs DAX: unmap window ranges.
    RemoveMapping = 49, "FUSE_REMOVEMAPPING";
    /// syncfs.
    Syncfs = 50, "FUSE_SYNCFS";
    /// O_TMPFILE create.
    Tmpfile = 51, "FUSE_TMPFILE";
    /// statx.
    Statx = 52, "FUSE_STATX";
    /// copy_file_range with a 64-bit result (7.45).
    CopyFileRange64 = 53, "FUSE_COPY_FILE_RANGE_64";
    /// CUSE session start.
    CuseInit = 4096, "CUSE_INIT";
}

/// `FUSE_INIT << 24`: what FUSE_INIT looks like to a server of the other byte order.
pub const FUSE_INIT_BSWAP_RESERVED: u32 = 436_207_616;
/// `CUSE_INIT << 8`: what CUSE_INIT looks like to a server of the other byte order.
pub const CUSE_INIT_BSWAP_RESERVED: u32 = 1_048_576;

impl Opcode {
    /// Whether the kernel waits for a reply. FORGET, BATCH_FORGET and NOTIFY_REPLY get none;
    /// answering them corrupts the stream on /dev/fuse (the kernel finds no such unique).
    /// INTERRUPT gets a reply only when the server wants to say EAGAIN.
    pub const fn expects_reply(self) -> bool {
        !matches!(
            self,
            Opcode::Forget | Opcode::BatchForget | Opcode::NotifyReply | Opcode::Interrupt
        )
    }
}

impl fmt::Display for Opcode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.kernel_name())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn all_round_trips_and_is_sorted() {
        // 1..=6, 8..=18, 20..=53 and CUSE_INIT: 6 + 11 + 34 + 1.
        assert_eq!(Opcode::ALL.len(), 52);
        for (i, op) in Opcode::ALL.iter().enumerate() {
            assert_eq!(Opcode::try_from(*op as u32), Ok(*op));
            if i > 0 {
                assert!(Opcode::ALL[i - 1] < *op);
            }
        }
    }

    #[test]
    fn kernel_numbers() {
        assert_eq!(Opcode::SetupMapping as u32, 48);
        assert_eq!(Opcode::RemoveMapping as u32, 49);
        assert_eq!(Opcode::Syncfs as u32, 50);
        assert_eq!(Opcode::Tmpfile as u32, 51);
        assert_eq!(Opcode::Statx as u32, 52);
        assert_eq!(Opcode::CuseInit as u32, 4096);
        assert_eq!(FUSE_INIT_BSWAP_RESERVED, (Opcode::Init as u32) << 24);
        assert_eq!(CUSE_INIT_BSWAP_RESERVED, (Opcode::CuseInit as u32) << 8);
    }

    #[test]
    fn gaps_are_unknown() {
        for v in [
            0u32,
            7,
            19,
            54,
            4095,
            4097,
            FUSE_INIT_BSWAP_RESERVED,
            u32::MAX,
        ] {
            assert_eq!(Opcode::try_from(v), Err(v));
        }
        assert_eq!(Opcode::Lookup.to_string(), "FUSE_LOOKUP");
    }
}
