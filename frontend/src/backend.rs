//! Backends as child processes: a small description of how to start one on a socket and a
//! shared directory, and a guard that kills and reaps it however the caller ends.

use std::fmt;
use std::fs::File;
use std::io;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use protocol::Opcode;

/// Errors of starting or stopping a backend.
#[derive(Debug)]
pub enum BackendError {
    /// The program could not be started.
    Spawn {
        /// Backend name.
        name: String,
        /// The error.
        error: io::Error,
    },
    /// The socket did not appear in time.
    NoSocket {
        /// Backend name.
        name: String,
        /// Exit status if the backend already died.
        exited: Option<ExitStatus>,
    },
    /// Waiting for or signalling the child failed.
    Wait(io::Error),
}

impl fmt::Display for BackendError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            BackendError::Spawn { name, error } => write!(f, "starting {name}: {error}"),
            BackendError::NoSocket { name, exited } => match exited {
                Some(s) => write!(f, "{name} exited ({s}) before creating its socket"),
                None => write!(f, "{name} did not create its socket in time"),
            },
            BackendError::Wait(e) => write!(f, "waiting for backend: {e}"),
        }
    }
}

impl std::error::Error for BackendError {}

/// How to start a vhost-user-fs backend: a program and its arguments, where `{socket}`
/// and `{dir}` stand for the socket path and the shared directory.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BackendSpec {
    /// Short name for logs and selection (`c-virtiofsd`, `virtiofsd`, `zerodax`).
    pub name: String,
    /// Program to run.
    pub program: PathBuf,
    /// Arguments, with `{socket}` and `{dir}` placeholders.
    pub args: Vec<String>,
    /// Opcodes this backend is known to answer with ENOSYS, or not at all. Tests accept
    /// that from this backend and from no other, so a gap in zerodax still fails them.
    pub known_gaps: Vec<Opcode>,
    /// Opcodes that make this backend crash or wedge; tests do not send them to it.
    pub fatal: Vec<Opcode>,
    /// Malformed-input cases (by name) this backend is known to fail: reported, not
    /// failed, so that the reference's weaknesses do not hide zerodax's.
    pub tolerated_malformed: Vec<String>,
}

fn args(list: &[&str]) -> Vec<String> {
    list.iter().map(|s| s.to_string()).collect()
}

fn names(list: &[&str]) -> Vec<String> {
    args(list)
}

impl BackendSpec {
    /// QEMU's C virtiofsd (package qemu-system-common).
    pub fn c_virtiofsd(program: impl Into<PathBuf>) -> Self {
        Self {
            name: "c-virtiofsd".into(),
            program: program.into(),
            args: args(&[
                "--socket-path={socket}",
                "-o",
                "source={dir}",
                "-o",
                "cache=auto",
                "-o",
                "sandbox=chroot",
                "-o",
                "xattr",
            ]),
            // QEMU 7.2's virtiofsd answers ACCESS with ENOSYS.
            known_gaps: vec![Opcode::Access],
            // It returns no chain for INTERRUPT, then answers the INTERRUPT with EAGAIN
            // from the next request's thread and dies; after CUSE_INIT every request gets
            // EIO. Virtio-fs guests send neither.
            fatal: vec![Opcode::Interrupt, Opcode::CuseInit],
            // Measured with this crate's malformed-input suite (tests/malformed.rs):
            // libvhost-user exits on any descriptor it cannot map or follow, and a lying
            // header len is not checked.
            tolerated_malformed: names(&[
                "header len larger than the request",
                "header len smaller than the header",
                "request shorter than a header",
                "request buffer outside guest RAM",
                "request buffer below guest RAM",
                "request buffer straddles the end of guest RAM",
                "reply buffer outside guest RAM",
                "descriptor length past the end of guest RAM",
                "readable descriptor after a writable one",
                "next index past the descriptor table",
                "head index past the descriptor table",
                "descriptor chain loops",
                "zero-length descriptor in the chain",
                "indirect descriptor without the feature",
                "indirect table length not a multiple of 16",
                "empty indirect table",
                "indirect table outside guest RAM",
                "indirect table inside an indirect table",
                "indirect table chain loops",
                "indirect table next index past the table",
                "buffer in an indirect table outside guest RAM",
            ]),
        }
    }

    /// The Rust virtiofsd (1.x).
    pub fn rust_virtiofsd(program: impl Into<PathBuf>) -> Self {
        Self {
            name: "virtiofsd".into(),
            program: program.into(),
            args: args(&[
                "--socket-path",
                "{socket}",
                "--shared-dir",
                "{dir}",
                "--cache",
                "auto",
                "--sandbox",
                "none",
                "--xattr",
            ]),
            // virtiofsd 1.14 returns DESTROY's chain without writing a reply.
            known_gaps: vec![Opcode::Destroy],
            fatal: vec![],
            // Measured with this crate's malformed-input suite (tests/malformed.rs): most
            // malformed chains and several malformed requests end the daemon.
            tolerated_malformed: names(&[
                "header len larger than the request",
                "header len smaller than the header",
                "header len cuts the name",
                "name without NUL",
                "setattr arguments truncated",
                "request shorter than a header",
                "no reply room",
                "reply room smaller than the out header",
                "reply room smaller than the reply",
                "request buffer outside guest RAM",
                "request buffer below guest RAM",
                "request buffer straddles the end of guest RAM",
                "reply buffer outside guest RAM",
                "descriptor length past the end of guest RAM",
                "request descriptor marked device-writable",
                "reply descriptors marked device-readable",
                "readable descriptor after a writable one",
                "next index past the descriptor table",
                "head index past the descriptor table",
                "descriptor chain loops",
                "indirect descriptor without the feature",
                "indirect table length not a multiple of 16",
                "empty indirect table",
                "indirect table outside guest RAM",
                "indirect table inside an indirect table",
                "indirect table chain loops",
                "indirect table next index past the table",
                "buffer in an indirect table outside guest RAM",
            ]),
        }
    }

    /// `zerodax serve`.
    pub fn zerodax(program: impl Into<PathBuf>) -> Self {
        Self {
            name: "zerodax".into(),
            program: program.into(),
            // Extended attributes on, as the virtiofsds here are run.
            args: args(&[
                "serve",
                "--socket-path",
                "{socket}",
                "--shared-dir",
                "{dir}",
                "--xattr",
            ]),
            known_gaps: vec![],
            fatal: vec![],
            tolerated_malformed: vec![],
        }
    }

    /// Whether tests accept ENOSYS or no reply for `op` from this backend.
    pub fn tolerates_gap(&self, op: Opcode) -> bool {
        self.known_gaps.contains(&op)
    }

    /// The arguments with the placeholders filled in.
    pub fn render(&self, socket: &Path, dir: &Path) -> Vec<String> {
        self.args
            .iter()
            .map(|a| {
                a.replace("{socket}", &socket.to_string_lossy())
                    .replace("{dir}", &dir.to_string_lossy())
            })
            .collect()
    }

    /// Starts the backend; its stdout and stderr go to `log`. Returns once the socket
    /// exists (or fails if the backend dies or `timeout` passes first).
    pub fn spawn(
        &self,
        socket: &Path,
        dir: &Path,
        log: &Path,
        timeout: Duration,
    ) -> Result<BackendChild, BackendError> {
        let spawn_err = |error| BackendError::Spawn {
            name: self.name.clone(),
            error,
        };
        let out = File::create(log).map_err(spawn_err)?;
        let err = out.try_clone().map_err(spawn_err)?;
        let child = Command::new(&self.program)
            .args(self.render(socket, dir))
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .spawn()
            .map_err(spawn_err)?;
        let mut guard = BackendChild {
            name: self.name.clone(),
            child: Some(child),
            log: log.to_path_buf(),
        };
        let deadline = Instant::now() + timeout;
        while !socket.exists() {
            if let Some(status) = guard.try_exit()? {
                return Err(BackendError::NoSocket {
                    name: self.name.clone(),
                    exited: Some(status),
                });
            }
            if Instant::now() >= deadline {
                return Err(BackendError::NoSocket {
                    name: self.name.clone(),
                    exited: None,
                });
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        Ok(guard)
    }
}

/// A running backend. Dropping it kills (SIGKILL) and reaps the process.
#[derive(Debug)]
pub struct BackendChild {
    name: String,
    child: Option<Child>,
    log: PathBuf,
}

impl BackendChild {
    /// The backend's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The process id, while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(|c| c.id())
    }

    /// The process that serves, while it runs: the only child of the backend when it has
    /// one (`zerodax serve --sandbox namespace` serves from a child in a PID namespace of
    /// its own, its parent only supervising), else the backend itself.
    pub fn serving_pid(&self) -> Option<u32> {
        let pid = self.pid()?;
        let children =
            std::fs::read_to_string(format!("/proc/{pid}/task/{pid}/children")).unwrap_or_default();
        Some(
            children
                .split_whitespace()
                .next()
                .and_then(|c| c.parse().ok())
                .unwrap_or(pid),
        )
    }

    /// The exit status if the process has ended.
    pub fn try_exit(&mut self) -> Result<Option<ExitStatus>, BackendError> {
        match self.child.as_mut() {
            Some(c) => c.try_wait().map_err(BackendError::Wait),
            None => Ok(None),
        }
    }

    /// Waits up to `timeout` for the process to end by itself (after a disconnect);
    /// `None` if it is still running.
    pub fn wait_exit(&mut self, timeout: Duration) -> Result<Option<ExitStatus>, BackendError> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(s) = self.try_exit()? {
                return Ok(Some(s));
            }
            if Instant::now() >= deadline {
                return Ok(None);
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// The backend's output so far (for failure messages).
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// The last `max` bytes of the backend's output.
    pub fn log_tail(&self, max: usize) -> String {
        let log = self.log();
        let mut start = log.len().saturating_sub(max);
        while !log.is_char_boundary(start) {
            start += 1;
        }
        log[start..].to_string()
    }

    /// Kills and reaps the process.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            // Already exited is fine: kill fails with InvalidInput and wait reaps it.
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Drop for BackendChild {
    fn drop(&mut self) {
        self.kill();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn placeholders_are_filled() {
        let s = BackendSpec::zerodax("/bin/zerodax");
        assert_eq!(
            s.render(Path::new("/t/s.sock"), Path::new("/t/dir")),
            [
                "serve",
                "--socket-path",
                "/t/s.sock",
                "--shared-dir",
                "/t/dir",
                "--xattr"
            ]
        );
        let c = BackendSpec::c_virtiofsd("/usr/lib/qemu/virtiofsd");
        assert_eq!(
            c.render(Path::new("/s"), Path::new("/d"))[..3],
            ["--socket-path=/s", "-o", "source=/d"]
        );
    }

    #[test]
    fn a_backend_that_dies_is_reported_not_waited_for() {
        let dir = std::env::temp_dir().join(format!("zdfe-spawn-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let spec = BackendSpec {
            name: "false".into(),
            program: "/bin/false".into(),
            args: vec![],
            known_gaps: vec![],
            fatal: vec![],
            tolerated_malformed: vec![],
        };
        let r = spec.spawn(
            &dir.join("never.sock"),
            &dir,
            &dir.join("log"),
            Duration::from_secs(10),
        );
        assert!(matches!(
            r,
            Err(BackendError::NoSocket {
                exited: Some(_),
                ..
            })
        ));
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
