//! stepq-cancel
