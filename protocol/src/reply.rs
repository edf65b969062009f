//! Encoding replies: `fuse_out_header` plus a body, into any [`ReplySink`].
//!
//! A reply is written whole or not at all: the sink is told the total length first, so a
//! /dev/fuse buffer (one `write`) and a virtio descriptor chain (whose writable room is known
//! before writing) can both refuse a reply that does not fit instead of sending half of one.

use crate::abi::*;
use crate::ReplyError;

/// Where an encoded reply goes.
///
/// `Vec<u8>` (grows without limit) and [`SliceSink`] (a fixed buffer) implement it; a
/// virtio-fs transport implements it over the writable part of a descriptor chain.
pub trait ReplySink {
    /// Writes all `parts` one after another, or nothing if they do not fit (then
    /// [`ReplyError::NoSpace`]). `total` is the sum of the parts' lengths.
    fn write_parts(&mut self, total: usize, parts: &[&[u8]]) -> Result<(), ReplyError>;
}

impl ReplySink for Vec<u8> {
    fn write_parts(&mut self, total: usize, parts: &[&[u8]]) -> Result<(), ReplyError> {
        self.reserve(total);
        for p in parts {
            self.extend_from_slice(p);
        }
        Ok(())
    }
}

/// A [`ReplySink`] over a fixed buffer, e.g. a preallocated /dev/fuse write buffer.
#[derive(Debug)]
pub struct SliceSink<'b> {
    buf: &'b mut [u8],
    pos: usize,
}

impl<'b> SliceSink<'b> {
    /// A sink writing from the start of `buf`.
    pub fn new(buf: &'b mut [u8]) -> Self {
        Self { buf, pos: 0 }
    }

    /// Bytes written so far.
    pub fn written(&self) -> usize {
        self.pos
    }

    /// The bytes written so far.
    pub fn as_bytes(&self) -> &[u8] {
        &self.buf[..self.pos]
    }
}

impl ReplySink for SliceSink<'_> {
    fn write_parts(&mut self, total: usize, parts: &[&[u8]]) -> Result<(), ReplyError> {
        let have = self.buf.len() - self.pos;
        if total > have {
            return Err(ReplyError::NoSpace { need: total, have });
        }
        for p in parts {
            self.buf[self.pos..self.pos + p.len()].copy_from_slice(p);
            self.pos += p.len();
        }
        Ok(())
    }
}

/// FUSE_NOTIFY_INVAL_INODE for `node`'s attributes only (not its cached data): a message
/// the server sends unasked, as unique 0 with the code where a reply's error goes.
pub fn notify_inval_attrs<W: ReplySink + ?Sized>(
    sink: &mut W,
    node: u64,
) -> Result<usize, ReplyError> {
    let body = FuseNotifyInvalInodeOut {
        ino: node,
        off: -1,
        len: 0,
    }
    .to_vec();
    let header = header_bytes(0, FUSE_NOTIFY_INVAL_INODE, body.len())?;
    let total = header.len() + body.len();
    sink.write_parts(total, &[&header, &body])?;
    Ok(total)
}

/// The 16-byte `fuse_out_header` for a successful reply with `body_len` bytes of body.
///
/// For transports that send the header and a data buffer with one `writev` (READ replies
/// straight from a file buffer) instead of copying the data behind the header.
pub fn out_header(unique: u64, body_len: usize) -> Result<[u8; FuseOutHeader::SIZE], ReplyError> {
    header_bytes(unique, 0, body_len)
}

fn header_bytes(
    unique: u64,
    error: i32,
    body_len: usize,
) -> Result<[u8; FuseOutHeader::SIZE], ReplyError> {
    let len = body_len
        .checked_add(FuseOutHeader::SIZE)
        .ok_or(ReplyError::TooLong { len: usize::MAX })?;
    let len32 = u32::try_from(len).map_err(|_| ReplyError::TooLong { len })?;
    let mut out = [0u8; FuseOutHeader::SIZE];
    let h = FuseOutHeader {
        len: len32,
        error,
        unique,
    };
    let mut at = 0;
    h.put(&mut out, &mut at);
    Ok(out)
}

/// Writes a successful reply whose body is `parts` concatenated; returns the reply length.
pub fn reply_parts<W: ReplySink + ?Sized>(
    sink: &mut W,
    unique: u64,
    parts: &[&[u8]],
) -> Result<usize, ReplyError> {
    let body_len = parts
        .iter()
        .try_fold(0usize, |acc, p| acc.checked_add(p.len()))
        .ok_or(ReplyError::TooLong { len: usize::MAX })?;
    let header = header_bytes(unique, 0, body_len)?;
    let total = FuseOutHeader::SIZE + body_len;
    match parts {
        [] => sink.write_parts(total, &[&header])?,
        [a] => sink.write_parts(total, &[&header, a])?,
        [a, b] => sink.write_parts(total, &[&header, a, b])?,
        _ => {
            let mut all: Vec<&[u8]> = Vec::with_capacity(parts.len() + 1);
            all.push(&header);
            all.extend_from_slice(parts);
            sink.write_parts(total, &all)?
        }
    }
    Ok(total)
}

/// Writes an error reply. `errno` is the positive error number (ENOENT, ...); it goes on
/// the wire negated. The kernel only accepts 1..=511 and answers anything else with EINVAL to
/// the writer, so such values are refused here.
pub fn reply_error<W: ReplySink + ?Sized>(
    sink: &mut W,
    unique: u64,
    errno: i32,
) -> Result<usize, ReplyError> {
    if !(1..=511).contains(&errno) {
        return Err(ReplyError::BadErrno(errno));
    }
    let header = header_bytes(unique, -errno, 0)?;
    sink.write_parts(header.len(), &[&header])?;
    Ok(header.len())
}

/// Writes a successful reply without a body (UNLINK, RMDIR, RENAME, RELEASE, FLUSH, FSYNC,
/// SETXATTR, REMOVEXATTR, ACCESS, FALLOCATE, SETUPMAPPING, REMOVEMAPPING, SYNCFS, ...).
pub fn reply_empty<W: ReplySink + ?Sized>(sink: &mut W, unique: u64) -> Result<usize, ReplyError> {
    reply_parts(sink, unique, &[])
}

/// Writes a successful reply whose body is one ABI struct.
pub fn reply_struct<W: ReplySink + ?Sized, T: Wire>(
    sink: &mut W,
    unique: u64,
    body: &T,
) -> Result<usize, ReplyError> {
    let bytes = body.to_vec();
    reply_parts(sink, unique, &[&bytes])
}

/// Reply to LOOKUP, MKNOD, MKDIR, SYMLINK, LINK (and a negative lookup with nodeid 0).
pub fn reply_entry<W: ReplySink + ?Sized>(
    sink: &mut W,
    unique: u64,
    entry: &FuseEntryOut,
) -> Result<usize, ReplyError> {
    reply_struct(sink, unique, entry)
}

/// Reply to GETATTR and SETATTR.
pub fn reply_attr<W: ReplySink + ?Sized>(
    sink: &mut W,
    unique: u64,
    attr: &FuseAttrOut,
) -> Result<usize, ReplyError> {
    reply_struct(sink, unique, attr)
}

/// Reply to OPEN and OPENDIR.
pub fn reply_open<W: ReplySink + ?Sized>(
    sink: &mut W,
    unique: u64,
    open: &FuseOpenOut,
) -> Result<usize, ReplyError> {
    reply_struct(sink, unique, open)
}

/// Reply to CREATE and TMPFILE: the entry followed by the open handle.
pub fn reply_create<W: ReplySink + ?Sized>(
    sink: &mut W,
    unique: u64,
    entry: &FuseEntryOut,
    open: &FuseOpenOut,
) -> Result<usize, ReplyError> {
    let e = entry.to_vec();
    let o = open.to_vec();
    reply_parts(sink, unique, &[&e, &o])
}

/// Reply to WRITE, and to COPY_FILE_RANGE (whose result travels as a write count).
pub fn reply_write<W: ReplySink + ?Sized>(
    sink: &mut W,
    unique: u64,
    size: u32,
) -> Result<usize, ReplyError> {
    reply_struct(sink, unique, &FuseWriteOut { size, padding: 0 })
}

/// Reply to COPY_FILE_RANGE_64.
pub fn reply_copy_file_range_64<W: ReplySink + ?Sized>(
    sink: &mut W,
    unique: u64,
    bytes_copied: u64,
) -> Result<usize, ReplyError> {
    reply_struct(sink, unique, &FuseCopyFileRangeOut { bytes_copied })
}

/// Reply to STATFS.
pub fn reply_statfs<W: ReplySink + ?Sized>(
    sink: &mut W,
    unique: u64,
    st: &FuseKstatfs,
) -> Result<usize, ReplyError> {
    reply_struct(sink, unique, &FuseStatfsOut { st: *st })
}

/// Reply to INIT.
pub fn reply_init<W: ReplySink + ?Sized>(
    sink: &mut W,
    unique: u64,
    init: &FuseInitOut,
) -> Result<usize, ReplyError> {
    reply_struct(sink, unique, init)
}

/// Reply to LSEEK.
pub fn reply_lseek<W: ReplySink + ?Sized>(
    sink: &mut W,
    unique: u64,
    offset: u64,
) -> Result<usize, ReplyError> {
    reply_struct(sink, unique, &FuseLseekOut { offset })
}

/// Reply to GETXATTR/LISTXATTR asked with size 0: the size the value or list needs.
pub fn reply_xattr_size<W: ReplySink + ?Sized>(
    sink: &mut W,
    unique: u64,
    size: u32,
) -> Result<usize, ReplyError> {
    reply_struct(sink, unique, &FuseGetxattrOut { size, padding: 0 })
}

/// Reply carrying raw bytes: READ data, READLINK target (no NUL), GETXATTR value,
/// LISTXATTR list, READDIR/READDIRPLUS records from a [`DirentBuf`].
pub fn reply_data<W: ReplySink + ?Sized>(
    sink: &mut W,
    unique: u64,
    data: &[u8],
) -> Result<usize, ReplyError> {
    reply_parts(sink, unique, &[data])
}

/// Reply to GETLK.
pub fn reply_lk<W: ReplySink + ?Sized>(
    sink: &mut W,
    unique: u64,
    lk: &FuseFileLock,
) -> Result<usize, ReplyError> {
    reply_struct(sink, unique, &FuseLkOut { lk: *lk })
}

/// Reply to STATX.
pub fn reply_statx<W: ReplySink + ?Sized>(
    sink: &mut W,
    unique: u64,
    statx: &FuseStatxOut,
) -> Result<usize, ReplyError> {
    reply_struct(sink, unique, statx)
}

/// Splits a reply into its header and body, checking the length and error fields as the
/// kernel does. For the built-in virtio-fs frontend and tests, which read replies from other
/// servers as well as ours and must not trust them.
pub fn parse_reply(bytes: &[u8]) -> Result<(FuseOutHeader, &[u8]), crate::ParseError> {
    let bad_len = |header_len| crate::ParseError::BadReplyLength {
        header_len,
        actual: bytes.len(),
    };
    let header = FuseOutHeader::decode(bytes).ok_or(bad_len(0))?;
    if header.len as usize != bytes.len() {
        return Err(bad_len(header.len));
    }
    if !(-511..=0).contains(&header.error) {
        return Err(crate::ParseError::BadReplyError(header.error));
    }
    Ok((header, &bytes[FuseOutHeader::SIZE..]))
}

/// Bytes one READDIR record takes for a name of `namelen` bytes (8-byte aligned).
pub const fn dirent_size(namelen: usize) -> usize {
    dirent_align(FuseDirent::SIZE + namelen)
}

/// Bytes one READDIRPLUS record takes for a name of `namelen` bytes (8-byte aligned).
pub const fn direntplus_size(namelen: usize) -> usize {
    dirent_align(FuseDirentplus::SIZE + namelen)
}

/// Packs READDIR or READDIRPLUS records into a buffer sized to the request's `size`.
///
/// Each record is padded with zeros to 8 bytes as the kernel requires; a record that does not
/// fit is not written and `push` says so, which is the server's cue to stop and reply with
/// what it has (the kernel asks again from the last `off`). Names the kernel would reject
/// (empty, longer than [`FUSE_NAME_MAX`], containing '/' or NUL) are refused, because the
/// kernel fails the whole READDIR with EIO on one bad name.
#[derive(Debug)]
pub struct DirentBuf<'b> {
    buf: &'b mut [u8],
    used: usize,
}

impl<'b> DirentBuf<'b> {
    /// Packs into `buf`; its length is the limit (use `min(read_in.size, transport room)`).
    pub fn new(buf: &'b mut [u8]) -> Self {
        Self { buf, used: 0 }
    }

    fn check_name(name: &[u8]) -> Result<(), ReplyError> {
        if name.is_empty()
            || name.len() > FUSE_NAME_MAX
            || name.iter().any(|&b| b == b'/' || b == 0)
        {
            return Err(ReplyError::BadDirentName);
        }
        Ok(())
    }

    fn push_record(&mut self, head: &[u8], name: &[u8]) -> bool {
        let size = dirent_align(head.len() + name.len());
        let room = self.buf.len() - self.used;
        if size > room {
            return false;
        }
        let rec = &mut self.buf[self.used..self.used + size];
        rec[..head.len()].copy_from_slice(head);
        rec[head.len()..head.len() + name.len()].copy_from_slice(name);
        rec[head.len() + name.len()..].fill(0);
        self.used += size;
        true
    }

    /// Adds a READDIR record. `off` is the cookie that resumes after this entry; `typ` is the
    /// DT_* type. `Ok(false)`: the record did not fit and nothing was written.
    pub fn push(&mut self, ino: u64, off: u64, typ: u32, name: &[u8]) -> Result<bool, ReplyError> {
        Self::check_name(name)?;
        let d = FuseDirent {
            ino,
            off,
            namelen: name.len() as u32,
            typ,
        };
        Ok(self.push_record(&d.to_vec(), name))
    }

    /// Adds a READDIRPLUS record. A non-zero `entry.nodeid` counts as a lookup the kernel will
    /// later FORGET, so only count it when this returns `Ok(true)`.
    pub fn push_plus(
        &mut self,
        entry: &FuseEntryOut,
        off: u64,
        typ: u32,
        name: &[u8],
    ) -> Result<bool, ReplyError> {
        Self::check_name(name)?;
        let d = FuseDirentplus {
            entry_out: *entry,
            dirent: FuseDirent {
                ino: entry.attr.ino,
                off,
                namelen: name.len() as u32,
                typ,
            },
        };
        Ok(self.push_record(&d.to_vec(), name))
    }

    /// Bytes packed so far.
    pub fn len(&self) -> usize {
        self.used
    }

    /// Whether nothing was packed (an empty reply means end of directory).
    pub fn is_empty(&self) -> bool {
        self.used == 0
    }

    /// The packed records, ready for [`reply_data`].
    pub fn as_bytes(&self) -> &[u8] {
        &self.buf[..self.used]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn header_of(bytes: &[u8]) -> FuseOutHeader {
        FuseOutHeader::decode(bytes).unwrap()
    }

    #[test]
    fn inval_attrs_notification_is_unique_0_with_the_code_and_a_negative_offset() {
        let mut v = Vec::new();
        assert_eq!(notify_inval_attrs(&mut v, 42).unwrap(), 40);
        assert_eq!(
            header_of(&v),
            FuseOutHeader {
                len: 40,
                error: 2,
                unique: 0
            }
        );
        assert_eq!(
            FuseNotifyInvalInodeOut::decode(&v[16..]).unwrap(),
            FuseNotifyInvalInodeOut {
                ino: 42,
                off: -1,
                len: 0
            }
        );
    }

    #[test]
    fn error_reply_is_negative_errno_header_only() {
        let mut v = Vec::new();
        assert_eq!(reply_error(&mut v, 7, libc_enoent()).unwrap(), 16);
        let h = header_of(&v);
        assert_eq!(
            h,
            FuseOutHeader {
                len: 16,
                error: -2,
                unique: 7
            }
        );
        assert_eq!(reply_error(&mut v, 7, 0), Err(ReplyError::BadErrno(0)));
        assert_eq!(reply_error(&mut v, 7, 512), Err(ReplyError::BadErrno(512)));
        assert_eq!(reply_error(&mut v, 7, -2), Err(ReplyError::BadErrno(-2)));
        assert_eq!(v.len(), 16, "refused replies write nothing");
    }

    fn libc_enoent() -> i32 {
        2
    }

    #[test]
    fn struct_replies_have_kernel_lengths() {
        let cases: Vec<(usize, Vec<u8>)> = {
            let mut out = Vec::new();
            let mut v = Vec::new();
            reply_entry(&mut v, 1, &FuseEntryOut::default()).unwrap();
            out.push((16 + 128, v));
            let mut v = Vec::new();
            reply_attr(&mut v, 1, &FuseAttrOut::default()).unwrap();
            out.push((16 + 104, v));
            let mut v = Vec::new();
            reply_open(&mut v, 1, &FuseOpenOut::default()).unwrap();
            out.push((16 + 16, v));
            let mut v = Vec::new();
            reply_create(&mut v, 1, &FuseEntryOut::default(), &FuseOpenOut::default()).unwrap();
            out.push((16 + 144, v));
            let mut v = Vec::new();
            reply_write(&mut v, 1, 4096).unwrap();
            out.push((16 + 8, v));
            let mut v = Vec::new();
            reply_statfs(&mut v, 1, &FuseKstatfs::default()).unwrap();
            out.push((16 + 80, v));
            let mut v = Vec::new();
            reply_init(&mut v, 1, &FuseInitOut::default()).unwrap();
            out.push((16 + 64, v));
            let mut v = Vec::new();
            reply_lseek(&mut v, 1, 1 << 40).unwrap();
            out.push((16 + 8, v));
            let mut v = Vec::new();
            reply_xattr_size(&mut v, 1, 10).unwrap();
            out.push((16 + 8, v));
            let mut v = Vec::new();
            reply_lk(&mut v, 1, &FuseFileLock::default()).unwrap();
            out.push((16 + 24, v));
            let mut v = Vec::new();
            reply_statx(&mut v, 1, &FuseStatxOut::default()).unwrap();
            out.push((16 + 288, v));
            let mut v = Vec::new();
            reply_copy_file_range_64(&mut v, 1, 5).unwrap();
            out.push((16 + 8, v));
            let mut v = Vec::new();
            reply_empty(&mut v, 1).unwrap();
            out.push((16, v));
            out
        };
        for (want, bytes) in cases {
            assert_eq!(bytes.len(), want);
            assert_eq!(header_of(&bytes).len as usize, want);
            assert_eq!(header_of(&bytes).error, 0);
        }
    }

    #[test]
    fn lseek_body_and_data_body() {
        let mut v = Vec::new();
        reply_lseek(&mut v, 9, 0x1234_5678_9abc).unwrap();
        assert_eq!(u64::decode(&v[16..]), Some(0x1234_5678_9abc));
        let mut v = Vec::new();
        reply_data(&mut v, 9, b"hello").unwrap();
        assert_eq!(&v[16..], b"hello");
        assert_eq!(header_of(&v).len, 21);
        assert_eq!(out_header(9, 5).unwrap(), v[..16]);
    }

    #[test]
    fn replies_parse_back() {
        let mut v = Vec::new();
        reply_write(&mut v, 5, 77).unwrap();
        let (h, body) = parse_reply(&v).unwrap();
        assert_eq!((h.unique, h.error), (5, 0));
        assert_eq!(FuseWriteOut::decode(body).unwrap().size, 77);
        let mut e = Vec::new();
        reply_error(&mut e, 6, 2).unwrap();
        assert_eq!(parse_reply(&e).unwrap().0.error, -2);
        assert!(parse_reply(&v[..15]).is_err());
        assert!(parse_reply(&v[..20]).is_err());
        let mut bad = e.clone();
        bad[4..8].copy_from_slice(&5i32.to_ne_bytes());
        assert_eq!(parse_reply(&bad), Err(crate::ParseError::BadReplyError(5)));
    }

    #[test]
    fn slice_sink_is_all_or_nothing() {
        let mut buf = [0xEEu8; 30];
        let mut s = SliceSink::new(&mut buf);
        assert_eq!(
            reply_data(&mut s, 1, &[1u8; 20]),
            Err(ReplyError::NoSpace { need: 36, have: 30 })
        );
        assert_eq!(s.written(), 0);
        reply_data(&mut s, 1, &[1u8; 14]).unwrap();
        assert_eq!(s.written(), 30);
        assert_eq!(
            reply_empty(&mut s, 2),
            Err(ReplyError::NoSpace { need: 16, have: 0 })
        );
    }

    #[test]
    fn dirents_are_aligned_padded_and_bounded() {
        let mut buf = [0xEEu8; 64];
        let mut d = DirentBuf::new(&mut buf);
        assert_eq!(d.push(10, 1, 8, b"a"), Ok(true)); // 24 + 1 -> 32
        assert_eq!(d.len(), 32);
        assert_eq!(d.push(11, 2, 4, b"12345678"), Ok(true)); // 24 + 8 -> 32
        assert_eq!(d.len(), 64);
        assert_eq!(d.push(12, 3, 8, b"b"), Ok(false));
        assert_eq!(d.len(), 64);
        let bytes = d.as_bytes().to_vec();
        let first = FuseDirent::decode(&bytes).unwrap();
        assert_eq!(
            (first.ino, first.off, first.namelen, first.typ),
            (10, 1, 1, 8)
        );
        assert_eq!(&bytes[24..32], b"a\0\0\0\0\0\0\0");
        let second = FuseDirent::decode(&bytes[32..]).unwrap();
        assert_eq!(second.namelen, 8);
        assert_eq!(&bytes[56..64], b"12345678");

        let mut buf = [0u8; 200];
        let mut d = DirentBuf::new(&mut buf);
        assert_eq!(d.push(1, 1, 0, b""), Err(ReplyError::BadDirentName));
        assert_eq!(d.push(1, 1, 0, b"a/b"), Err(ReplyError::BadDirentName));
        assert_eq!(d.push(1, 1, 0, b"a\0b"), Err(ReplyError::BadDirentName));
        assert_eq!(
            d.push(1, 1, 0, &[b'x'; FUSE_NAME_MAX + 1]),
            Err(ReplyError::BadDirentName)
        );
        let entry = FuseEntryOut {
            nodeid: 5,
            attr: FuseAttr {
                ino: 77,
                ..Default::default()
            },
            ..Default::default()
        };
        assert_eq!(d.push_plus(&entry, 9, 8, b"file"), Ok(true));
        assert_eq!(d.len(), direntplus_size(4));
        assert_eq!(d.len(), 160);
        let rec = FuseDirentplus::decode(d.as_bytes()).unwrap();
        assert_eq!(rec.entry_out.nodeid, 5);
        assert_eq!(rec.dirent.ino, 77);
        assert_eq!(rec.dirent.off, 9);
        assert_eq!(&d.as_bytes()[152..156], b"file");
        assert_eq!(d.push_plus(&entry, 10, 8, b"file"), Ok(false));
        assert_eq!(dirent_size(0), 24);
    }
}
