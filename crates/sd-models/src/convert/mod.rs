//! Single-file checkpoint conversion (in progress).
