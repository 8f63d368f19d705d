//! stepq
