//! Round trips for every opcode and one test per kind of malformed input.

mod common;

use common::*;
use protocol::abi::*;
use protocol::request::encode_list;
use protocol::request::parse_write_prefix;
use protocol::{
    check_header, parse_header, Extensions, Opcode, Operation, ParseError, ParseOptions, Request,
    Wire, WireList,
};

/// Builds raw request bytes from a header template and argument bytes, with an honest len.
fn raw(opcode: u32, args: &[u8]) -> Vec<u8> {
    let h = FuseInHeader {
        len: (FuseInHeader::SIZE + args.len()) as u32,
        opcode,
        ..header(1)
    };
    let mut v = h.to_vec();
    v.extend_from_slice(args);
    v
}

#[test]
fn every_opcode_round_trips() {
    let st = Store::new();
    for &op in Opcode::ALL {
        let req = sample_request(op, &st);
        let bytes = req.to_bytes(ParseOptions::default());
        let parsed = Request::parse(&bytes).unwrap_or_else(|e| panic!("{op}: {e}"));
        assert_eq!(parsed.opcode(), op);
        assert_eq!(parsed.op, req.op, "{op}");
        assert_eq!(parsed.unique(), req.header.unique);
        assert_eq!(parsed.header.len as usize, bytes.len());
        assert_borrows_within(&parsed, &bytes);
        // Encoding what was parsed gives the same bytes back.
        assert_eq!(parsed.to_bytes(ParseOptions::default()), bytes, "{op}");
    }
}

#[test]
fn every_opcode_parses_at_every_misalignment() {
    let st = Store::new();
    for (op, bytes) in all_encoded(&st) {
        for shift in 1..8 {
            let mut buf = vec![0xA5u8; shift];
            buf.extend_from_slice(&bytes);
            let parsed = Request::parse(&buf[shift..]).unwrap();
            assert_eq!(parsed.op, sample(op, &st), "{op} at +{shift}");
            assert_borrows_within(&parsed, &buf[shift..]);
        }
    }
}

#[test]
fn split_header_and_body_like_virtio() {
    let st = Store::new();
    for (op, bytes) in all_encoded(&st) {
        let header = parse_header(&bytes[..40]).unwrap();
        let parsed = Request::parse_parts(header, &bytes[40..], ParseOptions::default()).unwrap();
        assert_eq!(parsed.op, sample(op, &st));
        // A body one byte short or long of header.len is refused.
        if bytes.len() > 40 {
            assert!(matches!(
                Request::parse_parts(header, &bytes[40..bytes.len() - 1], ParseOptions::default()),
                Err(ParseError::LengthMismatch { .. })
            ));
        }
        let mut long = bytes[40..].to_vec();
        long.push(0);
        assert!(matches!(
            Request::parse_parts(header, &long, ParseOptions::default()),
            Err(ParseError::LengthMismatch { .. })
        ));
    }
}

#[test]
fn truncation_at_every_offset_is_an_error() {
    let st = Store::new();
    for (op, bytes) in all_encoded(&st) {
        for cut in 0..bytes.len() {
            // The header still claims the full length: a plain short read.
            let short = &bytes[..cut];
            assert!(Request::parse(short).is_err(), "{op} cut at {cut}");
            // The header lies consistently: len says `cut`. Only a few opcodes can be valid
            // shorter (none in our samples except the old 16-byte INIT).
            if cut >= 40 {
                let mut lying = short.to_vec();
                lying[..4].copy_from_slice(&(cut as u32).to_ne_bytes());
                let r = Request::parse(&lying);
                if op == Opcode::Init && cut == 40 + FUSE_COMPAT_INIT_IN_SIZE {
                    assert!(r.is_ok());
                } else {
                    assert!(r.is_err(), "{op} consistent cut at {cut}: {r:?}");
                }
            }
        }
    }
}

#[test]
fn header_errors() {
    assert_eq!(
        Request::parse(&[0u8; 39]),
        Err(ParseError::ShortHeader { have: 39 })
    );
    let mut v = raw(Opcode::Statfs as u32, &[]);
    v[..4].copy_from_slice(&39u32.to_ne_bytes());
    assert_eq!(
        Request::parse(&v),
        Err(ParseError::HeaderLenTooSmall { header_len: 39 })
    );
    // A header decoded once and checked: the same answer as parsing its bytes.
    let decoded = FuseInHeader::decode(&v).unwrap();
    assert_eq!(
        check_header(&decoded),
        Err(ParseError::HeaderLenTooSmall { header_len: 39 })
    );
    assert_eq!(
        check_header(&parse_header(&raw(Opcode::Statfs as u32, &[])).unwrap()),
        Ok(())
    );
    v[..4].copy_from_slice(&u32::MAX.to_ne_bytes());
    assert_eq!(
        Request::parse(&v),
        Err(ParseError::LengthMismatch {
            header_len: u32::MAX,
            actual: 40
        })
    );
    let mut v = raw(Opcode::Statfs as u32, &[]);
    v.extend_from_slice(&[0; 8]);
    assert_eq!(
        Request::parse(&v),
        Err(ParseError::LengthMismatch {
            header_len: 40,
            actual: 48
        })
    );
}

#[test]
fn unknown_and_byte_swapped_opcodes() {
    for op in [0u32, 7, 19, 54, 4095, 0xdead_beef] {
        assert_eq!(
            Request::parse(&raw(op, &[])),
            Err(ParseError::UnknownOpcode(op))
        );
    }
    assert_eq!(
        Request::parse(&raw(26 << 24, &[0; 64])),
        Err(ParseError::ForeignByteOrder)
    );
}

#[test]
fn name_errors() {
    let lookup = Opcode::Lookup as u32;
    let opcode = Opcode::Lookup;
    assert_eq!(
        Request::parse(&raw(lookup, b"abc")),
        Err(ParseError::MissingNul { opcode })
    );
    assert_eq!(
        Request::parse(&raw(lookup, b"")),
        Err(ParseError::MissingNul { opcode })
    );
    assert_eq!(
        Request::parse(&raw(lookup, b"\0")),
        Err(ParseError::EmptyName { opcode })
    );
    assert_eq!(
        Request::parse(&raw(lookup, b"a/b\0")),
        Err(ParseError::SlashInName { opcode })
    );
    // Interior garbage: whatever follows the first NUL is not part of the name.
    assert_eq!(
        Request::parse(&raw(lookup, b"abc\0xyz\0")),
        Err(ParseError::TrailingBytes { opcode, extra: 4 })
    );
    // ".." is a legal LOOKUP (export support); confinement is the fs core's job.
    assert!(Request::parse(&raw(lookup, b"..\0")).is_ok());
    // Symlink targets may hold slashes; their names may not.
    let symlink = Opcode::Symlink as u32;
    assert!(Request::parse(&raw(symlink, b"l\0/etc/passwd\0")).is_ok());
    assert_eq!(
        Request::parse(&raw(symlink, b"x/l\0t\0")),
        Err(ParseError::SlashInName {
            opcode: Opcode::Symlink
        })
    );
    // Rename needs two names.
    let mut args = FuseRenameIn { newdir: 1 }.to_vec();
    args.extend_from_slice(b"old\0");
    assert_eq!(
        Request::parse(&raw(Opcode::Rename as u32, &args)),
        Err(ParseError::MissingNul {
            opcode: Opcode::Rename
        })
    );
}

#[test]
fn payload_sizes_must_match() {
    let st = Store::new();
    // WRITE declaring more than it carries, and less.
    for declared in [0u32, 999, 1001, u32::MAX] {
        let mut req = sample_request(Opcode::Write, &st);
        if let Operation::Write { arg, .. } = &mut req.op {
            arg.size = declared;
        }
        let bytes = req.to_bytes(ParseOptions::default());
        assert_eq!(
            Request::parse(&bytes),
            Err(ParseError::PayloadMismatch {
                opcode: Opcode::Write,
                declared: u64::from(declared),
                have: 1000
            })
        );
    }
    // SETXATTR value size lying.
    let mut args = [9u32, 0].to_vec();
    args.extend_from_slice(b"user.a\0");
    args.extend_from_slice(b"short");
    assert_eq!(
        Request::parse(&raw(Opcode::Setxattr as u32, &args)),
        Err(ParseError::PayloadMismatch {
            opcode: Opcode::Setxattr,
            declared: 9,
            have: 5
        })
    );
}

#[test]
fn setxattr_layout_follows_negotiation() {
    let st = Store::new();
    let ext = ParseOptions { setxattr_ext: true };
    let mut req = sample_request(Opcode::Setxattr, &st);
    if let Operation::Setxattr { arg, .. } = &mut req.op {
        arg.setxattr_flags = FUSE_SETXATTR_ACL_KILL_SGID;
    }
    let bytes = req.to_bytes(ext);
    assert_eq!(Request::parse_with(&bytes, ext).unwrap().op, req.op);
    // The same bytes read with the compat layout misparse into an error, not a panic.
    assert!(Request::parse(&bytes).is_err());
    assert_eq!(
        ParseOptions::from_init_flags(FUSE_SETXATTR_EXT | FUSE_ASYNC_READ),
        ext
    );
}

#[test]
fn lying_counts() {
    // BATCH_FORGET claiming more, fewer, and u32::MAX entries.
    let entries = encode_list(&[FuseForgetOne {
        nodeid: 2,
        nlookup: 1,
    }]);
    for count in [0u32, 2, u32::MAX] {
        let mut args = FuseBatchForgetIn { count, dummy: 0 }.to_vec();
        args.extend_from_slice(&entries);
        assert_eq!(
            Request::parse(&raw(Opcode::BatchForget as u32, &args)),
            Err(ParseError::CountMismatch {
                opcode: Opcode::BatchForget,
                count,
                have: 16
            })
        );
    }
    // REMOVEMAPPING: the 4-byte header leaves the entries at an odd-of-8 offset.
    let ranges = [
        FuseRemovemappingOne {
            moffset: 2 << 20,
            len: 2 << 20,
        },
        FuseRemovemappingOne {
            moffset: u64::MAX,
            len: u64::MAX,
        },
    ];
    let mut args = FuseRemovemappingIn { count: 2 }.to_vec();
    args.extend_from_slice(&encode_list(&ranges));
    let bytes = raw(Opcode::RemoveMapping as u32, &args);
    let req = Request::parse(&bytes).unwrap();
    let Operation::RemoveMapping(list) = req.op else {
        panic!("wrong op")
    };
    assert_eq!(list.len(), 2);
    assert_eq!(list.iter().collect::<Vec<_>>(), ranges);
    args[..4].copy_from_slice(&3u32.to_ne_bytes());
    assert_eq!(
        Request::parse(&raw(Opcode::RemoveMapping as u32, &args)),
        Err(ParseError::CountMismatch {
            opcode: Opcode::RemoveMapping,
            count: 3,
            have: 32
        })
    );
}

#[test]
fn fixed_size_ops_refuse_short_and_long_args() {
    let args = vec![0u8; 39];
    assert_eq!(
        Request::parse(&raw(Opcode::SetupMapping as u32, &args)),
        Err(ParseError::Truncated {
            opcode: Opcode::SetupMapping,
            need: 40,
            have: 39
        })
    );
    let args = vec![0u8; 41];
    assert_eq!(
        Request::parse(&raw(Opcode::SetupMapping as u32, &args)),
        Err(ParseError::TrailingBytes {
            opcode: Opcode::SetupMapping,
            extra: 1
        })
    );
    assert_eq!(
        Request::parse(&raw(Opcode::Statfs as u32, &[0])),
        Err(ParseError::TrailingBytes {
            opcode: Opcode::Statfs,
            extra: 1
        })
    );
}

#[test]
fn init_sizes() {
    let full = FuseInitIn {
        major: 7,
        minor: 45,
        max_readahead: 1 << 17,
        flags: FUSE_INIT_EXT as u32,
        flags2: 3,
        unused: [0; 11],
    }
    .to_vec();
    let Operation::Init(init) = Request::parse(&raw(26, &full)).unwrap().op else {
        panic!()
    };
    assert_eq!(init.flags64(), FUSE_INIT_EXT | (3 << 32));
    let Operation::Init(old) = Request::parse(&raw(26, &full[..16])).unwrap().op else {
        panic!()
    };
    assert_eq!((old.major, old.minor, old.flags2), (7, 45, 0));
    for n in [0usize, 8, 15, 24, 63, 65] {
        let mut args = full.clone();
        args.resize(n, 0);
        assert_eq!(
            Request::parse(&raw(26, &args)),
            Err(ParseError::BadInitSize { have: n }),
            "{n}"
        );
    }
    // Another major version: only major/minor matter, so the server can answer it.
    let other = [8u32, 0]
        .iter()
        .flat_map(|v| v.to_ne_bytes())
        .collect::<Vec<_>>();
    let Operation::Init(o) = Request::parse(&raw(26, &other)).unwrap().op else {
        panic!()
    };
    assert_eq!(o.major, 8);
}

#[test]
fn extensions_are_split_off_and_validated() {
    let st = Store::new();
    // A supplementary-group extension after a CREATE.
    let mut ext = FuseExtHeader {
        size: 16,
        typ: FUSE_EXT_GROUPS,
    }
    .to_vec();
    ext.extend_from_slice(&1u32.to_ne_bytes());
    ext.extend_from_slice(&1234u32.to_ne_bytes());
    let req = Request {
        extensions: Extensions::from_bytes(&ext).unwrap(),
        ..sample_request(Opcode::Create, &st)
    };
    let bytes = req.to_bytes(ParseOptions::default());
    let parsed = Request::parse(&bytes).unwrap();
    assert_eq!(parsed.op, sample(Opcode::Create, &st));
    assert_eq!(parsed.header.total_extlen, 2);
    assert_eq!(parsed.extensions.supp_group(), Some(1234));
    assert_eq!(parsed.extensions.iter().count(), 1);

    // total_extlen larger than the body.
    let mut lying = bytes.clone();
    lying[36..38].copy_from_slice(&1000u16.to_ne_bytes());
    assert_eq!(
        Request::parse(&lying),
        Err(ParseError::ExtensionsTooLong {
            claimed: 8000,
            body: bytes.len() - 40
        })
    );
    // An extension whose size runs past the end, or is zero.
    for bad in [24u32, 0, 12] {
        let mut b = bytes.clone();
        let at = bytes.len() - 16;
        b[at..at + 4].copy_from_slice(&bad.to_ne_bytes());
        assert_eq!(
            Request::parse(&b),
            Err(ParseError::BadExtension { offset: 0 }),
            "{bad}"
        );
    }
}

#[test]
fn batch_forget_iterates_unaligned() {
    let st = Store::new();
    let bytes = sample_request(Opcode::BatchForget, &st).to_bytes(ParseOptions::default());
    let mut buf = vec![0u8; 3];
    buf.extend_from_slice(&bytes);
    let req = Request::parse(&buf[3..]).unwrap();
    let Operation::BatchForget(list) = req.op else {
        panic!()
    };
    let got: Vec<_> = list.iter().map(|f| (f.nodeid, f.nlookup)).collect();
    assert_eq!(got, vec![(5, 2), (u64::MAX, 1 << 40), (9, 1)]);
    assert!(WireList::<FuseForgetOne>::from_bytes(&[0; 15]).is_none());
}

#[test]
fn errors_display() {
    let e = ParseError::Truncated {
        opcode: Opcode::Read,
        need: 40,
        have: 3,
    };
    assert_eq!(e.to_string(), "FUSE_READ: needs 40 argument bytes, has 3");
}

#[test]
fn write_prefix_for_zero_copy_transports() {
    let st = Store::new();
    let bytes = sample_request(Opcode::Write, &st).to_bytes(ParseOptions::default());
    let header = parse_header(&bytes).unwrap();
    let w = parse_write_prefix(&header, &bytes[40..80]).unwrap();
    assert_eq!((w.size, w.offset), (1000, 1 << 21));
    // The header's len disagreeing with size, a short prefix, another opcode.
    let lying = FuseInHeader {
        len: header.len + 1,
        ..header
    };
    assert!(matches!(
        parse_write_prefix(&lying, &bytes[40..80]),
        Err(ParseError::PayloadMismatch { .. })
    ));
    let tiny = FuseInHeader { len: 10, ..header };
    assert!(parse_write_prefix(&tiny, &bytes[40..80]).is_err());
    assert!(matches!(
        parse_write_prefix(&header, &bytes[40..79]),
        Err(ParseError::Truncated { .. })
    ));
    let read = FuseInHeader {
        opcode: Opcode::Read as u32,
        ..header
    };
    assert_eq!(
        parse_write_prefix(&read, &bytes[40..80]),
        Err(ParseError::UnexpectedOpcode {
            expected: Opcode::Write,
            found: Opcode::Read as u32
        })
    );
}
