//! Property tests: random bytes and random mutations of valid requests never make the parser
//! panic or borrow outside its input, and whatever it accepts encodes back to an equal request.

mod common;

use common::*;
use proptest::prelude::*;
use protocol::abi::FuseInHeader;
use protocol::{Opcode, ParseOptions, Request, Wire};

/// Parses `bytes` placed at `shift` (0..8) inside a larger buffer, checks the invariants, and
/// says whether the parse succeeded.
fn check(bytes: &[u8], shift: usize, opts: ParseOptions) -> bool {
    let mut buf = vec![0x5Au8; shift];
    buf.extend_from_slice(bytes);
    buf.extend_from_slice(&[0x5A; 8]); // bytes past the slice that must never be read
    let input = &buf[shift..shift + bytes.len()];
    match Request::parse_with(input, opts) {
        Ok(req) => {
            assert_eq!(req.header.len as usize, input.len());
            assert_borrows_within(&req, input);
            let again = req.to_bytes(opts);
            let reparsed = Request::parse_with(&again, opts).expect("re-encoded request parses");
            assert_eq!(reparsed.op, req.op);
            assert_eq!(reparsed.extensions, req.extensions);
            true
        }
        Err(e) => {
            // Display must not panic either.
            let _ = e.to_string();
            false
        }
    }
}

fn opts() -> impl Strategy<Value = ParseOptions> {
    any::<bool>().prop_map(|setxattr_ext| ParseOptions { setxattr_ext })
}

/// A header with an honest length and a real opcode, followed by random argument bytes:
/// this reaches every operation parser rather than dying at the header.
fn honest_header_random_args() -> impl Strategy<Value = Vec<u8>> {
    (
        prop::sample::select(Opcode::ALL),
        prop::collection::vec(any::<u8>(), 0..200),
        0u16..4,
    )
        .prop_map(|(op, args, extlen)| {
            let h = FuseInHeader {
                len: (FuseInHeader::SIZE + args.len()) as u32,
                opcode: op as u32,
                total_extlen: extlen,
                ..header(1)
            };
            let mut v = h.to_vec();
            v.extend_from_slice(&args);
            v
        })
}

#[derive(Debug, Clone)]
enum Mutation {
    Flip { at: usize, xor: u8 },
    Truncate { at: usize },
    Append { junk: Vec<u8> },
    SetLen { len: u32 },
    FixLen,
    SetU32 { at: usize, value: u32 },
}

fn mutation() -> impl Strategy<Value = Mutation> {
    prop_oneof![
        (any::<usize>(), 1u8..).prop_map(|(at, xor)| Mutation::Flip { at, xor }),
        any::<usize>().prop_map(|at| Mutation::Truncate { at }),
        prop::collection::vec(any::<u8>(), 1..24).prop_map(|junk| Mutation::Append { junk }),
        any::<u32>().prop_map(|len| Mutation::SetLen { len }),
        Just(Mutation::FixLen),
        (
            any::<usize>(),
            prop_oneof![Just(0u32), Just(1), Just(u32::MAX), any::<u32>()]
        )
            .prop_map(|(at, value)| Mutation::SetU32 { at, value }),
    ]
}

fn apply(bytes: &mut Vec<u8>, m: &Mutation) {
    match m {
        Mutation::Flip { at, xor } if !bytes.is_empty() => {
            let i = at % bytes.len();
            bytes[i] ^= xor;
        }
        Mutation::Truncate { at } => bytes.truncate(at % (bytes.len() + 1)),
        Mutation::Append { junk } => bytes.extend_from_slice(junk),
        Mutation::SetLen { len } if bytes.len() >= 4 => {
            bytes[..4].copy_from_slice(&len.to_ne_bytes())
        }
        Mutation::FixLen if bytes.len() >= 4 => {
            let len = bytes.len() as u32;
            bytes[..4].copy_from_slice(&len.to_ne_bytes());
        }
        Mutation::SetU32 { at, value } if bytes.len() >= 4 => {
            let i = at % (bytes.len() - 3);
            bytes[i..i + 4].copy_from_slice(&value.to_ne_bytes());
        }
        _ => {}
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(4000))]

    #[test]
    fn random_bytes_never_panic(
        bytes in prop::collection::vec(any::<u8>(), 0..300),
        shift in 0usize..8,
        opts in opts(),
    ) {
        check(&bytes, shift, opts);
    }

    #[test]
    fn random_args_behind_a_real_header_never_panic(
        bytes in honest_header_random_args(),
        shift in 0usize..8,
        opts in opts(),
    ) {
        check(&bytes, shift, opts);
    }

    #[test]
    fn mutated_valid_requests_never_panic(
        op in prop::sample::select(Opcode::ALL),
        muts in prop::collection::vec(mutation(), 1..5),
        shift in 0usize..8,
        opts in opts(),
    ) {
        let st = Store::new();
        let mut bytes = sample_request(op, &st).to_bytes(ParseOptions::default());
        for m in &muts {
            apply(&mut bytes, m);
        }
        check(&bytes, shift, opts);
    }

    #[test]
    fn valid_requests_parse_at_any_shift(
        op in prop::sample::select(Opcode::ALL),
        shift in 0usize..8,
    ) {
        let st = Store::new();
        let bytes = sample_request(op, &st).to_bytes(ParseOptions::default());
        prop_assert!(check(&bytes, shift, ParseOptions::default()));
    }
}
