//! etxtbsy: the guest suite's probe of pjdfstest's flaky `open::etxtbsy` (docs/guest-suite.md).
//! Built static by prepare.sh; run in the guest by `run.sh --scenarios etxtbsy`.
//!
//!   etxtbsy DIR ROUNDS
//!
//! Each round copies /bin/sleep into DIR, runs the copy, and opens it with O_WRONLY, O_RDWR and
//! O_RDONLY|O_TRUNC, each of which must fail with ETXTBSY while it runs; then kills it and looks at
//! how it died and whether the file is still whole. Exit 0 when every open failed with ETXTBSY and
//! no copy was truncated, 1 otherwise, 2 on errors.

use std::collections::BTreeMap;
use std::ffi::{c_char, c_int, CString};
use std::fs::{self, File, Permissions};
use std::io;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::ExitStatusExt;
use std::process::{Command, ExitCode};

const O_RDONLY: c_int = 0;
const O_WRONLY: c_int = 1;
const O_RDWR: c_int = 2;
const O_TRUNC: c_int = 0o1000;
const O_CLOEXEC: c_int = 0o2000000;
const ETXTBSY: i32 = 26;

extern "C" {
    fn open(path: *const c_char, flags: c_int, ...) -> c_int;
    fn close(fd: c_int) -> c_int;
}

const OPENS: [(&str, c_int); 3] = [
    ("O_WRONLY", O_WRONLY),
    ("O_RDWR", O_RDWR),
    ("O_RDONLY|O_TRUNC", O_RDONLY | O_TRUNC),
];

/// open(2) with `flags`; the descriptor, if any, is closed at once.
fn try_open(path: &CString, flags: c_int) -> io::Result<()> {
    // SAFETY: `path` is a valid NUL-terminated string; no mode argument is needed without O_CREAT.
    let fd = unsafe { open(path.as_ptr(), flags | O_CLOEXEC) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `fd` was just returned by open and is closed exactly once.
    unsafe { close(fd) };
    Ok(())
}

fn run(dir: &str, rounds: usize) -> io::Result<bool> {
    let size = fs::metadata("/bin/sleep")?.len();
    let mut opened = [0usize; 3];
    let mut truncated = 0;
    let mut deaths: BTreeMap<i32, usize> = BTreeMap::new();
    for round in 0..rounds {
        let path = format!("{dir}/sleep-{round}");
        // As pjdfstest does: std::io::copy (copy_file_range where the file system has it).
        io::copy(&mut File::open("/bin/sleep")?, &mut File::create(&path)?)?;
        fs::set_permissions(&path, Permissions::from_mode(0o755))?;
        let cpath = CString::new(path.clone()).expect("no NUL in a path we made");
        let mut child = Command::new(&path).arg("10").spawn()?;
        for (i, (name, flags)) in OPENS.iter().enumerate() {
            match try_open(&cpath, *flags) {
                Ok(()) => {
                    opened[i] += 1;
                    println!("round {round}: open({name}) succeeded on the running binary");
                }
                Err(e) if e.raw_os_error() == Some(ETXTBSY) => {}
                Err(e) => println!("round {round}: open({name}): {e} instead of ETXTBSY"),
            }
        }
        // Kill it unless it already died; either way, record the signal that ended it.
        let _ = child.kill();
        let status = child.wait()?;
        *deaths.entry(status.signal().unwrap_or(0)).or_default() += 1;
        if fs::metadata(&path)?.len() != size {
            truncated += 1;
        }
        fs::remove_file(&path)?;
    }
    let counts: Vec<String> = OPENS
        .iter()
        .zip(opened)
        .map(|((name, _), n)| format!("{name} {n}"))
        .collect();
    let signals: Vec<String> = deaths
        .iter()
        .map(|(s, n)| format!("signal {s}: {n}"))
        .collect();
    println!(
        "etxtbsy: {rounds} rounds; opens that succeeded: {}; binary truncated in {truncated}; \
         the child ended by {}",
        counts.join(", "),
        signals.join(", ")
    );
    Ok(opened.iter().all(|&n| n == 0) && truncated == 0)
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let (Some(dir), Some(Ok(rounds))) = (args.first(), args.get(1).map(|n| n.parse::<usize>()))
    else {
        eprintln!("usage: etxtbsy DIR ROUNDS");
        return ExitCode::from(2);
    };
    match run(dir, rounds) {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::from(1),
        Err(e) => {
            println!("etxtbsy: {e}");
            ExitCode::from(2)
        }
    }
}
