//! Prompt text → conditioning tensors (in progress).
