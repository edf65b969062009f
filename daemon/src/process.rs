//! Process set-up shared by `zerodax mount` and `zerodax serve`: logging (stderr or
//! syslog), the descriptor limit, and the termination signals a daemon waits for.

use std::io;

use rustix::process::{Resource, Rlimit};

use crate::cli::LogLevel;

/// Logs events up to `level` to stderr (colours on a terminal only).
pub fn init_logging(level: LogLevel) {
    let _ = tracing_subscriber::fmt()
        .with_max_level(level_filter(level))
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .try_init();
}

/// `serve --syslog`: the same events, to the local syslog (no time: syslog adds it).
pub fn init_syslog(level: LogLevel) -> io::Result<()> {
    let syslog = crate::syslog::Syslog::connect()?;
    let _ = tracing_subscriber::fmt()
        .with_max_level(level_filter(level))
        .with_writer(syslog)
        .with_ansi(false)
        .without_time()
        .try_init();
    Ok(())
}

fn level_filter(level: LogLevel) -> tracing_subscriber::filter::LevelFilter {
    use tracing_subscriber::filter::LevelFilter;
    match level {
        LogLevel::Off => LevelFilter::OFF,
        LogLevel::Error => LevelFilter::ERROR,
        LogLevel::Warn => LevelFilter::WARN,
        LogLevel::Info => LevelFilter::INFO,
        LogLevel::Debug => LevelFilter::DEBUG,
        LogLevel::Trace => LevelFilter::TRACE,
    }
}

/// Raise the soft (and if asked, hard) descriptor limit: the inode table keeps one O_PATH
/// descriptor per node the client holds. The error carries the limit that was asked for.
pub fn raise_nofile(want: Option<u64>) -> Result<u64, (u64, io::Error)> {
    // rustix spells RLIM_INFINITY as None.
    let lim = rustix::process::getrlimit(Resource::Nofile);
    let (cur, max) = (
        lim.current.unwrap_or(libc::RLIM_INFINITY),
        lim.maximum.unwrap_or(libc::RLIM_INFINITY),
    );
    let target = match want {
        // 0: leave the limit as it is (virtiofsd's meaning).
        Some(0) => return Ok(cur),
        Some(n) => n,
        None => max,
    };
    let finite = |v: u64| (v != libc::RLIM_INFINITY).then_some(v);
    let new = Rlimit {
        current: finite(target),
        maximum: finite(max.max(target)),
    };
    rustix::process::setrlimit(Resource::Nofile, new).map_err(|e| (target, e.into()))?;
    Ok(target)
}

/// Blocks SIGINT, SIGTERM and SIGHUP in the calling thread and returns that set. Called
/// before any thread exists, so every thread inherits the mask and only the one that waits
/// for the set (sigwait/sigtimedwait) takes them. (libc's: rustix has signal masks only in
/// its hidden, unstable `runtime` module, which is not for processes that also run libc.)
pub fn block_termination_signals() -> io::Result<libc::sigset_t> {
    // SAFETY: sigemptyset/sigaddset initialise and modify a local set; pthread_sigmask reads
    // it and is asked for no old mask.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        libc::sigaddset(&mut set, libc::SIGINT);
        libc::sigaddset(&mut set, libc::SIGTERM);
        // A closed terminal should end the daemon too, not leave a dead mount behind.
        libc::sigaddset(&mut set, libc::SIGHUP);
        match libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut()) {
            0 => Ok(set),
            rc => Err(io::Error::from_raw_os_error(rc)),
        }
    }
}
