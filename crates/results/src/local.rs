//! Local-directory result backend and output store (the embedded default keeps runs on disk).

use crate::error::ResultError;

/// Checks that `part` is usable as one path segment / object key segment.
pub(crate) fn check_segment(part: &str) -> Result<(), ResultError> {
    let reason = if part.is_empty() {
        Some("empty")
    } else if part == "." || part == ".." {
        Some("is a relative path component")
    } else if part.contains('/') || part.contains('\\') {
        Some("contains a path separator")
    } else if part.chars().any(|c| c.is_control()) {
        Some("contains a control character")
    } else {
        None
    };
    match reason {
        Some(reason) => Err(ResultError::InvalidKey {
            key: part.to_string(),
            reason,
        }),
        None => Ok(()),
    }
}
