//! Hostile guests: malformed FUSE requests and malformed descriptor chains. Each case runs
//! on a fresh backend; the backend must answer with an error reply, return the chain
//! empty, or signal a device error, and must then still serve a plain request.

mod common;

use std::time::Duration;

use common::{backends, Harness, Scratch};
use frontend::driver::{
    DriverConfig, DriverError, RawAddr, RawBuffer, RawChain, RawDesc, RawLink, REQUEST_QUEUE,
};
use frontend::fuse::FuseClient;
use frontend::memory::RAM_BASE;
use frontend::virtqueue::{DESC_F_INDIRECT, DESC_F_NEXT, DESC_F_WRITE};
use protocol::abi::*;
use protocol::{Opcode, Operation};

/// How long a malformed chain may stay unanswered before it counts as swallowed.
const WAIT: Duration = Duration::from_secs(2);

/// What the backend did with one malformed chain.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Outcome {
    /// A well-formed error reply.
    ErrorReply(i32),
    /// A success reply: accepting a malformed request is wrong.
    SuccessReply,
    /// A reply that breaks the protocol.
    BadReply(String),
    /// The chain came back with nothing written.
    Empty,
    /// The queue's error eventfd fired.
    DeviceError,
    /// No answer within the wait.
    Swallowed,
    /// The backend closed the socket (died).
    Gone,
    /// Another driver error.
    Other(String),
}

struct Case {
    name: &'static str,
    /// The chain is odd but not against the virtio spec: a success reply is fine too.
    success_ok: bool,
    /// Builds the chain; the `u64` is the unique a reply must carry (0: unknown).
    build: fn(&mut Harness) -> (u64, RawChain),
}

fn getattr(h: &mut Harness) -> (u64, Vec<u8>) {
    h.fs.encode(FUSE_ROOT_ID, Operation::Getattr(FuseGetattrIn::default()))
}

fn lookup(h: &mut Harness) -> (u64, Vec<u8>) {
    h.fs.encode(FUSE_ROOT_ID, Operation::Lookup { name: c"nothere" })
}

/// The chain Linux would send for `bytes` with `room` bytes of reply space.
fn linux_chain(bytes: &[u8], room: u32) -> RawChain {
    let split = bytes.len().min(FuseInHeader::SIZE);
    let mut readable = vec![&bytes[..split]];
    if bytes.len() > split {
        readable.push(&bytes[split..]);
    }
    RawChain::well_formed(&readable, &[16, room - 16])
}

/// Makes the header's `len` lie: the real length plus `delta` (negative: shorter).
fn lie_len(bytes: &mut [u8], delta: i64) {
    let len = (bytes.len() as i64 + delta) as u32;
    bytes[0..4].copy_from_slice(&len.to_ne_bytes());
}

fn set_len(bytes: &mut [u8], len: u32) {
    bytes[0..4].copy_from_slice(&len.to_ne_bytes());
}

fn bytes_case(h: &mut Harness, patch: impl FnOnce(&mut Vec<u8>)) -> (u64, RawChain) {
    let (u, mut b) = getattr(h);
    patch(&mut b);
    (u, linux_chain(&b, 4096))
}

fn chain_case(h: &mut Harness, patch: impl FnOnce(&mut RawChain)) -> (u64, RawChain) {
    let (u, b) = getattr(h);
    let mut c = linux_chain(&b, 4096);
    patch(&mut c);
    (u, c)
}

/// A GETATTR as one indirect table (buffer 4 of the chain), with `patch` applied.
fn indirect_case(h: &mut Harness, patch: impl FnOnce(&mut RawChain)) -> (u64, RawChain) {
    let (u, b) = getattr(h);
    let mut c = RawChain::well_formed_indirect(&[&b[..40], &b[40..]], &[16, 4080]);
    patch(&mut c);
    (u, c)
}

/// The indirect table of a chain from `indirect_case`.
fn table(c: &mut RawChain) -> &mut Vec<RawDesc> {
    match &mut c.buffers[4] {
        RawBuffer::Table(t) => t,
        other => panic!("buffer 4 is {other:?}, not the table"),
    }
}

fn outside(h: &mut Harness) -> u64 {
    h.fs.driver().ram().end() + (1 << 20)
}

const CASES: &[Case] = &[
    Case {
        success_ok: false,
        name: "header len larger than the request",
        build: |h| bytes_case(h, |b| lie_len(b, 100)),
    },
    Case {
        success_ok: false,
        name: "header len smaller than the header",
        build: |h| bytes_case(h, |b| set_len(b, 20)),
    },
    Case {
        success_ok: false,
        name: "header len cuts the name",
        build: |h| {
            let (u, mut b) = lookup(h);
            lie_len(&mut b, -3);
            (u, linux_chain(&b, 4096))
        },
    },
    Case {
        success_ok: false,
        name: "unknown opcode",
        build: |h| bytes_case(h, |b| b[4..8].copy_from_slice(&9999u32.to_ne_bytes())),
    },
    Case {
        success_ok: false,
        name: "name without NUL",
        build: |h| {
            let (u, mut b) = lookup(h);
            *b.last_mut().unwrap() = b'x';
            (u, linux_chain(&b, 4096))
        },
    },
    Case {
        success_ok: false,
        name: "write size larger than its data",
        build: |h| {
            let arg = FuseWriteIn {
                fh: 0,
                size: 1 << 20,
                ..Default::default()
            };
            let (u, b) = h.fs.encode(
                FUSE_ROOT_ID,
                Operation::Write {
                    arg,
                    data: b"0123456789",
                },
            );
            (u, linux_chain(&b, 4096))
        },
    },
    Case {
        success_ok: false,
        name: "setattr arguments truncated",
        build: |h| {
            let (u, mut b) =
                h.fs.encode(FUSE_ROOT_ID, Operation::Setattr(FuseSetattrIn::default()));
            b.truncate(FuseInHeader::SIZE + 8);
            lie_len(&mut b, 0);
            (u, linux_chain(&b, 4096))
        },
    },
    Case {
        success_ok: false,
        name: "request shorter than a header",
        build: |h| bytes_case(h, |b| b.truncate(20)),
    },
    Case {
        success_ok: false,
        name: "no reply room",
        build: |h| {
            chain_case(h, |c| {
                c.descs.truncate(2);
                c.descs[1].flags &= !DESC_F_NEXT;
                c.descs[1].next = RawLink::Slot(0);
            })
        },
    },
    Case {
        success_ok: false,
        name: "reply room smaller than the out header",
        build: |h| {
            let (u, b) = getattr(h);
            let c = RawChain::well_formed(&[&b[..40], &b[40..]], &[8]);
            (u, c)
        },
    },
    Case {
        success_ok: false,
        name: "reply room smaller than the reply",
        build: |h| {
            let (u, b) = getattr(h);
            let c = RawChain::well_formed(&[&b[..40], &b[40..]], &[16, 8]);
            (u, c)
        },
    },
    Case {
        success_ok: false,
        name: "request buffer outside guest RAM",
        build: |h| {
            let gpa = outside(h);
            chain_case(h, |c| c.descs[0].addr = RawAddr::Gpa(gpa))
        },
    },
    Case {
        success_ok: false,
        name: "request buffer below guest RAM",
        build: |h| chain_case(h, |c| c.descs[0].addr = RawAddr::Gpa(RAM_BASE - 4096)),
    },
    Case {
        success_ok: false,
        name: "request buffer straddles the end of guest RAM",
        build: |h| {
            let end = h.fs.driver().ram().end();
            chain_case(h, |c| c.descs[0].addr = RawAddr::Gpa(end - 8))
        },
    },
    Case {
        success_ok: false,
        name: "reply buffer outside guest RAM",
        build: |h| {
            let gpa = outside(h);
            chain_case(h, |c| c.descs[3].addr = RawAddr::Gpa(gpa))
        },
    },
    Case {
        success_ok: false,
        name: "descriptor length past the end of guest RAM",
        build: |h| chain_case(h, |c| c.descs[0].len = 0xFFFF_FFF0),
    },
    Case {
        success_ok: false,
        name: "request descriptor marked device-writable",
        build: |h| chain_case(h, |c| c.descs[1].flags |= DESC_F_WRITE),
    },
    Case {
        success_ok: false,
        name: "reply descriptors marked device-readable",
        build: |h| {
            chain_case(h, |c| {
                c.descs[2].flags &= !DESC_F_WRITE;
                c.descs[3].flags &= !DESC_F_WRITE;
            })
        },
    },
    Case {
        success_ok: false,
        name: "readable descriptor after a writable one",
        build: |h| {
            let (u, b) = getattr(h);
            let mut c = RawChain::well_formed(&[&b[..40]], &[16, 4080]);
            c.buffers.push(RawBuffer::Data(b[40..].to_vec()));
            c.descs[2].flags |= DESC_F_NEXT;
            c.descs[2].next = RawLink::Slot(3);
            c.descs.push(RawDesc {
                addr: RawAddr::Buffer(3, 0),
                len: (b.len() - 40) as u32,
                flags: 0,
                next: RawLink::Slot(0),
            });
            (u, c)
        },
    },
    Case {
        success_ok: false,
        name: "next index past the descriptor table",
        build: |h| {
            let size = h.fs.driver().queue_size();
            chain_case(h, |c| c.descs[1].next = RawLink::Index(size + 7))
        },
    },
    Case {
        success_ok: false,
        name: "head index past the descriptor table",
        build: |h| {
            let size = h.fs.driver().queue_size();
            chain_case(h, |c| c.head = RawLink::Index(size + 3))
        },
    },
    Case {
        success_ok: false,
        name: "descriptor chain loops",
        build: |h| {
            chain_case(h, |c| {
                let last = c.descs.len() - 1;
                c.descs[last].flags |= DESC_F_NEXT;
                c.descs[last].next = RawLink::Slot(0);
            })
        },
    },
    Case {
        // Virtio does not forbid zero-length buffers; QEMU's devices and libvhost-user
        // refuse them.
        success_ok: true,
        name: "zero-length descriptor in the chain",
        build: |h| {
            chain_case(h, |c| {
                c.buffers.push(RawBuffer::Data(vec![]));
                c.descs[1].next = RawLink::Slot(4);
                c.descs.push(RawDesc {
                    addr: RawAddr::Buffer(4, 0),
                    len: 0,
                    flags: DESC_F_NEXT,
                    next: RawLink::Slot(2),
                });
            })
        },
    },
    Case {
        success_ok: false,
        name: "indirect descriptor without the feature",
        build: |h| chain_case(h, |c| c.descs[0].flags |= 4),
    },
];

/// Broken indirect tables; run with VIRTIO_RING_F_INDIRECT_DESC negotiated.
const INDIRECT_CASES: &[Case] = &[
    Case {
        success_ok: false,
        name: "indirect table length not a multiple of 16",
        build: |h| indirect_case(h, |c| c.descs[0].len -= 5),
    },
    Case {
        success_ok: false,
        name: "empty indirect table",
        build: |h| indirect_case(h, |c| c.descs[0].len = 0),
    },
    Case {
        success_ok: false,
        name: "indirect table outside guest RAM",
        build: |h| {
            let gpa = outside(h);
            indirect_case(h, |c| c.descs[0].addr = RawAddr::Gpa(gpa))
        },
    },
    Case {
        // The spec forbids the driver to set both, but does not tell the device to refuse:
        // ignoring NEXT on an indirect descriptor is allowed.
        success_ok: true,
        name: "indirect descriptor that also has NEXT",
        build: |h| {
            indirect_case(h, |c| {
                c.descs[0].flags |= DESC_F_NEXT;
                c.descs[0].next = RawLink::Slot(0);
            })
        },
    },
    Case {
        success_ok: false,
        name: "indirect table inside an indirect table",
        build: |h| indirect_case(h, |c| table(c)[0].flags |= DESC_F_INDIRECT),
    },
    Case {
        success_ok: false,
        name: "indirect table chain loops",
        build: |h| {
            indirect_case(h, |c| {
                let t = table(c);
                let last = t.len() - 1;
                t[last].flags |= DESC_F_NEXT;
                t[last].next = RawLink::Slot(0);
            })
        },
    },
    Case {
        success_ok: false,
        name: "indirect table next index past the table",
        build: |h| indirect_case(h, |c| table(c)[1].next = RawLink::Index(9)),
    },
    Case {
        success_ok: false,
        name: "buffer in an indirect table outside guest RAM",
        build: |h| {
            let gpa = outside(h);
            indirect_case(h, |c| table(c)[0].addr = RawAddr::Gpa(gpa))
        },
    },
];

fn classify(h: &mut Harness, unique: u64, chain: &RawChain) -> Outcome {
    let d = h.fs.driver();
    let token = match d.submit_raw(REQUEST_QUEUE, chain) {
        Ok(t) => t,
        Err(e) => return Outcome::Other(format!("submit: {e}")),
    };
    match d.wait(token, WAIT) {
        Ok(c) if c.used_len == 0 => Outcome::Empty,
        Ok(c) => match FuseClient::check_reply(Opcode::Getattr, unique, &c) {
            Ok(r) if r.error < 0 => Outcome::ErrorReply(-r.error),
            Ok(_) => Outcome::SuccessReply,
            Err(e) => Outcome::BadReply(e.to_string()),
        },
        Err(DriverError::DeviceError { .. }) => Outcome::DeviceError,
        Err(DriverError::Timeout { .. }) => Outcome::Swallowed,
        Err(DriverError::BackendGone) => Outcome::Gone,
        Err(e) => Outcome::Other(e.to_string()),
    }
}

/// Runs `cases` on every backend, each on a fresh backend connected with `config`.
fn run_cases(cases: &[Case], config: &DriverConfig) {
    let mut failures = Vec::new();
    let all: Vec<&str> = CASES.iter().chain(INDIRECT_CASES).map(|c| c.name).collect();
    for spec in backends() {
        for listed in &spec.tolerated_malformed {
            assert!(
                all.contains(&listed.as_str()),
                "{}: tolerated case {listed:?} does not exist",
                spec.name
            );
        }
        for case in cases {
            let mut h = Harness::start_on(Scratch::plain("malformed"), &spec, config);
            h.fs.init(frontend::fuse::DEFAULT_INIT_FLAGS).unwrap();
            let (unique, chain) = (case.build)(&mut h);
            let outcome = classify(&mut h, unique, &chain);
            let acceptable = matches!(
                outcome,
                Outcome::ErrorReply(_) | Outcome::Empty | Outcome::DeviceError
            ) || (case.success_ok && outcome == Outcome::SuccessReply);
            h.fs.driver().set_timeout(WAIT);
            let serving =
                h.fs.getattr(FUSE_ROOT_ID, None)
                    .map(|_| ())
                    .map_err(|e| e.to_string());
            let ok = acceptable && serving.is_ok();
            let tolerated = spec.tolerated_malformed.iter().any(|n| n == case.name);
            eprintln!(
                "{:12} {:48} {:?}, still serving: {:?}{}",
                spec.name,
                case.name,
                outcome,
                serving,
                match (ok, tolerated) {
                    (false, true) => " (known failure)",
                    (true, true) => " (listed as a known failure but passes)",
                    _ => "",
                }
            );
            if !ok && !tolerated {
                failures.push(format!(
                    "{}: {}: {outcome:?}, still serving: {serving:?}\n{}",
                    spec.name,
                    case.name,
                    h.backend.log_tail(600)
                ));
            }
            // The list of known failures may only shrink: a listed case that passes now is
            // taken off it, or it would hide the day it breaks again.
            if ok && tolerated {
                failures.push(format!(
                    "{}: {}: listed as a known failure but passes; take it off the list",
                    spec.name, case.name
                ));
            }
        }
    }
    assert!(failures.is_empty(), "{failures:#?}");
}

#[test]
fn malformed_input_gets_an_error_and_the_backend_keeps_serving() {
    // Plain chains: the cases build their own descriptors, and one of them relies on
    // INDIRECT_DESC not being negotiated.
    let config = DriverConfig {
        timeout: common::TIMEOUT,
        ..Default::default()
    };
    run_cases(CASES, &config);
}

#[test]
fn malformed_indirect_tables_get_an_error_and_the_backend_keeps_serving() {
    let config = DriverConfig {
        timeout: common::TIMEOUT,
        ..DriverConfig::linux_like()
    };
    run_cases(INDIRECT_CASES, &config);
}

/// A memory region announced larger than the memfd behind it (SET_MEM_TABLE), and a reply
/// buffer in the part the file does not back: touching it is SIGBUS. zerodax treats that part
/// as outside guest memory (an error for the request) and keeps serving; both virtiofsds die
/// here, so they are not run.
#[test]
fn a_region_larger_than_its_file_is_not_touched_past_the_file() {
    let Some(spec) = backends().into_iter().find(|b| b.name == "zerodax") else {
        eprintln!("zerodax is not among the backends of this run");
        return;
    };
    let ram = 16 << 20;
    let config = DriverConfig {
        timeout: common::TIMEOUT,
        ram_size: ram,
        ram_backing: Some(ram / 2),
        ..Default::default()
    };
    let mut h = Harness::start_on(Scratch::plain("short-region"), &spec, &config);
    h.fs.init(frontend::fuse::DEFAULT_INIT_FLAGS).unwrap();
    let past_the_file = frontend::memory::RAM_BASE + (ram as u64) * 3 / 4;
    let (unique, chain) = chain_case(&mut h, |c| c.descs[3].addr = RawAddr::Gpa(past_the_file));
    let outcome = classify(&mut h, unique, &chain);
    assert!(
        matches!(
            outcome,
            Outcome::ErrorReply(_) | Outcome::Empty | Outcome::DeviceError
        ),
        "{outcome:?}\n{}",
        h.backend.log_tail(2000)
    );
    h.fs.driver().set_timeout(WAIT);
    h.fs.getattr(FUSE_ROOT_ID, None).unwrap_or_else(|e| {
        panic!(
            "not serving after the case: {e}\n{}",
            h.backend.log_tail(2000)
        )
    });
    assert!(h.backend.log_tail(4000).contains("its file backs"));
}
