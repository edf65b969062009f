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

mod dir;
mod file;
mod node;
mod xattr;

pub use dir::{DirEntry, DirEntryPlus};
pub use xattr::Xattr;

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
}

#[cfg(test)]
mod tests {
    use super::dir::parse_dirents;
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
