//! Helpers shared by the tiers' unit tests.

use std::path::{Path, PathBuf};
use std::process::Command;

/// `len` bytes that are a function of `key` alone (xorshift), so any mix-up of
/// blocks shows as wrong bytes.
pub(crate) fn pattern(key: u128, len: usize) -> Vec<u8> {
    let mut x = key as u64 ^ (key >> 64) as u64 ^ 0x9e37_79b9_7f4a_7c15;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

/// Whether the tests run as root (needed to give a file to another uid).
pub(crate) fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

/// A Redis cluster (or server) of the test's own, started by
/// `scripts/redis-cluster.sh`, stopped on drop. Tests skip without a server
/// binary unless `TIERKV_REQUIRE_REDIS=1`.
pub(crate) struct RedisStore {
    dir: tempfile::TempDir,
    /// The URL the script printed.
    pub url: String,
}

fn script() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../scripts/redis-cluster.sh")
}

fn have_server() -> bool {
    ["redis-server", "valkey-server"].iter().any(|b| {
        Command::new("sh")
            .args(["-c", &format!("command -v {b}")])
            .output()
            .is_ok_and(|o| o.status.success())
    })
}

impl RedisStore {
    /// `mode` is `cluster` or `standalone`; `None` (skip) without a server.
    pub fn start(mode: &str) -> Option<Self> {
        Self::start_with(mode, &[])
    }

    /// [`RedisStore::start`] with more of the script's settings (`TIERKV_REDIS_*`).
    pub fn start_with(mode: &str, env: &[(&str, &str)]) -> Option<Self> {
        if !have_server() {
            assert!(
                std::env::var("TIERKV_REQUIRE_REDIS").as_deref() != Ok("1"),
                "TIERKV_REQUIRE_REDIS=1 but no redis-server (apt-get install redis-server)"
            );
            eprintln!("skipped: no redis-server on PATH");
            return None;
        }
        let dir = tempfile::tempdir().unwrap();
        let out = Command::new(script())
            .args(["start", dir.path().join("r").to_str().unwrap()])
            .env("TIERKV_REDIS_MODE", mode)
            .env("TIERKV_REDIS_MAXMEMORY", "64mb")
            .envs(env.iter().copied())
            .output()
            .unwrap();
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        let url = String::from_utf8(out.stdout)
            .unwrap()
            .lines()
            .last()
            .unwrap()
            .to_string();
        Some(Self { dir, url })
    }

    pub fn node_dir(&self) -> PathBuf {
        self.dir.path().join("r")
    }

    pub fn ports(&self) -> Vec<u16> {
        std::fs::read_to_string(self.node_dir().join("ports"))
            .unwrap()
            .split_whitespace()
            .map(|p| p.parse().unwrap())
            .collect()
    }

    pub fn pid(&self, port: u16) -> i32 {
        let p = self.node_dir().join(port.to_string()).join("redis.pid");
        std::fs::read_to_string(p).unwrap().trim().parse().unwrap()
    }

    pub fn signal(&self, port: u16, sig: i32) {
        // SAFETY: kill has no memory preconditions; the pid is our server's.
        assert_eq!(unsafe { libc::kill(self.pid(port), sig) }, 0);
    }

    /// `redis-cli -c` against the first node (follows redirections).
    pub fn cli(&self, args: &[&str]) -> String {
        let out = Command::new("redis-cli")
            .args(["-c", "-p", &self.ports()[0].to_string()])
            .args(args)
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    }
}

impl Drop for RedisStore {
    fn drop(&mut self) {
        let _ = Command::new(script())
            .args(["stop", self.node_dir().to_str().unwrap()])
            .status();
    }
}
