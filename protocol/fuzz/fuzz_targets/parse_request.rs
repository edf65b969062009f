//! Fuzzes the request parser: any bytes, at any alignment, with either SETXATTR layout.
//! Accepted requests must borrow only from the input and survive an encode/parse round trip.
//! Also checks the zero-copy WRITE prefix check and the reply parser against the same bytes,
//! and packs the input's pieces as directory-entry names to exercise the READDIR writer.

#![no_main]

use libfuzzer_sys::fuzz_target;
use protocol::reply::{parse_reply, DirentBuf};
use protocol::request::parse_write_prefix;
use protocol::abi::{FuseInHeader, Wire};
use protocol::{check_header, parse_header, Operation, ParseOptions, Request};

fn within(outer: &[u8], inner: &[u8]) -> bool {
    let o = outer.as_ptr_range();
    let i = inner.as_ptr_range();
    inner.is_empty() || (i.start >= o.start && i.end <= o.end)
}

fuzz_target!(|data: &[u8]| {
    let Some((&control, rest)) = data.split_first() else {
        return;
    };
    let opts = ParseOptions {
        setxattr_ext: control & 1 != 0,
    };
    // Copy behind a 0..7 byte shift so the parser sees every alignment.
    let shift = usize::from(control >> 1) % 8;
    let mut buf = vec![0u8; shift + rest.len()];
    buf[shift..].copy_from_slice(rest);
    let input = &buf[shift..];

    let whole = Request::parse_with(input, opts);
    if let Ok(req) = &whole {
        assert_eq!(req.header.len as usize, input.len());
        assert!(within(input, req.extensions.as_bytes()));
        let again = req.to_bytes(opts);
        let reparsed = Request::parse_with(&again, opts).expect("re-encoded request parses");
        assert_eq!(reparsed.op, req.op);
    }
    // The virtio path (header decoded once and checked, body split off) must agree with the
    // contiguous one, and the zero-copy WRITE check must accept exactly the WRITEs the full
    // parser accepts.
    let decoded = FuseInHeader::decode(input).filter(|h| check_header(h).is_ok());
    assert_eq!(decoded, parse_header(input).ok());
    if let Some(header) = decoded {
        let split = Request::parse_parts(header, &input[40..], opts);
        assert_eq!(split.is_ok(), whole.is_ok());
        let prefix = parse_write_prefix(&header, &input[40..]);
        if let Ok(Request {
            op: Operation::Write { arg, .. },
            extensions,
            ..
        }) = &whole
        {
            // The prefix check refuses extensions it cannot see; the kernel sends none on WRITE.
            if extensions.is_empty() {
                assert_eq!(prefix.as_ref(), Ok(arg));
            }
        }
    }
    // The same bytes read as a reply (the frontend reads replies from untrusted servers).
    if let Ok((header, body)) = parse_reply(input) {
        assert_eq!(header.len as usize, body.len() + 16);
    }

    // READDIR packing with names cut from the input, into a buffer sized by the input.
    let mut out = vec![0u8; usize::from(control) * 4];
    let mut dirents = DirentBuf::new(&mut out);
    for (i, name) in rest.split(|&b| b == b'/').enumerate() {
        let before = dirents.len();
        match dirents.push(i as u64, i as u64 + 1, 8, name) {
            Ok(true) => assert_eq!(dirents.len() % 8, 0),
            Ok(false) | Err(_) => assert_eq!(dirents.len(), before),
        }
    }
});
