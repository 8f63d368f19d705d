//! The stock `stepq` binary: the demo jobs, plus jobs from `--jobs-file` TOML files.

fn main() -> std::process::ExitCode {
    stepq_cli::main(stepq_cli::demo::location())
}
