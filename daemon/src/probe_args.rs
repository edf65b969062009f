//! `zerodax probe`'s arguments, shared by its two paths (`probe.rs`, the local window;
//! `probe_virtio.rs`, `--via virtio`): the flags, the `--write` parser, and the size a file
//! must have for its writes.

use std::fs::File;
use std::path::PathBuf;

use zerodax::cli::DaxHolesArg;
use zerodax::size::parse_size;

/// Map a file through a DAX window and report page states and memory cost.
#[derive(clap::Args, Debug)]
pub struct ProbeArgs {
    /// The file to map.
    pub file: PathBuf,
    /// Write LEN bytes of 0xA5 at OFFSET through the window (repeatable). Numbers take an
    /// optional K, M, G or T suffix (powers of 1024) or a 0x prefix.
    #[arg(long = "write", value_name = "OFFSET:LEN", value_parser = parse_write)]
    pub writes: Vec<(u64, u64)>,
    /// Print one JSON object instead of text.
    #[arg(long)]
    pub json: bool,
    /// `local`: a dax-window in this process maps the file. `virtio`: a `zerodax serve`
    /// child serves the file's directory with a DAX window and the built-in frontend maps
    /// the file through it (FUSE_SETUPMAPPING, SHMEM_MAP), as a guest would.
    #[arg(long, value_enum, default_value_t = Via::Local)]
    pub via: Via,
    /// With `--via virtio`: the server's `--dax-holes`.
    #[arg(long, value_enum, default_value_t = DaxHolesArg::Zero)]
    pub dax_holes: DaxHolesArg,
    /// With `--via virtio`: read through the DAX window, or with FUSE_READ requests (the
    /// comparison; no window, no writes).
    #[arg(long, value_enum, default_value_t = ReadPath::Window)]
    pub read: ReadPath,
    /// With `--via virtio --read fuse`: the backend to start. `zerodax` is this binary's
    /// `serve`; the others need `--backend-bin`.
    #[arg(long, value_enum, default_value_t = BackendKind::Zerodax)]
    pub backend: BackendKind,
    /// The backend program for `--backend virtiofsd|c-virtiofsd`.
    #[arg(long, value_name = "PATH")]
    pub backend_bin: Option<PathBuf>,
}

/// `--read`: how `--via virtio` reads the file.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum ReadPath {
    Window,
    Fuse,
}

/// `--backend`: which vhost-user-fs backend `--via virtio` starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum BackendKind {
    Zerodax,
    /// The Rust virtiofsd (1.x).
    Virtiofsd,
    /// QEMU's C virtiofsd.
    CVirtiofsd,
}

/// `--via`: which path maps the file.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Via {
    Local,
    Virtio,
}

/// An offset or length of `--write`: a size (zerodax::size), or hexadecimal after `0x`.
fn parse_num(s: &str) -> Result<u64, String> {
    let s = s.trim();
    if let Some(hex) = s.strip_prefix("0x").or_else(|| s.strip_prefix("0X")) {
        return u64::from_str_radix(hex, 16).map_err(|e| format!("{s:?}: {e}"));
    }
    parse_size(s).map_err(|e| format!("{s:?}: {e}"))
}

fn parse_write(s: &str) -> Result<(u64, u64), String> {
    let (off, len) = s
        .split_once(':')
        .ok_or_else(|| format!("{s:?}: expected OFFSET:LEN"))?;
    let (off, len) = (parse_num(off)?, parse_num(len)?);
    if len == 0 {
        return Err(format!("{s:?}: empty write"));
    }
    off.checked_add(len)
        .ok_or_else(|| format!("{s:?}: offset + length overflows"))?;
    Ok((off, len))
}

/// The size of `file` to map: a non-empty regular file that every `--write` fits in.
pub(crate) fn mappable_size(file: &File, writes: &[(u64, u64)]) -> Result<u64, String> {
    let meta = file.metadata().map_err(|e| format!("stat: {e}"))?;
    if !meta.is_file() {
        return Err("not a regular file".into());
    }
    let size = meta.len();
    if size == 0 {
        return Err("empty file: nothing to map".into());
    }
    for &(off, len) in writes {
        if off + len > size {
            return Err(format!(
                "--write {off}:{len} reaches past EOF ({size}); writes through a window never extend a file"
            ));
        }
    }
    Ok(size)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn write_specs_parse() {
        assert_eq!(parse_write("4096:10"), Ok((4096, 10)));
        assert_eq!(parse_write("1M:4K"), Ok((1 << 20, 4096)));
        assert_eq!(parse_write("0x1000:0x10"), Ok((4096, 16)));
        assert_eq!(parse_write("1T:1k"), Ok((1 << 40, 1024)));
        assert!(parse_write("10").is_err());
        assert!(parse_write("10:0").is_err());
        assert!(parse_write("x:1").is_err());
        assert!(parse_write("18446744073709551615:2").is_err());
        assert!(parse_write("99999999999G:1").is_err());
        assert!(parse_write("0x10K:1").is_err());
        assert!(parse_write("1Q:1").is_err());
    }
}
