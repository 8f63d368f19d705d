//! `stepq-worker`: the same as `stepq worker start`, for service managers and containers.
//!
//! Takes the options of `stepq worker start` (`--config`, `--jobs-file`, `--concurrency`,
//! `--name`, `--log-format`).

fn main() -> std::process::ExitCode {
    let args = std::env::args_os().take(1).chain(
        ["worker", "start"]
            .into_iter()
            .map(std::ffi::OsString::from)
            .chain(std::env::args_os().skip(1)),
    );
    stepq_cli::main_from(stepq_cli::demo::location(), args)
}
