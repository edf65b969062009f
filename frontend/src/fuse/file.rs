//! Requests on open files: open and create, read and write, flush and sync, space
//! (fallocate, lseek, copy_file_range), and the DAX window's mapping requests.

use super::*;

impl FuseClient {
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

    /// FUSE_SYNCFS.
    pub fn syncfs(&mut self, nodeid: u64) -> Result<(), FuseError> {
        self.request_empty(nodeid, Operation::Syncfs(FuseSyncfsIn { padding: 0 }))
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
}
