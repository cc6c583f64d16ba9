//! The `gatehouse` binary: everything happens in [`gatehouse::cli::main`].

/// With `--features mimalloc`, every allocation goes to mimalloc instead of
/// the C library's malloc (musl's is slow when threads allocate at once:
/// deploy/build-static.sh, bench/run.sh section 4d).
#[cfg(feature = "mimalloc")]
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> std::process::ExitCode {
    gatehouse::cli::main()
}
