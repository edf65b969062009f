//! Errors of parsing requests and encoding replies.

use core::fmt;

use crate::Opcode;

/// Why a request byte string is not a valid FUSE request.
///
/// Every malformed input maps to one of these; the parser never panics and never reads past
/// the slice it was given. A transport answers most of them with EIO (or EINVAL) when the
/// header was readable, and drops the message otherwise.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ParseError {
    /// Fewer bytes than a `fuse_in_header` (40).
    ShortHeader {
        /// Bytes available.
        have: usize,
    },
    /// `header.len` is smaller than the header itself.
    HeaderLenTooSmall {
        /// The header's `len`.
        header_len: u32,
    },
    /// `header.len` disagrees with the bytes the transport delivered.
    LengthMismatch {
        /// The header's `len`.
        header_len: u32,
        /// Bytes delivered (header plus body).
        actual: usize,
    },
    /// The opcode is not one the kernel defines.
    UnknownOpcode(u32),
    /// The opcode is FUSE_INIT or CUSE_INIT byte-swapped: the peer has the other byte order.
    ForeignByteOrder,
    /// `total_extlen` claims more extension bytes than the body holds.
    ExtensionsTooLong {
        /// Claimed extension bytes (`total_extlen * 8`).
        claimed: usize,
        /// Body bytes available.
        body: usize,
    },
    /// An extension header has a size that is zero, unaligned or past the end.
    BadExtension {
        /// Offset of the bad extension within the extension area.
        offset: usize,
    },
    /// The body is shorter than the operation's fixed argument struct.
    Truncated {
        /// The operation.
        opcode: Opcode,
        /// Bytes the operation needs at least.
        need: usize,
        /// Bytes present.
        have: usize,
    },
    /// Bytes follow the last argument of the operation.
    TrailingBytes {
        /// The operation.
        opcode: Opcode,
        /// Unexpected bytes.
        extra: usize,
    },
    /// A name or string argument has no terminating NUL within the body.
    MissingNul {
        /// The operation.
        opcode: Opcode,
    },
    /// A name is empty.
    EmptyName {
        /// The operation.
        opcode: Opcode,
    },
    /// A directory-entry name contains '/', which no kernel sends and which would let a
    /// single component walk elsewhere.
    SlashInName {
        /// The operation.
        opcode: Opcode,
    },
    /// A declared payload size (write, setxattr value, ioctl input, notify data) disagrees
    /// with the bytes present.
    PayloadMismatch {
        /// The operation.
        opcode: Opcode,
        /// Size declared in the argument struct.
        declared: u64,
        /// Bytes present.
        have: usize,
    },
    /// An entry count (BATCH_FORGET, REMOVEMAPPING) disagrees with the bytes present.
    CountMismatch {
        /// The operation.
        opcode: Opcode,
        /// Count declared.
        count: u32,
        /// Bytes present for the entries.
        have: usize,
    },
    /// INIT carries an argument size no kernel sends (16 before 7.36, 64 since).
    BadInitSize {
        /// Body bytes.
        have: usize,
    },
    /// A reply shorter than `fuse_out_header` (16), or whose `len` disagrees with its bytes.
    BadReplyLength {
        /// The header's `len` (0 if the header was incomplete).
        header_len: u32,
        /// Bytes delivered.
        actual: usize,
    },
    /// A helper for one operation was handed a header of another.
    UnexpectedOpcode {
        /// The operation the helper parses.
        expected: Opcode,
        /// The header's opcode.
        found: u32,
    },
    /// A reply whose `error` is positive or below -511, which the kernel would refuse.
    BadReplyError(i32),
}

impl fmt::Display for ParseError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            ParseError::ShortHeader { have } => {
                write!(
                    f,
                    "request of {have} bytes is shorter than fuse_in_header (40)"
                )
            }
            ParseError::HeaderLenTooSmall { header_len } => {
                write!(f, "header len {header_len} is smaller than the header (40)")
            }
            ParseError::LengthMismatch { header_len, actual } => {
                write!(f, "header len {header_len} but {actual} bytes delivered")
            }
            ParseError::UnknownOpcode(op) => write!(f, "unknown opcode {op}"),
            ParseError::ForeignByteOrder => {
                write!(
                    f,
                    "INIT opcode is byte-swapped: peer has the other byte order"
                )
            }
            ParseError::ExtensionsTooLong { claimed, body } => write!(
                f,
                "total_extlen claims {claimed} extension bytes in a {body}-byte body"
            ),
            ParseError::BadExtension { offset } => {
                write!(f, "malformed request extension at offset {offset}")
            }
            ParseError::Truncated { opcode, need, have } => {
                write!(f, "{opcode}: needs {need} argument bytes, has {have}")
            }
            ParseError::TrailingBytes { opcode, extra } => {
                write!(f, "{opcode}: {extra} unexpected bytes after the arguments")
            }
            ParseError::MissingNul { opcode } => {
                write!(f, "{opcode}: name without terminating NUL")
            }
            ParseError::EmptyName { opcode } => write!(f, "{opcode}: empty name"),
            ParseError::SlashInName { opcode } => write!(f, "{opcode}: name contains '/'"),
            ParseError::PayloadMismatch {
                opcode,
                declared,
                have,
            } => write!(
                f,
                "{opcode}: declares {declared} payload bytes, carries {have}"
            ),
            ParseError::CountMismatch {
                opcode,
                count,
                have,
            } => write!(
                f,
                "{opcode}: declares {count} entries, carries {have} entry bytes"
            ),
            ParseError::BadInitSize { have } => {
                write!(f, "FUSE_INIT argument of {have} bytes (expected 16 or 64)")
            }
            ParseError::BadReplyLength { header_len, actual } => write!(
                f,
                "reply header len {header_len} but {actual} bytes delivered (minimum 16)"
            ),
            ParseError::UnexpectedOpcode { expected, found } => {
                write!(f, "expected {expected}, header has opcode {found}")
            }
            ParseError::BadReplyError(e) => write!(f, "reply error {e} outside -511..=0"),
        }
    }
}

impl std::error::Error for ParseError {}

/// Why a reply could not be encoded.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ReplyError {
    /// The destination has no room for the whole reply (nothing partial is left behind in a
    /// `Vec`; a slice may hold a partial write that must not be sent).
    NoSpace {
        /// Bytes the reply needs.
        need: usize,
        /// Bytes the destination had left.
        have: usize,
    },
    /// The reply would exceed the u32 length field.
    TooLong {
        /// Total length.
        len: usize,
    },
    /// An errno outside 1..=511, which the kernel rejects (it accepts `-511..=0`).
    BadErrno(i32),
    /// A directory-entry name the kernel would reject (empty, too long, '/' or NUL inside).
    BadDirentName,
}

impl fmt::Display for ReplyError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            ReplyError::NoSpace { need, have } => {
                write!(f, "reply needs {need} bytes, destination has {have}")
            }
            ReplyError::TooLong { len } => write!(f, "reply of {len} bytes exceeds u32"),
            ReplyError::BadErrno(e) => write!(f, "errno {e} outside 1..=511"),
            ReplyError::BadDirentName => write!(f, "directory entry name the kernel rejects"),
        }
    }
}

impl std::error::Error for ReplyError {}
