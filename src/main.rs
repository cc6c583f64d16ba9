//! The `gatehouse` binary: everything happens in [`gatehouse::cli::main`].

fn main() -> std::process::ExitCode {
    gatehouse::cli::main()
}
