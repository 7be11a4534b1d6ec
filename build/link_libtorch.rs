//! Build script shared by every package that links libtorch into a binary or test.
//!
//! `cargo:rustc-link-arg` only applies to the emitting package, so each such package points its
//! `build` key here. Two things matter: an rpath to the torch lib folder (binaries run without
//! `LD_LIBRARY_PATH`) and `--no-as-needed` for `torch_cuda`, which the linker would otherwise drop
//! because no symbol of it is referenced, leaving CUDA invisible on a GPU machine.
fn main() {
    // torch-sys has `links = "tch"`, so direct dependents see its lib folder as DEP_TCH_LIBTORCH_LIB.
    let lib = std::env::var("DEP_TCH_LIBTORCH_LIB")
        .expect("torch-sys must be a direct dependency of every package using this build script");
    println!("cargo:rustc-link-arg=-Wl,-rpath={lib}");
    println!("cargo:rustc-link-arg=-Wl,--no-as-needed");
    let has_cuda = std::path::Path::new(&lib).join("libtorch_cuda.so").exists();
    if has_cuda {
        println!("cargo:rustc-link-arg=-ltorch_cuda");
    }
    println!("cargo:rustc-link-arg=-ltorch");
    println!("cargo:rerun-if-changed=build/link_libtorch.rs");
}
