//! stepq-worker
