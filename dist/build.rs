//! Compiles the c10d binding (`csrc/binding.cpp`) against the headers of the libtorch that torch-sys
//! links, and links the package's binaries and tests against libtorch like `build/link_libtorch.rs`.
//!
//! The PyTorch wheel ships c10d's headers but not Gloo's, which `ProcessGroupGloo.hpp` includes:
//! `csrc/gloo_shim/` declares the few Gloo names that header mentions (see its README.md). NCCL is
//! compiled in only when this libtorch has `libtorch_cuda.so` and the NCCL and CUDA headers are found
//! (the `nvidia-*` wheels beside torch); the `alp_dist_nccl` cfg then tells the Rust side.
use std::path::{Path, PathBuf};

fn main() {
    // torch-sys has `links = "tch"`, so direct dependents see its lib folder as DEP_TCH_LIBTORCH_LIB.
    let lib = PathBuf::from(
        std::env::var("DEP_TCH_LIBTORCH_LIB").expect("torch-sys must be a direct dependency"),
    );
    let root = lib
        .parent()
        .expect("libtorch lib folder has a parent")
        .to_path_buf();
    let include = root.join("include");
    let cuda = lib.join("libtorch_cuda.so").exists();
    let mut nvidia = nvidia_includes(&root);
    let cuda_home = std::env::var("CUDA_HOME").unwrap_or_else(|_| "/usr/local/cuda".into());
    nvidia.push(Path::new(&cuda_home).join("include"));
    // Extra header folders (for example the nvidia-cuda-crt and nvidia-cuda-cccl wheels' include/),
    // ':'-separated.
    if let Ok(extra) = std::env::var("ALP_DIST_CUDA_INCLUDE") {
        nvidia.extend(
            extra
                .split(':')
                .filter(|d| !d.is_empty())
                .map(PathBuf::from),
        );
    }
    let has = |header: &str| nvidia.iter().any(|d| d.join(header).exists());
    // The CUDA runtime headers of the pip wheels lack crt/host_config.h (it comes with nvcc) and
    // CCCL's nv/target: NCCL's path is compiled only where a full set of headers is there.
    // ALP_DIST_NCCL=0 turns it off, =1 makes missing headers an error; unset, it is automatic.
    let mode = std::env::var("ALP_DIST_NCCL").unwrap_or_default();
    let headers = ["nccl.h", "cuda_runtime.h", "crt/host_config.h", "nv/target"];
    let missing: Vec<&str> = headers.into_iter().filter(|h| !has(h)).collect();
    let nccl = mode != "0" && cuda && missing.is_empty();
    if mode == "1" && !nccl {
        panic!(
            "ALP_DIST_NCCL=1 but NCCL's path cannot be compiled: libtorch_cuda.so {}, missing \
             headers {missing:?} (searched site-packages/nvidia/*/include, $CUDA_HOME/include and \
             $ALP_DIST_CUDA_INCLUDE)",
            if cuda { "found" } else { "not found" }
        );
    }
    println!("cargo:rustc-check-cfg=cfg(alp_dist_nccl)");
    let mut build = cc::Build::new();
    build
        .cpp(true)
        .pic(true)
        .warnings(false)
        .file("csrc/binding.cpp")
        .include("csrc/gloo_shim")
        .include(&include)
        .include(include.join("torch/csrc/api/include"))
        .flag("-std=c++17")
        .flag("-D_GLIBCXX_USE_CXX11_ABI=1")
        .flag("-DGLOG_USE_GLOG_EXPORT")
        .define("USE_C10D_GLOO", None);
    if nccl {
        build
            .define("USE_C10D_NCCL", None)
            .define("USE_CUDA", None)
            .define("ALP_DIST_NCCL", None);
        build.includes(&nvidia);
        println!("cargo:rustc-cfg=alp_dist_nccl");
    }
    build.compile("alp_dist_c10d");

    println!("cargo:rustc-link-search=native={}", lib.display());
    if nccl {
        println!("cargo:rustc-link-lib=dylib=torch_cuda");
    }
    println!("cargo:rustc-link-lib=dylib=torch_cpu");
    println!("cargo:rustc-link-lib=dylib=c10");
    // As build/link_libtorch.rs: an rpath, and torch_cuda kept although no symbol of it is named.
    println!("cargo:rustc-link-arg=-Wl,-rpath={}", lib.display());
    println!("cargo:rustc-link-arg=-Wl,--no-as-needed");
    if cuda {
        println!("cargo:rustc-link-arg=-ltorch_cuda");
    }
    println!("cargo:rustc-link-arg=-ltorch");
    println!("cargo:rerun-if-changed=csrc");
    println!("cargo:rerun-if-changed=build.rs");
    println!("cargo:rerun-if-env-changed=ALP_DIST_NCCL");
    println!("cargo:rerun-if-env-changed=CUDA_HOME");
    println!("cargo:rerun-if-env-changed=ALP_DIST_CUDA_INCLUDE");
}

/// `site-packages/nvidia/*/include` beside the torch package (NCCL, CUDA runtime and friends).
fn nvidia_includes(torch_root: &Path) -> Vec<PathBuf> {
    let Some(site) = std::fs::canonicalize(torch_root)
        .ok()
        .and_then(|p| p.parent().map(Path::to_path_buf))
    else {
        return Vec::new();
    };
    let Ok(entries) = std::fs::read_dir(site.join("nvidia")) else {
        return Vec::new();
    };
    let mut dirs: Vec<PathBuf> = entries
        .filter_map(|e| e.ok().map(|e| e.path().join("include")))
        .filter(|d| d.is_dir())
        .collect();
    dirs.sort();
    dirs
}
