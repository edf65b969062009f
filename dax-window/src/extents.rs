//! Data and hole extents of a file, from `lseek(SEEK_DATA/SEEK_HOLE)`.

use std::fs::File;
use std::io;
use std::os::fd::AsRawFd;

/// A byte range of a file, `[start, end)`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Extent {
    pub start: u64,
    pub end: u64,
}

impl Extent {
    pub fn len(&self) -> u64 {
        self.end - self.start
    }

    pub fn is_empty(&self) -> bool {
        self.end == self.start
    }
}

fn seek(file: &File, offset: u64, whence: libc::c_int) -> io::Result<Option<u64>> {
    let off =
        libc::off_t::try_from(offset).map_err(|_| io::Error::from_raw_os_error(libc::EINVAL))?;
    // SAFETY: lseek on a descriptor we borrow; it only moves that description's offset.
    let r = unsafe { libc::lseek(file.as_raw_fd(), off, whence) };
    if r < 0 {
        let e = io::Error::last_os_error();
        if e.raw_os_error() == Some(libc::ENXIO) {
            return Ok(None);
        }
        return Err(e);
    }
    Ok(Some(r as u64))
}

/// The data extents of `file` that intersect `[start, end)`, clipped to it.
///
/// Moves the file description's offset (lseek), as SEEK_DATA always does.
pub fn data_extents(file: &File, start: u64, end: u64) -> io::Result<Vec<Extent>> {
    let mut out = Vec::new();
    let mut pos = start;
    while pos < end {
        let Some(data) = seek(file, pos, libc::SEEK_DATA)? else {
            break;
        };
        if data >= end {
            break;
        }
        let hole = seek(file, data, libc::SEEK_HOLE)?.unwrap_or(end).min(end);
        if hole <= data {
            break;
        }
        out.push(Extent {
            start: data,
            end: hole,
        });
        pos = hole;
    }
    Ok(out)
}

/// The hole extents of `[start, end)`: the complement of [`data_extents`].
pub fn hole_extents(file: &File, start: u64, end: u64) -> io::Result<Vec<Extent>> {
    let mut out = Vec::new();
    let mut pos = start;
    for d in data_extents(file, start, end)? {
        if d.start > pos {
            out.push(Extent {
                start: pos,
                end: d.start,
            });
        }
        pos = d.end;
    }
    if pos < end {
        out.push(Extent { start: pos, end });
    }
    Ok(out)
}
