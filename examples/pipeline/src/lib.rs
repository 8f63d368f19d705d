//! Example: a user's own stepq binary (`src/main.rs` hands [`location`] to the whole `stepq`
//! command line: `run`, `worker start`, `status`, `logs` ...). Two typed jobs:
//!
//! - `etl`: `read_csv` parses a CSV of sales (`data/sales.csv`, or the file named by the run
//!   config's `csv`), four `totals_N` steps sum one shard of the rows each by region (a
//!   fan-out), and `join` merges them and writes `region,total_cents` lines to the run config's
//!   `report` (default `report.csv`).
//! - `flaky_report`: `fetch` fails twice before it answers (retried, 3 attempts), `summary`
//!   averages its readings, `outliers` emits the readings above the run config's `threshold`
//!   (default 100) only if there are any (an optional output), and `alert` runs only then —
//!   otherwise it is skipped.
//!
//! Run on the embedded default: `cargo run -p example-pipeline -- run etl`. The same jobs on
//! SQS + S3: the same commands with `--config stepq.localstack.toml` (see that file).

use std::collections::BTreeMap;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use stepq_plan::{Backoff, RetryPolicy};
use stepq_worker::{CodeLocation, OpContext, OpError, TypedJob};

/// The CSV `read_csv` reads when the run config names none.
pub const SALES_CSV: &str = include_str!("../data/sales.csv");
/// How many `totals_N` steps share the rows.
pub const SHARDS: usize = 4;

/// One row of the sales CSV.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Sale {
    /// Sales region.
    pub region: String,
    /// Product name.
    pub product: String,
    /// Amount in cents.
    pub amount_cents: i64,
}

/// The rows of a `region,product,amount_cents` CSV with a header line; an error names the
/// line that does not parse.
pub fn parse_sales(text: &str) -> Result<Vec<Sale>, OpError> {
    let mut lines = text
        .lines()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty());
    match lines.next() {
        Some((_, header)) if header.trim() == "region,product,amount_cents" => {}
        other => {
            return Err(OpError::new(
                "bad_csv",
                format!("line 1 must be `region,product,amount_cents`, not {other:?}"),
            ))
        }
    }
    lines
        .map(|(i, line)| {
            let bad =
                |why: &str| OpError::new("bad_csv", format!("line {}: {why}: `{line}`", i + 1));
            let fields: Vec<&str> = line.split(',').map(str::trim).collect();
            let [region, product, amount] = fields[..] else {
                return Err(bad("expected 3 fields"));
            };
            let amount_cents = amount
                .parse()
                .map_err(|_| bad("amount is not an integer"))?;
            Ok(Sale {
                region: region.to_string(),
                product: product.to_string(),
                amount_cents,
            })
        })
        .collect()
}

/// Totals by region of the rows of shard `shard` (every [`SHARDS`]th row from `shard`).
pub fn shard_totals(rows: &[Sale], shard: usize) -> BTreeMap<String, i64> {
    let mut totals = BTreeMap::new();
    for sale in rows.iter().skip(shard).step_by(SHARDS) {
        *totals.entry(sale.region.clone()).or_default() += sale.amount_cents;
    }
    totals
}

/// A string setting of the run config, or `default`.
fn setting(ctx: &OpContext, name: &str, default: &str) -> String {
    ctx.run_config()
        .get(name)
        .and_then(|v| v.as_str())
        .unwrap_or(default)
        .to_string()
}

/// The `etl` job.
pub fn etl_job() -> TypedJob {
    let mut job = TypedJob::new("etl");
    let rows = job.source("read_csv", |ctx| async move {
        let text = match ctx.run_config().get("csv").and_then(|v| v.as_str()) {
            Some(path) => std::fs::read_to_string(path)
                .map_err(|e| OpError::new("bad_csv", format!("cannot read `{path}`: {e}")))?,
            None => SALES_CSV.to_string(),
        };
        let rows = parse_sales(&text)?;
        ctx.info(format!("read {} sales", rows.len()));
        Ok(rows)
    });
    let shards: Vec<_> = (0..SHARDS)
        .map(|shard| {
            job.map(
                &format!("totals_{shard}"),
                &rows,
                move |_ctx, rows: Vec<Sale>| async move { Ok(shard_totals(&rows, shard)) },
            )
        })
        .collect();
    job.collect(
        "join",
        &shards,
        |ctx, parts: Vec<BTreeMap<String, i64>>| async move {
            let mut totals: BTreeMap<String, i64> = BTreeMap::new();
            for (region, cents) in parts.into_iter().flatten() {
                *totals.entry(region).or_default() += cents;
            }
            let report: String = totals.iter().map(|(r, c)| format!("{r},{c}\n")).collect();
            let path = setting(&ctx, "report", "report.csv");
            std::fs::write(&path, format!("region,total_cents\n{report}"))
                .map_err(|e| OpError::new("report_not_written", format!("`{path}`: {e}")))?;
            ctx.info(format!("wrote {} regions to {path}", totals.len()));
            Ok(totals)
        },
    );
    job
}

/// The `flaky_report` job.
pub fn flaky_report_job() -> TypedJob {
    let mut job = TypedJob::new("flaky_report");
    let readings = job.source("fetch", |ctx| async move {
        if ctx.attempt() < 3 {
            return Err(OpError::retry(format!(
                "the sensor API timed out (attempt {})",
                ctx.attempt()
            )));
        }
        Ok(vec![12_i64, 40, 7, 95, 61])
    });
    let quick = Backoff::exponential(Duration::from_millis(100), Duration::from_secs(1));
    job.configure("fetch", |s| s.retry(RetryPolicy::new(3, quick)));
    job.map("summary", &readings, |_ctx, r: Vec<i64>| async move {
        Ok(r.iter().sum::<i64>() / r.len().max(1) as i64)
    });
    let outliers = job.map_optional("outliers", &readings, |ctx, r: Vec<i64>| async move {
        let threshold = ctx
            .run_config()
            .get("threshold")
            .and_then(|v| v.as_i64())
            .unwrap_or(100);
        let high: Vec<i64> = r.into_iter().filter(|&v| v > threshold).collect();
        Ok((!high.is_empty()).then_some(high))
    });
    job.map("alert", &outliers, |ctx, high: Vec<i64>| async move {
        ctx.warn(format!(
            "{} readings above the threshold: {high:?}",
            high.len()
        ));
        Ok(high.len())
    });
    job
}

/// This binary's code location: the two jobs and their ops.
pub fn location() -> CodeLocation {
    CodeLocation::builder()
        .typed_job(etl_job())
        .typed_job(flaky_report_job())
        .build()
        .expect("the example jobs are valid")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_bundled_csv_parses_and_its_shards_add_up() {
        let rows = parse_sales(SALES_CSV).unwrap();
        assert_eq!(rows.len(), 16);
        let mut all: BTreeMap<String, i64> = BTreeMap::new();
        for shard in 0..SHARDS {
            for (r, c) in shard_totals(&rows, shard) {
                *all.entry(r).or_default() += c;
            }
        }
        assert_eq!(all["east"], 25_300);
        assert_eq!(all.values().sum::<i64>(), 88_619);
    }

    #[test]
    fn a_bad_csv_names_the_line() {
        let err =
            parse_sales("region,product,amount_cents\nnorth,widget,12\nsouth,x\n").unwrap_err();
        assert!(
            err.to_string().contains("line 3: expected 3 fields"),
            "{err}"
        );
        let err = parse_sales("a,b\n").unwrap_err();
        assert!(err.to_string().contains("line 1 must be"), "{err}");
        let err = parse_sales("region,product,amount_cents\nnorth,widget,lots\n").unwrap_err();
        assert!(
            err.to_string().contains("line 2: amount is not an integer"),
            "{err}"
        );
    }

    #[test]
    fn the_location_holds_both_jobs() {
        let location = location();
        assert_eq!(
            location.job_names().collect::<Vec<_>>(),
            ["etl", "flaky_report"]
        );
        assert_eq!(location.job("etl").unwrap().steps().len(), 2 + SHARDS);
    }
}
