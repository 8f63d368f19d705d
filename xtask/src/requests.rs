//! Counts the AWS requests in LocalStack's log (one line per request:
//! `... localstack.request.aws : AWS sqs.SendMessage => 200`).

use std::collections::BTreeMap;
use std::path::Path;

/// Requests per `service.Operation` in a LocalStack log.
pub(crate) fn count_requests(log: &str) -> BTreeMap<String, u64> {
    let mut counts = BTreeMap::new();
    for line in log.lines() {
        let Some((_, rest)) = line.split_once(" AWS ") else {
            continue;
        };
        let Some((operation, _status)) = rest.split_once(" => ") else {
            continue;
        };
        *counts.entry(operation.trim().to_string()).or_insert(0) += 1;
    }
    counts
}

/// A one-paragraph summary of the requests in the log at `path`, if it has any.
pub(crate) fn summarize(path: &Path) -> Option<String> {
    let text = std::fs::read_to_string(path).ok()?;
    let counts = count_requests(&text);
    if counts.is_empty() {
        return None;
    }
    let total: u64 = counts.values().sum();
    let parts: Vec<String> = counts.iter().map(|(op, n)| format!("{op} {n}")).collect();
    Some(format!(
        "AWS requests in {}: {total} ({})",
        path.display(),
        parts.join(", ")
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_one_line_per_request() {
        let log = "\
2026-01-01T00:00:00.000  INFO --- [et.reactor-0] localstack.request.aws     : AWS sqs.CreateQueue => 200
2026-01-01T00:00:00.100  INFO --- [et.reactor-1] localstack.request.aws     : AWS sqs.SendMessage => 200
2026-01-01T00:00:00.200  INFO --- [et.reactor-0] localstack.request.aws     : AWS sqs.SendMessage => 400 (AWS.SimpleQueueService.NonExistentQueue)
2026-01-01T00:00:00.300  INFO --- [et.reactor-0] localstack.request.aws     : AWS s3.PutObject => 200
Ready.
";
        let counts = count_requests(log);
        assert_eq!(counts.get("sqs.SendMessage"), Some(&2));
        assert_eq!(counts.get("sqs.CreateQueue"), Some(&1));
        assert_eq!(counts.get("s3.PutObject"), Some(&1));
        assert_eq!(counts.len(), 3);
    }
}
