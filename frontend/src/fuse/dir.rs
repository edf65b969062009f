//! Directory handles and their listings (READDIR, READDIRPLUS), with the record parser
//! that checks each dirent as untrusted input.

use super::*;

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

pub(super) fn parse_dirents(
    opcode: Opcode,
    mut b: &[u8],
    plus: bool,
) -> Result<Vec<DirEntryPlus>, FuseError> {
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

impl FuseClient {
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
}
