//! `serve --syslog`: log lines go to the local syslog socket (/dev/log) instead of stderr, one
//! datagram per line in the BSD format (`<PRI>zerodax[PID]: message`); syslog adds the time.
//! The socket is connected at start, before the sandbox hides /dev/log, and written with
//! send(2), which the seccomp allowlist permits.

use std::io;
use std::os::unix::net::UnixDatagram;
use std::sync::Arc;

use tracing::{Level, Metadata};
use tracing_subscriber::fmt::MakeWriter;

/// Where the lines go: a datagram socket connected to /dev/log.
#[derive(Clone)]
pub struct Syslog {
    sock: Arc<UnixDatagram>,
    pid: u32,
}

impl Syslog {
    /// Connects to the local syslog socket.
    pub fn connect() -> io::Result<Self> {
        let sock = UnixDatagram::unbound()?;
        sock.connect("/dev/log")?;
        Ok(Syslog {
            sock: Arc::new(sock),
            pid: std::process::id(),
        })
    }
}

/// One log line being formatted; sent as one datagram when dropped.
pub struct Line {
    syslog: Syslog,
    priority: u8,
    buf: Vec<u8>,
}

impl io::Write for Line {
    fn write(&mut self, data: &[u8]) -> io::Result<usize> {
        self.buf.extend_from_slice(data);
        Ok(data.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl Drop for Line {
    fn drop(&mut self) {
        let text = String::from_utf8_lossy(&self.buf);
        let text = text.trim_end();
        if text.is_empty() {
            return;
        }
        let msg = format!("<{}>zerodax[{}]: {text}", self.priority, self.syslog.pid);
        // A full or absent syslog must not stop serving: the line is lost.
        let _ = self.syslog.sock.send(msg.as_bytes());
    }
}

/// Facility daemon (3), severity from the event's level.
fn priority(level: &Level) -> u8 {
    let severity = match *level {
        Level::ERROR => 3,
        Level::WARN => 4,
        Level::INFO => 6,
        Level::DEBUG | Level::TRACE => 7,
    };
    3 * 8 + severity
}

impl<'a> MakeWriter<'a> for Syslog {
    type Writer = Line;

    fn make_writer(&'a self) -> Line {
        Line {
            syslog: self.clone(),
            priority: priority(&Level::INFO),
            buf: Vec::new(),
        }
    }

    fn make_writer_for(&'a self, meta: &Metadata<'_>) -> Line {
        Line {
            syslog: self.clone(),
            priority: priority(meta.level()),
            buf: Vec::new(),
        }
    }
}
