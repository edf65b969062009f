//! The seccomp filter of `zerodax serve` (crate::confine), installed in a child process that
//! then makes a call outside the allowlist from a thread started after it, as a serving
//! thread would: `kill` ends the process with SIGSYS and the kernel logs the call, `trap`
//! logs it itself and dies of SIGSYS, `log` lets it through. The serving paths' own calls
//! are covered by every other suite, which runs `serve` under the default filter.

use std::os::unix::process::ExitStatusExt;
use std::process::Command;

use zerodax::confine::{install_seccomp, SeccompAction};

const CHILD_ENV: &str = "ZERODAX_SECCOMP_CHILD";

/// The child's half, run by `forbidden_call_from_a_thread` through this test binary: with
/// the filter installed, a new thread asks for an IPv4 socket (nothing in `serve` creates
/// sockets once confined). Prints `survived` only if the call came back.
#[test]
fn seccomp_child_process() {
    let Ok(action) = std::env::var(CHILD_ENV) else {
        return;
    };
    let action = match action.as_str() {
        "kill" => SeccompAction::Kill,
        "trap" => SeccompAction::Trap,
        "log" => SeccompAction::Log,
        other => panic!("unknown action {other}"),
    };
    install_seccomp(action).unwrap();
    println!("pid {}", std::process::id());
    let fd = std::thread::spawn(|| {
        // SAFETY: socket(2) with integer arguments; the descriptor is closed below.
        unsafe { libc::socket(libc::AF_INET, libc::SOCK_STREAM, 0) }
    })
    .join()
    .unwrap();
    if fd >= 0 {
        // SAFETY: a descriptor this thread received and owns.
        unsafe { libc::close(fd) };
    }
    println!("survived");
}

fn run_child(action: &str) -> std::process::Output {
    Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "seccomp_child_process",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(CHILD_ENV, action)
        .output()
        .unwrap()
}

/// The kernel's audit line for a seccomp kill of `pid`, when the kernel log is readable.
fn kernel_log_line(pid: Option<u32>, nr: libc::c_long) -> Option<String> {
    let out = Command::new("dmesg").output().ok()?;
    let log = String::from_utf8_lossy(&out.stdout);
    let want = format!("syscall={nr} ");
    log.lines()
        .filter(|l| l.contains("type=1326") && l.contains(&want))
        .find(|l| pid.is_none_or(|p| l.contains(&format!("pid={p} "))))
        .map(str::to_owned)
}

#[test]
fn forbidden_call_from_a_thread() {
    // kill: SIGSYS, nothing after the call ran, and the kernel names the call.
    let out = run_child("kill");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(
        out.status.signal(),
        Some(libc::SIGSYS),
        "kill: {}\n{stdout}",
        out.status
    );
    assert!(!stdout.contains("survived"), "kill: {stdout}");
    let dmesg_readable = Command::new("dmesg")
        .output()
        .is_ok_and(|o| o.status.success());
    if dmesg_readable {
        let pid = stdout
            .lines()
            .find_map(|l| l.split_once("pid ")?.1.trim().parse().ok());
        assert!(pid.is_some(), "kill: the child printed no pid: {stdout}");
        let line = kernel_log_line(pid, libc::SYS_socket);
        assert!(
            line.as_deref().is_some_and(|l| l.contains("sig=31")),
            "no kernel log line for the killed call of pid {pid:?}: {line:?}"
        );
    }

    // trap: zerodax's own line with the call's number, then SIGSYS.
    let out = run_child("trap");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(
        out.status.signal(),
        Some(libc::SIGSYS),
        "trap: {}",
        out.status
    );
    assert!(
        stderr.contains(&format!(
            "zerodax serve: seccomp: refused system call {} (--seccomp trap)",
            libc::SYS_socket
        )),
        "trap: {stderr}"
    );

    // log: the call goes through.
    let out = run_child("log");
    assert!(out.status.success(), "log: {}", out.status);
    assert!(String::from_utf8_lossy(&out.stdout).contains("survived"));
}
