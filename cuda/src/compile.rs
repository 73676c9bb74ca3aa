//! Run-time kernel compilation with NVRTC (no CUDA toolkit at build time).
//!
//! Workflow: [`compile_ptx`] checks that NVRTC loads, compiles one [`Kernel`] for
//! one virtual architecture (`compute_80`, `compute_90`, or the device's own) and
//! checks that every entry point made it into the PTX. CI runs it for every kernel
//! and architecture with NVRTC from PyPI's `nvidia-cuda-nvrtc-cu12` wheel
//! (`scripts/nvrtc-env.sh`), so a kernel that does not compile fails CI.

use cudarc::nvrtc::{compile_ptx_with_opts, CompileError, CompileOptions};

use crate::{guard, nvrtc_present, CudaError, Kernel};

/// Compiles `kernel` to PTX for `arch` (e.g. `compute_90`); returns the PTX text.
pub fn compile_ptx(kernel: &Kernel, arch: &str) -> Result<String, CudaError> {
    if !nvrtc_present() {
        return Err(CudaError::Unavailable(
            "NVRTC (libnvrtc.so.12) not found; see scripts/nvrtc-env.sh".into(),
        ));
    }
    if !arch.starts_with("compute_") || arch[8..].parse::<u32>().is_err() {
        return Err(CudaError::InvalidArgument(format!(
            "architecture {arch:?}: expected compute_NN"
        )));
    }
    let opts = CompileOptions {
        options: vec![format!("--gpu-architecture={arch}"), "--std=c++17".into()],
        name: Some(kernel.file.into()),
        ..Default::default()
    };
    let ptx = guard("nvrtc", || {
        compile_ptx_with_opts(kernel.source, opts).map_err(|e| CudaError::Compile {
            file: kernel.file,
            arch: arch.into(),
            log: match e {
                CompileError::CompileError { log, .. } => log.to_string_lossy().into_owned(),
                other => format!("{other:?}"),
            },
        })
    })?
    .to_src();
    for f in kernel.functions {
        if !ptx.contains(&format!(".entry {f}(")) {
            return Err(CudaError::Compile {
                file: kernel.file,
                arch: arch.into(),
                log: format!("entry point {f} missing from the PTX"),
            });
        }
    }
    Ok(ptx)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{ARCHES, KERNELS};

    /// Every kernel compiles for every CI architecture. Needs NVRTC: required when
    /// `TIERKV_REQUIRE_NVRTC=1` (scripts/test.sh sets it up and sets that), else
    /// skipped with a message when NVRTC is absent.
    #[test]
    fn every_kernel_compiles_for_sm80_and_sm90() {
        if !nvrtc_present() {
            assert!(
                std::env::var("TIERKV_REQUIRE_NVRTC").as_deref() != Ok("1"),
                "TIERKV_REQUIRE_NVRTC=1 but NVRTC does not load (LD_LIBRARY_PATH={:?})",
                std::env::var("LD_LIBRARY_PATH")
            );
            eprintln!("NVRTC not found: kernel compilation not checked");
            return;
        }
        for k in KERNELS {
            for arch in ARCHES {
                let ptx = compile_ptx(k, arch).unwrap_or_else(|e| panic!("{e}"));
                assert!(ptx.contains(&format!(".target sm_{}", &arch[8..])), "{}", &ptx[..200]);
            }
        }
    }

    #[test]
    fn a_kernel_with_an_error_reports_the_compiler_log() {
        if !nvrtc_present() {
            return; // the compile test above says whether NVRTC is required
        }
        let bad = Kernel {
            file: "bad.cu",
            source: "extern \"C\" __global__ void f() { undeclared_thing(); }",
            functions: &["f"],
        };
        let e = compile_ptx(&bad, "compute_80").unwrap_err();
        assert!(e.to_string().contains("undeclared_thing"), "{e}");
        let missing = Kernel {
            file: "missing.cu",
            source: "extern \"C\" __global__ void g() {}",
            functions: &["not_there"],
        };
        assert!(compile_ptx(&missing, "compute_80").is_err());
    }

    #[test]
    fn bad_architecture_names_are_refused() {
        let e = compile_ptx(&KERNELS[0], "sm_90");
        if nvrtc_present() {
            assert!(matches!(e, Err(CudaError::InvalidArgument(_))), "{e:?}");
        } else {
            assert!(matches!(e, Err(CudaError::Unavailable(_))), "{e:?}");
        }
    }
}
