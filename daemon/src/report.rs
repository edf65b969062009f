//! JSON pieces of the probe's and the bench's reports (docs/probe-json.md,
//! docs/benchmarks.md): a file's extents and a window's page states.

use std::fs::File;

use dax_window::{Extent, PageStates};

pub(crate) struct Extents {
    pub(crate) data: Vec<Extent>,
    pub(crate) holes: Vec<Extent>,
}

pub(crate) fn extents(file: &File, size: u64) -> Result<Extents, String> {
    let e = |r: std::io::Result<Vec<Extent>>| r.map_err(|e| format!("SEEK_DATA/SEEK_HOLE: {e}"));
    Ok(Extents {
        data: e(dax_window::data_extents(file, 0, size))?,
        holes: e(dax_window::hole_extents(file, 0, size))?,
    })
}

pub(crate) fn extents_json(e: &Extents) -> serde_json::Value {
    let list = |v: &[Extent]| -> Vec<[u64; 2]> { v.iter().map(|x| [x.start, x.end]).collect() };
    let sum = |v: &[Extent]| -> u64 { v.iter().map(Extent::len).sum() };
    serde_json::json!({
        "data": list(&e.data),
        "holes": list(&e.holes),
        "data_bytes": sum(&e.data),
        "hole_bytes": sum(&e.holes),
    })
}

pub(crate) fn pages_json(p: &PageStates) -> serde_json::Value {
    serde_json::json!({
        "total": p.total(),
        "zero": p.zero_total(),
        "huge_zero": p.huge_zero,
        "file": p.file,
        "not_populated": p.not_populated,
        "marker": p.marker,
        "private_anon": p.private_anon,
    })
}
