//! The whole `stepq` command line over this crate's jobs: `example-pipeline run etl`,
//! `example-pipeline worker start`, `status`, `logs`, `cancel`, `resume` ...
//! `cargo run -p example-pipeline -- run etl` runs it on the embedded default.

fn main() -> std::process::ExitCode {
    stepq_cli::main(example_pipeline::location())
}
