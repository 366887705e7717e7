//! The `tollgate` command: see `tollgate --help`.

#![forbid(unsafe_code)]

fn main() -> std::process::ExitCode {
    tollgate::cli::main()
}
