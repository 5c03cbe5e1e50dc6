//! Scaled-dot-product attention shared by every network (filled by the models work).
