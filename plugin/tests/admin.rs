//! `tierkv-admin` removes a store's files (host arena and disk directory), never
//! while a live process is attached, and lists stores.

use std::process::Command;

use tierkv::config::Config;
use tierkv::tier::HostTier;

fn admin(args: &[&str], shm: &std::path::Path) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_tierkv-admin"))
        .args(args)
        .arg("--shm-dir")
        .arg(shm)
        .output()
        .unwrap()
}

#[test]
fn tierkv_admin_removes_a_store_only_when_nobody_uses_it() {
    let d = tempfile::tempdir().unwrap();
    let cfg = Config {
        cpu_bytes: 1 << 20,
        shm_dir: d.path().to_path_buf(),
        store_name: "ops".into(),
        ..Config::default()
    };
    let t = HostTier::open(&cfg.host_settings(), 4096, 16).unwrap();
    let arena = d.path().join("tierkv-ops.arena");
    std::fs::write(d.path().join("tierkv-ops.g3dir"), b"").unwrap();
    let ls = admin(&["ls"], d.path());
    let text = String::from_utf8_lossy(&ls.stdout);
    assert!(
        text.lines().any(|l| l.starts_with("ops ") && l.ends_with("yes")),
        "{text}"
    );
    let busy = admin(&["rm", "ops"], d.path());
    assert!(!busy.status.success());
    assert!(String::from_utf8_lossy(&busy.stderr).contains("in use"));
    assert!(arena.exists());
    drop(t);
    let rm = admin(&["rm", "ops"], d.path());
    assert!(rm.status.success(), "{}", String::from_utf8_lossy(&rm.stderr));
    assert!(!arena.exists());
    assert!(!d.path().join("tierkv-ops.g3dir").exists());
    assert!(
        !admin(&["rm", "ops"], d.path()).status.success(),
        "nothing left to remove"
    );
}
