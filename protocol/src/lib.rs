//! FUSE wire format for zerodax: the kernel ABI as Linux 6.x speaks it (protocol 7.31 to
//! 7.45, including the virtio-fs DAX opcodes SETUPMAPPING and REMOVEMAPPING), parsing of
//! request bytes into typed borrowed requests, and encoding of replies. No I/O: the
//! /dev/fuse and virtio-fs transports own the buffers; this crate only reads and writes them.
//!
//! Guarantees the transports rely on:
//! - Any byte string given to [`Request::parse`] or [`Request::parse_parts`] yields either a
//!   request or a [`ParseError`]; never a panic, never a read outside the slice. Fields are
//!   copied out byte-wise, so guest buffers at any alignment are fine.
//! - A reply is encoded whole into a [`reply::ReplySink`] or not at all.
//!
//! See docs/protocol.md for the wire notes and the INIT knobs.
//!
//! ```
//! use protocol::abi::FuseInHeader;
//! use protocol::{reply, Extensions, Operation, ParseOptions, Request};
//!
//! // What the kernel sends for `stat /mnt/file`: LOOKUP "file" in the root directory.
//! let bytes = Request {
//!     header: FuseInHeader { unique: 7, nodeid: 1, ..Default::default() },
//!     op: Operation::Lookup { name: c"file" },
//!     extensions: Extensions::default(),
//! }
//! .to_bytes(ParseOptions::default());
//!
//! // A transport parses it (at any alignment) and the fs core answers.
//! let req = Request::parse(&bytes).unwrap();
//! let mut out = Vec::new();
//! match req.op {
//!     Operation::Lookup { name } => {
//!         assert_eq!(name.to_bytes(), b"file");
//!         reply::reply_error(&mut out, req.unique(), 2).unwrap(); // ENOENT
//!     }
//!     _ => unreachable!(),
//! }
//! let (header, body) = reply::parse_reply(&out).unwrap();
//! assert_eq!((header.unique, header.error, body.len()), (7, -2, 0));
//! ```

#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod abi;
mod error;
pub mod opcode;
pub mod reply;
pub mod request;

pub use abi::Wire;
pub use error::{ParseError, ReplyError};
pub use opcode::Opcode;
pub use request::{
    check_header, parse_header, Extension, Extensions, ForgetList, Operation, ParseOptions,
    RemoveMappingList, Request, WireList,
};
