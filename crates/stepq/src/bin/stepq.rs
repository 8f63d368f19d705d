//! The stock `stepq` binary: the example jobs, plus jobs from `--jobs-file` TOML files.

fn main() -> std::process::ExitCode {
    stepq::cli::main(stepq::examples::location())
}
