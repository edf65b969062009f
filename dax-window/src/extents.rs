//! Data and hole extents of a file, from `lseek(SEEK_DATA/SEEK_HOLE)`.

use std::fs::File;
use std::io;

use rustix::fs::SeekFrom;
use rustix::io::Errno;

/// A byte range of a file, `[start, end)`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Extent {
    /// First byte of the range.
    pub start: u64,
    /// One past the last byte.
    pub end: u64,
}

impl Extent {
    /// Length in bytes.
    pub fn len(&self) -> u64 {
        self.end - self.start
    }

    /// Whether the range holds no byte.
    pub fn is_empty(&self) -> bool {
        self.end == self.start
    }
}

/// lseek(SEEK_DATA, or SEEK_HOLE when `hole`) from `offset`; None where there is no such
/// offset (ENXIO).
fn seek(file: &File, offset: u64, hole: bool) -> io::Result<Option<u64>> {
    // Past i64::MAX is EINVAL, as with the off_t it always went through.
    if i64::try_from(offset).is_err() {
        return Err(io::Error::from_raw_os_error(libc::EINVAL));
    }
    let pos = if hole {
        SeekFrom::Hole(offset)
    } else {
        SeekFrom::Data(offset)
    };
    match rustix::fs::seek(file, pos) {
        Ok(r) => Ok(Some(r)),
        Err(Errno::NXIO) => Ok(None),
        Err(e) => Err(e.into()),
    }
}

/// The data extents of `file` that intersect `[start, end)`, clipped to it.
///
/// Moves the file description's offset (lseek), as SEEK_DATA always does.
pub fn data_extents(file: &File, start: u64, end: u64) -> io::Result<Vec<Extent>> {
    let mut out = Vec::new();
    let mut pos = start;
    while pos < end {
        let Some(data) = seek(file, pos, false)? else {
            break;
        };
        if data >= end {
            break;
        }
        let hole = seek(file, data, true)?.unwrap_or(end).min(end);
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
