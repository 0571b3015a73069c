//! Test support: a throwaway `redis-server` on a free loopback port, for this crate's tests
//! and the gateway's.
//!
//! Without a `redis-server` binary, [`RedisServer::start`] prints a note and returns `None`
//! (the test skips), unless `AIGW_REQUIRE_TEST_TOOLS=1` (CI), where it panics.

use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// Longest a server may take to come up.
const START_BOUND: Duration = Duration::from_secs(5);

/// A `redis-server` child on a loopback port with its own empty directory (no snapshots, no
/// append-only file); killed, and its directory removed, on drop.
#[derive(Debug)]
pub struct RedisServer {
    binary: PathBuf,
    port: u16,
    dir: PathBuf,
    child: Option<Child>,
}

impl RedisServer {
    /// A fresh server, or `None` (after a note) when `redis-server` is not installed.
    ///
    /// # Panics
    /// When the server is missing and `AIGW_REQUIRE_TEST_TOOLS=1`, or it does not start.
    #[allow(
        clippy::expect_used,
        reason = "test support: a failure is the test's output"
    )]
    pub fn start() -> Option<Self> {
        let Some(binary) = find_redis_server() else {
            let required = std::env::var("AIGW_REQUIRE_TEST_TOOLS").is_ok_and(|v| v == "1");
            assert!(
                !required,
                "redis-server not found, and AIGW_REQUIRE_TEST_TOOLS=1 (scripts/setup --test installs it)"
            );
            eprintln!("note: redis-server not found; skipping this Redis test");
            return None;
        };
        let port = TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("a free port")
            .port();
        static NEXT: AtomicU64 = AtomicU64::new(0);
        let dir = std::env::temp_dir().join(format!(
            "aigw-redis-{}-{}-{}",
            std::process::id(),
            port,
            NEXT.fetch_add(1, Ordering::Relaxed)
        ));
        std::fs::create_dir_all(&dir).expect("a temp dir");
        let mut server = Self {
            binary,
            port,
            dir,
            child: None,
        };
        server.restart();
        Some(server)
    }

    /// `redis://127.0.0.1:PORT/`.
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/", self.port)
    }

    /// The server's port.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// Starts the server (again) on the same port, empty, and waits until it answers.
    ///
    /// # Panics
    /// When it is already running or does not come up.
    #[allow(
        clippy::expect_used,
        reason = "test support: a failure is the test's output"
    )]
    pub fn restart(&mut self) {
        assert!(self.child.is_none(), "already running");
        let child = Command::new(&self.binary)
            .args(["--port", &self.port.to_string(), "--bind", "127.0.0.1"])
            .arg("--dir")
            .arg(&self.dir)
            .args(["--save", "", "--appendonly", "no", "--loglevel", "warning"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("redis-server starts");
        self.child = Some(child);
        let deadline = Instant::now() + START_BOUND;
        while !answers_ping(self.port) {
            assert!(Instant::now() < deadline, "redis-server did not come up");
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// SIGKILLs the server.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Sends `signal` (`STOP`, `CONT`) to the server.
    ///
    /// # Panics
    /// When the server is not running or `kill` fails.
    #[allow(
        clippy::expect_used,
        reason = "test support: a failure is the test's output"
    )]
    pub fn signal(&self, signal: &str) {
        let pid = self.child.as_ref().expect("running").id();
        let status = Command::new("kill")
            .arg(format!("-{signal}"))
            .arg(pid.to_string())
            .status()
            .expect("kill runs");
        assert!(status.success(), "kill -{signal} {pid}");
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.kill();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn find_redis_server() -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain([PathBuf::from("/usr/bin"), PathBuf::from("/usr/sbin")])
        .map(|dir| dir.join("redis-server"))
        .find(|p| is_executable(p))
}

fn is_executable(p: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    p.metadata()
        .is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}

fn answers_ping(port: u16) -> bool {
    use std::io::{Read, Write};
    let Ok(mut s) = TcpStream::connect(("127.0.0.1", port)) else {
        return false;
    };
    let _ = s.set_read_timeout(Some(Duration::from_millis(200)));
    let mut buf = [0u8; 7];
    s.write_all(b"PING\r\n").is_ok() && s.read_exact(&mut buf).is_ok() && &buf == b"+PONG\r\n"
}
