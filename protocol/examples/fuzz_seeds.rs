//! Writes one valid request per opcode into a directory, as a seed corpus for the fuzz target
//! (`protocol/fuzz`): random bytes rarely get past the header's length check, seeds start the
//! fuzzer inside every operation parser.
//!
//! Usage: `cargo run -p zerodax-protocol --example fuzz_seeds -- DIR`

#[path = "../tests/common/mod.rs"]
mod common;

use protocol::{Opcode, ParseOptions};

fn main() -> std::io::Result<()> {
    let dir = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "protocol/fuzz/corpus/parse_request".into());
    std::fs::create_dir_all(&dir)?;
    let st = common::Store::new();
    let mut written = 0;
    for &op in Opcode::ALL {
        let req = common::sample_request(op, &st);
        // The fuzz target's first byte: bit 0 selects SETXATTR_EXT, the rest the misalignment.
        for control in [0u8, 1] {
            let opts = ParseOptions {
                setxattr_ext: control & 1 != 0,
            };
            let mut seed = vec![control];
            seed.extend_from_slice(&req.to_bytes(opts));
            std::fs::write(format!("{dir}/seed-{}-{control}", op.kernel_name()), seed)?;
            written += 1;
        }
    }
    println!("wrote {written} seeds to {dir}");
    Ok(())
}
