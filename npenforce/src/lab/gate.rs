//! Whether kernel and lab tests can run here, and a loud skip when they cannot.

use crate::dataplane::loader::object_embedded;

/// Set by `cargo xtask test` when running as root: a kernel test that cannot run fails.
pub const REQUIRE_ENV: &str = "NPENFORCE_REQUIRE_KERNEL_TESTS";

fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

/// Returns true when test `name` can load eBPF programs and create network namespaces.
/// Otherwise prints why and returns false, or panics if [`REQUIRE_ENV`] is set.
pub fn kernel_tests_enabled(name: &str) -> bool {
    let reason = if !is_root() {
        Some("needs root (loads eBPF programs, creates network namespaces)")
    } else if !object_embedded() {
        Some("the eBPF object is not built: run `cargo xtask build-ebpf` (cargo xtask test does)")
    } else {
        None
    };
    match reason {
        None => true,
        Some(reason) if std::env::var_os(REQUIRE_ENV).is_some() => {
            panic!("{name}: cannot run: {reason}, and {REQUIRE_ENV} requires it")
        }
        Some(reason) => {
            eprintln!("SKIPPED {name}: {reason}");
            false
        }
    }
}
