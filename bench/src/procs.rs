//! Child processes of a scenario: kill-on-drop guards, readiness, health.
//!
//! A [`ChildGuard`] owns a spawned process and kills and reaps it when
//! dropped, so an early return or a panic never leaves a mock or a gateway
//! running. A [`TempFile`] removes its file the same way.

use std::ffi::OsStr;
use std::io::{BufRead as _, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};

use crate::client::{Target, probe};

/// Lines of a child's log shown when it fails to start.
const LOG_TAIL_LINES: usize = 30;

/// A running child process, killed and reaped on drop.
#[derive(Debug)]
pub struct ChildGuard {
    name: String,
    child: Child,
    log: Option<PathBuf>,
}

impl ChildGuard {
    /// Spawns `cmd`, naming it `name` in messages; `log`, if any, is where
    /// its stderr goes (shown when it dies early).
    pub fn spawn(name: &str, cmd: &mut Command, log: Option<PathBuf>) -> anyhow::Result<Self> {
        let child = cmd
            .spawn()
            .with_context(|| format!("cannot start {name} ({:?})", cmd.get_program()))?;
        Ok(Self {
            name: name.to_owned(),
            child,
            log,
        })
    }

    /// The exit status, if the process has already ended.
    pub fn exited(&mut self) -> Option<ExitStatus> {
        self.child.try_wait().ok().flatten()
    }

    /// An error saying that the child ended, with the end of its log.
    fn died(&self, status: ExitStatus) -> anyhow::Error {
        let tail = self.log.as_deref().map(log_tail).unwrap_or_default();
        anyhow::anyhow!("{} exited early ({status}){tail}", self.name)
    }

    /// Reads the child's stdout until a `listening on ADDR` line and returns
    /// ADDR; the rest of its stdout keeps being drained in the background.
    pub fn wait_announced(&mut self, timeout: Duration) -> anyhow::Result<SocketAddr> {
        let stdout = self
            .child
            .stdout
            .take()
            .with_context(|| format!("{}: stdout is not piped", self.name))?;
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            let mut tx = Some(tx);
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if let Some(addr) = line.trim().strip_prefix("listening on ")
                    && let Some(tx) = tx.take()
                {
                    let _ = tx.send(addr.to_owned());
                }
            }
        });
        let deadline = Instant::now() + timeout;
        loop {
            match rx.recv_timeout(Duration::from_millis(50)) {
                Ok(addr) => {
                    return addr.parse().with_context(|| {
                        format!("{} announced a bad address {addr:?}", self.name)
                    });
                }
                Err(mpsc::RecvTimeoutError::Disconnected) => {
                    let status = self.child.wait()?;
                    return Err(self.died(status));
                }
                Err(mpsc::RecvTimeoutError::Timeout) => {}
            }
            if let Some(status) = self.exited() {
                return Err(self.died(status));
            }
            if Instant::now() >= deadline {
                bail!(
                    "{} did not print `listening on ADDR` within {timeout:?}",
                    self.name
                );
            }
        }
    }

    /// Polls `GET health` until it answers 200, the child dies, or `timeout`.
    pub async fn wait_healthy(&mut self, health: &Target, timeout: Duration) -> anyhow::Result<()> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.exited() {
                return Err(self.died(status));
            }
            let last = match probe(health, Duration::from_secs(1)).await {
                Ok((status, _)) if status.is_success() => return Ok(()),
                Ok((status, body)) => format!("HTTP {status}: {}", String::from_utf8_lossy(&body)),
                Err(err) => format!("{err:#}"),
            };
            if Instant::now() >= deadline {
                let tail = self.log.as_deref().map(log_tail).unwrap_or_default();
                bail!(
                    "{} not healthy at {} within {timeout:?} (last: {last}){tail}",
                    self.name,
                    health.url
                );
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

impl Drop for ChildGuard {
    fn drop(&mut self) {
        if self.exited().is_none() {
            let _ = self.child.kill();
        }
        let _ = self.child.wait();
    }
}

/// The last lines of a log file, formatted to follow an error message.
fn log_tail(path: &Path) -> String {
    let Ok(text) = std::fs::read_to_string(path) else {
        return String::new();
    };
    let lines: Vec<&str> = text.lines().collect();
    let tail = &lines[lines.len().saturating_sub(LOG_TAIL_LINES)..];
    if tail.is_empty() {
        format!("; its log {} is empty", path.display())
    } else {
        format!("; end of its log {}:\n{}", path.display(), tail.join("\n"))
    }
}

/// A file that is removed on drop.
#[derive(Debug)]
pub struct TempFile {
    path: PathBuf,
}

impl TempFile {
    /// A path in the system's temporary directory, unique to this process.
    pub fn new(name: &str) -> Self {
        let file = format!("aigw-bench-{}-{name}", std::process::id());
        Self {
            path: std::env::temp_dir().join(file),
        }
    }

    /// Where the file is.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for TempFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

/// A port on 127.0.0.1 that was free a moment ago (bound, then released).
pub fn free_port() -> std::io::Result<u16> {
    let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
    Ok(listener.local_addr()?.port())
}

/// Spawns the gateway binary `aigw` with `args` and extra `env` variables;
/// its stdout and stderr go to `log` (shown if it dies early).
pub fn spawn_aigw<S: AsRef<OsStr>>(
    aigw: &Path,
    args: &[S],
    env: &[(&str, String)],
    log: &TempFile,
) -> anyhow::Result<ChildGuard> {
    let log_file = std::fs::File::create(log.path())
        .with_context(|| format!("cannot create {}", log.path().display()))?;
    let mut cmd = Command::new(aigw);
    cmd.args(args)
        .envs(env.iter().map(|(k, v)| (k, v)))
        .stdin(Stdio::null())
        .stdout(log_file.try_clone()?)
        .stderr(log_file);
    ChildGuard::spawn("aigw gateway", &mut cmd, Some(log.path().to_owned()))
}

/// Spawns this executable as `mock-upstream` on an ephemeral port with
/// `threads` runtime threads and returns it with its address.
pub fn spawn_mock(threads: usize) -> anyhow::Result<(ChildGuard, SocketAddr)> {
    let exe = std::env::current_exe().context("cannot locate the aigw-bench executable")?;
    let mut cmd = Command::new(exe);
    cmd.args(["mock-upstream", "--listen", "127.0.0.1:0", "--threads"])
        .arg(threads.to_string())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit());
    let mut guard = ChildGuard::spawn("mock-upstream", &mut cmd, None)?;
    let addr = guard.wait_announced(Duration::from_secs(10))?;
    Ok((guard, addr))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn guard_kills_on_drop() {
        let mut cmd = Command::new("sleep");
        cmd.arg("30");
        let mut guard = ChildGuard::spawn("sleep", &mut cmd, None).unwrap();
        assert!(guard.exited().is_none());
        let pid = guard.child.id();
        drop(guard);
        // Reaped: the pid no longer names our child.
        assert!(
            !Path::new(&format!("/proc/{pid}/cmdline")).exists()
                || std::fs::read_to_string(format!("/proc/{pid}/cmdline")).unwrap_or_default()
                    != "sleep\x0030\x00"
        );
    }

    #[test]
    fn announced_address_is_read() {
        let mut cmd = Command::new("sh");
        cmd.args(["-c", "echo 'listening on 127.0.0.1:4321'; exec sleep 30"])
            .stdout(Stdio::piped());
        let mut guard = ChildGuard::spawn("sh", &mut cmd, None).unwrap();
        let addr = guard.wait_announced(Duration::from_secs(5)).unwrap();
        assert_eq!(addr, "127.0.0.1:4321".parse().unwrap());
    }

    #[test]
    fn early_exit_is_reported_with_log() {
        let log = TempFile::new("test-early-exit.log");
        std::fs::write(log.path(), "boom: bad config\n").unwrap();
        let mut cmd = Command::new("sh");
        cmd.args(["-c", "exit 3"]).stdout(Stdio::piped());
        let mut guard = ChildGuard::spawn("gw", &mut cmd, Some(log.path().to_owned())).unwrap();
        let err = guard
            .wait_announced(Duration::from_secs(5))
            .unwrap_err()
            .to_string();
        assert!(err.contains("gw exited early"), "{err}");
        assert!(err.contains("boom: bad config"), "{err}");
    }

    #[test]
    fn temp_file_is_removed() {
        let f = TempFile::new("test-remove");
        std::fs::write(f.path(), "x").unwrap();
        let path = f.path().to_owned();
        drop(f);
        assert!(!path.exists());
    }
}
