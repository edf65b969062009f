//! The guest's FUSE layer: encodes requests with the protocol crate, sends them through the
//! virtio-fs driver, and checks every reply as untrusted input (length, unique, errno range,
//! exact body size) before decoding it.

use std::ffi::CString;
use std::fmt;
use std::path::Path;

use protocol::abi::*;
use protocol::reply::parse_reply;
use protocol::request::encode_list;
use protocol::{Extensions, ForgetList, Opcode, Operation, ParseOptions, Request, Wire};

use crate::driver::{Completion, DriverConfig, DriverError, FsDriver, HIPRIO_QUEUE, REQUEST_QUEUE};

/// INIT flags this client offers by default: what a Linux virtio-fs guest offers, less the
/// ones that change request layouts or need a page cache (SECURITY_CTX, CREATE_SUPP_GROUP,
/// WRITEBACK_CACHE) and the DAX ones (the DAX step offers those itself).
pub const DEFAULT_INIT_FLAGS: u64 = FUSE_ASYNC_READ
    | FUSE_POSIX_LOCKS
    | FUSE_ATOMIC_O_TRUNC
    | FUSE_EXPORT_SUPPORT
    | FUSE_BIG_WRITES
    | FUSE_DONT_MASK
    | FUSE_FLOCK_LOCKS
    | FUSE_HAS_IOCTL_DIR
    | FUSE_AUTO_INVAL_DATA
    | FUSE_DO_READDIRPLUS
    | FUSE_READDIRPLUS_AUTO
    | FUSE_ASYNC_DIO
    | FUSE_PARALLEL_DIROPS
    | FUSE_HANDLE_KILLPRIV
    | FUSE_POSIX_ACL
    | FUSE_ABORT_ERROR
    | FUSE_MAX_PAGES
    | FUSE_CACHE_SYMLINKS
    | FUSE_EXPLICIT_INVAL_DATA
    | FUSE_SUBMOUNTS
    | FUSE_HANDLE_KILLPRIV_V2
    | FUSE_SETXATTR_EXT
    | FUSE_INIT_EXT
    | FUSE_HAS_EXPIRE_ONLY
    | FUSE_DIRECT_IO_ALLOW_MMAP
    | FUSE_NO_EXPORT_SUPPORT
    | FUSE_HAS_RESEND;

/// Reply room for requests whose reply is small and fixed.
const SMALL_REPLY: u32 = 4096;

/// Errors of a FUSE request.
#[derive(Debug)]
pub enum FuseError {
    /// The transport failed (timeout, backend gone, device error, ...).
    Driver(DriverError),
    /// The server answered with this errno (positive: ENOENT = 2, ...).
    Errno(i32),
    /// The reply broke the protocol.
    BadReply {
        /// The request's opcode.
        opcode: Opcode,
        /// What was wrong.
        why: String,
    },
    /// A name with an interior NUL cannot be encoded.
    BadName,
}

impl fmt::Display for FuseError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            FuseError::Driver(e) => write!(f, "{e}"),
            FuseError::Errno(e) => {
                write!(
                    f,
                    "server error {e} ({})",
                    std::io::Error::from_raw_os_error(*e)
                )
            }
            FuseError::BadReply { opcode, why } => write!(f, "bad {opcode} reply: {why}"),
            FuseError::BadName => write!(f, "name contains NUL"),
        }
    }
}

impl std::error::Error for FuseError {}

impl From<DriverError> for FuseError {
    fn from(e: DriverError) -> Self {
        FuseError::Driver(e)
    }
}

impl FuseError {
    /// The errno, when the server answered with one.
    pub fn errno(&self) -> Option<i32> {
        match self {
            FuseError::Errno(e) => Some(*e),
            _ => None,
        }
    }
}

fn bad(opcode: Opcode, why: impl Into<String>) -> FuseError {
    FuseError::BadReply {
        opcode,
        why: why.into(),
    }
}

fn cstr(name: &str) -> Result<CString, FuseError> {
    CString::new(name).map_err(|_| FuseError::BadName)
}

/// A checked reply: header fields and body.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Reply {
    /// Echoed request id.
    pub unique: u64,
    /// 0 or a negative errno.
    pub error: i32,
    /// Body bytes.
    pub body: Vec<u8>,
}

/// A READDIR record.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DirEntry {
    /// Inode number.
    pub ino: u64,
    /// Offset cookie to resume after this entry.
    pub off: u64,
    /// DT_* type.
    pub typ: u32,
    /// Name bytes.
    pub name: Vec<u8>,
}

/// A READDIRPLUS record: the entry (a lookup reference when `nodeid != 0`) and the dirent.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DirEntryPlus {
    /// The lookup result.
    pub entry: FuseEntryOut,
    /// The directory entry.
    pub dirent: DirEntry,
}

/// GETXATTR/LISTXATTR answer: the size (when asked with size 0) or the bytes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Xattr {
    /// Bytes needed.
    Size(u32),
    /// Value or NUL-separated name list.
    Data(Vec<u8>),
}

fn parse_dirents(opcode: Opcode, mut b: &[u8], plus: bool) -> Result<Vec<DirEntryPlus>, FuseError> {
    let head = if plus {
        FuseDirentplus::SIZE
    } else {
        FuseDirent::SIZE
    };
    let mut out = Vec::new();
    while !b.is_empty() {
        let (entry, d) = if plus {
            let p = FuseDirentplus::decode(b).ok_or_else(|| bad(opcode, "truncated record"))?;
            (p.entry_out, p.dirent)
        } else {
            let d = FuseDirent::decode(b).ok_or_else(|| bad(opcode, "truncated record"))?;
            (FuseEntryOut::default(), d)
        };
        let namelen = d.namelen as usize;
        let rec = dirent_align(head + namelen);
        if namelen == 0 || namelen > FUSE_NAME_MAX || rec > b.len() {
            return Err(bad(
                opcode,
                format!("record name length {namelen} does not fit"),
            ));
        }
        out.push(DirEntryPlus {
            entry,
            dirent: DirEntry {
                ino: d.ino,
                off: d.off,
                typ: d.typ,
                name: b[head..head + namelen].to_vec(),
            },
        });
        b = &b[rec..];
    }
    Ok(out)
}

/// A FUSE session over a virtio-fs device.
#[derive(Debug)]
pub struct FuseClient {
    driver: FsDriver,
    next_unique: u64,
    opts: ParseOptions,
    init: Option<FuseInitOut>,
    uid: u32,
    gid: u32,
    pid: u32,
    /// Extension area for the next request only (security contexts, groups).
    next_extensions: Vec<u8>,
}

impl FuseClient {
    /// A session over an already set up device.
    pub fn new(driver: FsDriver) -> Self {
        Self {
            driver,
            next_unique: 1,
            opts: ParseOptions::default(),
            init: None,
            uid: 0,
            gid: 0,
            pid: std::process::id(),
            next_extensions: Vec::new(),
        }
    }

    /// Sends `bytes` as the extension area of the next request (as a kernel appends security
    /// contexts or a supplementary group to a create); `bytes` must be a well-formed area.
    pub fn extend_next_request(&mut self, bytes: Vec<u8>) {
        self.next_extensions = bytes;
    }

    /// Connects to the backend's socket and sets the device up (no INIT yet).
    pub fn connect(socket: &Path, config: &DriverConfig) -> Result<Self, FuseError> {
        Ok(Self::new(FsDriver::connect(socket, config)?))
    }

    /// The virtio-fs driver underneath, for raw chains.
    pub fn driver(&mut self) -> &mut FsDriver {
        &mut self.driver
    }

    /// The INIT reply, once INIT succeeded.
    pub fn init_out(&self) -> Option<&FuseInitOut> {
        self.init.as_ref()
    }

    /// Request-layout options agreed in INIT.
    pub fn parse_options(&self) -> ParseOptions {
        self.opts
    }

    /// Credentials put in the header of following requests.
    pub fn set_credentials(&mut self, uid: u32, gid: u32, pid: u32) {
        (self.uid, self.gid, self.pid) = (uid, gid, pid);
    }

    /// A fresh request id.
    pub fn next_unique(&mut self) -> u64 {
        let u = self.next_unique;
        self.next_unique += 1;
        u
    }

    /// Encodes `op` for `nodeid` with a fresh unique; returns the unique and the bytes.
    pub fn encode(&mut self, nodeid: u64, op: Operation<'_>) -> (u64, Vec<u8>) {
        let extensions = std::mem::take(&mut self.next_extensions);
        let unique = self.next_unique();
        let req = Request {
            header: FuseInHeader {
                unique,
                nodeid,
                uid: self.uid,
                gid: self.gid,
                pid: self.pid,
                ..Default::default()
            },
            op,
            extensions: Extensions::from_bytes(&extensions).unwrap_or_default(),
        };
        (unique, req.to_bytes(self.opts))
    }

    /// Sends request bytes as Linux lays them out (header, then arguments, then write
    /// payload, each in its own device-readable descriptor; reply header and body in
    /// device-writable ones) and returns what the device wrote.
    pub fn send_bytes(
        &mut self,
        queue: u16,
        bytes: &[u8],
        reply_room: u32,
    ) -> Result<Completion, DriverError> {
        let split = bytes.len().min(FuseInHeader::SIZE);
        let (head, rest) = bytes.split_at(split);
        let mut readable: Vec<&[u8]> = vec![head];
        let opcode = u32::from_ne_bytes(
            bytes
                .get(4..8)
                .and_then(|b| b.try_into().ok())
                .unwrap_or([0; 4]),
        );
        if opcode == Opcode::Write as u32 && rest.len() > FuseWriteIn::SIZE {
            let (arg, data) = rest.split_at(FuseWriteIn::SIZE);
            readable.extend([arg, data]);
        } else if !rest.is_empty() {
            readable.push(rest);
        }
        let writable: Vec<u32> = if reply_room == 0 {
            vec![]
        } else if reply_room as usize > FuseOutHeader::SIZE {
            vec![
                FuseOutHeader::SIZE as u32,
                reply_room - FuseOutHeader::SIZE as u32,
            ]
        } else {
            vec![reply_room]
        };
        self.driver.call(queue, &readable, &writable)
    }

    /// Checks a completion as the reply to request `unique`.
    pub fn check_reply(opcode: Opcode, unique: u64, c: &Completion) -> Result<Reply, FuseError> {
        let (error, body) = Self::checked_body(opcode, unique, c)?;
        Ok(Reply {
            unique,
            error,
            body: body.to_vec(),
        })
    }

    /// The error field and body of completion `c` checked as the reply to `unique`,
    /// borrowed from the completion.
    fn checked_body(
        opcode: Opcode,
        unique: u64,
        c: &Completion,
    ) -> Result<(i32, &[u8]), FuseError> {
        if u64::from(c.used_len) > c.writable_len {
            return Err(bad(
                opcode,
                format!(
                    "used len {} exceeds the {} writable bytes",
                    c.used_len, c.writable_len
                ),
            ));
        }
        let (h, body) = parse_reply(&c.written).map_err(|e| bad(opcode, e.to_string()))?;
        if h.unique != unique {
            return Err(bad(
                opcode,
                format!("unique {} answers request {unique}", h.unique),
            ));
        }
        if h.error != 0 && !body.is_empty() {
            return Err(bad(opcode, "error reply with a body"));
        }
        Ok((h.error, body))
    }

    /// Sends `op` and returns the checked reply, error replies included.
    pub fn send(
        &mut self,
        nodeid: u64,
        op: Operation<'_>,
        reply_room: u32,
    ) -> Result<Reply, FuseError> {
        let opcode = op.opcode();
        let queue = match opcode {
            Opcode::Forget | Opcode::BatchForget | Opcode::Interrupt => HIPRIO_QUEUE,
            _ => REQUEST_QUEUE,
        };
        let (unique, bytes) = self.encode(nodeid, op);
        let c = self.send_bytes(queue, &bytes, reply_room)?;
        Self::check_reply(opcode, unique, &c)
    }

    /// Sends `op`; an error reply becomes [`FuseError::Errno`], a success its body.
    pub fn request(
        &mut self,
        nodeid: u64,
        op: Operation<'_>,
        reply_room: u32,
    ) -> Result<Vec<u8>, FuseError> {
        let r = self.send(nodeid, op, reply_room)?;
        if r.error != 0 {
            return Err(FuseError::Errno(-r.error));
        }
        Ok(r.body)
    }

    fn request_struct<T: Wire>(&mut self, nodeid: u64, op: Operation<'_>) -> Result<T, FuseError> {
        let opcode = op.opcode();
        let body = self.request(nodeid, op, (FuseOutHeader::SIZE + T::SIZE) as u32)?;
        if body.len() != T::SIZE {
            return Err(bad(
                opcode,
                format!("body of {} bytes, expected {}", body.len(), T::SIZE),
            ));
        }
        T::decode(&body).ok_or_else(|| bad(opcode, "short body"))
    }

    fn request_empty(&mut self, nodeid: u64, op: Operation<'_>) -> Result<(), FuseError> {
        let opcode = op.opcode();
        let body = self.request(nodeid, op, SMALL_REPLY)?;
        if !body.is_empty() {
            return Err(bad(opcode, format!("{} unexpected body bytes", body.len())));
        }
        Ok(())
    }

    fn request_data(
        &mut self,
        nodeid: u64,
        op: Operation<'_>,
        max: u32,
    ) -> Result<Vec<u8>, FuseError> {
        let opcode = op.opcode();
        let room = max.saturating_add(FuseOutHeader::SIZE as u32);
        let body = self.request(nodeid, op, room)?;
        if body.len() > max as usize {
            return Err(bad(
                opcode,
                format!("{} bytes returned, {max} asked", body.len()),
            ));
        }
        Ok(body)
    }

    fn send_no_reply(&mut self, nodeid: u64, op: Operation<'_>) -> Result<(), FuseError> {
        let opcode = op.opcode();
        let (_, bytes) = self.encode(nodeid, op);
        let c = self.send_bytes(HIPRIO_QUEUE, &bytes, 0)?;
        if c.used_len != 0 {
            return Err(bad(
                opcode,
                format!(
                    "device claims {} bytes written for a request without reply",
                    c.used_len
                ),
            ));
        }
        Ok(())
    }

    /// FUSE_INIT offering `flags`; remembers the reply (and SETXATTR_EXT) for the session.
    pub fn init(&mut self, flags: u64) -> Result<FuseInitOut, FuseError> {
        let arg = FuseInitIn {
            major: FUSE_KERNEL_VERSION,
            minor: FUSE_KERNEL_MINOR_VERSION,
            max_readahead: 128 << 10,
            flags: (flags as u32)
                | if flags >> 32 != 0 {
                    FUSE_INIT_EXT as u32
                } else {
                    0
                },
            flags2: (flags >> 32) as u32,
            ..Default::default()
        };
        let body = self.request(FUSE_ROOT_ID, Operation::Init(arg), SMALL_REPLY)?;
        // Servers older than 7.23 answer with 24 bytes; the rest reads as zero.
        if body.len() < 24 || body.len() > FuseInitOut::SIZE {
            return Err(bad(
                Opcode::Init,
                format!("INIT reply body of {} bytes", body.len()),
            ));
        }
        let mut full = body;
        full.resize(FuseInitOut::SIZE, 0);
        let out = FuseInitOut::decode(&full).ok_or_else(|| bad(Opcode::Init, "short body"))?;
        if out.major != FUSE_KERNEL_VERSION {
            return Err(bad(Opcode::Init, format!("major version {}", out.major)));
        }
        let accepted = if out.flags64() & FUSE_INIT_EXT != 0 {
            out.flags64()
        } else {
            u64::from(out.flags)
        };
        if accepted & !(flags | FUSE_INIT_EXT) != 0 {
            return Err(bad(
                Opcode::Init,
                format!(
                    "server accepted flags {:#x} that were not offered",
                    accepted & !(flags | FUSE_INIT_EXT)
                ),
            ));
        }
        self.opts = ParseOptions::from_init_flags(accepted);
        self.init = Some(out);
        Ok(out)
    }

    /// The flags the server accepted in INIT (0 before INIT).
    pub fn accepted_flags(&self) -> u64 {
        self.init.map_or(0, |o| {
            if o.flags & FUSE_INIT_EXT as u32 != 0 {
                o.flags64()
            } else {
                u64::from(o.flags)
            }
        })
    }

    /// FUSE_DESTROY. `Ok(false)`: the device returned the chain without a reply (some
    /// servers treat DESTROY as a no-reply message; the kernel is unmounting anyway).
    pub fn destroy(&mut self) -> Result<bool, FuseError> {
        let (unique, bytes) = self.encode(FUSE_ROOT_ID, Operation::Destroy);
        let c = self.send_bytes(REQUEST_QUEUE, &bytes, SMALL_REPLY)?;
        if c.used_len == 0 {
            return Ok(false);
        }
        let r = Self::check_reply(Opcode::Destroy, unique, &c)?;
        if r.error != 0 {
            return Err(FuseError::Errno(-r.error));
        }
        if !r.body.is_empty() {
            return Err(bad(Opcode::Destroy, "unexpected body"));
        }
        Ok(true)
    }

    /// FUSE_LOOKUP.
    pub fn lookup(&mut self, parent: u64, name: &str) -> Result<FuseEntryOut, FuseError> {
        let name = cstr(name)?;
        self.request_struct(parent, Operation::Lookup { name: &name })
    }

    /// FUSE_FORGET (hiprio queue, no reply).
    pub fn forget(&mut self, nodeid: u64, nlookup: u64) -> Result<(), FuseError> {
        self.send_no_reply(nodeid, Operation::Forget(FuseForgetIn { nlookup }))
    }

    /// FUSE_BATCH_FORGET of `(nodeid, nlookup)` pairs (hiprio queue, no reply).
    pub fn batch_forget(&mut self, nodes: &[(u64, u64)]) -> Result<(), FuseError> {
        let entries: Vec<FuseForgetOne> = nodes
            .iter()
            .map(|&(nodeid, nlookup)| FuseForgetOne { nodeid, nlookup })
            .collect();
        let bytes = encode_list(&entries);
        let list = ForgetList::from_bytes(&bytes).ok_or(FuseError::BadName)?;
        self.send_no_reply(0, Operation::BatchForget(list))
    }

    /// FUSE_GETATTR, with the file handle when given.
    pub fn getattr(&mut self, nodeid: u64, fh: Option<u64>) -> Result<FuseAttrOut, FuseError> {
        let arg = FuseGetattrIn {
            getattr_flags: if fh.is_some() { FUSE_GETATTR_FH } else { 0 },
            dummy: 0,
            fh: fh.unwrap_or(0),
        };
        self.request_struct(nodeid, Operation::Getattr(arg))
    }

    /// FUSE_SETATTR.
    pub fn setattr(&mut self, nodeid: u64, arg: &FuseSetattrIn) -> Result<FuseAttrOut, FuseError> {
        self.request_struct(nodeid, Operation::Setattr(*arg))
    }

    /// FUSE_READLINK.
    pub fn readlink(&mut self, nodeid: u64) -> Result<Vec<u8>, FuseError> {
        self.request_data(nodeid, Operation::Readlink, 4096)
    }

    /// FUSE_SYMLINK: `name` in `parent` pointing at `target`.
    pub fn symlink(
        &mut self,
        parent: u64,
        name: &str,
        target: &str,
    ) -> Result<FuseEntryOut, FuseError> {
        let (name, target) = (cstr(name)?, cstr(target)?);
        self.request_struct(
            parent,
            Operation::Symlink {
                name: &name,
                target: &target,
            },
        )
    }

    /// FUSE_MKNOD.
    pub fn mknod(
        &mut self,
        parent: u64,
        name: &str,
        mode: u32,
        rdev: u32,
        umask: u32,
    ) -> Result<FuseEntryOut, FuseError> {
        let name = cstr(name)?;
        let arg = FuseMknodIn {
            mode,
            rdev,
            umask,
            padding: 0,
        };
        self.request_struct(parent, Operation::Mknod { arg, name: &name })
    }

    /// FUSE_MKDIR.
    pub fn mkdir(
        &mut self,
        parent: u64,
        name: &str,
        mode: u32,
        umask: u32,
    ) -> Result<FuseEntryOut, FuseError> {
        let name = cstr(name)?;
        let arg = FuseMkdirIn { mode, umask };
        self.request_struct(parent, Operation::Mkdir { arg, name: &name })
    }

    /// FUSE_UNLINK.
    pub fn unlink(&mut self, parent: u64, name: &str) -> Result<(), FuseError> {
        let name = cstr(name)?;
        self.request_empty(parent, Operation::Unlink { name: &name })
    }

    /// FUSE_RMDIR.
    pub fn rmdir(&mut self, parent: u64, name: &str) -> Result<(), FuseError> {
        let name = cstr(name)?;
        self.request_empty(parent, Operation::Rmdir { name: &name })
    }

    /// FUSE_RENAME.
    pub fn rename(
        &mut self,
        parent: u64,
        name: &str,
        newdir: u64,
        newname: &str,
    ) -> Result<(), FuseError> {
        let (name, newname) = (cstr(name)?, cstr(newname)?);
        self.request_empty(
            parent,
            Operation::Rename {
                arg: FuseRenameIn { newdir },
                name: &name,
                newname: &newname,
            },
        )
    }

    /// FUSE_RENAME2 with RENAME_* `flags`.
    pub fn rename2(
        &mut self,
        parent: u64,
        name: &str,
        newdir: u64,
        newname: &str,
        flags: u32,
    ) -> Result<(), FuseError> {
        let (name, newname) = (cstr(name)?, cstr(newname)?);
        self.request_empty(
            parent,
            Operation::Rename2 {
                arg: FuseRename2In {
                    newdir,
                    flags,
                    padding: 0,
                },
                name: &name,
                newname: &newname,
            },
        )
    }

    /// FUSE_LINK: a new name `newname` in `newparent` for `nodeid`.
    pub fn link(
        &mut self,
        nodeid: u64,
        newparent: u64,
        newname: &str,
    ) -> Result<FuseEntryOut, FuseError> {
        let name = cstr(newname)?;
        self.request_struct(
            newparent,
            Operation::Link {
                arg: FuseLinkIn { oldnodeid: nodeid },
                name: &name,
            },
        )
    }

    /// FUSE_OPEN with O_* `flags`.
    pub fn open(&mut self, nodeid: u64, flags: u32) -> Result<FuseOpenOut, FuseError> {
        self.request_struct(
            nodeid,
            Operation::Open(FuseOpenIn {
                flags,
                open_flags: 0,
            }),
        )
    }

    /// FUSE_CREATE: creates and opens `name` in `parent`.
    pub fn create(
        &mut self,
        parent: u64,
        name: &str,
        flags: u32,
        mode: u32,
        umask: u32,
    ) -> Result<(FuseEntryOut, FuseOpenOut), FuseError> {
        let name = cstr(name)?;
        let arg = FuseCreateIn {
            flags,
            mode,
            umask,
            open_flags: 0,
        };
        let want = FuseEntryOut::SIZE + FuseOpenOut::SIZE;
        let body = self.request(
            parent,
            Operation::Create { arg, name: &name },
            (FuseOutHeader::SIZE + want) as u32,
        )?;
        if body.len() != want {
            return Err(bad(
                Opcode::Create,
                format!("body of {} bytes, expected {want}", body.len()),
            ));
        }
        let e = FuseEntryOut::decode(&body).ok_or_else(|| bad(Opcode::Create, "short"))?;
        let o = FuseOpenOut::decode(&body[FuseEntryOut::SIZE..])
            .ok_or_else(|| bad(Opcode::Create, "short"))?;
        Ok((e, o))
    }

    /// FUSE_READ of up to `size` bytes at `offset`.
    pub fn read(
        &mut self,
        nodeid: u64,
        fh: u64,
        offset: u64,
        size: u32,
    ) -> Result<Vec<u8>, FuseError> {
        let arg = FuseReadIn {
            fh,
            offset,
            size,
            ..Default::default()
        };
        self.request_data(nodeid, Operation::Read(arg), size)
    }

    /// FUSE_READ like [`FuseClient::read`], with the reply's data left in `buf` (cleared
    /// first, its capacity kept): a read loop reuses one buffer instead of allocating and
    /// faulting in a fresh one per request. Returns the bytes read.
    pub fn read_into(
        &mut self,
        nodeid: u64,
        fh: u64,
        offset: u64,
        size: u32,
        buf: &mut Vec<u8>,
    ) -> Result<usize, FuseError> {
        let arg = FuseReadIn {
            fh,
            offset,
            size,
            ..Default::default()
        };
        let op = Operation::Read(arg);
        let (unique, bytes) = self.encode(nodeid, op);
        let room = size.saturating_add(FuseOutHeader::SIZE as u32);
        let c = self.send_bytes(REQUEST_QUEUE, &bytes, room)?;
        let (error, body) = Self::checked_body(Opcode::Read, unique, &c)?;
        if error != 0 {
            return Err(FuseError::Errno(-error));
        }
        if body.len() > size as usize {
            return Err(bad(
                Opcode::Read,
                format!("{} bytes returned, {size} asked", body.len()),
            ));
        }
        buf.clear();
        buf.extend_from_slice(body);
        Ok(body.len())
    }

    /// FUSE_WRITE of `data` at `offset`; returns the bytes written.
    pub fn write(
        &mut self,
        nodeid: u64,
        fh: u64,
        offset: u64,
        data: &[u8],
    ) -> Result<u32, FuseError> {
        let arg = FuseWriteIn {
            fh,
            offset,
            size: data.len() as u32,
            ..Default::default()
        };
        let out: FuseWriteOut = self.request_struct(nodeid, Operation::Write { arg, data })?;
        if out.size as usize > data.len() {
            return Err(bad(
                Opcode::Write,
                format!("{} bytes written of {}", out.size, data.len()),
            ));
        }
        Ok(out.size)
    }

    /// FUSE_STATFS.
    pub fn statfs(&mut self, nodeid: u64) -> Result<FuseKstatfs, FuseError> {
        let out: FuseStatfsOut = self.request_struct(nodeid, Operation::Statfs)?;
        Ok(out.st)
    }

    /// FUSE_RELEASE.
    pub fn release(&mut self, nodeid: u64, fh: u64, flags: u32) -> Result<(), FuseError> {
        let arg = FuseReleaseIn {
            fh,
            flags,
            ..Default::default()
        };
        self.request_empty(nodeid, Operation::Release(arg))
    }

    /// FUSE_FLUSH.
    pub fn flush(&mut self, nodeid: u64, fh: u64, lock_owner: u64) -> Result<(), FuseError> {
        let arg = FuseFlushIn {
            fh,
            lock_owner,
            ..Default::default()
        };
        self.request_empty(nodeid, Operation::Flush(arg))
    }

    /// FUSE_FSYNC (fdatasync when `datasync`).
    pub fn fsync(&mut self, nodeid: u64, fh: u64, datasync: bool) -> Result<(), FuseError> {
        let arg = FuseFsyncIn {
            fh,
            fsync_flags: if datasync { FUSE_FSYNC_FDATASYNC } else { 0 },
            padding: 0,
        };
        self.request_empty(nodeid, Operation::Fsync(arg))
    }

    /// FUSE_SETXATTR.
    pub fn setxattr(
        &mut self,
        nodeid: u64,
        name: &str,
        value: &[u8],
        flags: u32,
    ) -> Result<(), FuseError> {
        self.setxattr_ext(nodeid, name, value, flags, 0)
    }

    /// SETXATTR with SETXATTR_EXT's `setxattr_flags` (sent only when INIT accepted
    /// SETXATTR_EXT; otherwise the compat layout drops them, as a kernel would).
    pub fn setxattr_ext(
        &mut self,
        nodeid: u64,
        name: &str,
        value: &[u8],
        flags: u32,
        setxattr_flags: u32,
    ) -> Result<(), FuseError> {
        let name = cstr(name)?;
        let arg = FuseSetxattrIn {
            size: value.len() as u32,
            flags,
            setxattr_flags,
            ..Default::default()
        };
        self.request_empty(
            nodeid,
            Operation::Setxattr {
                arg,
                name: &name,
                value,
            },
        )
    }

    fn xattr_reply(opcode: Opcode, size: u32, body: Vec<u8>) -> Result<Xattr, FuseError> {
        if size == 0 {
            if body.len() != FuseGetxattrOut::SIZE {
                return Err(bad(opcode, format!("size reply of {} bytes", body.len())));
            }
            let o = FuseGetxattrOut::decode(&body).ok_or_else(|| bad(opcode, "short"))?;
            Ok(Xattr::Size(o.size))
        } else if body.len() > size as usize {
            Err(bad(
                opcode,
                format!("{} bytes for a {size}-byte buffer", body.len()),
            ))
        } else {
            Ok(Xattr::Data(body))
        }
    }

    /// FUSE_GETXATTR: the size when `size` is 0, else the value.
    pub fn getxattr(&mut self, nodeid: u64, name: &str, size: u32) -> Result<Xattr, FuseError> {
        let name = cstr(name)?;
        let arg = FuseGetxattrIn { size, padding: 0 };
        let room = size.max(FuseGetxattrOut::SIZE as u32) + FuseOutHeader::SIZE as u32;
        let body = self.request(nodeid, Operation::Getxattr { arg, name: &name }, room)?;
        Self::xattr_reply(Opcode::Getxattr, size, body)
    }

    /// FUSE_LISTXATTR: the size when `size` is 0, else the NUL-separated names.
    pub fn listxattr(&mut self, nodeid: u64, size: u32) -> Result<Xattr, FuseError> {
        let arg = FuseGetxattrIn { size, padding: 0 };
        let room = size.max(FuseGetxattrOut::SIZE as u32) + FuseOutHeader::SIZE as u32;
        let body = self.request(nodeid, Operation::Listxattr(arg), room)?;
        Self::xattr_reply(Opcode::Listxattr, size, body)
    }

    /// FUSE_REMOVEXATTR.
    pub fn removexattr(&mut self, nodeid: u64, name: &str) -> Result<(), FuseError> {
        let name = cstr(name)?;
        self.request_empty(nodeid, Operation::Removexattr { name: &name })
    }

    /// FUSE_OPENDIR.
    pub fn opendir(&mut self, nodeid: u64, flags: u32) -> Result<FuseOpenOut, FuseError> {
        self.request_struct(
            nodeid,
            Operation::Opendir(FuseOpenIn {
                flags,
                open_flags: 0,
            }),
        )
    }

    /// FUSE_READDIR: records from `offset`, at most `size` bytes of them.
    pub fn readdir(
        &mut self,
        nodeid: u64,
        fh: u64,
        offset: u64,
        size: u32,
    ) -> Result<Vec<DirEntry>, FuseError> {
        let arg = FuseReadIn {
            fh,
            offset,
            size,
            ..Default::default()
        };
        let body = self.request_data(nodeid, Operation::Readdir(arg), size)?;
        Ok(parse_dirents(Opcode::Readdir, &body, false)?
            .into_iter()
            .map(|p| p.dirent)
            .collect())
    }

    /// FUSE_READDIRPLUS: records with lookups (each non-zero nodeid is a reference to FORGET).
    pub fn readdirplus(
        &mut self,
        nodeid: u64,
        fh: u64,
        offset: u64,
        size: u32,
    ) -> Result<Vec<DirEntryPlus>, FuseError> {
        let arg = FuseReadIn {
            fh,
            offset,
            size,
            ..Default::default()
        };
        let body = self.request_data(nodeid, Operation::Readdirplus(arg), size)?;
        parse_dirents(Opcode::Readdirplus, &body, true)
    }

    /// FUSE_RELEASEDIR.
    pub fn releasedir(&mut self, nodeid: u64, fh: u64) -> Result<(), FuseError> {
        let arg = FuseReleaseIn {
            fh,
            ..Default::default()
        };
        self.request_empty(nodeid, Operation::Releasedir(arg))
    }

    /// FUSE_FSYNCDIR.
    pub fn fsyncdir(&mut self, nodeid: u64, fh: u64, datasync: bool) -> Result<(), FuseError> {
        let arg = FuseFsyncIn {
            fh,
            fsync_flags: if datasync { FUSE_FSYNC_FDATASYNC } else { 0 },
            padding: 0,
        };
        self.request_empty(nodeid, Operation::Fsyncdir(arg))
    }

    /// FUSE_ACCESS with R_OK/W_OK/X_OK `mask`.
    pub fn access(&mut self, nodeid: u64, mask: u32) -> Result<(), FuseError> {
        self.request_empty(nodeid, Operation::Access(FuseAccessIn { mask, padding: 0 }))
    }

    /// FUSE_FALLOCATE with FALLOC_FL_* `mode`.
    pub fn fallocate(
        &mut self,
        nodeid: u64,
        fh: u64,
        offset: u64,
        length: u64,
        mode: u32,
    ) -> Result<(), FuseError> {
        let arg = FuseFallocateIn {
            fh,
            offset,
            length,
            mode,
            padding: 0,
        };
        self.request_empty(nodeid, Operation::Fallocate(arg))
    }

    /// FUSE_LSEEK (SEEK_DATA = 3, SEEK_HOLE = 4, ...); returns the new offset.
    pub fn lseek(
        &mut self,
        nodeid: u64,
        fh: u64,
        offset: u64,
        whence: u32,
    ) -> Result<u64, FuseError> {
        let arg = FuseLseekIn {
            fh,
            offset,
            whence,
            padding: 0,
        };
        let out: FuseLseekOut = self.request_struct(nodeid, Operation::Lseek(arg))?;
        Ok(out.offset)
    }

    /// FUSE_COPY_FILE_RANGE; returns the bytes copied.
    pub fn copy_file_range(
        &mut self,
        node_in: u64,
        arg: &FuseCopyFileRangeIn,
    ) -> Result<u64, FuseError> {
        let out: FuseWriteOut = self.request_struct(node_in, Operation::CopyFileRange(*arg))?;
        if u64::from(out.size) > arg.len {
            return Err(bad(
                Opcode::CopyFileRange,
                format!("{} bytes copied of {}", out.size, arg.len),
            ));
        }
        Ok(u64::from(out.size))
    }

    /// FUSE_SETUPMAPPING (virtio-fs DAX) for `nodeid`.
    pub fn setupmapping(&mut self, nodeid: u64, arg: FuseSetupmappingIn) -> Result<(), FuseError> {
        self.request_empty(nodeid, Operation::SetupMapping(arg))
    }

    /// FUSE_REMOVEMAPPING of window ranges `(moffset, len)`.
    pub fn removemapping(&mut self, nodeid: u64, ranges: &[(u64, u64)]) -> Result<(), FuseError> {
        let entries: Vec<FuseRemovemappingOne> = ranges
            .iter()
            .map(|&(moffset, len)| FuseRemovemappingOne { moffset, len })
            .collect();
        let bytes = encode_list(&entries);
        let list = protocol::RemoveMappingList::from_bytes(&bytes)
            .ok_or_else(|| bad(Opcode::RemoveMapping, "cannot encode the list"))?;
        self.request_empty(nodeid, Operation::RemoveMapping(list))
    }

    /// FUSE_SYNCFS.
    pub fn syncfs(&mut self, nodeid: u64) -> Result<(), FuseError> {
        self.request_empty(nodeid, Operation::Syncfs(FuseSyncfsIn { padding: 0 }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn completion(written: Vec<u8>, used_len: u32, writable_len: u64) -> Completion {
        Completion {
            used_len,
            written,
            writable_len,
        }
    }

    #[test]
    fn replies_are_checked_before_use() {
        let mut ok = Vec::new();
        protocol::reply::reply_lseek(&mut ok, 9, 4096).unwrap();
        let c = completion(ok.clone(), ok.len() as u32, 4096);
        let r = FuseClient::check_reply(Opcode::Lseek, 9, &c).unwrap();
        assert_eq!((r.unique, r.error, r.body.len()), (9, 0, 8));
        // Wrong unique, a used length past the buffers, a length that disagrees.
        assert!(FuseClient::check_reply(Opcode::Lseek, 8, &c).is_err());
        let c = completion(ok.clone(), 5000, 4096);
        assert!(FuseClient::check_reply(Opcode::Lseek, 9, &c).is_err());
        let c = completion(ok[..20].to_vec(), 20, 4096);
        assert!(FuseClient::check_reply(Opcode::Lseek, 9, &c).is_err());
        // An error reply carrying a body.
        let mut e = Vec::new();
        protocol::reply::reply_error(&mut e, 9, 2).unwrap();
        e.extend_from_slice(&[0; 8]);
        e[0..4].copy_from_slice(&24u32.to_ne_bytes());
        let c = completion(e, 24, 4096);
        assert!(FuseClient::check_reply(Opcode::Lseek, 9, &c).is_err());
    }

    #[test]
    fn dirents_with_lying_name_lengths_are_refused() {
        let mut buf = [0u8; 64];
        let mut d = protocol::reply::DirentBuf::new(&mut buf);
        assert!(d.push(5, 1, 8, b"name").unwrap());
        let mut bytes = d.as_bytes().to_vec();
        let parsed = parse_dirents(Opcode::Readdir, &bytes, false).unwrap();
        assert_eq!(parsed[0].dirent.name, b"name");
        bytes[16..20].copy_from_slice(&200u32.to_ne_bytes());
        assert!(parse_dirents(Opcode::Readdir, &bytes, false).is_err());
        bytes[16..20].copy_from_slice(&0u32.to_ne_bytes());
        assert!(parse_dirents(Opcode::Readdir, &bytes, false).is_err());
        assert!(parse_dirents(Opcode::Readdirplus, &bytes, true).is_err());
    }

    proptest! {
        #[test]
        fn arbitrary_replies_never_panic(
            bytes in proptest::collection::vec(any::<u8>(), 0..400),
            used in any::<u32>(),
            room in 0u64..1000,
            unique in any::<u64>(),
        ) {
            let c = completion(bytes.clone(), used, room);
            let _ = FuseClient::check_reply(Opcode::Getattr, unique, &c);
            let _ = parse_dirents(Opcode::Readdir, &bytes, false);
            let _ = parse_dirents(Opcode::Readdirplus, &bytes, true);
        }
    }
}
