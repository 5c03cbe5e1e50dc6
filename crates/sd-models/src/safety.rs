//! StableDiffusionSafetyChecker (in progress).
