//! Parsing request bytes into typed, borrowed requests (and encoding them back, which the
//! built-in virtio-fs frontend and the tests use).
//!
//! The parser is strict: it accepts exactly what a Linux 6.x kernel sends for protocol 7.31
//! and later and turns anything else into a [`ParseError`]. It reads every field through
//! [`Wire`] (byte copies, no pointer casts), so the input may sit at any alignment.

use core::ffi::CStr;
use core::marker::PhantomData;

use crate::abi::*;
use crate::{Opcode, ParseError};

/// Session state that changes how requests are laid out, learned from INIT.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ParseOptions {
    /// FUSE_SETXATTR_EXT was negotiated: SETXATTR carries the 16-byte `fuse_setxattr_in`
    /// instead of the 8-byte compat one. Nothing in the bytes tells the two apart, so the
    /// transport must pass what INIT agreed.
    pub setxattr_ext: bool,
}

impl ParseOptions {
    /// Options for a session whose INIT reply carried `accepted` (the 64-bit flag set).
    pub fn from_init_flags(accepted: u64) -> Self {
        Self {
            setxattr_ext: accepted & FUSE_SETXATTR_EXT != 0,
        }
    }
}

/// A parsed request: the header, the typed operation, and any trailing extensions.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Request<'a> {
    /// The header as sent (its `len` and `opcode` were checked).
    pub header: FuseInHeader,
    /// The operation and its borrowed arguments.
    pub op: Operation<'a>,
    /// Request extensions (security context, supplementary groups), already validated.
    pub extensions: Extensions<'a>,
}

/// A fixed-size record list inside a request (BATCH_FORGET entries, REMOVEMAPPING ranges),
/// read entry by entry with unaligned reads. Its byte length is a whole number of entries.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct WireList<'a, T> {
    bytes: &'a [u8],
    _entry: PhantomData<T>,
}

/// BATCH_FORGET entries.
pub type ForgetList<'a> = WireList<'a, FuseForgetOne>;
/// REMOVEMAPPING ranges.
pub type RemoveMappingList<'a> = WireList<'a, FuseRemovemappingOne>;

impl<'a, T: Wire> WireList<'a, T> {
    fn new(bytes: &'a [u8]) -> Self {
        debug_assert_eq!(bytes.len() % T::SIZE, 0);
        Self {
            bytes,
            _entry: PhantomData,
        }
    }

    /// Wraps bytes holding whole entries (e.g. from [`encode_list`]); `None` if the length is
    /// not a multiple of the entry size.
    pub fn from_bytes(bytes: &'a [u8]) -> Option<Self> {
        (bytes.len() % T::SIZE == 0).then(|| Self::new(bytes))
    }

    /// Number of entries.
    pub fn len(&self) -> usize {
        self.bytes.len() / T::SIZE
    }

    /// Whether there are no entries.
    pub fn is_empty(&self) -> bool {
        self.bytes.is_empty()
    }

    /// The entries, decoded one at a time.
    pub fn iter(&self) -> impl Iterator<Item = T> + 'a {
        self.bytes.chunks_exact(T::SIZE).filter_map(T::decode)
    }

    /// The raw bytes of all entries.
    pub fn as_bytes(&self) -> &'a [u8] {
        self.bytes
    }
}

/// One request extension.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Extension<'a> {
    /// `fuse_ext_header.type`: 0..=31 is a security-context block (the value is its count),
    /// [`FUSE_EXT_GROUPS`] supplementary groups.
    pub typ: u32,
    /// The bytes after the 8-byte extension header.
    pub data: &'a [u8],
}

/// The extension area at the end of a request (`total_extlen * 8` bytes), validated so that
/// iterating cannot fail.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Extensions<'a> {
    bytes: &'a [u8],
}

impl<'a> Extensions<'a> {
    fn validate(bytes: &'a [u8]) -> Result<Self, ParseError> {
        let mut off = 0;
        while off < bytes.len() {
            let hdr = FuseExtHeader::decode(&bytes[off..])
                .ok_or(ParseError::BadExtension { offset: off })?;
            let size = hdr.size as usize;
            if size < FuseExtHeader::SIZE || size % 8 != 0 || size > bytes.len() - off {
                return Err(ParseError::BadExtension { offset: off });
            }
            off += size;
        }
        Ok(Self { bytes })
    }

    /// Wraps an extension area for encoding; `None` if it is malformed or does not fit
    /// `total_extlen` (8-byte units in a u16).
    pub fn from_bytes(bytes: &'a [u8]) -> Option<Self> {
        if bytes.len() % 8 != 0 || bytes.len() / 8 > usize::from(u16::MAX) {
            return None;
        }
        Self::validate(bytes).ok()
    }

    /// The raw extension bytes.
    pub fn as_bytes(&self) -> &'a [u8] {
        self.bytes
    }

    /// Whether the request carried no extensions.
    pub fn is_empty(&self) -> bool {
        self.bytes.is_empty()
    }

    /// The extensions in order.
    pub fn iter(&self) -> impl Iterator<Item = Extension<'a>> + 'a {
        let bytes = self.bytes;
        let mut off = 0;
        core::iter::from_fn(move || {
            let hdr = FuseExtHeader::decode(bytes.get(off..)?)?;
            let end = off.checked_add(hdr.size as usize)?;
            let data = bytes.get(off + FuseExtHeader::SIZE..end)?;
            off = end;
            Some(Extension { typ: hdr.typ, data })
        })
    }

    /// The security contexts sent with FUSE_SECURITY_CTX (the kernel's LSM labels for a node
    /// being created): `(xattr name, value)` pairs. Blocks and records that do not parse
    /// (a name without its NUL, a value past the block) end the list; nothing panics.
    pub fn security_contexts(&self) -> impl Iterator<Item = (&'a CStr, &'a [u8])> + 'a {
        self.iter().filter(|e| e.typ < 32).flat_map(|e| {
            let mut rest = e.data;
            (0..e.typ).map_while(move |_| {
                let size = u32::decode(rest)? as usize;
                let body = rest.get(FuseSecctx::SIZE..)?;
                let name = CStr::from_bytes_until_nul(body).ok()?;
                let value_at = name.to_bytes_with_nul().len();
                let value = body.get(value_at..value_at.checked_add(size)?)?;
                let record = (FuseSecctx::SIZE + value_at + size).next_multiple_of(8);
                rest = rest.get(record..).unwrap_or_default();
                Some((name, value))
            })
        })
    }

    /// The supplementary group sent with FUSE_CREATE_SUPP_GROUP, if any.
    pub fn supp_group(&self) -> Option<u32> {
        let ext = self.iter().find(|e| e.typ == FUSE_EXT_GROUPS)?;
        let nr = u32::decode(ext.data)?;
        if nr == 0 {
            return None;
        }
        u32::decode(ext.data.get(4..)?)
    }
}

/// A FUSE operation with its arguments, borrowing names and data from the request bytes.
///
/// Names are `&CStr` (the kernel's NUL stripped by `to_bytes()`, kept for syscalls): they are
/// non-empty and, for directory entries, free of '/'. Write data, xattr values and ioctl input
/// are byte slices whose length matched the declared size.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Operation<'a> {
    /// FUSE_LOOKUP: look up a name in a directory.
    Lookup {
        /// The name; `to_bytes()` gives it without the NUL, the `CStr` itself suits syscalls.
        name: &'a CStr,
    },
    /// FUSE_FORGET: drop lookup references (no reply).
    Forget(FuseForgetIn),
    /// FUSE_GETATTR: get attributes.
    Getattr(FuseGetattrIn),
    /// FUSE_SETATTR: set attributes.
    Setattr(FuseSetattrIn),
    /// FUSE_READLINK: read a symlink.
    Readlink,
    /// FUSE_SYMLINK: create a symlink.
    Symlink {
        /// The name; `to_bytes()` gives it without the NUL, the `CStr` itself suits syscalls.
        name: &'a CStr,
        /// The symlink target (may contain '/').
        target: &'a CStr,
    },
    /// FUSE_MKNOD: create a special or regular file.
    Mknod {
        /// The fixed argument struct.
        arg: FuseMknodIn,
        /// The name; `to_bytes()` gives it without the NUL, the `CStr` itself suits syscalls.
        name: &'a CStr,
    },
    /// FUSE_MKDIR: create a directory.
    Mkdir {
        /// The fixed argument struct.
        arg: FuseMkdirIn,
        /// The name; `to_bytes()` gives it without the NUL, the `CStr` itself suits syscalls.
        name: &'a CStr,
    },
    /// FUSE_UNLINK: remove a file.
    Unlink {
        /// The name; `to_bytes()` gives it without the NUL, the `CStr` itself suits syscalls.
        name: &'a CStr,
    },
    /// FUSE_RMDIR: remove a directory.
    Rmdir {
        /// The name; `to_bytes()` gives it without the NUL, the `CStr` itself suits syscalls.
        name: &'a CStr,
    },
    /// FUSE_RENAME: rename.
    Rename {
        /// The fixed argument struct.
        arg: FuseRenameIn,
        /// The name; `to_bytes()` gives it without the NUL, the `CStr` itself suits syscalls.
        name: &'a CStr,
        /// The new name.
        newname: &'a CStr,
    },
    /// FUSE_LINK: hard link.
    Link {
        /// The fixed argument struct.
        arg: FuseLinkIn,
        /// The name; `to_bytes()` gives it without the NUL, the `CStr` itself suits syscalls.
        name: &'a CStr,
    },
    /// FUSE_OPEN: open a file.
    Open(FuseOpenIn),
    /// FUSE_READ: read data.
    Read(FuseReadIn),
    /// FUSE_WRITE: write data.
    Write {
        /// The fixed argument struct.
        arg: FuseWriteIn,
        /// The payload, exactly as long as the struct declares.
        data: &'a [u8],
    },
    /// FUSE_STATFS: filesystem statistics.
    Statfs,
    /// FUSE_RELEASE: close a file.
    Release(FuseReleaseIn),
    /// FUSE_FSYNC: sync a file.
    Fsync(FuseFsyncIn),
    /// FUSE_SETXATTR: set an xattr.
    ///
    /// Without FUSE_SETXATTR_EXT, `arg.setxattr_flags` is 0.
    Setxattr {
        /// The fixed argument struct.
        arg: FuseSetxattrIn,
        /// The name; `to_bytes()` gives it without the NUL, the `CStr` itself suits syscalls.
        name: &'a CStr,
        /// The xattr value, exactly `arg.size` bytes.
        value: &'a [u8],
    },
    /// FUSE_GETXATTR: get an xattr.
    Getxattr {
        /// The fixed argument struct.
        arg: FuseGetxattrIn,
        /// The name; `to_bytes()` gives it without the NUL, the `CStr` itself suits syscalls.
        name: &'a CStr,
    },
    /// FUSE_LISTXATTR: list xattrs.
    Listxattr(FuseGetxattrIn),
    /// FUSE_REMOVEXATTR: remove an xattr.
    Removexattr {
        /// The name; `to_bytes()` gives it without the NUL, the `CStr` itself suits syscalls.
        name: &'a CStr,
    },
    /// FUSE_FLUSH: close(2) on a file descriptor.
    Flush(FuseFlushIn),
    /// FUSE_INIT: session start and negotiation.
    ///
    /// A 16-byte (pre-7.36) INIT arrives with `flags2` and the rest zero.
    Init(FuseInitIn),
    /// FUSE_OPENDIR: open a directory.
    Opendir(FuseOpenIn),
    /// FUSE_READDIR: read directory entries.
    Readdir(FuseReadIn),
    /// FUSE_RELEASEDIR: close a directory.
    Releasedir(FuseReleaseIn),
    /// FUSE_FSYNCDIR: sync a directory.
    Fsyncdir(FuseFsyncIn),
    /// FUSE_GETLK: test a lock.
    Getlk(FuseLkIn),
    /// FUSE_SETLK: set a lock.
    Setlk(FuseLkIn),
    /// FUSE_SETLKW: set a lock, waiting.
    Setlkw(FuseLkIn),
    /// FUSE_ACCESS: check access.
    Access(FuseAccessIn),
    /// FUSE_CREATE: create and open.
    Create {
        /// The fixed argument struct.
        arg: FuseCreateIn,
        /// The name; `to_bytes()` gives it without the NUL, the `CStr` itself suits syscalls.
        name: &'a CStr,
    },
    /// FUSE_INTERRUPT: interrupt a pending request.
    Interrupt(FuseInterruptIn),
    /// FUSE_BMAP: map a block (block-device filesystems only).
    Bmap(FuseBmapIn),
    /// FUSE_DESTROY: session end.
    Destroy,
    /// FUSE_IOCTL: ioctl.
    Ioctl {
        /// The fixed argument struct.
        arg: FuseIoctlIn,
        /// The payload, exactly as long as the struct declares.
        data: &'a [u8],
    },
    /// FUSE_POLL: poll.
    Poll(FusePollIn),
    /// FUSE_NOTIFY_REPLY: reply to a retrieve notification (no reply).
    NotifyReply {
        /// The fixed argument struct.
        arg: FuseNotifyRetrieveIn,
        /// The payload, exactly as long as the struct declares.
        data: &'a [u8],
    },
    /// FUSE_BATCH_FORGET: drop many lookup references (no reply).
    BatchForget(ForgetList<'a>),
    /// FUSE_FALLOCATE: fallocate.
    Fallocate(FuseFallocateIn),
    /// FUSE_READDIRPLUS: read directory entries with attributes.
    Readdirplus(FuseReadIn),
    /// FUSE_RENAME2: rename with flags.
    Rename2 {
        /// The fixed argument struct.
        arg: FuseRename2In,
        /// The name; `to_bytes()` gives it without the NUL, the `CStr` itself suits syscalls.
        name: &'a CStr,
        /// The new name.
        newname: &'a CStr,
    },
    /// FUSE_LSEEK: lseek, notably SEEK_DATA/SEEK_HOLE.
    Lseek(FuseLseekIn),
    /// FUSE_COPY_FILE_RANGE: copy_file_range (32-bit result).
    CopyFileRange(FuseCopyFileRangeIn),
    /// FUSE_SETUPMAPPING: virtio-fs DAX: map a file range into the window.
    SetupMapping(FuseSetupmappingIn),
    /// FUSE_REMOVEMAPPING: virtio-fs DAX: unmap window ranges.
    RemoveMapping(RemoveMappingList<'a>),
    /// FUSE_SYNCFS: syncfs.
    Syncfs(FuseSyncfsIn),
    /// FUSE_TMPFILE: O_TMPFILE create.
    ///
    /// The kernel names the O_TMPFILE dentry "/", so this name is not checked for '/'.
    Tmpfile {
        /// The fixed argument struct.
        arg: FuseCreateIn,
        /// The name; `to_bytes()` gives it without the NUL, the `CStr` itself suits syscalls.
        name: &'a CStr,
    },
    /// FUSE_STATX: statx.
    Statx(FuseStatxIn),
    /// FUSE_COPY_FILE_RANGE_64: copy_file_range with a 64-bit result (7.45).
    CopyFileRange64(FuseCopyFileRangeIn),
    /// CUSE_INIT: cUSE session start.
    CuseInit(CuseInitIn),
}

/// Reads the request header from the first 40 bytes and checks its own length field
/// ([`check_header`]).
///
/// Transports that read the header separately (virtio descriptor chains) use this to learn
/// how many body bytes to gather before [`Request::parse_parts`].
pub fn parse_header(bytes: &[u8]) -> Result<FuseInHeader, ParseError> {
    let header =
        FuseInHeader::decode(bytes).ok_or(ParseError::ShortHeader { have: bytes.len() })?;
    check_header(&header)?;
    Ok(header)
}

/// Checks a header already decoded ([`FuseInHeader::decode`]) as [`parse_header`] checks the
/// one it decodes: its length field must count at least the header itself. A transport that
/// decoded the header once (to address its reply) validates it here instead of encoding it
/// back into bytes for [`parse_header`].
pub fn check_header(header: &FuseInHeader) -> Result<(), ParseError> {
    if (header.len as usize) < FuseInHeader::SIZE {
        return Err(ParseError::HeaderLenTooSmall {
            header_len: header.len,
        });
    }
    Ok(())
}

/// Validates a WRITE from its header and fixed argument only, for transports that hand the
/// data to the file straight from guest memory instead of gathering it first: checks that
/// `header` is a WRITE without extensions and that `header.len` equals 40 + 40 + `size`, so
/// the data the transport then reads is exactly the declared `size` bytes.
pub fn parse_write_prefix(header: &FuseInHeader, arg: &[u8]) -> Result<FuseWriteIn, ParseError> {
    let opcode = Opcode::Write;
    if header.opcode != opcode as u32 {
        return Err(ParseError::UnexpectedOpcode {
            expected: opcode,
            found: header.opcode,
        });
    }
    let write = FuseWriteIn::decode(arg).ok_or(ParseError::Truncated {
        opcode,
        need: FuseWriteIn::SIZE,
        have: arg.len(),
    })?;
    let fixed = (FuseInHeader::SIZE + FuseWriteIn::SIZE) as u64;
    let body = u64::from(header.len).saturating_sub(fixed);
    if u64::from(header.len) < fixed || header.total_extlen != 0 || body != u64::from(write.size) {
        return Err(ParseError::PayloadMismatch {
            opcode,
            declared: u64::from(write.size),
            have: body as usize,
        });
    }
    Ok(write)
}

/// Maps a header's opcode, naming the byte-order mistake apart from plain garbage.
pub fn parse_opcode(raw: u32) -> Result<Opcode, ParseError> {
    Opcode::try_from(raw).map_err(|raw| {
        if raw == crate::opcode::FUSE_INIT_BSWAP_RESERVED
            || raw == crate::opcode::CUSE_INIT_BSWAP_RESERVED
        {
            ParseError::ForeignByteOrder
        } else {
            ParseError::UnknownOpcode(raw)
        }
    })
}

impl<'a> Request<'a> {
    /// Parses one whole request (as one /dev/fuse read returns it) with default options
    /// (no SETXATTR_EXT). `bytes.len()` must equal the header's `len`.
    pub fn parse(bytes: &'a [u8]) -> Result<Self, ParseError> {
        Self::parse_with(bytes, ParseOptions::default())
    }

    /// Parses one whole request with the session's options.
    pub fn parse_with(bytes: &'a [u8], opts: ParseOptions) -> Result<Self, ParseError> {
        let header = parse_header(bytes)?;
        Self::parse_parts(header, &bytes[FuseInHeader::SIZE..], opts)
    }

    /// Parses a request whose header the transport already split off and decoded (virtio-fs:
    /// the header from [`parse_header`], or decoded and then [`check_header`]ed; `body` the
    /// following `header.len - 40` bytes). The header is taken as it is, not decoded again.
    pub fn parse_parts(
        header: FuseInHeader,
        body: &'a [u8],
        opts: ParseOptions,
    ) -> Result<Self, ParseError> {
        let actual = body.len().saturating_add(FuseInHeader::SIZE);
        if header.len as usize != actual {
            return Err(if (header.len as usize) < FuseInHeader::SIZE {
                ParseError::HeaderLenTooSmall {
                    header_len: header.len,
                }
            } else {
                ParseError::LengthMismatch {
                    header_len: header.len,
                    actual,
                }
            });
        }
        let opcode = parse_opcode(header.opcode)?;
        let ext_len = usize::from(header.total_extlen) * 8;
        if ext_len > body.len() {
            return Err(ParseError::ExtensionsTooLong {
                claimed: ext_len,
                body: body.len(),
            });
        }
        let (args, ext) = body.split_at(body.len() - ext_len);
        let extensions = Extensions::validate(ext)?;
        let op = parse_operation(opcode, args, opts)?;
        Ok(Self {
            header,
            op,
            extensions,
        })
    }

    /// The request's opcode.
    pub fn opcode(&self) -> Opcode {
        self.op.opcode()
    }

    /// The id the reply must carry.
    pub fn unique(&self) -> u64 {
        self.header.unique
    }

    /// The node the request is about.
    pub fn nodeid(&self) -> u64 {
        self.header.nodeid
    }

    /// Encodes the request as the kernel would send it, for the built-in virtio-fs frontend
    /// and tests. `header.len`, `header.opcode` and `header.total_extlen` are computed; the
    /// other header fields are taken as they are. To send a lying `len`, patch the bytes.
    pub fn to_bytes(&self, opts: ParseOptions) -> Vec<u8> {
        let mut body = Vec::new();
        self.op.encode_args(&mut body, opts);
        let ext = self.extensions.as_bytes();
        let header = FuseInHeader {
            len: (FuseInHeader::SIZE + body.len() + ext.len()) as u32,
            opcode: self.opcode() as u32,
            total_extlen: (ext.len() / 8) as u16,
            ..self.header
        };
        let mut out = header.to_vec();
        out.extend_from_slice(&body);
        out.extend_from_slice(ext);
        out
    }
}

/// A cursor over the argument bytes of one operation.
struct Args<'a> {
    bytes: &'a [u8],
    pos: usize,
    opcode: Opcode,
}

impl<'a> Args<'a> {
    fn remaining(&self) -> &'a [u8] {
        &self.bytes[self.pos..]
    }

    fn truncated(&self, need: usize) -> ParseError {
        ParseError::Truncated {
            opcode: self.opcode,
            need: self.pos.saturating_add(need),
            have: self.bytes.len(),
        }
    }

    fn fixed<T: Wire>(&mut self) -> Result<T, ParseError> {
        let v = T::decode(self.remaining()).ok_or_else(|| self.truncated(T::SIZE))?;
        self.pos += T::SIZE;
        Ok(v)
    }

    /// A NUL-terminated string; the first NUL ends it, whatever follows is the next argument.
    fn cstr(&mut self) -> Result<&'a CStr, ParseError> {
        let s =
            CStr::from_bytes_until_nul(self.remaining()).map_err(|_| ParseError::MissingNul {
                opcode: self.opcode,
            })?;
        if s.is_empty() {
            return Err(ParseError::EmptyName {
                opcode: self.opcode,
            });
        }
        self.pos += s.to_bytes_with_nul().len();
        Ok(s)
    }

    /// A directory-entry name: a string that also must not contain '/'.
    fn entry_name(&mut self) -> Result<&'a CStr, ParseError> {
        let s = self.cstr()?;
        if s.to_bytes().contains(&b'/') {
            return Err(ParseError::SlashInName {
                opcode: self.opcode,
            });
        }
        Ok(s)
    }

    /// The rest of the arguments, which must be exactly `declared` bytes long.
    fn payload(&mut self, declared: u64) -> Result<&'a [u8], ParseError> {
        let rest = self.remaining();
        if declared != rest.len() as u64 {
            return Err(ParseError::PayloadMismatch {
                opcode: self.opcode,
                declared,
                have: rest.len(),
            });
        }
        self.pos = self.bytes.len();
        Ok(rest)
    }

    /// The rest of the arguments as `count` fixed-size entries.
    fn list<T: Wire>(&mut self, count: u32) -> Result<WireList<'a, T>, ParseError> {
        let rest = self.remaining();
        if u64::from(count) * T::SIZE as u64 != rest.len() as u64 {
            return Err(ParseError::CountMismatch {
                opcode: self.opcode,
                count,
                have: rest.len(),
            });
        }
        self.pos = self.bytes.len();
        Ok(WireList::new(rest))
    }

    fn finish<T>(self, value: T) -> Result<T, ParseError> {
        let extra = self.bytes.len() - self.pos;
        if extra != 0 {
            return Err(ParseError::TrailingBytes {
                opcode: self.opcode,
                extra,
            });
        }
        Ok(value)
    }
}

fn parse_init(args: &[u8]) -> Result<FuseInitIn, ParseError> {
    let mut padded = [0u8; FuseInitIn::SIZE];
    let n = args.len().min(FuseInitIn::SIZE);
    padded[..n].copy_from_slice(&args[..n]);
    let init = FuseInitIn::decode(&padded).ok_or(ParseError::BadInitSize { have: args.len() })?;
    // A kernel with another major version may send another layout; the server only needs
    // major/minor to answer it with its own major, so only those must be present.
    let size_ok = if init.major == FUSE_KERNEL_VERSION {
        args.len() == FUSE_COMPAT_INIT_IN_SIZE || args.len() == FuseInitIn::SIZE
    } else {
        args.len() >= 8
    };
    if size_ok {
        Ok(init)
    } else {
        Err(ParseError::BadInitSize { have: args.len() })
    }
}

fn parse_operation(
    opcode: Opcode,
    bytes: &[u8],
    opts: ParseOptions,
) -> Result<Operation<'_>, ParseError> {
    use Operation as O;
    let mut a = Args {
        bytes,
        pos: 0,
        opcode,
    };
    let op = match opcode {
        Opcode::Lookup => O::Lookup {
            name: a.entry_name()?,
        },
        Opcode::Forget => O::Forget(a.fixed()?),
        Opcode::Getattr => O::Getattr(a.fixed()?),
        Opcode::Setattr => O::Setattr(a.fixed()?),
        Opcode::Readlink => O::Readlink,
        Opcode::Symlink => O::Symlink {
            name: a.entry_name()?,
            target: a.cstr()?,
        },
        Opcode::Mknod => O::Mknod {
            arg: a.fixed()?,
            name: a.entry_name()?,
        },
        Opcode::Mkdir => O::Mkdir {
            arg: a.fixed()?,
            name: a.entry_name()?,
        },
        Opcode::Unlink => O::Unlink {
            name: a.entry_name()?,
        },
        Opcode::Rmdir => O::Rmdir {
            name: a.entry_name()?,
        },
        Opcode::Rename => O::Rename {
            arg: a.fixed()?,
            name: a.entry_name()?,
            newname: a.entry_name()?,
        },
        Opcode::Link => O::Link {
            arg: a.fixed()?,
            name: a.entry_name()?,
        },
        Opcode::Open => O::Open(a.fixed()?),
        Opcode::Read => O::Read(a.fixed()?),
        Opcode::Write => {
            let arg: FuseWriteIn = a.fixed()?;
            O::Write {
                arg,
                data: a.payload(u64::from(arg.size))?,
            }
        }
        Opcode::Statfs => O::Statfs,
        Opcode::Release => O::Release(a.fixed()?),
        Opcode::Fsync => O::Fsync(a.fixed()?),
        Opcode::Setxattr => {
            let arg = if opts.setxattr_ext {
                a.fixed::<FuseSetxattrIn>()?
            } else {
                let [size, flags] = a.fixed::<[u32; 2]>()?;
                FuseSetxattrIn {
                    size,
                    flags,
                    ..Default::default()
                }
            };
            O::Setxattr {
                arg,
                name: a.cstr()?,
                value: a.payload(u64::from(arg.size))?,
            }
        }
        Opcode::Getxattr => O::Getxattr {
            arg: a.fixed()?,
            name: a.cstr()?,
        },
        Opcode::Listxattr => O::Listxattr(a.fixed()?),
        Opcode::Removexattr => O::Removexattr { name: a.cstr()? },
        Opcode::Flush => O::Flush(a.fixed()?),
        Opcode::Init => {
            a.pos = bytes.len();
            O::Init(parse_init(bytes)?)
        }
        Opcode::Opendir => O::Opendir(a.fixed()?),
        Opcode::Readdir => O::Readdir(a.fixed()?),
        Opcode::Releasedir => O::Releasedir(a.fixed()?),
        Opcode::Fsyncdir => O::Fsyncdir(a.fixed()?),
        Opcode::Getlk => O::Getlk(a.fixed()?),
        Opcode::Setlk => O::Setlk(a.fixed()?),
        Opcode::Setlkw => O::Setlkw(a.fixed()?),
        Opcode::Access => O::Access(a.fixed()?),
        Opcode::Create => O::Create {
            arg: a.fixed()?,
            name: a.entry_name()?,
        },
        Opcode::Interrupt => O::Interrupt(a.fixed()?),
        Opcode::Bmap => O::Bmap(a.fixed()?),
        Opcode::Destroy => O::Destroy,
        Opcode::Ioctl => {
            let arg: FuseIoctlIn = a.fixed()?;
            O::Ioctl {
                arg,
                data: a.payload(u64::from(arg.in_size))?,
            }
        }
        Opcode::Poll => O::Poll(a.fixed()?),
        Opcode::NotifyReply => {
            let arg: FuseNotifyRetrieveIn = a.fixed()?;
            O::NotifyReply {
                arg,
                data: a.payload(u64::from(arg.size))?,
            }
        }
        Opcode::BatchForget => {
            let arg: FuseBatchForgetIn = a.fixed()?;
            O::BatchForget(a.list(arg.count)?)
        }
        Opcode::Fallocate => O::Fallocate(a.fixed()?),
        Opcode::Readdirplus => O::Readdirplus(a.fixed()?),
        Opcode::Rename2 => O::Rename2 {
            arg: a.fixed()?,
            name: a.entry_name()?,
            newname: a.entry_name()?,
        },
        Opcode::Lseek => O::Lseek(a.fixed()?),
        Opcode::CopyFileRange => O::CopyFileRange(a.fixed()?),
        Opcode::SetupMapping => O::SetupMapping(a.fixed()?),
        Opcode::RemoveMapping => {
            let arg: FuseRemovemappingIn = a.fixed()?;
            O::RemoveMapping(a.list(arg.count)?)
        }
        Opcode::Syncfs => O::Syncfs(a.fixed()?),
        Opcode::Tmpfile => O::Tmpfile {
            arg: a.fixed()?,
            name: a.cstr()?,
        },
        Opcode::Statx => O::Statx(a.fixed()?),
        Opcode::CopyFileRange64 => O::CopyFileRange64(a.fixed()?),
        Opcode::CuseInit => O::CuseInit(a.fixed()?),
    };
    a.finish(op)
}

impl Operation<'_> {
    /// The opcode this operation travels under.
    pub fn opcode(&self) -> Opcode {
        use Operation as O;
        match self {
            O::Lookup { .. } => Opcode::Lookup,
            O::Forget(_) => Opcode::Forget,
            O::Getattr(_) => Opcode::Getattr,
            O::Setattr(_) => Opcode::Setattr,
            O::Readlink => Opcode::Readlink,
            O::Symlink { .. } => Opcode::Symlink,
            O::Mknod { .. } => Opcode::Mknod,
            O::Mkdir { .. } => Opcode::Mkdir,
            O::Unlink { .. } => Opcode::Unlink,
            O::Rmdir { .. } => Opcode::Rmdir,
            O::Rename { .. } => Opcode::Rename,
            O::Link { .. } => Opcode::Link,
            O::Open(_) => Opcode::Open,
            O::Read(_) => Opcode::Read,
            O::Write { .. } => Opcode::Write,
            O::Statfs => Opcode::Statfs,
            O::Release(_) => Opcode::Release,
            O::Fsync(_) => Opcode::Fsync,
            O::Setxattr { .. } => Opcode::Setxattr,
            O::Getxattr { .. } => Opcode::Getxattr,
            O::Listxattr(_) => Opcode::Listxattr,
            O::Removexattr { .. } => Opcode::Removexattr,
            O::Flush(_) => Opcode::Flush,
            O::Init(_) => Opcode::Init,
            O::Opendir(_) => Opcode::Opendir,
            O::Readdir(_) => Opcode::Readdir,
            O::Releasedir(_) => Opcode::Releasedir,
            O::Fsyncdir(_) => Opcode::Fsyncdir,
            O::Getlk(_) => Opcode::Getlk,
            O::Setlk(_) => Opcode::Setlk,
            O::Setlkw(_) => Opcode::Setlkw,
            O::Access(_) => Opcode::Access,
            O::Create { .. } => Opcode::Create,
            O::Interrupt(_) => Opcode::Interrupt,
            O::Bmap(_) => Opcode::Bmap,
            O::Destroy => Opcode::Destroy,
            O::Ioctl { .. } => Opcode::Ioctl,
            O::Poll(_) => Opcode::Poll,
            O::NotifyReply { .. } => Opcode::NotifyReply,
            O::BatchForget(_) => Opcode::BatchForget,
            O::Fallocate(_) => Opcode::Fallocate,
            O::Readdirplus(_) => Opcode::Readdirplus,
            O::Rename2 { .. } => Opcode::Rename2,
            O::Lseek(_) => Opcode::Lseek,
            O::CopyFileRange(_) => Opcode::CopyFileRange,
            O::SetupMapping(_) => Opcode::SetupMapping,
            O::RemoveMapping(_) => Opcode::RemoveMapping,
            O::Syncfs(_) => Opcode::Syncfs,
            O::Tmpfile { .. } => Opcode::Tmpfile,
            O::Statx(_) => Opcode::Statx,
            O::CopyFileRange64(_) => Opcode::CopyFileRange64,
            O::CuseInit(_) => Opcode::CuseInit,
        }
    }

    /// Appends the operation's argument bytes (everything after the header, before any
    /// extensions) as the kernel lays them out. Declared sizes inside the argument structs
    /// (write size, xattr size, ioctl in_size) are written as given, not recomputed, so a
    /// frontend can build lying requests on purpose; list counts come from the list.
    pub fn encode_args(&self, out: &mut Vec<u8>, opts: ParseOptions) {
        use Operation as O;
        fn name(out: &mut Vec<u8>, s: &CStr) {
            out.extend_from_slice(s.to_bytes_with_nul());
        }
        fn fixed<T: Wire>(out: &mut Vec<u8>, v: &T) {
            out.extend_from_slice(&v.to_vec());
        }
        match self {
            O::Readlink | O::Statfs | O::Destroy => {}
            O::Lookup { name: n } | O::Unlink { name: n } | O::Rmdir { name: n } => name(out, n),
            O::Removexattr { name: n } => name(out, n),
            O::Forget(v) => fixed(out, v),
            O::Getattr(v) => fixed(out, v),
            O::Setattr(v) => fixed(out, v),
            O::Symlink { name: n, target } => {
                name(out, n);
                name(out, target);
            }
            O::Mknod { arg, name: n } => {
                fixed(out, arg);
                name(out, n);
            }
            O::Mkdir { arg, name: n } => {
                fixed(out, arg);
                name(out, n);
            }
            O::Rename {
                arg,
                name: n,
                newname,
            } => {
                fixed(out, arg);
                name(out, n);
                name(out, newname);
            }
            O::Rename2 {
                arg,
                name: n,
                newname,
            } => {
                fixed(out, arg);
                name(out, n);
                name(out, newname);
            }
            O::Link { arg, name: n } => {
                fixed(out, arg);
                name(out, n);
            }
            O::Open(v) | O::Opendir(v) => fixed(out, v),
            O::Read(v) | O::Readdir(v) | O::Readdirplus(v) => fixed(out, v),
            O::Write { arg, data } => {
                fixed(out, arg);
                out.extend_from_slice(data);
            }
            O::Release(v) | O::Releasedir(v) => fixed(out, v),
            O::Fsync(v) | O::Fsyncdir(v) => fixed(out, v),
            O::Setxattr {
                arg,
                name: n,
                value,
            } => {
                if opts.setxattr_ext {
                    fixed(out, arg);
                } else {
                    fixed(out, &[arg.size, arg.flags]);
                }
                name(out, n);
                out.extend_from_slice(value);
            }
            O::Getxattr { arg, name: n } => {
                fixed(out, arg);
                name(out, n);
            }
            O::Listxattr(v) => fixed(out, v),
            O::Flush(v) => fixed(out, v),
            O::Init(v) => fixed(out, v),
            O::Getlk(v) | O::Setlk(v) | O::Setlkw(v) => fixed(out, v),
            O::Access(v) => fixed(out, v),
            O::Create { arg, name: n } | O::Tmpfile { arg, name: n } => {
                fixed(out, arg);
                name(out, n);
            }
            O::Interrupt(v) => fixed(out, v),
            O::Bmap(v) => fixed(out, v),
            O::Ioctl { arg, data } => {
                fixed(out, arg);
                out.extend_from_slice(data);
            }
            O::Poll(v) => fixed(out, v),
            O::NotifyReply { arg, data } => {
                fixed(out, arg);
                out.extend_from_slice(data);
            }
            O::BatchForget(list) => {
                fixed(
                    out,
                    &FuseBatchForgetIn {
                        count: list.len() as u32,
                        dummy: 0,
                    },
                );
                out.extend_from_slice(list.as_bytes());
            }
            O::Fallocate(v) => fixed(out, v),
            O::Lseek(v) => fixed(out, v),
            O::CopyFileRange(v) | O::CopyFileRange64(v) => fixed(out, v),
            O::SetupMapping(v) => fixed(out, v),
            O::RemoveMapping(list) => {
                fixed(
                    out,
                    &FuseRemovemappingIn {
                        count: list.len() as u32,
                    },
                );
                out.extend_from_slice(list.as_bytes());
            }
            O::Syncfs(v) => fixed(out, v),
            O::Statx(v) => fixed(out, v),
            O::CuseInit(v) => fixed(out, v),
        }
    }
}

/// Builds the argument bytes of a list operation from entries, for frontends and tests.
pub fn encode_list<T: Wire>(entries: &[T]) -> Vec<u8> {
    let mut out = Vec::with_capacity(entries.len() * T::SIZE);
    for e in entries {
        out.extend_from_slice(&e.to_vec());
    }
    out
}
