//! What a C++ user does: install with `scripts/install-cxx.sh`, compile
//! docs/cxx.md's quick start as written against the prefix, run it; check the
//! pkg-config file; build the CMake example where `cmake` is installed.

use std::path::{Path, PathBuf};
use std::process::Command;

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap().to_path_buf()
}

/// The `n`-th fenced block of `lang` in docs/cxx.md.
fn block(lang: &str, n: usize) -> String {
    let doc = std::fs::read_to_string(root().join("docs/cxx.md")).unwrap();
    let fence = format!("```{lang}\n");
    let start = doc.match_indices(&fence).nth(n).unwrap().0 + fence.len();
    doc[start..start + doc[start..].find("```").unwrap()].to_string()
}

fn run(cmd: &mut Command) -> String {
    let out = cmd.output().unwrap();
    assert!(
        out.status.success(),
        "{cmd:?}: {}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn the_quick_start_compiles_against_an_installed_prefix_and_runs() {
    let tmp = tempfile::tempdir().unwrap();
    let prefix = tmp.path().join("prefix");
    run(Command::new("bash")
        .arg(root().join("scripts/install-cxx.sh"))
        .arg(&prefix)
        .arg("--debug"));
    let main = block("cpp", 0);
    assert!(main.lines().count() <= 20, "the quick start is 20 lines at most");
    let src = tmp.path().join("main.cc");
    std::fs::write(&src, &main).unwrap();
    let exe = tmp.path().join("main");
    run(Command::new("g++")
        .args(["-std=c++17", "-o"])
        .arg(&exe)
        .arg(&src)
        .arg(format!("-I{}", prefix.join("include").display()))
        .arg(prefix.join("lib/libtierkv_cxx.a"))
        .args(["-lpthread", "-ldl", "-lm"]));
    let out = run(Command::new(&exe)
        .env("TIERKV_SHM_DIR", tmp.path())
        .env("TIERKV_STORE_NAME", "cxx-quick-start")
        .env("TIERKV_CPU_BYTES", "4MiB")
        .env_remove("TIERKV_METRICS_ADDR"));
    assert!(out.contains("hits before 0, loaded 1 1"), "{out}");
    assert!(out.contains("error: hashes and block_ids: 1 and 2 entries"), "{out}");

    let pc = std::fs::read_to_string(prefix.join("lib/pkgconfig/tierkv.pc")).unwrap();
    assert!(pc.contains(&format!("prefix={}", prefix.display())) && pc.contains("-ltierkv"));
    if let Ok(o) = Command::new("pkg-config")
        .args(["--cflags", "--libs", "tierkv"])
        .env("PKG_CONFIG_PATH", prefix.join("lib/pkgconfig"))
        .output()
    {
        let flags = String::from_utf8_lossy(&o.stdout);
        assert!(o.status.success() && flags.contains("-ltierkv"), "{flags}");
    }

    if Command::new("cmake").arg("--version").output().is_ok() {
        let proj = tmp.path().join("cmake");
        std::fs::create_dir_all(&proj).unwrap();
        std::fs::write(proj.join("CMakeLists.txt"), block("cmake", 0)).unwrap();
        std::fs::write(proj.join("main.cc"), &main).unwrap();
        let build = proj.join("build");
        run(Command::new("cmake")
            .arg("-S")
            .arg(&proj)
            .arg("-B")
            .arg(&build)
            .arg(format!("-DCMAKE_PREFIX_PATH={}", prefix.display())));
        run(Command::new("cmake").arg("--build").arg(&build));
        let out = run(Command::new(build.join("example"))
            .env("TIERKV_SHM_DIR", tmp.path())
            .env("TIERKV_STORE_NAME", "cxx-cmake")
            .env("TIERKV_CPU_BYTES", "4MiB"));
        assert!(out.contains("loaded 1 1"), "{out}");
    }
}
