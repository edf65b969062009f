//! Extended attributes.

use super::*;

/// GETXATTR/LISTXATTR answer: the size (when asked with size 0) or the bytes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Xattr {
    /// Bytes needed.
    Size(u32),
    /// Value or NUL-separated name list.
    Data(Vec<u8>),
}

impl FuseClient {
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
}
