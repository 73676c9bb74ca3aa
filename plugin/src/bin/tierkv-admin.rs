//! `tierkv-admin`: list and remove tierkv stores.
//!
//! Usage:
//! - `tierkv-admin ls [--shm-dir DIR]`: every store in the shared-memory directory
//!   (default `$TIERKV_SHM_DIR` or `/dev/shm`), its owner, size and whether a live
//!   process is attached.
//! - `tierkv-admin rm STORE [--shm-dir DIR] [--disk-path DIR] [--force]`: removes the
//!   store's host arena and disk directory (and its disk file with `--disk-path`);
//!   refuses while a process is attached unless `--force`.

use std::path::PathBuf;
use std::process::ExitCode;

use tierkv::tier::store;

const USAGE: &str =
    "usage: tierkv-admin ls [--shm-dir DIR]\n       tierkv-admin rm STORE [--shm-dir DIR] [--disk-path DIR] [--force]";

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let mut shm = std::env::var_os("TIERKV_SHM_DIR").map_or_else(|| PathBuf::from("/dev/shm"), PathBuf::from);
    let mut disk = std::env::var_os("TIERKV_DISK_PATH").map(PathBuf::from);
    let (mut force, mut words) = (false, Vec::new());
    let mut it = args.iter();
    while let Some(a) = it.next() {
        match a.as_str() {
            "--shm-dir" => shm = it.next().map(PathBuf::from).unwrap_or_default(),
            "--disk-path" => disk = it.next().map(PathBuf::from),
            "--force" => force = true,
            "-h" | "--help" => {
                println!("{USAGE}");
                return ExitCode::SUCCESS;
            }
            w => words.push(w.to_string()),
        }
    }
    match words.iter().map(String::as_str).collect::<Vec<_>>().as_slice() {
        ["ls"] => match store::list(&shm) {
            Ok(stores) => {
                println!("{:<40} {:>8} {:>14} in use", "store", "uid", "arena bytes");
                for s in stores {
                    println!(
                        "{:<40} {:>8} {:>14} {}",
                        s.name,
                        s.uid,
                        s.arena_bytes,
                        if s.in_use { "yes" } else { "no" }
                    );
                }
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("{}: {e}", shm.display());
                ExitCode::from(1)
            }
        },
        ["rm", name] => match store::remove(&shm, name, disk.as_deref(), force) {
            Ok(removed) if removed.is_empty() => {
                eprintln!("no files of store {name} in {}", shm.display());
                ExitCode::from(1)
            }
            Ok(removed) => {
                for f in removed {
                    println!("removed {}", f.display());
                }
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("tierkv-admin: {e}");
                ExitCode::from(1)
            }
        },
        _ => {
            eprintln!("{USAGE}");
            ExitCode::from(2)
        }
    }
}
