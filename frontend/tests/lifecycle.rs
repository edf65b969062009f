//! The frontend's waits: a backend that dies, hangs up, never answers or is never there
//! turns into a clear error, never a hang. And a frontend that goes away ends the backend.

mod common;

use std::os::unix::net::UnixListener;
use std::time::Duration;

use common::{backends, for_each_backend, Scratch, TIMEOUT};
use frontend::driver::{DriverConfig, DriverError, FsDriver, REQUEST_QUEUE};
use frontend::fuse::{FuseClient, FuseError, DEFAULT_INIT_FLAGS};
use frontend::vmm::VmmError;
use protocol::abi::*;
use protocol::{Operation, Wire};

#[test]
fn a_dead_backend_is_reported_as_gone() {
    for_each_backend("dead", |h| {
        h.assert_serving("INIT");
        h.backend.kill();
        match h.fs.getattr(FUSE_ROOT_ID, None) {
            Err(FuseError::Driver(DriverError::BackendGone)) => {}
            other => panic!("expected BackendGone, got {other:?}"),
        }
    });
}

#[test]
fn a_request_in_flight_when_the_backend_dies_is_reported_as_gone() {
    for_each_backend("dead-in-flight", |h| {
        // A chain whose reply room is too small for the reply may or may not come back;
        // a READ of a hole in a file that does not exist gets an error at once. Either
        // way the token is waited for after the kill.
        let (_, bytes) =
            h.fs.encode(FUSE_ROOT_ID, Operation::Getattr(FuseGetattrIn::default()));
        h.backend.kill();
        let d = h.fs.driver();
        let token = d.submit(REQUEST_QUEUE, &[&bytes[..40], &bytes[40..]], &[16, 200]);
        match token.map(|t| d.wait(t, TIMEOUT)) {
            Ok(Err(DriverError::BackendGone)) => {}
            other => panic!("expected BackendGone, got {other:?}"),
        }
    });
}

#[test]
fn disconnecting_ends_the_backend() {
    for spec in backends() {
        let scratch = Scratch::plain("disconnect");
        let socket = scratch.root.join("vfs.sock");
        let mut child = spec
            .spawn(&socket, &scratch.mnt, &scratch.root.join("log"), TIMEOUT)
            .unwrap();
        let config = DriverConfig {
            timeout: TIMEOUT,
            ..Default::default()
        };
        let mut fs = FuseClient::connect(&socket, &config).unwrap();
        fs.init(DEFAULT_INIT_FLAGS).unwrap();
        fs.getattr(FUSE_ROOT_ID, None).unwrap();
        drop(fs);
        let status = child.wait_exit(TIMEOUT).unwrap();
        assert!(
            status.is_some(),
            "{}: still running {TIMEOUT:?} after the frontend left\n{}",
            spec.name,
            child.log_tail(1000)
        );
        eprintln!("{}: exited with {:?} after disconnect", spec.name, status);
    }
}

#[test]
fn a_backend_that_never_answers_times_out() {
    let scratch = Scratch::plain("silent");
    let path = scratch.root.join("silent.sock");
    let listener = UnixListener::bind(&path).unwrap();
    // Accepts and holds the connection, reads nothing, answers nothing.
    let holder = std::thread::spawn(move || listener.accept().map(|(s, _)| s));
    let config = DriverConfig {
        timeout: Duration::from_millis(300),
        ..Default::default()
    };
    let err = FsDriver::connect(&path, &config).unwrap_err();
    // SET_OWNER needs no answer; GET_FEATURES is the first wait.
    assert!(
        matches!(
            err,
            DriverError::Vmm(VmmError::NoAnswer {
                step: "GET_FEATURES",
                ..
            })
        ),
        "{err}"
    );
    drop(holder.join().unwrap());
}

#[test]
fn a_socket_nobody_serves_is_a_connect_error() {
    let scratch = Scratch::plain("nobody");
    let config = DriverConfig {
        timeout: Duration::from_millis(200),
        ..Default::default()
    };
    let err = FsDriver::connect(&scratch.root.join("absent.sock"), &config).unwrap_err();
    assert!(
        matches!(err, DriverError::Vmm(VmmError::Connect { .. })),
        "{err}"
    );
}

#[test]
fn every_request_queue_serves_and_too_many_queues_is_a_clear_error() {
    use frontend::driver::DriverConfig;
    for spec in backends() {
        let connect = |request_queues: u16| {
            let scratch = Scratch::plain("queues");
            let socket = scratch.root.join("vfs.sock");
            let child = spec
                .spawn(&socket, &scratch.mnt, &scratch.root.join("log"), TIMEOUT)
                .unwrap();
            let config = DriverConfig {
                request_queues,
                timeout: TIMEOUT,
                ..Default::default()
            };
            let fs = FuseClient::connect(&socket, &config);
            (fs, child, scratch)
        };
        let (fs, _child, _scratch) = connect(1);
        let offered = fs.unwrap().driver().negotiated().backend_queues;
        eprintln!("{}: GET_QUEUE_NUM = {offered}", spec.name);
        if offered == 0 {
            continue; // no MQ: one request queue only, which every other test uses
        }
        // Every queue the backend offers carries requests (capped to keep the run short).
        let usable = (offered - 1).min(4) as u16;
        let (fs, _child, _scratch) = connect(usable);
        let mut fs = fs.unwrap();
        fs.init(DEFAULT_INIT_FLAGS).unwrap();
        for q in 1..=usable {
            let (unique, bytes) =
                fs.encode(FUSE_ROOT_ID, Operation::Getattr(FuseGetattrIn::default()));
            let c = fs
                .send_bytes(q, &bytes, 16 + FuseAttrOut::SIZE as u32)
                .unwrap();
            let r = FuseClient::check_reply(protocol::Opcode::Getattr, unique, &c).unwrap();
            assert_eq!(r.error, 0, "{}: queue {q}", spec.name);
        }
        if offered < u64::from(u16::MAX) {
            let (fs, _child, _scratch) = connect(offered as u16);
            match fs {
                Err(FuseError::Driver(DriverError::Vmm(VmmError::TooFewQueues { want, have }))) => {
                    assert_eq!((want, have), (offered + 1, offered));
                }
                other => panic!("{}: expected TooFewQueues, got {other:?}", spec.name),
            }
        }
    }
}

#[test]
fn stopping_a_queue_reports_how_far_the_backend_got() {
    for_each_backend("stop-queue", |h| {
        for _ in 0..3 {
            h.fs.getattr(FUSE_ROOT_ID, None).unwrap();
        }
        // INIT and three GETATTRs went through the request queue, nothing through hiprio.
        let vmm = h.fs.driver().vmm();
        assert_eq!(vmm.stop_queue(REQUEST_QUEUE).unwrap(), 4);
        assert_eq!(vmm.stop_queue(frontend::driver::HIPRIO_QUEUE).unwrap(), 0);
    });
}
